"""The one job layer (issue 23): every kind of background job (a run, a study, the demo's
content, a recycle search) is launched, listed by `mashup jobs`, cancelled and resumed through
`jobs.background`; its record says how it stands in one vocabulary, and a pid that the
kernel has handed to another process is not taken for a live job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import poll

from mashup_core.cli import main
from mashup_core.jobs.background import (
    KINDS,
    cancel_job,
    get_job,
    list_jobs,
    resume_job,
)
from mashup_core.jobs.processes import process_alive, process_start
from mashup_core.jobs.record import JobError
from mashup_core.workspace import Workspace, write_json_atomic

FINISH = 240  # generous: every job here takes seconds alone on 2 cores


def listed(ws: Workspace, capsys) -> dict[tuple[str, str], dict]:
    """`mashup jobs --json`, by (kind, id)."""
    assert main(["jobs", "--json", "--workspace", str(ws.root)]) == 0
    return {(j["kind"], j["id"]): j for j in json.loads(capsys.readouterr().out)}


def until(ws: Workspace, kind: str, job_id: str, *states: str, timeout: float = FINISH):
    """The job's record once it is in one of `states`."""
    def reached():
        job = get_job(ws, kind, job_id)
        return job if job.state in states else None

    reached.__doc__ = f"{kind} {job_id} to be {' or '.join(states)}"
    return poll(reached, timeout=timeout, every=0.2)


def cancel_then_resume(ws: Workspace, kind: str, job_id: str, capsys) -> None:
    """The part every kind shares: listed while it runs, cancelled (its process ends, its
    record says so), listed as cancelled, resumed to done."""
    running = until(ws, kind, job_id, "running")
    assert running.alive and running.pid_start == process_start(running.pid)
    assert listed(ws, capsys)[(kind, job_id)]["state"] == "running"

    cancel_job(ws, kind, job_id, wait=30)
    cancelled = until(ws, kind, job_id, "cancelled", timeout=60)
    assert not process_alive(running.pid, running.pid_start)
    assert listed(ws, capsys)[(kind, job_id)]["state"] == "cancelled"
    with pytest.raises(JobError, match=f"is cancelled; only queued or running {KINDS[kind].plural}"):
        cancel_job(ws, kind, job_id)

    resumed = resume_job(ws, kind, job_id)
    assert resumed.state in ("queued", "running") and resumed.pid != cancelled.pid
    done = until(ws, kind, job_id, "done", "failed", "killed")
    assert done.state == "done", (done.error, Path(done.log).read_text()[-2000:])
    with pytest.raises(JobError, match=f"is done; only killed, cancelled or failed {KINDS[kind].plural} resume"):
        resume_job(ws, kind, job_id)


# --- one test per kind --------------------------------------------------------------------------


def test_a_run(world_copy, capsys):
    from mashup_core.jobs.runner import launch
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.training.loop import TrainConfig

    spec = RunSpec(target="min", train=TrainConfig(steps=300, batch_size=16, lr=5e-3),
                   eval_every=100, checkpoint_every=10, eval_limit=16, device="cpu")
    run_id = launch(world_copy, spec)
    poll(lambda: get_job(world_copy, "run", run_id).progress.get("done"), timeout=FINISH)
    cancel_then_resume(world_copy, "run", run_id, capsys)
    job = get_job(world_copy, "run", run_id)
    assert job.progress == {"done": 300, "total": 300, "unit": "steps"}
    assert job.result["step"] == 300 and "resuming from step-" in Path(job.log).read_text()


def test_a_study(world_copy, capsys):
    from mashup_core.study.job import launch_study, study_job
    from mashup_core.study.spec import (
        StudySpec,
        cell_key,
        planned_cells,
        read_cells,
        study_task_names,
    )

    spec = StudySpec(tasks=tuple(study_task_names(world_copy)), methods=("linear", "ties"),
                     ks=(1, 2, 3), ns=(8,), eval_limit=8)
    study_dir = launch_study(world_copy, spec, "jobs-study", engine="inline")
    assert study_job(study_dir)["state"] in ("queued", "running")
    poll(lambda: read_cells(study_dir), timeout=FINISH)  # it has begun
    cancel_then_resume(world_copy, "study", "jobs-study", capsys)
    job = get_job(world_copy, "study", "jobs-study")
    assert job.progress["done"] == job.progress["total"] > 0  # of what this driver ran
    assert {cell_key(c) for c in planned_cells(spec)} == set(read_cells(study_dir))
    assert study_job(study_dir)["engine"] == "inline"


def test_the_demo_content(world_copy, capsys):
    from mashup_core.demo.content import content_status, launch_content

    launch_content(world_copy, "tiny")
    poll(lambda: content_status(world_copy)["stages"]["study"]["state"] == "running",
         timeout=FINISH)
    pair = content_status(world_copy)["stages"]["pair"]
    cancel_then_resume(world_copy, "demo", "content", capsys)
    status = content_status(world_copy)
    assert status["state"] == "done" and status["job"]["state"] == "done"
    # the pair's runs are jobs of their own: listed beside the content that launched them
    jobs = listed(world_copy, capsys)
    assert {(k, i) for k, i in jobs if k == "run"} == {("run", pair["mashup_id"]),
                                                       ("run", pair["baseline_id"])}


