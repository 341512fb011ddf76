"""The accelerator slot: one job per device at a time, first come first served, on a flocked file."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator

from mashup_core.jobs.processes import process_alive
from mashup_core.jobs.store import run_dirs
from mashup_core.workspace import Workspace, read_json


class RunCancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a job when it is cancelled before training has started."""


def _older_waiters(ws: Workspace, run_id: str, key: str, since: float) -> bool:
    """Is a job launched before `run_id` waiting for the same device? Then it goes first."""
    for rd in run_dirs(ws):
        if rd.name == run_id:
            continue
        st = read_json(rd / "status.json", {})
        if (st.get("state") == "queued" and st.get("device") == key
                and (st.get("queued_at") or 0, rd.name) < (since, run_id)
                and process_alive(st.get("pid"), st.get("pid_start"))):
            return True
    return False


@contextlib.contextmanager
def device_slot(
    ws: Workspace, key: str, *, run_id: str = "", queued_at: float | None = None,
    should_stop: Callable[[], bool] = lambda: False, poll: float = 0.25,
) -> Iterator[None]:
    """Hold the device `key` (waiting, first come first served): one training job at a time.

    Anything else that trains on a device (a study) can take the same slot.
    """
    lock_dir = ws.runs_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    queued_at = time.time() if queued_at is None else queued_at
    with open(lock_dir / f"{key.replace(':', '-')}.lock", "a") as fh:
        while True:
            if should_stop():
                raise RunCancelled
            if not _older_waiters(ws, run_id, key, queued_at):
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
            time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
