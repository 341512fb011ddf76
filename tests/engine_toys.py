"""Toy study tasks for the engine tests (module-level, so Ray workers import them by name).

Each toy records one cell, {"kind": "base", "target": NAME, "acc": VALUE + its dependencies'
outputs}, and hands that sum to its dependents: records are deterministic functions of the
plan, so any two complete runs of one plan record the same numbers. Every call appends a line
to LOG_DIR/calls.log, so a test counts how often each task really ran.

`python engine_toys.py STUDY_DIR LOG_DIR PLAN ENGINE [ADDRESS]` is a driver for the tests
that kill or cancel one (PLAN: a name in PLANS).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mashup_core.study.engine import CellTask, run_tasks
from mashup_core.study.spec import cell_key


def key(name: str) -> str:
    return cell_key({"kind": "base", "target": name})


def _log(log_dir: str, what: str) -> None:
    # One short O_APPEND write per line: whole lines, whichever process writes.
    fd = os.open(Path(log_dir) / "calls.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{what} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def calls(log_dir: str | Path) -> list[str]:
    """The tasks that ran, one entry per call ('start' lines of slow tasks left out)."""
    path = Path(log_dir) / "calls.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[0] for line in lines if not line.startswith("start:")]


def started(log_dir: str | Path) -> list[tuple[str, int, str]]:
    """(task, pid, node) of every start of a slow task, in order."""
    path = Path(log_dir) / "calls.log"
    lines = path.read_text().splitlines() if path.exists() else []
    rows = [line.split() for line in lines if line.startswith("start:")]
    return [(name[6:], int(pid), node) for name, node, pid in rows]


def toy(log_dir: str, name: str, value: int, *dep_outputs: int) -> dict:
    _log(log_dir, name)
    total = value + sum(dep_outputs)
    return {"records": [{"kind": "base", "target": name, "acc": total}], "output": total}


def _node() -> str:
    """The Ray node this runs on ('-' outside Ray), so a test can tell where a task ran."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else "-"


def toy_slow(log_dir: str, name: str, value: int, seconds: float, *dep_outputs: int) -> dict:
    _log(log_dir, f"start:{name} {_node()}")
    time.sleep(seconds)
    return toy(log_dir, name, value, *dep_outputs)


def toy_fail(log_dir: str, name: str, *dep_outputs: int) -> dict:
    _log(log_dir, name)
    raise ValueError(f"{name} broke on purpose")


def task(log_dir, name, value, deps=(), fn=toy, extra=()) -> CellTask:
    return CellTask(name, fn, (str(log_dir), name, value, *extra), tuple(deps), cells=(key(name),))


def diamond(log_dir) -> list[CellTask]:
    """a -> (b, c) -> d, and e on its own: d = 4 + (2+1) + (3+1) = 11."""
    return [task(log_dir, "a", 1), task(log_dir, "b", 2, ["a"]), task(log_dir, "c", 3, ["a"]),
            task(log_dir, "d", 4, ["b", "c"]), task(log_dir, "e", 5)]


def fan(log_dir, width: int = 8, seconds: float = 0.5) -> list[CellTask]:
    """`width` slow roots, each with a dependent, and one task that joins every dependent."""
    roots = [task(log_dir, f"r{i}", i, fn=toy_slow, extra=(seconds,)) for i in range(width)]
    kids = [task(log_dir, f"k{i}", 10 * i, [f"r{i}"], fn=toy_slow, extra=(seconds,))
            for i in range(width)]
    return [*roots, *kids, task(log_dir, "join", 1, [k.name for k in kids])]


def sleepers(log_dir, count: int = 4, seconds: float = 300.0) -> list[CellTask]:
    return [task(log_dir, f"s{i}", i, fn=toy_slow, extra=(seconds,)) for i in range(count)]


def fan6(log_dir) -> list[CellTask]:
    return fan(log_dir, width=6, seconds=1.0)


PLANS = {"diamond": diamond, "fan": fan, "fan6": fan6, "sleepers": sleepers}


if __name__ == "__main__":
    study_dir, log_dir, plan, engine = sys.argv[1:5]
    address = sys.argv[5] if len(sys.argv) > 5 else None
    run_tasks(PLANS[plan](log_dir), study_dir, engine=engine, address=address, progress=False)
