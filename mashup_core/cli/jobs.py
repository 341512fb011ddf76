"""`mashup jobs [cancel|resume KIND ID]`: every background job of a workspace, of every kind.

`mashup jobs exec KIND ID` is how the job layer (`jobs.background.start_job`) runs a job
detached: one entry for every kind, each reading what to do from its own record.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable


def register(sub, parent: argparse.ArgumentParser) -> None:
    from mashup_core.jobs.background import KINDS
    from mashup_core.jobs.record import STATES

    jobs = sub.add_parser(
        "jobs", parents=[parent], help="every background job: runs, studies, demo, recycle",
        description="List the workspace's background jobs of every kind (runs, studies, the "
        "demo's content, recycle searches), newest first; cancel or resume one.")
    jobs.add_argument("--kind", choices=list(KINDS), help="only jobs of this kind")
    jobs.add_argument("--state", choices=list(STATES), help="only jobs in this state")
    jobs.set_defaults(func=_list)
    actions = jobs.add_subparsers(dest="action", metavar="ACTION")
    for name, what in (("cancel", "stop a queued or running job"),
                       ("resume", "start a killed, cancelled or failed job again")):
        action = actions.add_parser(name, parents=[parent], help=what)
        action.add_argument("job_kind", metavar="KIND", choices=list(KINDS))
        action.add_argument("job_id", metavar="ID")
        action.set_defaults(func=_cancel if name == "cancel" else _resume)
    run = actions.add_parser("exec", parents=[parent])  # how a detached job starts
    run.add_argument("job_kind", metavar="KIND", choices=list(KINDS))
    run.add_argument("job_id", metavar="ID")
    run.set_defaults(func=_exec)


def _ago(when: float | None) -> str:
    if not when:
        return "-"
    seconds = int(time.time() - when)
    return f"{seconds // 3600} h ago" if seconds >= 3600 else \
        f"{seconds // 60} min ago" if seconds >= 60 else f"{seconds} s ago"


def _progress(p: dict) -> str:
    if not p.get("total"):
        return ""
    return f"{p.get('done') or 0}/{p['total']} {p.get('unit', '')}".rstrip()


def _list(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.jobs.background import list_jobs
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    found = list_jobs(ws, kind=args.kind, state=args.state)
    lines = [f"{'kind':<8} {'id':<46} {'state':<10} {'progress':<22} {'created':<12} note"]
    for job in found:
        lines.append(f"{job.kind:<8} {job.id:<46} {job.state:<10} {_progress(job.progress):<22} "
                     f"{_ago(job.created):<12} {job.error or ''}".rstrip())
    emit(args, [job.to_dict() for job in found],
         "\n".join(lines) if found else f"no background jobs in {ws.root}")
    return 0


def _cancel(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.jobs.background import cancel_job
    from mashup_core.workspace import Workspace

    job = cancel_job(Workspace.resolve(args.workspace), args.job_kind, args.job_id)
    emit(args, job.to_dict(), f"{job.kind} {job.id}: cancel requested ({job.state})")
    return 0


def _resume(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.jobs.background import resume_job
    from mashup_core.workspace import Workspace

    job = resume_job(Workspace.resolve(args.workspace), args.job_kind, args.job_id)
    emit(args, job.to_dict(), f"{job.kind} {job.id}: {job.state} (pid {job.pid})")
    return 0


def _exec(args) -> int:
    from mashup_core.workspace import Workspace

    return WORK[args.job_kind](Workspace.resolve(args.workspace), args.job_id)


# --- What a job of each kind does, in the detached process ------------------------------------


def _run(ws, run_id: str) -> int:
    from mashup_core.jobs.runner import execute_run

    return 0 if execute_run(ws, run_id, progress=False, echo=False).state == "done" else 1


def _study(ws, study_id: str) -> int:
    from mashup_core.study.job import run_study_job

    print(f"study {study_id} done: {run_study_job(ws, study_id)}")
    return 0


def _demo(ws, _content_id: str) -> int:
    from mashup_core.cli.demo import status_text
    from mashup_core.demo.content import run_content_job

    print(status_text(run_content_job(ws)))
    return 0


def _recycle(ws, front_id: str) -> int:
    from mashup_core.merging.recycle import run_recycle_job

    front = run_recycle_job(ws, front_id)
    print(f"recycle search {front_id}: {front['evaluations']} evaluations, saved")
    return 0


WORK: dict[str, Callable[..., int]] = {"run": _run, "study": _study, "demo": _demo,
                                       "recycle": _recycle}
