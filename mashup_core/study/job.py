"""A study as a background job (the dashboard's "run / extend" button and `mashup study --job`).

The job is the driver of the study's Ray tasks (or of its inline run), started by the job
layer (`jobs.background`, kind "study"). `job.json` beside the study's spec is its record:
state, pid and start time, and which engine and cluster address it uses; the engine's
`progress.json` says how far it got (cells, tasks, nodes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mashup_core.access import require_write
from mashup_core.jobs.background import (
    KINDS,
    STUDY_JOB,
    cancel_job,
    mark_running,
    start_job,
    study_progress,
    update_job,
)
from mashup_core.jobs.record import ACTIVE, job_record, settle
from mashup_core.study.spec import SPEC_FILE, StudyError, StudySpec, open_study
from mashup_core.workspace import Workspace, read_json, write_json_atomic


def launch_study(ws: Workspace, spec: StudySpec, study_id: str | None = None, *,
                 address: str | None = None, engine: str = "ray") -> Path:
    """Run or extend a study in the background (it outlives the page).
    `address`: a Ray cluster (ray://HOST:10001); None = $RAY_ADDRESS, else a local instance."""
    require_write("launching a study")
    from mashup_core.study.engine import ENGINES

    if engine not in ENGINES:
        raise StudyError(f"engine {engine!r}: choose from {', '.join(ENGINES)}")
    study_dir = open_study(ws, spec, study_id)
    job = study_job(study_dir)
    if job.get("state") in ACTIVE:
        raise StudyError(f"study {study_dir.name} is already {job['state']} (pid {job.get('pid')});"
                         " wait for it to finish before extending it")
    # A new record: the job reads its engine and address from here.
    write_json_atomic(study_dir / STUDY_JOB, {"state": "queued", "engine": engine,
                                              "address": address, "created": time.time()})
    start_job(ws, "study", study_dir.name, error=StudyError)
    return study_dir


def study_job(study_dir: Path) -> dict:
    """The background job of a study: its record, state queued | running | done | failed |
    cancelled | killed (or {} if none), with the engine's counts from progress.json under
    "progress" (cells_total, cells_done, tasks {done, running, failed, pending}, nodes, errors)."""
    from mashup_core.study.engine import PROGRESS_FILE

    study_dir = Path(study_dir)
    path = study_dir / STUDY_JOB
    job = read_json(path)
    if not isinstance(job, dict):
        return {}
    job = settle(path, job, KINDS["study"].resume_hint)
    job = {**job, "state": job_record("study", study_dir.name, job).state}  # 'starting' -> queued
    progress = study_progress(read_json(study_dir / PROGRESS_FILE), job["state"])
    if progress is not None:
        job["progress"] = {k: progress.get(k) for k in
                           ("state", "cells_total", "cells_done", "tasks", "nodes", "errors",
                            "updated")}
    return job


def cancel_study(ws: Workspace, study_id: str) -> dict:
    """Stop a study's background job: SIGTERM to its process group makes the driver cancel its
    Ray tasks (a local Ray instance it started is in that group too, so nothing of the study
    outlives it; finished cells stay recorded and running the study again finishes the rest).
    Returns the job's record."""
    cancel_job(ws, "study", study_id, wait=5.0, error=StudyError)
    return study_job(ws.studies_dir / study_id)


def run_study_job(ws: Workspace, study_id: str) -> Path:
    """The job itself: run the stored spec's missing cells, then record how it ended."""
    from mashup_core.study.engine import EngineCancelled
    from mashup_core.study.grid import run_study

    study_dir = ws.studies_dir / study_id
    stored = read_json(study_dir / SPEC_FILE)
    if not isinstance(stored, dict):
        raise StudyError(f"no study {study_id!r} in {ws.studies_dir}")
    spec = StudySpec.from_dict(stored)
    launched = read_json(study_dir / STUDY_JOB, {})
    how = {"engine": launched.get("engine", "ray"), "address": launched.get("address")}
    mark_running(ws, "study", study_id, os.getpid(), **how)
    try:
        run_study(ws, spec, study_id, progress=False, **how)
    except EngineCancelled as exc:
        update_job(ws, "study", study_id, state="cancelled", finished=time.time(), error=str(exc))
        raise
    except BaseException as exc:
        update_job(ws, "study", study_id, state="failed", finished=time.time(),
                   error=f"{type(exc).__name__}: {exc}")
        raise
    update_job(ws, "study", study_id, state="done", finished=time.time(), result=str(study_dir))
    return study_dir
