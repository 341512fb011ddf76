"""The study engine: a plan of CellTasks run inline and as Ray tasks on a local instance.

Toy tasks (tests/engine_toys.py) record one cell each, a deterministic function of the plan,
and log every call, so the tests count what really ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_toys import calls, diamond, fan, key, started, task, toy_fail
from waiting import poll

from mashup_core.study.engine import PROGRESS_FILE, CellTask, EngineError, plan_order, run_tasks
from mashup_core.study.spec import CELLS_FILE, append_cell, read_cells

TESTS = Path(__file__).resolve().parent


def toy_env() -> dict:
    """The environment a driver and its Ray workers need to import the toy tasks."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for this module's ray tests; run_tasks joins it."""
    ray = pytest.importorskip("ray")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = toy_env()["PYTHONPATH"]  # the workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(params=["inline", "ray"])
def engine(request) -> str:
    if request.param == "ray":
        request.getfixturevalue("local_ray")
    return request.param


def lines_per_key(study_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (study_dir / CELLS_FILE).read_text().splitlines():
        k = key(json.loads(line)["target"])
        counts[k] = counts.get(k, 0) + 1
    return counts


def progress(study_dir: Path) -> dict:
    return json.loads((study_dir / PROGRESS_FILE).read_text())


def test_dependency_outputs_arrive_and_progress_counts(engine, tmp_path):
    heard = []
    run_tasks(diamond(tmp_path), tmp_path, engine=engine, progress=False, on_record=heard.append)
    accs = {r["target"]: r["acc"] for r in read_cells(tmp_path).values()}
    assert accs == {"a": 1, "b": 3, "c": 4, "d": 11, "e": 5}
    assert sorted(r["target"] for r in heard) == sorted(accs)
    assert sorted(calls(tmp_path)) == sorted(accs)  # every task once
    assert set(lines_per_key(tmp_path).values()) == {1}
    p = progress(tmp_path)
    assert (p["engine"], p["state"], p["cells_total"], p["cells_done"]) == (engine, "done", 5, 5)
    assert p["tasks"] == {"done": 5, "running": 0, "failed": 0, "pending": 0}
    assert sum(n["done"] for n in p["nodes"].values()) == 5


def test_resume_skips_done_tasks_and_reruns_a_done_one_only_for_its_output(engine, tmp_path):
    tasks = diamond(tmp_path)
    # a, b, c and e finished earlier; d is missing and needs b and c's outputs, which need a's.
    for name, acc in {"a": 1, "b": 3, "c": 4, "e": 5}.items():
        append_cell(tmp_path, {"kind": "base", "target": name, "acc": acc})
    run_tasks(tasks, tmp_path, engine=engine, progress=False)
    assert sorted(calls(tmp_path)) == ["a", "b", "c", "d"]  # e was not recomputed
    assert read_cells(tmp_path)[key("d")]["acc"] == 11
    assert set(lines_per_key(tmp_path).values()) == {1}  # a, b, c ran but were not re-recorded
    run_tasks(tasks, tmp_path, engine=engine, progress=False)  # all done: nothing runs
    assert len(calls(tmp_path)) == 4
    assert progress(tmp_path)["tasks"]["done"] == 5


def test_a_failure_is_reported_and_the_other_tasks_still_record(engine, tmp_path):
    tasks = [*diamond(tmp_path), task(tmp_path, "bad", 0, fn=toy_fail),
             task(tmp_path, "after_bad", 7, ["bad"])]
    with pytest.raises(EngineError) as err:
        run_tasks(tasks, tmp_path, engine=engine, progress=False)
    message = str(err.value)
    assert "bad: ValueError: bad broke on purpose" in message
    assert "after_bad: not run: it depends on failed task(s) bad" in message
    assert sorted(r["target"] for r in read_cells(tmp_path).values()) == ["a", "b", "c", "d", "e"]
    assert "after_bad" not in calls(tmp_path)
    p = progress(tmp_path)
    assert p["state"] == "failed" and p["tasks"]["failed"] == 2 and p["tasks"]["done"] == 5
    assert "broke on purpose" in p["errors"]["bad"]


def test_every_cell_once_on_a_wider_plan(engine, tmp_path):
    tasks = fan(tmp_path, width=4, seconds=0.0)
    run_tasks(tasks, tmp_path, engine=engine, progress=False)
    assert set(lines_per_key(tmp_path).values()) == {1} and len(lines_per_key(tmp_path)) == 9
    # join = 1 + Σ_i (10 i + i)
    assert read_cells(tmp_path)[key("join")]["acc"] == 1 + sum(11 * i for i in range(4))


def toy_no_records(log_dir: str) -> int:
    return 3


def test_plan_errors_come_before_any_work(tmp_path):
    def plan(*tasks):
        return [CellTask(name, toy_no_records, (str(tmp_path),), deps) for name, deps in tasks]

    with pytest.raises(EngineError, match="two tasks are named 'a'"):
        run_tasks(plan(("a", ()), ("a", ())), tmp_path, engine="inline")
    with pytest.raises(EngineError, match="depends on unknown task.*'zz'"):
        run_tasks(plan(("a", ("zz",))), tmp_path, engine="inline")
    with pytest.raises(EngineError, match="cycle: a -> b -> c -> a"):
        run_tasks(plan(("a", ("b",)), ("b", ("c",)), ("c", ("a",))), tmp_path, engine="inline")
    with pytest.raises(EngineError, match="engine 'spark'"):
        run_tasks([], tmp_path, engine="spark")
    assert not (tmp_path / PROGRESS_FILE).exists() and calls(tmp_path) == []
    assert [t.name for t in plan_order(plan(("b", ("a",)), ("a", ())))] == ["a", "b"]


def test_a_task_must_return_records(tmp_path):
    bad = CellTask("x", toy_no_records, (str(tmp_path),), cells=("base/x",))
    with pytest.raises(EngineError, match="x: .*must return"):
        run_tasks([bad], tmp_path, engine="inline", progress=False)


def test_cancelling_a_study_job_cancels_its_ray_tasks(tmp_path):
    """The dashboard's cancel: SIGTERM to the detached driver's process group."""
    from mashup_core.jobs.processes import process_alive
    from mashup_core.study.job import STUDY_JOB, cancel_study, study_job
    from mashup_core.workspace import Workspace, write_json_atomic

    ws = Workspace(tmp_path / "ws")
    study_dir, logs = ws.studies_dir / "toy", tmp_path / "logs"
    study_dir.mkdir(parents=True)
    logs.mkdir()
    driver = subprocess.Popen(
        [sys.executable, str(TESTS / "engine_toys.py"), str(study_dir), str(logs), "sleepers", "ray"],
        env=toy_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    write_json_atomic(study_dir / STUDY_JOB, {"state": "running", "pid": driver.pid})
    try:
        poll(lambda: len(started(logs)) == 2, timeout=120)  # both CPUs busy with sleepers
        cancel_study(ws, "toy")
        out = driver.communicate(timeout=120)[0].decode()
    finally:
        driver.kill()
    assert driver.returncode != 0
    assert "EngineCancelled" in out, out
    workers = [pid for _, pid, _ in started(logs)]
    poll(lambda: not any(process_alive(pid) for pid in workers), timeout=60)
    assert calls(logs) == [] and read_cells(study_dir) == {}
    assert progress(study_dir)["state"] == "cancelled"
    assert study_job(study_dir)["state"] == "cancelled"
