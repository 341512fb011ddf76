"""The study engine: a plan of `CellTask`s run in dependency order, as Ray tasks or in-process.

The planner (`study.plan`) turns a study into tasks; this module only runs them. A task's
function returns {"records": [cell records], "output": <handed to dependents>}; the driver
(this process) is the only writer of the study's cells file, so a cell is recorded once even
when Ray runs a task twice (a retry after a lost node, a lineage rebuild of a lost output).

Resume: the cells file is the record of truth. A task whose `cells` are all recorded is
skipped, unless a task that still has to run depends on it: its output (a score table, a
merged adapter's path) is not stored anywhere else, so it runs again; its records are then
already in the file and are not written twice.

`progress.json` in the study folder tells the dashboard where the run stands:
{"engine", "address", "state": running|done|failed|cancelled, "cells_total", "cells_done",
 "tasks": {"done", "running", "failed", "pending"}, "errors": {task: text},
 "nodes": {node: {"running", "done"}}, "updated"}. "running" counts tasks whose inputs are
ready (running, or waiting for a free CPU/GPU); per node it is known only when Ray's state
API answers (a cluster started with its dashboard), otherwise nodes count finished tasks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup_core.errors import MashupError
from mashup_core.jobs.background import STUDY_PROGRESS
from mashup_core.jobs.devices import ray_address, start_ray
from mashup_core.study.spec import append_cell, cell_key, read_cells
from mashup_core.workspace import write_json_atomic

PROGRESS_FILE = STUDY_PROGRESS  # the job layer reads it too (`mashup jobs`)
ENGINES = ("ray", "inline")
MAX_RETRIES = 3  # a task lost with its node (or its worker) runs again, up to this many times


class EngineError(MashupError):
    """A plan that cannot run, or tasks that failed; the message names them."""


class EngineCancelled(EngineError):
    """The run was cancelled (SIGTERM or Ctrl-C); finished cells are kept."""


@dataclass(frozen=True)
class CellTask:
    name: str                 # unique in the plan
    fn: Callable[..., dict]   # a module-level function (Ray pickles it by reference)
    args: tuple = ()          # picklable plain data (paths, dicts), never models
    deps: tuple[str, ...] = ()  # names of tasks whose `output`s are appended to args, in order
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    cells: tuple[str, ...] = ()  # cell keys this task will record (for progress/resume)


# --- The plan --------------------------------------------------------------------------------


def plan_order(tasks: Sequence[CellTask]) -> list[CellTask]:
    """The tasks in an order where each comes after its dependencies; errors name the problem."""
    by_name: dict[str, CellTask] = {}
    for task in tasks:
        if task.name in by_name:
            raise EngineError(f"plan: two tasks are named {task.name!r}")
        by_name[task.name] = task
    for task in tasks:
        if missing := [d for d in task.deps if d not in by_name]:
            raise EngineError(f"plan: task {task.name!r} depends on unknown task(s) "
                              f"{', '.join(map(repr, missing))}")
        if task.num_cpus < 0 or task.num_gpus < 0:
            raise EngineError(f"plan: task {task.name!r} asks for negative resources")
    order: list[CellTask] = []
    state: dict[str, str] = {}  # "visiting" while on the stack, "done" once placed

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise EngineError(f"plan: tasks depend on each other in a cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dep in by_name[name].deps:
            visit(dep, [*path, name])
        state[name] = "done"
        order.append(by_name[name])

    for task in tasks:
        visit(task.name, [])
    return order


def tasks_to_run(order: Sequence[CellTask], recorded: set[str]) -> set[str]:
    """Tasks with a cell not yet recorded, and every task they depend on (for its output)."""
    # A task with no cells computes only an output: it runs when a needed task wants it.
    needed = {t.name for t in order if any(c not in recorded for c in t.cells)}
    for task in reversed(order):  # dependents come after their dependencies
        if task.name in needed:
            needed.update(task.deps)
    return needed


# --- Progress: the cells file, progress.json and the bar ----------------------------------------


class _Progress:
    def __init__(self, study_dir: Path, engine: str, address: str | None,
                 order: Sequence[CellTask], run: set[str], show: bool):
        from tqdm.auto import tqdm

        self.study_dir, self.engine, self.address = study_dir, engine, address
        self.recorded = set(read_cells(study_dir))
        self.planned = {c for t in order for c in t.cells}
        self.deps = {t.name: t.deps for t in order}
        self.pending = [t.name for t in order if t.name in run]
        self.done = [t.name for t in order if t.name not in run]  # skipped: finished before
        self.failed: dict[str, str] = {}
        self.nodes: dict[str, dict[str, int]] = {}
        self.running_per_node: dict[str, int] = {}
        self.state = "running"
        self.bar = tqdm(total=len(self.planned), initial=self.cells_done, desc="study cells",
                        disable=not show)
        self.write()

    @property
    def cells_done(self) -> int:
        return len(self.planned & self.recorded)

    def ready(self) -> list[str]:
        """Pending tasks whose dependencies have all finished: running or about to."""
        finished = set(self.done)
        return [n for n in self.pending if all(d in finished for d in self.deps[n])]

    def record(self, records: list[dict], on_record: Callable[[dict], None] | None) -> None:
        for record in records:
            key = cell_key(record)
            if key in self.recorded:
                continue  # a task that ran again for its output, or a retried one
            append_cell(self.study_dir, record)
            self.recorded.add(key)
            if on_record is not None:
                on_record(record)
        self.bar.n = self.cells_done
        self.bar.refresh()

    def finish(self, name: str, node: str | None = None, error: str | None = None) -> None:
        self.pending.remove(name)
        if error is not None:
            self.failed[name] = error
        else:
            self.done.append(name)
            self.nodes.setdefault(str(node), {"running": 0, "done": 0})["done"] += 1
        self.write()

    def write(self) -> None:
        running = len(self.ready())
        nodes = {node: {**counts, "running": self.running_per_node.get(node, 0)}
                 for node, counts in self.nodes.items()}
        for node, n in self.running_per_node.items():
            nodes.setdefault(node, {"running": n, "done": 0})
        write_json_atomic(self.study_dir / PROGRESS_FILE, {
            "engine": self.engine, "address": self.address, "state": self.state,
            "cells_total": len(self.planned), "cells_done": self.cells_done,
            "tasks": {"done": len(self.done), "running": running, "failed": len(self.failed),
                      "pending": len(self.pending) - running},
            "errors": self.failed, "nodes": nodes, "updated": time.time(),
        })

    def error_for(self, name: str, exc: BaseException) -> str:
        """The failure's text; a task that could not run because a dependency failed says so."""
        # A dependency that did not finish failed (Ray may report its dependent first).
        if upstream := [d for d in self.deps[name] if d not in self.done]:
            return f"not run: it depends on failed task(s) {', '.join(upstream)}"
        return f"{type(exc).__name__}: {exc}"

    def close(self, state: str) -> None:
        self.state = state
        self.write()
        self.bar.close()


