"""Detached background processes: start one that outlives its caller, tell whether a pid is
still ours, stop it with its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mashup_core.access import job_environ


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; the command name before it may hold spaces."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/<pid>/stat, in clock ticks since
    boot), so that a pid the kernel handed to another process is not taken for our job."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def process_alive(pid: int | None, started: str | None = None) -> bool:
    """Is `pid` running, and (when `started` is known) still the process that started then?

    A zombie (a child of ours that has ended but was not waited for) reads as ended. It is
    not reaped here: whoever holds its `Popen` still gets its exit status."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    if not fields:
        return True  # no /proc (not Linux): the signal's answer is all there is
    return fields[0] != "Z" and (started is None or fields[19] == started)


def spawn_detached(cli_args: Sequence[str], log_path: Path, mode: str = "a") -> int:
    """Start `mashup CLI_ARGS...` in its own session (and process group), so it outlives the
    caller (a dashboard or a terminal); its output goes to `log_path`. Returns the pid."""
    cmd = [sys.executable, "-m", "mashup_core.cli", *cli_args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, mode) as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**job_environ(), "PYTHONUNBUFFERED": "1"},
        )
    return proc.pid


def signal_job(pid: int | None, started: str | None = None, sig: int = signal.SIGTERM) -> bool:
    """Send `sig` to a job and everything it started (a local Ray instance, build workers):
    a detached job leads its own process group; one started in a shell shares the shell's,
    so only the process itself is signalled then. False if the job is not running."""
    if not process_alive(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    return True
