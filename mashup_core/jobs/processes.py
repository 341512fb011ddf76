"""Detached background processes: start one that outlives its caller, tell whether a pid is still ours."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mashup_core.access import job_environ


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a reused pid from our job."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int | None, started: str | None = None) -> bool:
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own finished child, or it stays a zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z" or (started is not None and stat[19] != started):
            return False
    return True


def spawn_detached(cli_args: Sequence[str], log_path: Path, mode: str = "a") -> int:
    """Start `mashup CLI_ARGS...` in its own session, so it outlives the caller (a dashboard
    or a terminal); its output goes to `log_path`. Returns the pid."""
    cmd = [sys.executable, "-m", "mashup_core.cli", *cli_args]
    with open(log_path, mode) as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**job_environ(), "PYTHONUNBUFFERED": "1"},
        )
    return proc.pid
