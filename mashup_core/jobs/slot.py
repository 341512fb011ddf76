"""Admission to an accelerator: one job per device at a time, first come first served.

Every job that puts a model on an accelerator (a training run, scoring, a study's targets,
the demo build) enters through `accelerator_slot`. The slot is a `flock` on
`runs/locks/<device>.lock` in the workspace: the kernel drops it when its holder dies, even
by SIGKILL, so a crashed job never blocks the card. Beside the lock:

- `<device>.holder.json`: who holds it (kind, id, pid, since), for `slot_status` and for the
  message a waiting job shows. A killed holder leaves it behind; it is ignored once its
  process is gone (pid and kernel start time, so a reused pid does not count).
- `<device>.waiting/`: one small file per waiting job, so that jobs of every kind queue in
  the order they asked (FIFO), not in whatever order their polls happen to win the lock.
  Queued runs also count from their status.json alone, before their process reaches the
  slot (a job still importing torch keeps the place it got when the run was created).

On the CPU only training runs queue (as they always did): two trainings on two cores would
each take twice as long and spoil the wall-clock comparisons that runs exist for. Scoring,
study cells and the demo build on the CPU do not queue: a CPU has no fixed memory that a
second model can exhaust, the OS shares the cores, and making an interactive score wait
behind a ten-minute CPU training (or a study that parallelises over processes on purpose)
would only make the dashboard look hung. On CUDA (and MPS) every kind queues.

The slot is workspace-wide, not machine-wide: two workspaces on one GPU do not see each other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mashup_core.jobs.processes import process_alive, process_start
from mashup_core.jobs.record import run_dirs
from mashup_core.workspace import Workspace, locked, read_json, write_json_atomic

KINDS = ("run", "score", "study", "demo-build")
ON_CPU_QUEUE = ("run",)  # the kinds that queue on the CPU too (see the module docstring)


class RunCancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a job when it is cancelled before training has started."""


# Slots this thread holds, so a job that already holds its device (a run that scores inside
# its slot) can enter again instead of deadlocking on its own lock. Per thread, not per
# process: two dashboard sessions are two threads and must still queue.
_held = threading.local()


def _held_here() -> set[str]:
    """The keys this thread holds. A forked child starts with none: the lock is its parent's."""
    if getattr(_held, "pid", None) != os.getpid():
        _held.pid, _held.keys = os.getpid(), set()
    return _held.keys


def slot_key(device: Any) -> str:
    """The queue's name for a torch device or a key: 'cpu', 'cuda:0', 'mps'.

    A bare 'cuda' means the current CUDA device, as torch reads it.
    """
    if isinstance(device, str) and (":" in device or device in ("cpu", "mps")):
        return device
    import torch

    from mashup_core.jobs.devices import device_key

    return device_key(device if isinstance(device, torch.device) else torch.device(device))


def queues(kind: str, key: str) -> bool:
    """Does a job of `kind` on the device `key` wait for the slot? (See the module docstring.)"""
    return key != "cpu" or kind in ON_CPU_QUEUE


def describe(holder: dict[str, Any]) -> str:
    """'run 20260101-...-abc123 (pid 123)': who holds, or waits for, a slot."""
    return f"{holder.get('kind', 'job')} {holder.get('id') or '?'} (pid {holder.get('pid')})"


# --- The files beside the lock --------------------------------------------------------------------


def _lock_dir(ws: Workspace) -> Path:
    return ws.runs_dir / "locks"


def _stem(key: str) -> str:
    return key.replace(":", "-").replace("/", "-")


def _holder_path(ws: Workspace, key: str) -> Path:
    return _lock_dir(ws) / f"{_stem(key)}.holder.json"


def _waiting_dir(ws: Workspace, key: str) -> Path:
    return _lock_dir(ws) / f"{_stem(key)}.waiting"


def _alive(record: dict[str, Any]) -> bool:
    return process_alive(record.get("pid"), record.get("pid_start"))


def slot_status(ws: Workspace, device_key: str) -> dict[str, Any] | None:
    """Who holds the device now: {kind, id, pid, pid_start, since, device}, or None.

    A record left by a holder that died (even one whose pid now belongs to another process)
    is ignored: the kernel released its lock when it died.
    """
    record = read_json(_holder_path(ws, device_key))
    if not isinstance(record, dict) or not _alive(record):
        return None
    return record


def slot_waiters(ws: Workspace, device_key: str) -> list[dict[str, Any]]:
    """The live jobs waiting for the device, first in line first.

    Each is {kind, id, pid, queued_at}; queued runs whose job has not reached the slot yet
    are included from their status.json. Records of dead waiters are removed on the way.
    """
    found: dict[tuple[str, str, Any], dict[str, Any]] = {}
    wait_dir = _waiting_dir(ws, device_key)
    if wait_dir.is_dir():
        for path in wait_dir.glob("*.json"):
            record = read_json(path)
            if not isinstance(record, dict):
                continue  # being written right now, or cut short: not there yet
            if not _alive(record):
                path.unlink(missing_ok=True)
                continue
            found[_who(record)] = record
    for rd in run_dirs(ws):
        st = read_json(rd / "status.json", {})
        if (st.get("state") == "queued" and st.get("device") == device_key
                and process_alive(st.get("pid"), st.get("pid_start"))):
            record = {"kind": "run", "id": rd.name, "pid": st.get("pid"),
                      "pid_start": st.get("pid_start"), "queued_at": st.get("queued_at") or 0.0}
            found.setdefault(_who(record), record)
    holder = slot_status(ws, device_key)
    if holder is not None:  # a run's status says 'queued' for a moment after it got the slot
        found.pop(_who(holder), None)
    return sorted(found.values(), key=lambda r: (r.get("queued_at") or 0.0, str(r.get("id"))))


