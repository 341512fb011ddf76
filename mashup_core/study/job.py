"""A study as a background job (the dashboard's "run / extend" button and `mashup study --job`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mashup_core.access import require_write
from mashup_core.study.grid import run_study
from mashup_core.study.spec import StudyError, StudySpec, open_study
from mashup_core.workspace import Workspace, write_json_atomic

# --- the study as a background job (the dashboard's "run / extend" button) --------------------

STUDY_JOB = "job.json"  # beside a study's spec.json: the background job that fills it


def launch_study(ws: Workspace, spec: StudySpec, study_id: str | None = None) -> Path:
    """Run or extend a study as a detached `mashup study --job ID` (it outlives the page)."""
    require_write("launching a study")
    from mashup_core.jobs.processes import process_alive, spawn_detached

    study_dir = open_study(ws, spec, study_id)
    job = study_job(study_dir)
    if job.get("state") == "running" and process_alive(job.get("pid")):
        raise StudyError(f"study {study_dir.name} is already running (pid {job['pid']}); wait for "
                         "it to finish before extending it")
    pid = spawn_detached(["study", "--job", study_dir.name, "--workspace", str(ws.root),
                          "--no-progress"], study_dir / "job.log", mode="w")
    _write_job(study_dir, state="running", pid=pid, started=time.time())
    return study_dir


def study_job(study_dir: Path) -> dict:
    """The background job of a study: state running | done | failed | killed, or {} if none."""
    from mashup_core.jobs.processes import process_alive

    try:
        job = json.loads((Path(study_dir) / STUDY_JOB).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if job.get("state") == "running" and not process_alive(job.get("pid")):
        job = {**job, "state": "killed", "error": f"the job (pid {job.get('pid')}) ended without "
               "recording a result; run the study again to finish the missing cells"}
    return job


def _write_job(study_dir: Path, **fields) -> None:
    write_json_atomic(Path(study_dir) / STUDY_JOB, fields)


def run_study_job(ws: Workspace, study_id: str) -> Path:
    """The detached job: run the stored spec's missing cells, then record how it ended."""
    import os

    study_dir = ws.studies_dir / study_id
    try:
        spec = StudySpec.from_dict(json.loads((study_dir / "spec.json").read_text()))
    except FileNotFoundError:
        raise StudyError(f"no study {study_id!r} in {ws.studies_dir}") from None
    started = time.time()
    try:
        run_study(ws, spec, study_id, progress=False)
    except BaseException as exc:
        _write_job(study_dir, state="failed", pid=os.getpid(), started=started,
                   finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        raise
    _write_job(study_dir, state="done", pid=os.getpid(), started=started, finished=time.time())
    return study_dir
