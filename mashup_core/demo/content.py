"""The demo's content: after the world, a leave-one-out study and a mashup + scratch pair.

`make demo` should open on pages that already show the product's two charts: the merge
methods' heatmap (the paper's Fig. 3) and the convergence of a mashup run against its
from-scratch baseline. Both are computed here by the code the CLI and the pages use, never
by a shortcut of their own:

    world   `demo.world.build_world` (reused when intact), then the other two side by side:
    study   `study.grid.run_study`: merge-only leave-one-out over the world's targets, the
            `mashup study` defaults (methods x ks); its id is the one `mashup study` derives, so
            that command resumes it rather than starting over
    pair    `jobs.runner.launch_pair`: a mashup run on the story's default target
            (`demo.story`) and its scratch baseline, as the Launch page starts them

`launch_content` starts the three as one detached job (the job layer's kind "demo",
`jobs.background`) and returns at once, so the dashboard serves while it works; `build_content`
is that job (or a foreground `mashup demo build --with-content`). The job's record, and each
stage's state, is the workspace's `demo_content.json` (written atomically, under a lock); while
the world builds, its own marker says how far (`demo.progress`). A later start
reuses what is there:
a complete world, a complete study and a finished pair are never recomputed; a half-done
study resumes from its cells file; a pair whose run was killed resumes from its checkpoint.
`content_status` is what the pages read: per stage its state, progress counts, times, error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup_core import defaults
from mashup_core.errors import MashupError
from mashup_core.jobs.background import (
    CONTENT_FILE,
    CONTENT_ID,
    CONTENT_LOG,
    KINDS,
    mark_running,
    start_job,
)
from mashup_core.jobs.processes import process_alive
from mashup_core.jobs.record import OLD_STATES, editing, settle
from mashup_core.workspace import Workspace, locked, read_json

STAGES = ("world", "study", "pair")
STATES = ("pending", "running", "done", "failed")  # of a stage (the job's own are jobs.record's)
PAIR_GROUP = "demo-story"  # the group of the demo's mashup + scratch pair
ENGINE = "inline"  # the demo study's engine: see ContentPlan and the README's timings


class ContentError(MashupError):
    """The demo's content cannot be computed or started as asked; the message says why."""


@dataclass(frozen=True)
class ContentPlan:
    """How much the demo computes after its world, per profile.

    The study is `mashup study`'s default grid (every method x k over every target, merge
    cells only); the pair trains as the Launch page's defaults do (100 steps, an evaluation
    every 10). Sized so that the whole first `make demo` (world + study + pair) stays under
    6 minutes on a slow 2-core machine; see the README for the measurements.
    """

    methods: tuple[str, ...] = defaults.STUDY_METHODS
    ks: tuple[int, ...] = defaults.STUDY_KS
    pair_steps: int = defaults.TRAIN_STEPS
    pair_eval_every: int = defaults.EVAL_EVERY
    pair_k: int = 2


PLANS = {
    "full": ContentPlan(),
    # Tests: the same grid on the tiny world, a short pair.
    "tiny": ContentPlan(pair_steps=20, pair_eval_every=5),
}


def content_plan(profile: str | None) -> ContentPlan:
    return PLANS.get(profile or "full", PLANS["full"])


# --- The record: demo_content.json --------------------------------------------------------------


def content_path(ws: Workspace) -> Path:
    return ws.root / CONTENT_FILE


def content_log_path(ws: Workspace) -> Path:
    return ws.root / CONTENT_LOG


def read_record(ws: Workspace) -> dict[str, Any]:
    record = read_json(content_path(ws), {})
    return record if isinstance(record, dict) else {}


def update_record(ws: Workspace, stage: str | None = None, **changes: Any) -> dict[str, Any]:
    """Read-modify-write the record under its lock: the job's fields, or one stage's."""
    ws.root.mkdir(parents=True, exist_ok=True)
    with editing(content_path(ws)) as record:
        record.setdefault("kind", "mashup-demo-content")
        record.setdefault("version", 1)
        if stage is None:
            record.update(changes)
        else:
            stages = record.setdefault("stages", {})
            stages[stage] = {**stages.get(stage, {}), **changes}
    return record