# --- Cancelling: SIGTERM or Ctrl-C ----------------------------------------------------------------


class _Cancel(BaseException):
    """Raised by the SIGTERM handler, so the loop unwinds as it does for Ctrl-C."""


@contextlib.contextmanager
def _sigterm_cancels(raise_now: bool) -> Iterator[threading.Event]:
    """SIGTERM sets the yielded event; with `raise_now` it also raises `_Cancel` at once.
    The Ray loop polls the event instead: an exception raised inside Ray's C calls (its
    wait) comes out as a SystemError."""
    cancelled = threading.Event()
    # A handler can only be installed from the main thread; a run started elsewhere (a
    # dashboard thread) is cancelled by its caller instead.
    if threading.current_thread() is not threading.main_thread():
        yield cancelled
        return

    def cancel(signum, frame) -> None:
        cancelled.set()
        if raise_now:
            raise _Cancel

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield cancelled
    finally:  # None: a handler set outside Python (Ray's), gone with its instance
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _task_result(result: Any, name: str) -> dict:
    if not isinstance(result, dict) or not isinstance(result.get("records", []), list):
        raise EngineError(f"task {name}: its function must return {{'records': [...], "
                          f"'output': ...}}, not {type(result).__name__}")
    return result


# --- Running ----------------------------------------------------------------------------------------


def run_tasks(tasks: Sequence[CellTask], study_dir: str | Path, *, address: str | None = None,
              engine: str = "ray", progress: bool = True,
              on_record: Callable[[dict], None] | None = None) -> None:
    """Run the plan's unfinished tasks, recording each returned cell record in the study's
    cells file as its task finishes. Raises EngineError naming every failed task (after the
    others have run) and EngineCancelled when cancelled; recorded cells are kept either way."""
    if engine not in ENGINES:
        raise EngineError(f"engine {engine!r}: choose from {', '.join(ENGINES)}")
    order = plan_order(tasks)
    study_dir = Path(study_dir)
    run = tasks_to_run(order, set(read_cells(study_dir)))
    address = ray_address(address)
    state = _Progress(study_dir, engine, address if engine == "ray" else None, order, run,
                      progress)
    outcome = "failed"
    try:
        if engine == "inline":
            with _sigterm_cancels(raise_now=True):
                _run_inline([t for t in order if t.name in run], state, on_record)
        else:
            _run_ray([t for t in order if t.name in run], state, address, on_record)
        outcome = "failed" if state.failed else "done"
    except (KeyboardInterrupt, _Cancel):
        outcome = "cancelled"
        raise EngineCancelled(f"study cancelled; {state.cells_done} of {len(state.planned)} "
                              "cells are recorded, run it again to finish") from None
    finally:
        state.close(outcome)
    if state.failed:
        raise EngineError(f"{len(state.failed)} task(s) failed: " + "; ".join(
            f"{name}: {error}" for name, error in state.failed.items()))


