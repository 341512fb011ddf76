"""One admission for the accelerator (`jobs.slot`): FIFO across processes and kinds, a holder
record that names the holder and goes with it, dead holders that block nothing, and queued
runs that say whom they wait for. CPU only: a fake device key ('cuda:7') stands in for a card.

Children are forked (torch is imported already, so they start in milliseconds), and every
wait is bounded.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest
from waiting import poll

from mashup_core.jobs.runner import cancel, execute_run
from mashup_core.jobs.slot import (
    _holder_path,
    accelerator_slot,
    slot_status,
    slot_waiters,
    waiting_message,
)
from mashup_core.jobs.spec import RunSpec
from mashup_core.jobs.store import create_run, get_run
from mashup_core.training.loop import TrainConfig
from mashup_core.workspace import Workspace, read_json, write_json_atomic

KEY = "cuda:7"  # no such card here: the slot is only a lock and some files, so any key works
fork = mp.get_context("fork")




def _hold(root: str, name: str, kind: str, log: str, hold_s: float, release=None,
          queued_at: float | None = None) -> None:
    """A child job: take the slot, note when it entered and left, hold it a while."""
    ws = Workspace(__import__("pathlib").Path(root))
    with accelerator_slot(ws, KEY, holder=name, kind=kind, queued_at=queued_at, poll=0.05):
        with open(log, "a") as fh:
            fh.write(f"enter {name} {time.time()}\n")
        if release is not None:
            release.wait(20)
        time.sleep(hold_s)
        with open(log, "a") as fh:
            fh.write(f"leave {name} {time.time()}\n")


def _waiting(ws: Workspace, *names: str) -> bool:
    return {w["id"] for w in slot_waiters(ws, KEY)} >= set(names)


def test_jobs_of_every_kind_take_turns_first_come_first_served(tmp_path):
    ws = Workspace(tmp_path)
    log = tmp_path / "log.txt"
    release = fork.Event()
    children = []

    def start(name, kind, **kw):
        p = fork.Process(target=_hold, args=(str(tmp_path), name, kind, str(log), 0.3),
                         kwargs=kw, daemon=True)
        p.start()
        children.append(p)
        return p

    first_asked = time.time()
    a = start("A", "run", release=release)
    poll(lambda: (slot_status(ws, KEY) or {}).get("id") == "A")
    start("B", "score")
    poll(lambda: _waiting(ws, "B"), timeout=10.0)
    start("C", "study")
    poll(lambda: _waiting(ws, "B", "C"), timeout=10.0)
    # D arrives last but asked first (a run keeps the place it got when it was created).
    start("D", "demo-build", queued_at=first_asked)
    poll(lambda: _waiting(ws, "B", "C", "D"), timeout=10.0)
    assert [w["id"] for w in slot_waiters(ws, KEY)] == ["D", "B", "C"]
    held = slot_status(ws, KEY)
    assert (held["kind"], held["id"], held["pid"], held["device"]) == ("run", "A", a.pid, KEY)
    release.set()
    for p in children:
        p.join(20)
        assert p.exitcode == 0

    events = [line.split() for line in log.read_text().splitlines()]
    assert [name for what, name, _ in events if what == "enter"] == ["A", "D", "B", "C"]
    # One at a time: each enters after the one before it left.
    assert [what for what, _, _ in events] == ["enter", "leave"] * 4
    times = [float(t) for _, _, t in events]
    assert times == sorted(times)
    assert slot_status(ws, KEY) is None and not _holder_path(ws, KEY).exists()
    assert slot_waiters(ws, KEY) == []


def test_the_holder_record_names_the_holder_and_goes_on_release(tmp_path):
    ws = Workspace(tmp_path)
    before = time.time()
    with accelerator_slot(ws, KEY, holder="min", kind="score") as key:
        assert key == KEY
        held = slot_status(ws, KEY)
        assert (held["kind"], held["id"], held["pid"]) == ("score", "min", os.getpid())
        assert before <= held["since"] <= time.time()
        with accelerator_slot(ws, KEY, holder="min", kind="score"):  # re-entry: no deadlock
            pass
        assert slot_status(ws, KEY) is not None

        # Another thread of this process (a second dashboard session) does queue.
        entered = threading.Event()

        def other() -> None:
            with accelerator_slot(ws, KEY, holder="other", kind="score", poll=0.02):
                entered.set()

        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        assert not entered.wait(0.3)
    assert entered.wait(5)
    thread.join(5)
    assert slot_status(ws, KEY) is None and not _holder_path(ws, KEY).exists()

    # On the CPU only runs queue; scoring enters at once and records nothing.
    with accelerator_slot(ws, "cpu", holder="min", kind="score"):
        assert slot_status(ws, "cpu") is None
    with accelerator_slot(ws, "cpu", holder="r1", kind="run"):
        assert slot_status(ws, "cpu")["id"] == "r1"
    with pytest.raises(ValueError, match="unknown job kind 'train'"), \
            accelerator_slot(ws, KEY, holder="x", kind="train"):
        pass


def test_a_killed_holder_or_waiter_blocks_no_one(tmp_path):
    ws = Workspace(tmp_path)
    log = tmp_path / "log.txt"
    holder = fork.Process(target=_hold, args=(str(tmp_path), "doomed", "run", str(log), 60),
                          daemon=True)
    holder.start()
    poll(lambda: (slot_status(ws, KEY) or {}).get("id") == "doomed")
    waiter = fork.Process(target=_hold, args=(str(tmp_path), "also-doomed", "score", str(log), 60),
                          daemon=True)
    waiter.start()
    poll(lambda: _waiting(ws, "also-doomed"), timeout=10.0)
    os.kill(holder.pid, signal.SIGKILL)
    os.kill(waiter.pid, signal.SIGKILL)
    holder.join(5)
    waiter.join(5)

    # The kernel dropped the flock; the record it left is stale and ignored, and so is the
    # dead waiter's ticket (it asked first, but is gone).
    assert read_json(_holder_path(ws, KEY))["id"] == "doomed"
    assert slot_status(ws, KEY) is None
    started = time.monotonic()
    with accelerator_slot(ws, KEY, holder="next", kind="study", poll=0.02):
        assert slot_status(ws, KEY)["id"] == "next"
    assert time.monotonic() - started < 2

    # A record naming a live pid whose start time differs (a reused pid) is stale too.
    write_json_atomic(_holder_path(ws, KEY), {"kind": "run", "id": "old", "pid": os.getpid(),
                                              "pid_start": "1", "since": 0})
    assert slot_status(ws, KEY) is None


def test_a_queued_run_says_which_run_holds_its_device(world_copy):
    ws = world_copy
    spec = RunSpec(target="min", train=TrainConfig(steps=2, batch_size=16, lr=5e-3),
                   eval_limit=8, device="cpu")
    holding, queued = create_run(ws, spec), create_run(ws, spec)
    assert waiting_message(ws, queued) is None  # nothing holds the CPU, no job waits yet
    with accelerator_slot(ws, "cpu", holder=holding, kind="run"):
        job = fork.Process(target=execute_run, args=(ws, queued),
                           kwargs={"progress": False, "echo": False}, daemon=True)
        job.start()
        expected = f"run {holding} (pid {os.getpid()})"
        poll(lambda: read_json(ws.runs_dir / queued / "status.json", {}).get("waiting_for"))
        status = get_run(ws, queued).status
        assert (status["state"], status["waiting_for"], status["pid"]) == ("queued", expected, job.pid)
        assert waiting_message(ws, queued) == f"waiting for {expected} on cpu"
        assert f"waiting for {expected}" in (ws.runs_dir / queued / "log.txt").read_text()
        cancel(ws, queued)  # it never gets the device: cancelled while waiting
        job.join(20)
    record = get_run(ws, queued)
    assert record.state == "cancelled" and record.status.get("started") is None
    assert record.status["waiting_for"] is None and waiting_message(ws, queued) is None
