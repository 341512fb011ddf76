"""Content on first open (issue 9, item 1): `mashup demo start` builds the world, then a
leave-one-out study and a mashup + scratch pair, in one background job whose stages the
pages can read; a later start reuses all of it and a killed job resumes."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from waiting import poll

from mashup_core.cli import main
from mashup_core.demo.content import (
    PAIR_GROUP,
    STAGES,
    STATES,
    build_content,
    content_status,
    demo_study_spec,
    launch_content,
)
from mashup_core.jobs.store import get_run, list_runs
from mashup_core.study.spec import CELLS_FILE, cell_key, planned_cells, read_cells
from mashup_core.workspace import Workspace

JOB_TIMEOUT = 240  # generous: the tiny content takes well under a minute alone on 2 cores


def _cell_lines(study_dir) -> list[str]:
    path = study_dir / CELLS_FILE
    return path.read_text().splitlines() if path.exists() else []


def _stamps(ws: Workspace, status: dict) -> dict[str, int]:
    """mtimes of everything the content wrote: a reuse must change none of them."""
    study_dir = ws.studies_dir / status["stages"]["study"]["study_id"]
    paths = [ws.manifest_path, *sorted(study_dir.rglob("*"))]
    for run_id in (status["stages"]["pair"]["mashup_id"], status["stages"]["pair"]["baseline_id"]):
        paths += sorted((ws.runs_dir / run_id).rglob("*"))
    return {str(p): p.stat().st_mtime_ns for p in paths if p.is_file()}


@pytest.fixture(scope="module")
def first_open(copy_of_tiny_world):
    """A fresh copy of the tiny world through one `demo start`, killed in its study, started
    again and left to finish; what was seen on the way is returned with the workspace."""
    ws = copy_of_tiny_world("first-open")
    seen: dict = {}

    t0 = time.monotonic()
    seen["first"] = launch_content(ws, "tiny")
    seen["start_seconds"] = time.monotonic() - t0
    pid = seen["first"]["job"]["pid"]

    def study_begun():
        """some study cells recorded"""
        status = content_status(ws)
        study = status["stages"]["study"]
        if study["study_dir"] and _cell_lines(ws.studies_dir / study["study_id"]):
            return status
        return None

    seen["during"] = poll(study_begun, timeout=JOB_TIMEOUT)
    os.killpg(pid, signal.SIGKILL)
    poll(lambda: not content_status(ws)["job"]["alive"], timeout=30)
    seen["killed"] = content_status(ws)
    study_dir = ws.studies_dir / seen["killed"]["stages"]["study"]["study_id"]
    seen["lines_at_kill"] = _cell_lines(study_dir)

    seen["restart"] = launch_content(ws, "tiny")

    def finished():
        """the content job finished"""
        status = content_status(ws)
        return status if status["state"] in ("done", "failed") and not status["job"]["alive"] \
            else None

    seen["done"] = poll(finished, timeout=JOB_TIMEOUT, every=0.5)
    return ws, seen


def test_start_returns_at_once_and_reports_every_stage(first_open):
    _ws, seen = first_open
    first = seen["first"]
    assert seen["start_seconds"] < 30  # it spawns a job; the work is not done in the call
    assert first["job"]["alive"] and first["job"]["pid"]
    assert set(first["stages"]) == set(STAGES)
    for stage in first["stages"].values():
        assert stage["state"] in STATES
        assert {"done", "total", "unit"} <= set(stage["progress"])
    during = seen["during"]
    assert during["state"] == "running"
    assert during["stages"]["world"]["state"] == "done"  # the copied world is reused
    assert during["stages"]["study"]["state"] == "running"
    # The pair's runs are launched before the study and train beside it.
    assert during["stages"]["pair"]["state"] in ("running", "done")
    assert during["stages"]["pair"]["mashup_id"] and during["stages"]["pair"]["baseline_id"]
    assert "study" in during["message"]


def test_a_killed_job_reads_failed_and_a_start_resumes_it(first_open):
    ws, seen = first_open
    killed = seen["killed"]
    study = killed["stages"]["study"]
    assert killed["state"] == "failed" and not killed["job"]["alive"]
    assert killed["job"]["state"] == "killed"  # the job's record says so, not "running"
    assert study["state"] == "failed" and "demo start" in study["error"]
    assert 0 < study["progress"]["done"] < study["progress"]["total"]
    assert seen["restart"]["job"]["pid"] != killed["job"]["pid"]
    # Resumed, not restarted: the cells recorded before the kill are the file's first lines,
    # untouched, and no cell is recorded twice.
    study_dir = ws.studies_dir / study["study_id"]
    lines = _cell_lines(study_dir)
    assert lines[:len(seen["lines_at_kill"])] == seen["lines_at_kill"]
    keys = []
    for line in lines:
        try:  # a line cut short by the kill is skipped by the reader too
            keys.append(cell_key(json.loads(line)))
        except json.JSONDecodeError:
            continue
    assert len(keys) == len(set(keys))


def test_the_study_holds_a_complete_merge_grid_and_the_pair_has_curves(first_open):
    ws, seen = first_open
    done = seen["done"]
    assert done["state"] == "done", done
    assert all(s["state"] == "done" for s in done["stages"].values())
    spec = demo_study_spec(ws)
    assert spec.tasks == tuple(ws.manifest()["tasks"]) and not spec.train
    study_dir = ws.studies_dir / done["stages"]["study"]["study_id"]
    cells = read_cells(study_dir)
    planned = planned_cells(spec)
    assert {cell_key(c) for c in planned} <= set(cells)
    merges = [c for c in cells.values() if c["kind"] == "merge"]
    assert len(merges) == len(spec.tasks) * len(spec.methods) * len(spec.ks)
    assert all(0 <= c["acc"] <= 1 for c in merges)
    assert done["stages"]["study"]["progress"]["done"] == len(planned)

    pair = done["stages"]["pair"]
    from mashup_core.demo.story import world_story

    story = world_story(ws)
    assert pair["target"] == (story.default_target or spec.tasks[0])
    mashup, baseline = get_run(ws, pair["mashup_id"]), get_run(ws, pair["baseline_id"])
    assert mashup.spec.kind == "mashup" and baseline.spec.kind == "scratch"
    assert mashup.spec.target_label == baseline.spec.target_label == pair["target"]
    assert mashup.pair["baseline"] == baseline.id and mashup.spec.group == PAIR_GROUP
    for run in (mashup, baseline):
        assert run.state == "done"
        steps = [e["step"] for e in run.evals]
        assert steps[0] == 0 and steps[-1] == run.spec.train.steps and len(steps) >= 3
    assert pair["progress"]["done"] == pair["progress"]["total"] > 0


def test_a_second_start_reuses_everything(first_open):
    ws, seen = first_open
    before = _stamps(ws, seen["done"])
    runs_before = len(list_runs(ws))
    again = launch_content(ws, "tiny")  # complete: no job is started at all
    assert again["state"] == "done" and again["job"]["pid"] == seen["done"]["job"]["pid"]
    # The job itself, run in the foreground, finds every stage there and recomputes nothing.
    status = build_content(ws, "tiny", progress=False, log=lambda _msg: None)
    assert status["state"] == "done"
    assert all(s["reused"] for s in status["stages"].values())
    assert _stamps(ws, status) == before
    assert len(list_runs(ws)) == runs_before


def test_status_of_a_workspace_without_content(tmp_path, capsys):
    ws = Workspace(tmp_path / "empty")
    status = content_status(ws)
    assert status["state"] == "pending" and not status["job"]["alive"]
    assert [s["state"] for s in status["stages"].values()] == ["pending"] * 3
    assert main(["demo", "status", "--workspace", str(ws.root), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["content"]["state"] == "pending" and not printed["usable"]


def test_status_cli_shows_the_stages(first_open, capsys):
    ws, _seen = first_open
    assert main(["demo", "status", "--workspace", str(ws.root)]) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "study" in out and "pair" in out