def _run_inline(todo: Sequence[CellTask], state: _Progress, on_record) -> None:
    outputs: dict[str, Any] = {}
    for task in todo:
        try:
            if any(d in state.failed for d in task.deps):
                raise EngineError("a dependency failed")
            result = _task_result(task.fn(*task.args, *(outputs[d] for d in task.deps)),
                                  task.name)
        except Exception as exc:  # one task's failure must not lose the others' cells
            state.finish(task.name, error=state.error_for(task.name, exc))
            continue
        outputs[task.name] = result.get("output")
        state.record(result["records"], on_record)
        state.finish(task.name, "local")


def _call(fn: Callable[..., dict], name: str, num_cpus: float, n_deps: int, *args) -> tuple:
    """A task inside a Ray worker: torch threads sized to its CPUs, dependencies' outputs
    unwrapped, and the node it ran on returned with its result (for per-node progress)."""
    import ray
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))  # workers are reused by tasks of any size
    own = args[:len(args) - n_deps]
    outputs = [dep[0].get("output") for dep in args[len(args) - n_deps:]]
    result = _task_result(fn(*own, *outputs), name)
    return result, ray.get_runtime_context().get_node_id()


def _run_ray(todo: Sequence[CellTask], state: _Progress, address: str | None, on_record) -> None:
    import ray

    started_here = not ray.is_initialized()
    waiting: dict[Any, str] = {}  # ref -> task name, until its result is in
    stack = contextlib.ExitStack()
    try:
        if started_here:
            start_ray(address, _cores())
        # After ray.init, which installs its own SIGTERM handler (it dumps and dies).
        cancelled = stack.enter_context(_sigterm_cancels(raise_now=False))
        labels = _node_labels(ray)
        remote = ray.remote(_call)
        refs: dict[str, Any] = {}
        for task in todo:  # in dependency order, so every dependency's ref exists already
            deps = [refs[d] for d in task.deps]  # Ray hands the task their results, not refs
            refs[task.name] = remote.options(
                name=task.name, num_cpus=task.num_cpus, num_gpus=task.num_gpus,
                max_retries=MAX_RETRIES, retry_exceptions=False,
            ).remote(task.fn, task.name, task.num_cpus, len(deps), *task.args, *deps)
            waiting[refs[task.name]] = task.name
        running_seen = _RunningPerNode(ray, labels)
        while waiting:
            if cancelled.is_set():
                raise _Cancel
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
            for ref in ready:
                name = waiting.pop(ref)
                try:
                    result, node = ray.get(ref)
                except Exception as exc:  # RayTaskError wraps the task's own exception
                    cause = getattr(exc, "cause", None) or exc
                    state.finish(name, error=state.error_for(name, cause))
                    continue
                state.record(result["records"], on_record)
                state.finish(name, labels.get(node) or _node_labels(ray).get(node, node[:8]))
            if running_seen.update(state):
                state.write()
    except BaseException:
        for ref in waiting:  # cancel what has not finished; its cells stay unrecorded
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
        stack.close()


def _cores() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _node_labels(ray) -> dict[str, str]:
    """Node id -> 'IP (id prefix)': readable, and distinct for two nodes on one host."""
    return {n["NodeID"]: f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in ray.nodes()}


class _RunningPerNode:
    """Running tasks per node from Ray's state API, when the cluster serves it (it needs the
    dashboard, which a local instance here starts without); asked at most every 2 s, and
    never again after the first refusal."""

    def __init__(self, ray, labels: dict[str, str]):
        self.ray, self.labels, self.next, self.available = ray, labels, 0.0, True

    def update(self, state: _Progress) -> bool:
        if not self.available or time.monotonic() < self.next:
            return False
        self.next = time.monotonic() + 2.0
        try:
            from ray.util.state import list_tasks

            job = self.ray.get_runtime_context().get_job_id()
            rows = list_tasks(filters=[("state", "=", "RUNNING"), ("job_id", "=", job)],
                              timeout=2, raise_on_missing_output=False)
        except Exception:  # no dashboard: per-node counts stay 'done' only
            self.available = False
            return False
        counts: dict[str, int] = {}
        for row in rows:
            node = self.labels.get(row.node_id, (row.node_id or "?")[:8])
            counts[node] = counts.get(node, 0) + 1
        state.running_per_node = counts
        return True
