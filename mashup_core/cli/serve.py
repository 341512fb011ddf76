"""`mashup serve`: the dashboard on a workspace, safe to share a screen or a room.

On loopback (the default) it is the whole app. Bound to another address, anyone who reaches
it could launch jobs and change the workspace, so that is refused unless the dashboard is
read-only (`--read-only`: browse only, the workspace fixed) or guarded by an access token
(MASHUP_TOKEN: a visitor types it in before any write action is offered). The core checks the
same settings on every write action (`mashup_core.access`), not only the pages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mashup_core import access
from mashup_core.errors import MashupError

APP = "app.py"


class ServeError(MashupError):
    """The dashboard cannot be served as asked; the message says what to change."""


def register(sub, parent: argparse.ArgumentParser) -> None:
    serve = sub.add_parser(
        "serve", parents=[parent], help="run the dashboard on the workspace (streamlit)",
        description="Run the Streamlit dashboard on one workspace. Beyond loopback, add "
        "--read-only or set MASHUP_TOKEN (visitors enter it before launching anything).",
    )
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8501)
    serve.add_argument("--read-only", action="store_true",
                       help="browse only: no launching, cancelling or changing the workspace, "
                       "and the workspace cannot be switched")
    serve.add_argument("--dry-run", action="store_true",
                       help="print the command and settings instead of starting the server")
    serve.set_defaults(func=_serve)


def app_root() -> Path:
    """The folder holding app.py and pages/ (the source checkout this package runs from)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / APP).exists():
        raise ServeError(f"no {APP} next to the mashup_core package ({root}): the dashboard runs "
                         "from a source checkout (pip install -e .)")
    return root


def serve_command(workspace: str | None, host: str, port: int, read_only: bool,
                  environ: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run the dashboard; refuses an unsafe combination."""
    from mashup_core.workspace import ENV_VAR, Workspace

    env = dict(os.environ if environ is None else environ)
    token = env.get(access.TOKEN_ENV, "")
    if not 0 < port < 65536:
        raise ServeError(f"--port {port} is not a TCP port (1-65535)")
    if not access.is_loopback(host) and not read_only:
        if not token:
            raise ServeError(
                f"refusing to serve on {host}: other machines could reach the dashboard and "
                "launch jobs or change the workspace. Add --read-only to share it for viewing, "
                f"or set {access.TOKEN_ENV} to a secret that visitors must enter before any "
                "launch, or bind 127.0.0.1")
        if len(token) < access.MIN_TOKEN_LENGTH:
            raise ServeError(f"{access.TOKEN_ENV} is {len(token)} characters long; use at least "
                             f"{access.MIN_TOKEN_LENGTH} (e.g. `python -c 'import secrets; "
                             "print(secrets.token_urlsafe(16))'`)")
    env[ENV_VAR] = str(Workspace.resolve(workspace).root)
    if read_only:
        env[access.READ_ONLY_ENV] = "1"
    else:
        env.pop(access.READ_ONLY_ENV, None)  # an inherited setting must not outlive the flag
    argv = [sys.executable, "-m", "streamlit", "run", str(app_root() / APP),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true"]
    return argv, env


def _serve(args) -> int:
    from mashup_core.cli import emit

    argv, env = serve_command(args.workspace, args.host, args.port, args.read_only)
    if args.dry_run:
        shown = {k: ("***" if k == access.TOKEN_ENV else env[k])
                 for k in (access.TOKEN_ENV, access.READ_ONLY_ENV, "MASHUP_WORKSPACE") if k in env}
        emit(args, {"argv": argv, "env": shown},
             " ".join(argv) + "\n" + "\n".join(f"{k}={v}" for k, v in shown.items()))
        return 0
    mode = "read-only" if args.read_only else ("token" if env.get(access.TOKEN_ENV) else "full")
    print(f"serving {env['MASHUP_WORKSPACE']} on http://{args.host}:{args.port} ({mode} access)",
          file=sys.stderr, flush=True)
    # Streamlit reads .streamlit/config.toml from its working folder: the checkout's.
    os.chdir(app_root())
    os.execve(sys.executable, argv, env)  # the server is this process: Ctrl-C and kill reach it
    return 0  # pragma: no cover - execve does not return
