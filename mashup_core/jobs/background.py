"""Background jobs of every kind: one launcher, one cancel, one resume, one listing.

Four kinds of work outlive the page or terminal that starts them. Each keeps its record
where it always did (so old workspaces read), in the one shape of `jobs.record`:

    run      runs/<id>/status.json          a training run (jobs.runner)
    study    studies/<id>/job.json          a study's driver (study.job; cells in progress.json)
    demo     demo_content.json              the demo's first-open content (demo.content)
    recycle  recycle/jobs/<id>.json         a multi-target weight search (merging.recycle)

Every job is the same detached process, `mashup jobs exec KIND ID`, which reads what to do
from the job's own files; so launching and resuming are one function for all kinds, and no
kind builds a command line of its own. `mashup jobs` lists them all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup_core.access import require_write
from mashup_core.errors import MashupError
from mashup_core.jobs.processes import process_alive, process_start, signal_job, spawn_detached
from mashup_core.jobs.record import (
    ACTIVE,
    JobError,
    JobRecord,
    job_record,
    settle,
    update_record,
)
from mashup_core.workspace import Workspace, read_json

# The files of each kind, named once (the kinds' own modules import these).
RUN_STATUS = "status.json"
STUDY_JOB = "job.json"
STUDY_PROGRESS = "progress.json"
CONTENT_FILE = "demo_content.json"
CONTENT_LOG = "demo-build.log"
CONTENT_ID = "content"  # a workspace has one demo content job
RECYCLE_DIR = "recycle"


@dataclass(frozen=True)
class JobKind:
    name: str
    plural: str
    ids: Callable[[Workspace], list[str]]          # every job of this kind in a workspace
    record: Callable[[Workspace, str], Path]       # a job's record file
    log: Callable[[Workspace, str], Path]          # its output
    resume_hint: str                               # what the user does about a killed one
    read_more: Callable[[Workspace, str, dict], dict] = lambda ws, job_id, record: {}
    fresh_log: bool = True                         # a (re)start overwrites the log


def _names(folder: Path, pattern: str, name: Callable[[Path], str]) -> list[str]:
    return sorted(name(p) for p in folder.glob(pattern)) if folder.is_dir() else []


def _last_line(path: Path) -> dict:
    """The last complete JSON line of a .jsonl file (a kill may cut the very last short)."""
    try:
        lines = path.read_bytes().splitlines()[-2:]
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return {}


def _run_more(ws: Workspace, run_id: str, record: dict) -> dict:
    rd = ws.runs_dir / run_id
    steps = ((read_json(rd / "spec.json", {}) or {}).get("train") or {}).get("steps")
    return {"result": record.get("final"),
            "progress": {"done": _last_line(rd / "metrics.jsonl").get("step", 0),
                         "total": steps, "unit": "steps"}}


def study_progress(engine: Any, job_state: str | None) -> dict | None:
    """A study engine's progress.json as its job stands: the engine writes "running" as it
    goes, so a driver killed mid-study left "running" and tasks running; once the job is
    not active its state is the job's (killed, failed, cancelled) and those tasks pending."""
    if not isinstance(engine, dict):
        return None
    if job_state in ACTIVE or engine.get("state") != "running":
        return engine
    tasks = dict(engine.get("tasks") or {})
    tasks["pending"] = tasks.get("pending", 0) + tasks.pop("running", 0)
    return {**engine, "state": job_state or "killed", "tasks": {**tasks, "running": 0}}


def _study_more(ws: Workspace, study_id: str, record: dict) -> dict:
    engine = study_progress(read_json(ws.studies_dir / study_id / STUDY_PROGRESS),
                            record.get("state"))
    if engine is None:
        return {}
    return {"progress": {"done": engine.get("cells_done"), "total": engine.get("cells_total"),
                         "unit": "cells", "tasks": engine.get("tasks")}}