def _who(record: dict[str, Any]) -> tuple[str, str, Any]:
    """A waiter's identity: its ticket and a queued run's status name the same job this way."""
    return str(record.get("kind", "")), str(record.get("id", "")), record.get("pid")


def _ahead_of(ws: Workspace, me: dict[str, Any]) -> dict[str, Any] | None:
    """The first live job that asked for the device before `me`, if any: it goes first."""
    mine = (me["queued_at"], str(me["id"]))
    for waiter in slot_waiters(ws, me["device"]):
        if _who(waiter) != _who(me) and ((waiter.get("queued_at") or 0.0), str(waiter.get("id"))) < mine:
            return waiter
    return None


# --- Taking the slot ------------------------------------------------------------------------------


@contextlib.contextmanager
def accelerator_slot(
    ws: Workspace, device: Any, *, holder: str, kind: str,
    should_stop: Callable[[], bool] = lambda: False, queued_at: float | None = None,
    on_wait: Callable[[str | None], None] | None = None, poll: float = 0.25,
) -> Iterator[str]:
    """Hold `device` (a torch device or a key such as 'cuda:0') for a job, waiting in line.

    `holder` names the job (a run id, a study id, a target's label), `kind` is one of 'run',
    'score', 'study', 'demo-build'. `queued_at` is when the job asked (a run: when it was
    created), for first-come-first-served order; default now. `should_stop()` is checked while
    waiting: true raises `RunCancelled`. `on_wait(text)` hears whom the job waits for
    ('run ... (pid 123)') whenever that changes, and None once the slot is ours. Yields the
    device's key. On the CPU only runs queue; other kinds enter at once (module docstring).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(KINDS)}")
    key = slot_key(device)
    held = _held_here()
    if key in held or not queues(kind, key):
        yield key
        return
    queued_at = time.time() if queued_at is None else queued_at
    me = {"kind": kind, "id": holder, "pid": os.getpid(), "pid_start": process_start(os.getpid()),
          "device": key, "queued_at": queued_at}
    lock_dir = _lock_dir(ws)
    lock_dir.mkdir(parents=True, exist_ok=True)
    wait_dir = _waiting_dir(ws, key)
    ticket = wait_dir / f"{queued_at:017.6f}-{os.getpid()}-{secrets.token_hex(3)}.json"
    told: str | None = None
    with contextlib.ExitStack() as holding:
        try:
            write_json_atomic(ticket, me)  # visible to younger jobs before we first try
            while True:
                if should_stop():
                    raise RunCancelled
                ahead = _ahead_of(ws, me)
                if ahead is None:
                    try:
                        holding.enter_context(locked(lock_dir / f"{_stem(key)}.lock", wait=False))
                        break
                    except BlockingIOError:
                        pass
                current = slot_status(ws, key)
                blocker = describe(current) if current else (
                    f"{describe(ahead)}, ahead in the queue" if ahead else "another job")
                if on_wait is not None and blocker != told:
                    on_wait(blocker)
                told = blocker
                time.sleep(poll)
        finally:
            ticket.unlink(missing_ok=True)
        holder_path = _holder_path(ws, key)
        try:
            write_json_atomic(holder_path, {**me, "since": time.time()})
            held.add(key)
            if on_wait is not None and told is not None:
                on_wait(None)
            yield key
        finally:
            held.discard(key)
            # Only our own record goes; the lock is still ours, so no one else wrote since.
            if (read_json(holder_path) or {}).get("pid") == os.getpid():
                holder_path.unlink(missing_ok=True)


@contextlib.contextmanager
def device_slot(
    ws: Workspace, key: str, *, run_id: str = "", queued_at: float | None = None,
    should_stop: Callable[[], bool] = lambda: False, poll: float = 0.25,
) -> Iterator[None]:
    """The training run's slot, as before `accelerator_slot` took every kind of job."""
    with accelerator_slot(ws, key, holder=run_id, kind="run", queued_at=queued_at,
                          should_stop=should_stop, poll=poll):
        yield


def waiting_message(ws: Workspace, run_id: str) -> str | None:
    """'waiting for run ... (pid 123) on cuda:0' for a queued run, else None.

    Read live from the slot when its device is held, so the CLI and the pages say who holds
    it now; otherwise what the job last recorded (`waiting_for` in its status.json).
    """
    status = read_json(ws.runs_dir / run_id / "status.json", {})
    if status.get("state") != "queued":
        return None
    key = status.get("device")
    if key and (current := slot_status(ws, key)) is not None:
        if (current.get("kind"), current.get("id")) == ("run", run_id):
            return None  # it has the slot; its status just has not said 'running' yet
        return f"waiting for {describe(current)} on {key}"
    if status.get("waiting_for") and process_alive(status.get("pid"), status.get("pid_start")):
        return f"waiting for {status['waiting_for']}" + (f" on {key}" if key else "")
    return None
