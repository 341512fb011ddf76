"""A study as a background job (the dashboard's "run / extend" button and `mashup study --job`).

The job is a detached `mashup study --job ID`: the driver of the study's Ray tasks (or of its
inline run). `job.json` beside the study's spec says how the job stands and which engine and
cluster address it uses; the engine's `progress.json` says how far it got (cells, tasks, nodes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from mashup_core.access import require_write
from mashup_core.study.spec import SPEC_FILE, StudyError, StudySpec, open_study
from mashup_core.workspace import Workspace, read_json, write_json_atomic

STUDY_JOB = "job.json"  # beside a study's spec.json: the background job that fills it


def launch_study(ws: Workspace, spec: StudySpec, study_id: str | None = None, *,
                 address: str | None = None, engine: str = "ray") -> Path:
    """Run or extend a study as a detached `mashup study --job ID` (it outlives the page).
    `address`: a Ray cluster (ray://HOST:10001); None = $RAY_ADDRESS, else a local instance."""
    require_write("launching a study")
    from mashup_core.jobs.processes import process_alive, spawn_detached
    from mashup_core.study.engine import ENGINES

    if engine not in ENGINES:
        raise StudyError(f"engine {engine!r}: choose from {', '.join(ENGINES)}")
    study_dir = open_study(ws, spec, study_id)
    job = study_job(study_dir)
    if job.get("state") == "running" and process_alive(job.get("pid")):
        raise StudyError(f"study {study_dir.name} is already running (pid {job['pid']}); wait for "
                         "it to finish before extending it")
    # Written before the job starts: it reads its engine and address from here.
    _write_job(study_dir, state="starting", engine=engine, address=address, started=time.time())
    pid = spawn_detached(["study", "--job", study_dir.name, "--workspace", str(ws.root),
                          "--no-progress"], study_dir / "job.log", mode="w")
    job = read_json(study_dir / STUDY_JOB, {})
    if job.get("state") == "starting":  # not yet replaced by the job's own record
        _write_job(study_dir, **{**job, "state": "running", "pid": pid})
    return study_dir


def study_job(study_dir: Path) -> dict:
    """The background job of a study: state starting | running | done | failed | cancelled |
    killed (or {} if none), with the engine's counts from progress.json under "progress"
    (cells_total, cells_done, tasks {done, running, failed, pending}, nodes, errors)."""
    from mashup_core.jobs.processes import process_alive
    from mashup_core.study.engine import PROGRESS_FILE

    study_dir = Path(study_dir)
    job = read_json(study_dir / STUDY_JOB)
    if not isinstance(job, dict):
        return {}
    if job.get("state") == "running" and not process_alive(job.get("pid")):
        job = {**job, "state": "killed", "error": f"the job (pid {job.get('pid')}) ended without "
               "recording a result; run the study again to finish the missing cells"}
    progress = read_json(study_dir / PROGRESS_FILE)
    if isinstance(progress, dict):
        job["progress"] = {k: progress.get(k) for k in
                           ("state", "cells_total", "cells_done", "tasks", "nodes", "errors",
                            "updated")}
    return job


def cancel_study(ws: Workspace, study_id: str) -> dict:
    """Stop a study's background job: SIGTERM makes its driver cancel its Ray tasks (finished
    cells stay recorded; running the study again finishes the rest). Returns the job's record."""
    require_write("cancelling a study")
    from mashup_core.jobs.processes import process_alive

    study_dir = ws.studies_dir / study_id
    job = study_job(study_dir)
    if job.get("state") not in ("starting", "running") or not process_alive(job.get("pid")):
        raise StudyError(f"study {study_id} has no running job (state: "
                         f"{job.get('state') or 'never launched'}); nothing to cancel")
    pid = job["pid"]
    with contextlib.suppress(ProcessLookupError):
        # The job leads its own process group (spawn_detached); a local Ray instance it
        # started is in that group too, so nothing of the study outlives the signal.
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    job.pop("progress", None)
    _write_job(study_dir, **{**job, "state": "cancelled", "cancelled": time.time()})
    return study_job(study_dir)


def _write_job(study_dir: Path, **fields) -> None:
    write_json_atomic(Path(study_dir) / STUDY_JOB, fields)


def run_study_job(ws: Workspace, study_id: str) -> Path:
    """The detached job: run the stored spec's missing cells, then record how it ended."""
    from mashup_core.study.engine import EngineCancelled
    from mashup_core.study.grid import run_study

    study_dir = ws.studies_dir / study_id
    stored = read_json(study_dir / SPEC_FILE)
    if not isinstance(stored, dict):
        raise StudyError(f"no study {study_id!r} in {ws.studies_dir}")
    spec = StudySpec.from_dict(stored)
    launched = read_json(study_dir / STUDY_JOB, {})
    how = {"engine": launched.get("engine", "ray"), "address": launched.get("address")}
    started = time.time()
    _write_job(study_dir, state="running", pid=os.getpid(), started=started, **how)
    try:
        run_study(ws, spec, study_id, progress=False, **how)
    except EngineCancelled as exc:
        _write_job(study_dir, state="cancelled", pid=os.getpid(), started=started,
                   finished=time.time(), error=str(exc), **how)
        raise
    except BaseException as exc:
        _write_job(study_dir, state="failed", pid=os.getpid(), started=started,
                   finished=time.time(), error=f"{type(exc).__name__}: {exc}", **how)
        raise
    _write_job(study_dir, state="done", pid=os.getpid(), started=started, finished=time.time(),
               **how)
    return study_dir