def test_a_recycle_search(world_copy, capsys):
    from mashup_core.merging import recycle

    req = recycle.RecycleRequest(targets=("sort", "min"), checkpoints=("sort", "min", "dsort"),
                                 budget=24, n=8)
    front_id = recycle.launch_recycle(world_copy, req)
    cancel_then_resume(world_copy, "recycle", front_id, capsys)
    job = get_job(world_copy, "recycle", front_id)
    assert job.result == str(recycle.recycle_dir(world_copy) / f"{front_id}.json")
    assert job.progress == {"done": 24, "total": 24, "unit": "evaluations"}
    assert recycle.load_front(world_copy, front_id)["evaluations"] == 24


# --- records: a reused pid, old layouts -----------------------------------------------------------


def _records(ws: Workspace, pid: int, pid_start: str | None) -> dict[str, str]:
    """A record of every kind that says "running" in `pid`; returns their ids by kind."""
    (ws.runs_dir / "r1").mkdir(parents=True)
    write_json_atomic(ws.runs_dir / "r1" / "spec.json", {"target": "min"})
    (ws.studies_dir / "s1").mkdir(parents=True)
    ids = {"run": "r1", "study": "s1", "demo": "content", "recycle": "f1"}
    for kind, job_id in ids.items():
        write_json_atomic(KINDS[kind].record(ws, job_id), {
            "state": "running", "pid": pid, "pid_start": pid_start, "created": time.time()})
    return ids


def test_a_reused_pid_is_not_taken_for_a_live_job(tmp_path):
    """A live process whose kernel start time is not the one recorded is another process
    that got the job's pid: the job reads killed, on disk too, with what to do about it."""
    ws = Workspace(tmp_path / "ws")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(other.pid, process_start(other.pid))
        assert not process_alive(other.pid, "1")  # started at tick 1 after boot: not this one
        ids = _records(ws, other.pid, "1")
        for kind, job_id in ids.items():
            job = get_job(ws, kind, job_id)
            assert job.state == "killed", kind
            assert f"the job (pid {other.pid}) ended without recording a result; " \
                   f"{KINDS[kind].resume_hint}" == job.error
            assert json.loads(KINDS[kind].record(ws, job_id).read_text())["state"] == "killed"
        assert [j.state for j in list_jobs(ws)] == ["killed"] * 4
        assert other.poll() is None, "reading a record never signals anything"

        # the same records with the right start time: four live jobs
        ids = _records(Workspace(tmp_path / "ws2"), other.pid, process_start(other.pid))
        assert [j.state for j in list_jobs(Workspace(tmp_path / "ws2"))] == ["running"] * 4
    finally:
        other.kill()
        other.wait()


def test_old_records_still_read(tmp_path, capsys):
    """Records written before the one layout: a study's job.json without a start time or with
    "starting", a recycle job with only its pid (its saved result says it is done)."""
    ws = Workspace(tmp_path / "ws")
    (ws.studies_dir / "old").mkdir(parents=True)
    write_json_atomic(ws.studies_dir / "old" / "job.json",
                      {"state": "running", "pid": os.getpid(), "engine": "ray"})
    (ws.studies_dir / "older").mkdir(parents=True)
    write_json_atomic(ws.studies_dir / "older" / "job.json",
                      {"state": "starting", "engine": "ray", "started": time.time()})
    write_json_atomic(ws.studies_dir / "old" / "progress.json", {"cells_done": 3, "cells_total": 9})
    write_json_atomic(ws.root / "recycle" / "jobs" / "f0.json",
                      {"pid": 999_999_999, "started": 1.0, "proc_start": "5", "request": {}})
    write_json_atomic(ws.root / "recycle" / "f0.json", {"points": []})
    old = get_job(ws, "study", "old")
    assert (old.state, old.progress["done"], old.progress["total"]) == ("running", 3, 9)
    assert get_job(ws, "study", "older").state == "queued"
    assert get_job(ws, "recycle", "f0").state == "done"
    assert main(["jobs", "--workspace", str(ws.root)]) == 0
    out = capsys.readouterr().out
    assert "study" in out and "3/9 cells" in out and "recycle" in out
    with pytest.raises(JobError, match="no run job 'nope'"):
        get_job(ws, "run", "nope")
    with pytest.raises(JobError, match="unknown job kind 'spark'"):
        get_job(ws, "spark", "x")


def test_a_killed_studys_progress_reads_killed_not_running(tmp_path):
    """The engine writes progress.json as it goes; a driver killed mid-study left it saying
    "running" with tasks running. Read through its job, it says what the job is."""
    from mashup_core.study.job import study_job

    ws = Workspace(tmp_path / "ws")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _records(ws, gone.pid, process_start(os.getpid()))  # a pid that is no longer this job's
    write_json_atomic(ws.studies_dir / "s1" / "progress.json", {
        "state": "running", "cells_total": 8, "cells_done": 3,
        "tasks": {"done": 3, "running": 2, "failed": 0, "pending": 3}})
    job = study_job(ws.studies_dir / "s1")
    assert job["state"] == "killed"
    assert job["progress"]["state"] == "killed"
    assert job["progress"]["tasks"] == {"done": 3, "running": 0, "failed": 0, "pending": 5}
    listed = get_job(ws, "study", "s1")
    assert listed.state == "killed" and listed.progress["tasks"]["running"] == 0
