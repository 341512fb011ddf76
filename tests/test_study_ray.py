"""A study on Ray survives losing a node and losing its driver (issue 11).

Toy plans (tests/engine_toys.py) record deterministic numbers, so a run that lost a node or
its driver must end with exactly the records of an uninterrupted inline run, each cell once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from engine_toys import calls, fan, fan6, key, started
from waiting import poll

from mashup_core.jobs.processes import process_alive
from mashup_core.study.engine import PROGRESS_FILE, plan_order, run_tasks, tasks_to_run
from mashup_core.study.spec import CELLS_FILE, cell_key, read_cells

TESTS = Path(__file__).resolve().parent
ray = pytest.importorskip("ray")


@pytest.fixture
def toy_path(monkeypatch):
    """Ray nodes started from here (and their workers) import the toy tasks."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    return path


def lines_per_key(study_dir: Path) -> dict[str, int]:
    """How many whole lines each cell has in the cells file (a line cut by a kill is skipped)."""
    counts: dict[str, int] = {}
    for line in (study_dir / CELLS_FILE).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            target = json.loads(line)["target"]
            counts[target] = counts.get(target, 0) + 1
    return counts


def inline_records(tmp_path: Path, plan) -> dict:
    ref = tmp_path / "inline"
    (ref / "logs").mkdir(parents=True)
    run_tasks(plan(ref / "logs"), ref, engine="inline", progress=False)
    return read_cells(ref)


@pytest.mark.slow  # the real study below covers the same in the fast suite
def test_a_study_finishes_on_a_cluster_that_loses_a_node(tmp_path, toy_path):
    from ray.cluster_utils import Cluster

    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    head = cluster.head_node.node_id
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    killed = []

    def kill_worker_while_it_runs_a_task(record: dict) -> None:
        """After a cell is recorded: once a slow task is running on the worker, kill the node."""
        if killed:
            return
        finished = set(calls(logs))
        busy = {name: pid for name, pid, node in started(logs)
                if node == worker.node_id and name not in finished}
        if busy:
            # The node's machine goes down: its Ray processes and the workers running tasks
            # (a worker outliving its raylet for a moment could still hand in its result).
            for pid in busy.values():
                os.kill(pid, signal.SIGKILL)
            cluster.remove_node(worker, allow_graceful=False)
            killed.extend(busy)

    try:
        run_tasks(fan6(logs), tmp_path, progress=False,
                  on_record=kill_worker_while_it_runs_a_task)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed, "the worker node never ran a task"
    # Lost with the node, run again on the one left.
    ran = {(name, node) for name, _, node in started(logs)}
    assert all({(name, worker.node_id), (name, head)} <= ran for name in killed)
    assert set(lines_per_key(tmp_path).values()) == {1} and len(lines_per_key(tmp_path)) == 13
    assert read_cells(tmp_path) == inline_records(tmp_path, lambda d: fan(d, width=6, seconds=0))
    progress = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert progress["state"] == "done" and progress["cells_done"] == 13
    assert sum(n["done"] for n in progress["nodes"].values()) == 13


def test_a_killed_driver_resumes_without_recomputing(tmp_path, toy_path):
    study, logs = tmp_path / "study", tmp_path / "logs"
    study.mkdir()
    logs.mkdir()
    plan = fan6(logs)
    driver = subprocess.Popen(
        [sys.executable, str(TESTS / "engine_toys.py"), str(study), str(logs), "fan6", "ray"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: len(read_cells(study)) >= 4, timeout=180)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its Ray processes, if any outlive it
            os.killpg(driver.pid, signal.SIGKILL)
    # Every process that ran a task is gone before the log is read (none writes to it later).
    pids = {int(line.split()[-1]) for line in (logs / "calls.log").read_text().splitlines()}
    poll(lambda: not any(process_alive(pid) for pid in pids), timeout=60)
    before = set(read_cells(study))
    assert 4 <= len(before) < 13
    first_calls = len(calls(logs))
    expected = tasks_to_run(plan_order(plan), before)  # the missing cells and their inputs

    run_tasks(plan, study, engine="ray", progress=False)
    again = calls(logs)[first_calls:]
    assert sorted(again) == sorted(expected)
    # Nothing whose cell was recorded ran again, unless a missing cell needed its output.
    needed_inputs = {d for t in plan if t.name in expected for d in t.deps}
    assert not [n for n in again if key(n) in before and n not in needed_inputs]
    assert set(lines_per_key(study).values()) == {1} and len(lines_per_key(study)) == 13
    assert read_cells(study) == inline_records(tmp_path, lambda d: fan(d, width=6, seconds=0))


# --- a real tiny study (issue 11: 2 targets × 2 lr × 1 seed on the tiny world) ---------------

REAL = {"tasks": ("min", "sort"), "methods": ("linear",), "ks": (1,), "ns": (8,), "eval_limit": 8,
        "train": True, "train_steps": 2, "eval_every": 1, "train_batch_size": 4,
        "lrs": (1e-3, 3e-3), "seeds": (0,)}


def numbers(study_dir: Path) -> dict[str, dict]:
    """What a cell found, without its timings: accuracies, curves' steps and accuracies, and
    the selection (same code, same seeds, one thread per task: equal on one machine)."""
    kept = {}
    for k, record in read_cells(study_dir).items():
        kept[k] = {f: record.get(f) for f in ("acc", "init_acc", "selected", "weights")}
        kept[k]["curve"] = [point[:2] for point in record.get("curve", [])]
    return kept


def kill_node(cluster, node) -> None:
    """The node's machine goes down: its workers (which could still hand in a result for a
    moment after their raylet dies) and then its Ray processes."""
    import psutil

    raylet = node.all_processes["raylet"][0].process.pid
    for child in psutil.Process(raylet).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    cluster.remove_node(node, allow_graceful=False)


def test_a_real_study_on_a_cluster_that_loses_a_node_matches_a_local_run(world_copy):
    from ray.cluster_utils import Cluster

    from mashup_core.study.grid import run_study
    from mashup_core.study.spec import StudySpec

    spec = StudySpec(**REAL)
    local = run_study(world_copy, spec, "local", progress=False, engine="ray")
    assert len(numbers(local)) == 2 * (1 + 1 + 2 + 2)  # per target: base, merge, 2 scratch, 2 train

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    killed = []

    def kill_after_the_first_cell(record: dict) -> None:
        if not killed:
            killed.append(record)
            kill_node(cluster, worker)

    try:
        on_cluster = run_study(world_copy, spec, "cluster", progress=False, engine="ray",
                               on_cell=kill_after_the_first_cell)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed
    keys = [cell_key(json.loads(line)) for line in
            (on_cluster / CELLS_FILE).read_text().splitlines()]
    assert sorted(keys) == sorted(numbers(local))  # every cell, each once
    assert numbers(on_cluster) == numbers(local)


def test_a_local_study_starts_its_own_ray_beside_a_cluster_on_this_machine(tmp_path, toy_path):
    """No address: a Ray of the study's own, not whatever cluster runs on this machine (which
    ray.init would otherwise join, refusing the local num_cpus)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        study, logs = tmp_path / "study", tmp_path / "logs"
        study.mkdir()
        logs.mkdir()
        run_tasks(fan6(logs), study, engine="ray", progress=False)
        assert read_cells(study) == inline_records(tmp_path, lambda d: fan(d, width=6, seconds=0))
    finally:
        ray.shutdown()
        cluster.shutdown()