def _content_more(ws: Workspace, _id: str, record: dict) -> dict:
    stages = record.get("stages") or {}
    running = [name for name, stage in stages.items() if stage.get("state") == "running"]
    return {"progress": {"done": sum(s.get("state") == "done" for s in stages.values()),
                         "total": 3, "unit": "stages", "stage": running[0] if running else None}}


def _recycle_more(ws: Workspace, front_id: str, record: dict) -> dict:
    saved = ws.root / RECYCLE_DIR / f"{front_id}.json"
    more: dict[str, Any] = {"result": str(saved)} if saved.exists() else {}
    if "state" not in record:  # written before records had states: the result file says
        alive = process_alive(record.get("pid"), record.get("proc_start"))
        more["state"] = "done" if saved.exists() else "running" if alive else "failed"
        if more["state"] == "failed":
            log = _recycle_log(ws, front_id)
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            more["error"] = " ".join(tail) or "the job ended without a result"
    return more


def _recycle_log(ws: Workspace, front_id: str) -> Path:
    return ws.root / RECYCLE_DIR / "jobs" / f"{front_id}.log"


KINDS: dict[str, JobKind] = {kind.name: kind for kind in (
    JobKind("run", "runs",
            ids=lambda ws: _names(ws.runs_dir, "*/spec.json", lambda p: p.parent.name),
            record=lambda ws, i: ws.runs_dir / i / RUN_STATUS,
            log=lambda ws, i: ws.runs_dir / i / "log.txt",
            resume_hint="resume it to continue from its last checkpoint",
            read_more=_run_more, fresh_log=False),
    JobKind("study", "studies",
            ids=lambda ws: _names(ws.studies_dir, f"*/{STUDY_JOB}", lambda p: p.parent.name),
            record=lambda ws, i: ws.studies_dir / i / STUDY_JOB,
            log=lambda ws, i: ws.studies_dir / i / "job.log",
            resume_hint="run the study again to finish the missing cells",
            read_more=_study_more),
    JobKind("demo", "demo content jobs",
            ids=lambda ws: [CONTENT_ID] if (ws.root / CONTENT_FILE).exists() else [],
            record=lambda ws, _i: ws.root / CONTENT_FILE,
            log=lambda ws, _i: ws.root / CONTENT_LOG,
            resume_hint="`mashup demo start` (or `make demo`) resumes it",
            read_more=_content_more),
    JobKind("recycle", "recycle searches",
            ids=lambda ws: _names(ws.root / RECYCLE_DIR / "jobs", "*.json", lambda p: p.stem),
            record=lambda ws, i: ws.root / RECYCLE_DIR / "jobs" / f"{i}.json",
            log=_recycle_log,
            resume_hint="resume it to search again",
            read_more=_recycle_more),
)}


def job_kind(kind: str) -> JobKind:
    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r}; one of {', '.join(KINDS)}")
    return KINDS[kind]


# --- Reading ------------------------------------------------------------------------------------


def get_job(ws: Workspace, kind: str, job_id: str) -> JobRecord:
    """A job's record as it truly stands now (a dead process reads 'killed'); a job that
    was never recorded reads as an error that says how to list the ones there are."""
    k = job_kind(kind)
    path = k.record(ws, job_id) if job_id and "/" not in job_id else None
    raw = read_json(path) if path else None
    if not isinstance(raw, dict):
        raise JobError(f"no {kind} job {job_id!r} in {ws.root} (list them with `mashup jobs`)")
    raw = settle(path, raw, k.resume_hint)
    return job_record(kind, job_id, raw, log=str(k.log(ws, job_id)),
                      **k.read_more(ws, job_id, raw))


def list_jobs(ws: Workspace, kind: str | None = None, state: str | None = None) -> list[JobRecord]:
    """Every job of the workspace (of `kind`, in `state`), newest first."""
    found = []
    for k in [job_kind(kind)] if kind else KINDS.values():
        for job_id in k.ids(ws):
            try:
                found.append(get_job(ws, k.name, job_id))
            except JobError:  # a record being written right now: not there yet
                continue
    if state is not None:
        found = [j for j in found if j.state == state]
    return sorted(found, key=lambda j: (j.created or 0.0, j.id), reverse=True)