def world_fingerprint(ws: Workspace) -> str | None:
    """The built world's identity (its manifest lists every file's hash), or None."""
    try:
        return hashlib.sha256(ws.manifest_path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


# --- What each stage computes ----------------------------------------------------------------


def demo_study_spec(ws: Workspace, plan: ContentPlan | None = None):
    """The demo's study: `mashup study`'s defaults over the workspace's targets (merge only)."""
    from mashup_core.config import resolve_config
    from mashup_core.study.spec import StudySpec, study_task_names

    plan = plan or content_plan(_world_profile(ws))
    return StudySpec(tasks=tuple(study_task_names(ws)), methods=plan.methods, ks=plan.ks,
                     finetune=resolve_config(ws).defaults.finetune)


def demo_study_id(ws: Workspace) -> str:
    """The study's folder: the one recorded, else the id `mashup study` derives for its spec."""
    recorded = ((read_record(ws).get("stages") or {}).get("study") or {}).get("study_id")
    return recorded or f"loo-{demo_study_spec(ws).identity()}"


def study_counts(ws: Workspace, study_id: str | None = None) -> tuple[int, int]:
    """(cells recorded, cells planned) of the demo's study grid."""
    from mashup_core.study.spec import cell_key, planned_cells, read_cells

    study_dir = ws.studies_dir / (study_id or demo_study_id(ws))
    planned = [cell_key(c) for c in planned_cells(demo_study_spec(ws))]
    done = read_cells(study_dir) if study_dir.is_dir() else {}
    return sum(k in done for k in planned), len(planned)


def pair_target(ws: Workspace) -> str:
    """The pair's target: the world's clearest measured story, else the first target."""
    from mashup_core.config import resolve_config
    from mashup_core.demo.story import world_story

    story = world_story(ws)
    names = resolve_config(ws).target_names()
    if story is not None and story.default_target in names:
        return story.default_target
    if not names:
        raise ContentError(f"the workspace {ws.root} lists no targets for the demo's pair")
    return names[0]


def demo_pair_spec(ws: Workspace, plan: ContentPlan | None = None):
    """The mashup run of the pair, as `mashup new-spec` and the Launch page build it."""
    from mashup_core.config import resolve_config
    from mashup_core.jobs.workspace_spec import workspace_run_spec

    plan = plan or content_plan(_world_profile(ws))
    config = resolve_config(ws)
    target = pair_target(ws)
    entry = next(t for t, name in zip(config.targets, config.target_names(), strict=True)
                 if name == target)
    return workspace_run_spec(config, entry, kind="mashup", where="demo pair",
                              name=f"demo: {target}", group=PAIR_GROUP, steps=plan.pair_steps,
                              k=plan.pair_k, eval_every=plan.pair_eval_every,
                              checkpoint_every=max(plan.pair_eval_every, 20))


def _world_profile(ws: Workspace) -> str | None:
    return (ws.manifest() or {}).get("profile")


# --- Running the stages ---------------------------------------------------------------------


def build_world_slotted(ws: Workspace, profile: str, seed: int, *, force: bool = False,
                        progress: bool = True, log: Callable[[str], None] = print):
    """`build_world` inside the slot of the device it trains on (the CPU today): holding it
    keeps the rule "every job that trains takes the slot" true if that ever changes."""
    from mashup_core.demo.world import build_world
    from mashup_core.jobs.slot import accelerator_slot

    with accelerator_slot(ws, "cpu", holder=f"demo-{profile}", kind="demo-build"):
        return build_world(ws, profile, seed, force=force, progress=progress, log=log)


@contextlib.contextmanager
def _one_content_job(ws: Workspace) -> Iterator[None]:
    """One content job per workspace at a time (the kernel drops the lock if it dies)."""
    try:
        with locked(ws.root / ".demo_content.job.lock", wait=False):
            yield
    except BlockingIOError:
        pid = read_record(ws).get("pid")
        raise ContentError(f"the demo's content is already being computed in {ws.root} "
                           f"(pid {pid}); `mashup demo status` says how far it got") from None


def build_content(ws: Workspace, profile: str = "full", seed: int = 0, *,
                  engine: str = ENGINE, force: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """World, then study, then pair, each reused when it is there and intact; returns
    `content_status`. Raises ContentError naming the stage that failed (later stages are
    then left pending: a start after the cause is fixed continues from there)."""
    from mashup_core.access import require_write

    require_write("computing the demo's content")
    ws.ensure_writable()
    with _one_content_job(ws):
        update_record(ws)  # the record's kind and version, if it is new
        mark_running(ws, "demo", CONTENT_ID, os.getpid(), profile=profile, seed=seed,
                     engine=engine, cancel_requested=None)
        try:
            _stage(ws, "world", log, lambda: _world_stage(ws, profile, seed, force, progress, log))
            # The pair's runs are detached jobs: they train beside the study (one thread each,
            # so the two processes share the cores instead of fighting over them).
            _share_the_cores()
            pair = _stage(ws, "pair", log, lambda: _pair_start(ws, log), finish=False)
            _stage(ws, "study", log, lambda: _study_stage(ws, engine, progress, log))
            _stage(ws, "pair", log, lambda: _pair_wait(ws, pair), started=pair["started"])
        except BaseException as exc:
            # A cancel (SIGTERM) unwinds through the study engine as an error: it was asked for.
            asked = bool(read_record(ws).get("cancel_requested"))
            update_record(ws, state="cancelled" if asked else "failed", finished=time.time(),
                          error=f"{type(exc).__name__}: {exc}")
            raise
        update_record(ws, state="done", finished=time.time())
    return content_status(ws)


def _stage(ws: Workspace, name: str, log: Callable[[str], None], work: Callable[[], dict], *,
           finish: bool = True, started: float | None = None) -> dict:
    """Run one stage's `work`, its state recorded: running, then done (unless `finish` is
    False: it goes on in the background) or failed. Returns what `work` returned."""
    if started is None:
        started = time.time()
        update_record(ws, name, state="running", started=started, finished=None, error=None,
                      seconds=None)
        log(f"demo content: {name} ...")
    try:
        extra = work()
    except BaseException as exc:
        text = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc}"
        update_record(ws, name, state="failed", finished=time.time(), error=text,
                      seconds=time.time() - started)
        if isinstance(exc, MashupError | KeyboardInterrupt):
            raise ContentError(f"demo content: the {name} stage failed: {text}") from exc
        raise
    if not finish:
        update_record(ws, name, **extra)
        return {**extra, "started": started}
    finished = time.time()
    update_record(ws, name, state="done", finished=finished, seconds=finished - started, **extra)
    log(f"demo content: {name} {'reused' if extra.get('reused') else 'done'} "
        f"in {finished - started:.1f} s")
    return extra


def _share_the_cores() -> None:
    """One thread for this process and the jobs it starts from now on. The world is built
    already (its thread count is part of its bits); what follows runs as two processes side
    by side, and two multi-threaded torch processes on few cores spin against each other."""
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _world_stage(ws: Workspace, profile: str, seed: int, force: bool, progress: bool,
                 log: Callable[[str], None]) -> dict:
    report = build_world_slotted(ws, profile, seed, force=force, progress=progress, log=log)
    fingerprint = world_fingerprint(ws)
    before = read_record(ws).get("world_fingerprint")
    if before and before != fingerprint:
        _forget_content_of_old_world(ws, log)
    update_record(ws, world_fingerprint=fingerprint)
    return {"reused": report.reused, "profile": report.profile, "build_seconds": report.seconds}


def _forget_content_of_old_world(ws: Workspace, log: Callable[[str], None]) -> None:
    """A rebuilt world makes the old study's cells and the old pair another world's numbers:
    the study folder is set aside (renamed, not deleted) and the pair is started again."""
    record = read_record(ws)
    stages = record.get("stages") or {}
    study_id = (stages.get("study") or {}).get("study_id")
    if study_id and (ws.studies_dir / study_id).is_dir():
        aside = ws.studies_dir / f"{study_id}-old-world-{int(time.time())}"
        (ws.studies_dir / study_id).rename(aside)
        log(f"the world was rebuilt: its previous study is kept as {aside.name}")
    update_record(ws, "study", state="pending", study_id=None)
    update_record(ws, "pair", state="pending", mashup_id=None, baseline_id=None)


def _study_stage(ws: Workspace, engine: str, progress: bool, log: Callable[[str], None]) -> dict:
    from mashup_core.study.grid import run_study

    study_id = demo_study_id(ws)
    done, total = study_counts(ws, study_id)
    update_record(ws, "study", study_id=study_id, engine=engine)
    if done == total:  # complete: not even its summary is rewritten
        return {"reused": True, "cells": total}
    if done:
        log(f"resuming the study {study_id}: {done} of {total} cells are recorded")
    run_study(ws, demo_study_spec(ws), study_id, progress=progress, device="cpu", engine=engine)
    done, total = study_counts(ws, study_id)
    if done < total:
        raise ContentError(f"study {study_id} has {done} of {total} cells after its run")
    return {"reused": False, "cells": total}


def _pair_start(ws: Workspace, log: Callable[[str], None]) -> dict:
    """Launch the pair (`jobs.runner.launch_pair`), or pick up the one recorded: runs that are
    done are kept, active ones are left to finish, killed or failed ones resume."""
    from mashup_core.jobs.runner import launch_pair, resume
    from mashup_core.jobs.store import RunError, get_run

    stage = (read_record(ws).get("stages") or {}).get("pair") or {}
    ids = [stage.get("mashup_id"), stage.get("baseline_id")]
    try:
        runs = [get_run(ws, i) for i in ids] if all(ids) else None
    except RunError:  # a run folder was removed: start the pair again
        runs = None
    if runs is None:
        pair = launch_pair(ws, demo_pair_spec(ws))
        log(f"launched the pair: mashup {pair.mashup_id}, scratch {pair.baseline_id}")
        return {"reused": False, "mashup_id": pair.mashup_id, "baseline_id": pair.baseline_id,
                "group": pair.group, "target": pair_target(ws)}
    reused = all(r.state == "done" for r in runs)
    for run in runs:
        if run.state in ("killed", "cancelled", "failed"):
            log(f"resuming run {run.id} ({run.state})")
            resume(ws, run.id)
    return {"reused": reused, "mashup_id": ids[0], "baseline_id": ids[1]}


def _pair_wait(ws: Workspace, pair: dict) -> dict:
    from mashup_core.jobs.runner import wait

    ids = [pair["mashup_id"], pair["baseline_id"]]
    records = [wait(ws, run_id, timeout=24 * 3600, poll=0.5) for run_id in ids]
    if bad := [r for r in records if r.state != "done"]:
        raise ContentError("; ".join(f"run {r.id} {r.state}: {r.status.get('error') or ''}"
                                     for r in bad))
    return {"reused": pair["reused"]}


# --- In the background ----------------------------------------------------------------------


def launch_content(ws: Workspace, profile: str = "full", seed: int = 0, *,
                   engine: str = ENGINE) -> dict[str, Any]:
    """Start world -> study -> pair as one detached job (`run_content_job`) and return at
    once with `content_status`. A job already running is left alone; a complete content
    starts nothing (the job would only find everything reused)."""
    from mashup_core.access import require_write
    from mashup_core.study.engine import ENGINES

    require_write("starting the demo's content")
    if engine not in ENGINES:
        raise ContentError(f"engine {engine!r}: choose from {', '.join(ENGINES)}")
    ws.ensure_writable()
    # Cheap checks first: the job should not wait for this process to import torch.
    record = read_record(ws)
    if _job_alive(record):
        return content_status(ws)
    if record.get("state") == "done" and record.get("profile") == profile:
        status = content_status(ws)
        if status["state"] == "done":
            return status
    # The job reads what to build from the record.
    update_record(ws, state="queued", profile=profile, seed=seed, engine=engine,
                  created=time.time(), started=None, finished=None, error=None, pid=None,
                  pid_start=None, cancel_requested=None)
    start_job(ws, "demo", CONTENT_ID, error=ContentError)
    return content_status(ws)


def run_content_job(ws: Workspace) -> dict[str, Any]:
    """The detached job: `build_content` with what `launch_content` recorded."""
    record = read_record(ws)
    return build_content(ws, record.get("profile") or "full", int(record.get("seed") or 0),
                         engine=record.get("engine") or ENGINE, progress=False)


# --- What the pages show --------------------------------------------------------------------


def content_status(ws: Workspace) -> dict[str, Any]:
    """Where the demo's content stands, from its record and the live facts (pure reads).

    {"state": pending|running|done|failed, "message", "profile",
     "job": {"pid", "alive", "state", "started", "finished", "error", "engine", "log"},
     "stages": {"world"|"study"|"pair": {"state", "progress": {"done", "total", "unit"},
                "started", "finished", "seconds", "error", "reused", ...}}}
    study adds "study_id" and "study_dir"; pair adds "target", "mashup_id", "baseline_id" and
    "runs": {"mashup"|"baseline": {"id", "state", "step", "steps"}}.
    A stage recorded done but no longer intact reads pending (a start recomputes it); one
    recorded running whose job is gone reads failed, saying that a start resumes it.
    """

    record = read_record(ws)
    if record:  # a job gone without a word reads "killed" (jobs.record)
        record = settle(content_path(ws), record, KINDS["demo"].resume_hint)
    recorded = record.get("stages") or {}
    pid = record.get("pid")
    alive = _job_alive(record)
    job_state = OLD_STATES.get(record.get("state"), record.get("state")) or "pending"
    gone = (f"the content job (pid {pid}) ended before this stage finished; "
            "`mashup demo start` (or `make demo`) resumes it")
    stages = {
        "world": _world_status(ws, recorded.get("world") or {}, alive, gone),
        "study": _study_status(ws, recorded.get("study") or {}, alive, gone),
        "pair": _pair_status(ws, recorded.get("pair") or {}, alive, gone),
    }
    states = [s["state"] for s in stages.values()]
    if all(s == "done" for s in states):
        state = "done"
    elif alive:
        state = "running"
    elif "failed" in states or job_state in ("failed", "killed"):
        state = "failed"  # (a pair's detached runs may still train: its stage says running)
    elif "running" in states:
        state = "running"
    else:
        state = "pending"
    return {
        "workspace": str(ws.root), "state": state, "message": _message(state, stages, alive),
        "profile": _world_profile(ws) or record.get("profile"),
        "job": {"pid": pid, "alive": alive, "state": job_state, "started": record.get("started"),
                "finished": record.get("finished"), "error": record.get("error"),
                "engine": record.get("engine"), "log": str(content_log_path(ws))},
        "stages": stages,
    }


def _job_alive(record: dict) -> bool:
    if record.get("state") in ("queued", "starting") and not record.get("pid"):
        spawned = record.get("created") or record.get("started") or 0
        return time.time() - spawned < 60  # being spawned right now
    return bool(record.get("pid")) and process_alive(record["pid"], record.get("pid_start"))


def _times(rec: dict) -> dict:
    return {k: rec.get(k) for k in ("started", "finished", "seconds", "error", "reused")}


def _settle(rec: dict, done: bool, alive: bool, gone: str, broken: str | None = None) -> tuple:
    """(state, error) of a stage from its record, whether its result is there, and the job."""
    recorded = rec.get("state")
    if done:
        return "done", None
    if recorded == "running":
        return ("running", None) if alive else ("failed", gone)
    if recorded == "failed":
        return "failed", rec.get("error")
    if recorded == "done" and broken:
        return "pending", broken
    return "pending", None


def _world_status(ws: Workspace, rec: dict, alive: bool, gone: str) -> dict:
    from mashup_core.demo.progress import build_progress, describe_build, world_status

    usable, reason = world_status(ws)
    building = None if usable else build_progress(ws)
    state, error = _settle(rec, usable, alive or building is not None, gone, reason)
    if building is not None:
        state, error = "running", None
    return {**_times(rec), "state": state, "error": error,
            "progress": {"done": int(usable), "total": 1, "unit": "world"},
            "build": building, "detail": describe_build(building) if building else None,
            "profile": _world_profile(ws), "reason": None if usable else reason}


def _study_status(ws: Workspace, rec: dict, alive: bool, gone: str) -> dict:
    from mashup_core.jobs.background import study_progress
    from mashup_core.study.engine import PROGRESS_FILE

    out: dict[str, Any] = {**_times(rec), "study_id": None, "study_dir": None,
                           "progress": {"done": 0, "total": 0, "unit": "cells"}}
    if ws.manifest() is None:  # no world yet: nothing to count against
        state, error = _settle(rec, False, alive, gone)
        return {**out, "state": state, "error": error}
    try:
        study_id = demo_study_id(ws)
        done, total = study_counts(ws, study_id)
    except MashupError as exc:
        return {**out, "state": "failed", "error": str(exc)}
    study_dir = ws.studies_dir / study_id
    state, error = _settle(rec, done == total, alive, gone,
                           f"{total - done} of {total} cells are missing")
    engine = study_progress(read_json(study_dir / PROGRESS_FILE, {}) if study_dir.is_dir() else {},
                            "running" if alive else "killed") or {}
    return {**out, "state": state, "error": error, "study_id": study_id,
            "study_dir": str(study_dir) if study_dir.is_dir() else None,
            "progress": {"done": done, "total": total, "unit": "cells"},
            "tasks": engine.get("tasks") if isinstance(engine, dict) else None}


def _pair_status(ws: Workspace, rec: dict, alive: bool, gone: str) -> dict:
    from mashup_core.jobs.store import ACTIVE, RunError, get_run

    out: dict[str, Any] = {**_times(rec), "target": rec.get("target"), "group": rec.get("group"),
                           "mashup_id": rec.get("mashup_id"),
                           "baseline_id": rec.get("baseline_id"), "runs": {},
                           "progress": {"done": 0, "total": 0, "unit": "steps"}}
    runs = {}
    for role in ("mashup", "baseline"):
        run_id = rec.get(f"{role}_id")
        if not run_id:
            continue
        try:
            run = get_run(ws, run_id)
        except (RunError, MashupError):
            continue
        steps = [m.get("step", 0) for m in run.metrics]
        runs[role] = {"id": run_id, "state": run.state, "step": max(steps, default=0),
                      "steps": run.spec.train.steps, "evals": len(run.evals)}
    out["runs"] = runs
    out["progress"] = {"done": sum(r["step"] for r in runs.values()),
                       "total": sum(r["steps"] for r in runs.values()), "unit": "steps"}
    both_done = len(runs) == 2 and all(r["state"] == "done" for r in runs.values())
    training = any(r["state"] in ACTIVE for r in runs.values())  # detached: they outlive the job
    state, error = _settle(rec, both_done, alive or training, gone,
                           "its runs are no longer there" if len(runs) < 2 else
                           "its runs did not finish")
    return {**out, "state": state, "error": error}


def _message(state: str, stages: dict[str, dict], alive: bool) -> str:
    """One line for the top of a page."""
    if state == "done":
        return "The demo's study and mashup + scratch pair are ready."
    for name, what in (("world", "Building the demo world"),
                       ("study", "Computing the leave-one-out study"),
                       ("pair", "Training the mashup run and its scratch baseline")):
        stage = stages[name]
        if stage["state"] == "running":
            p = stage["progress"]
            if name == "world":
                return f"{what}" + (f": {stage['detail']}." if stage.get("detail") else ".")
            return f"{what}: {p['done']} of {p['total']} {p['unit']}."
        if stage["state"] == "failed":
            return f"{what} stopped: {stage['error']}"
    if alive:
        return "The demo's content job is starting."
    return "The demo's study and pair are not computed yet (`mashup demo start`)."
