"""The dashboard under Streamlit's AppTest, set up one way: `app()` to build it (a link's query
string, a session's state), `render()` to run it on a page, `check()` that nothing raised.
The workspace is $MASHUP_WORKSPACE (conftest's `open_in_dashboard`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parent.parent / "app.py"


def app(*, params: dict[str, str] | None = None, session: dict[str, Any] | None = None,
        timeout: float = 120) -> AppTest:
    """The app, not run yet: `params` in its query string, `session` in its session state."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.query_params.update(params or {})
    for key, value in (session or {}).items():
        at.session_state[key] = value
    return at


def check(at: AppTest) -> None:
    assert not at.exception, [(e.message, e.stack_trace) for e in at.exception]


def render(page: str | None = None, *, params: dict[str, str] | None = None,
           timeout: float = 120) -> AppTest:
    """The app run, switched to `page` (pages/PAGE.py) and run again, without an exception."""
    at = app(params=params, timeout=timeout)
    at.run()
    if page is not None:
        at.switch_page(f"pages/{page}.py")
        at.run()
    check(at)
    return at