def update_job(ws: Workspace, kind: str, job_id: str,
               only_if: Callable[[dict], bool] | None = None, **changes: Any) -> dict:
    """Change a job's record under its lock (the job's own writes and its launcher's)."""
    return update_record(job_kind(kind).record(ws, job_id), only_if, **changes)


def mark_running(ws: Workspace, kind: str, job_id: str, pid: int, **changes: Any) -> dict:
    """What a job writes as it starts work: its own pid (and start time), state running."""
    return update_job(ws, kind, job_id, state="running", pid=pid, pid_start=process_start(pid),
                      started=time.time(), finished=None, error=None, **changes)


# --- Launching, cancelling, resuming ------------------------------------------------------------


def start_job(ws: Workspace, kind: str, job_id: str,
              error: type[MashupError] = JobError) -> int:
    """Start `mashup jobs exec KIND ID` detached and record its pid; returns the pid.

    The record must be written already (state queued): the job reads what to do from it.
    """
    k = job_kind(kind)
    command = ["jobs", "exec", kind, job_id, "--workspace", str(ws.root), "--no-progress"]
    try:
        pid = spawn_detached(command, k.log(ws, job_id), mode="w" if k.fresh_log else "a")
    except OSError as exc:
        update_job(ws, kind, job_id, state="failed", error=f"cannot start the job: {exc}")
        raise error(f"cannot start the job for {kind} {job_id}: {exc}") from exc
    # The job writes its own pid too; whichever writes first, the pid is the same.
    update_job(ws, kind, job_id, only_if=lambda rec: not rec.get("pid"), pid=pid,
               pid_start=process_start(pid))
    return pid


def cancel_job(ws: Workspace, kind: str, job_id: str, *, wait: float = 0.0,
               error: type[MashupError] = JobError) -> JobRecord:
    """Ask a queued or running job to stop: SIGTERM to its process group (a training run
    checkpoints first; a study's driver cancels its Ray tasks). Waits up to `wait` seconds for
    it to end; a job whose process is gone, or never started, reads 'cancelled' from then on."""
    require_write(f"cancelling a {kind}")
    k = job_kind(kind)
    job = get_job(ws, kind, job_id)
    if not job.active:
        raise error(f"{kind} {job_id} is {job.state}; only queued or running {k.plural} can "
                    "be cancelled")
    update_job(ws, kind, job_id, cancel_requested=time.time())
    if signal_job(job.pid, job.pid_start):
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process_alive(job.pid, job.pid_start):
            time.sleep(0.1)
    else:  # nothing runs that would write its end
        update_job(ws, kind, job_id, only_if=lambda rec: rec.get("state") in ACTIVE,
                   state="cancelled", finished=time.time())
    return get_job(ws, kind, job_id)


def resume_job(ws: Workspace, kind: str, job_id: str, *, detach: bool = True,
               error: type[MashupError] = JobError) -> JobRecord:
    """Start a killed, cancelled or failed job again: it continues from what it recorded
    (a run from its last checkpoint, a study from its cells, the demo from its stages).
    With `detach=False` only the record is reset: the caller runs the job itself."""
    require_write(f"resuming a {kind}")
    k = job_kind(kind)
    job = get_job(ws, kind, job_id)
    if job.active or job.state == "done":
        raise error(f"{kind} {job_id} is {job.state}; only killed, cancelled or failed "
                    f"{k.plural} resume")
    update_job(ws, kind, job_id, state="queued", pid=None, pid_start=None, error=None,
               finished=None, cancel_requested=None, queued_at=time.time())
    if detach:
        start_job(ws, kind, job_id, error=error)
    return get_job(ws, kind, job_id)
