"""Who may change a workspace from this process: the dashboard's read-only and token modes.

`mashup serve --read-only` starts the dashboard with MASHUP_READ_ONLY=1; a dashboard bound
beyond loopback without it needs MASHUP_TOKEN, a secret a visitor types in before any write
action is offered. The pages hide the buttons, but a hidden button is not a guard: every core
write action (launching, cancelling or resuming a run, creating one, launching a study,
saving mashup.toml, building the demo world) calls `require_write` first, so nothing a
session sends can change the workspace behind the pages' backs.

The token reaches the core through `granted(token)`, a context variable: Streamlit runs each
browser session's script in its own thread, so one visitor's token never authorises another's.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mashup_core.errors import MashupError

READ_ONLY_ENV = "MASHUP_READ_ONLY"
TOKEN_ENV = "MASHUP_TOKEN"
MIN_TOKEN_LENGTH = 8  # shorter is guessable by hand over a room's Wi-Fi

_granted: ContextVar[str | None] = ContextVar("mashup_write_token", default=None)


class AccessError(MashupError):
    """A write action this process may not perform (read-only, or a token is missing)."""


class ReadOnlyError(AccessError):
    """The dashboard was started with --read-only."""


class TokenRequiredError(AccessError):
    """The dashboard is shared with a token and this session has not given it."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def read_only() -> bool:
    """Is this process read-only ($MASHUP_READ_ONLY set to a true value)?"""
    return _flag(os.environ.get(READ_ONLY_ENV))


def token_required() -> bool:
    """Do write actions here need the access token ($MASHUP_TOKEN set)?"""
    return bool(os.environ.get(TOKEN_ENV))


def token_matches(token: str | None) -> bool:
    """Is `token` this process's access token? Compared in constant time."""
    expected = os.environ.get(TOKEN_ENV)
    if not expected or not token:
        return False
    return hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))


def can_write(token: str | None = None) -> bool:
    """Would `require_write` pass for this token (or the one `granted` here)?"""
    if read_only():
        return False
    return not token_required() or token_matches(token or _granted.get())


def require_write(action: str, token: str | None = None) -> None:
    """Raise unless this process may perform `action` ("launching a run"): never when
    read-only; with a token set, only with that token (given, or `granted` around the call)."""
    if read_only():
        raise ReadOnlyError(f"this dashboard is read-only: {action} is disabled "
                            "(started with --read-only)")
    if token_required() and not token_matches(token or _granted.get()):
        raise TokenRequiredError(f"this dashboard is shared with an access token: {action} "
                                 "needs it (enter it in the sidebar)")


@contextmanager
def granted(token: str | None) -> Iterator[None]:
    """Core write actions inside this block run with `token` (checked by `require_write`)."""
    reset = _granted.set(token)
    try:
        yield
    finally:
        _granted.reset(reset)


def job_environ() -> dict[str, str]:
    """The environment for a background job started by an allowed action: without the access
    settings, so the job does not refuse its own writes and the secret is not copied into
    every job's environment."""
    return {k: v for k, v in os.environ.items() if k not in (READ_ONLY_ENV, TOKEN_ENV)}


def is_loopback(host: str) -> bool:
    """Does binding `host` keep the server reachable from this machine only?"""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False
