"""How far a demo world build has got: the `.building` marker, read by `mashup demo status`
and the pages while the world builds (`demo.world.build_world` writes it as it goes).

The marker says who builds (pid and kernel start time: a marker left by a build that died is
an interrupted build, not a running one), the stage, its progress ("adapter 3 of 8"), when
each stage started and how long the finished ones took, and the stages' typical times; from
these `build_progress` adds the time elapsed and an estimate of the rest.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mashup_core.jobs.processes import process_alive, process_start
from mashup_core.workspace import Workspace, read_json, sha256_file, write_json_atomic

WORLD_DIRS = ("base", "tasks", "library")  # what a demo world build writes

STAGES = {"tasks": "writing the tasks", "pretrain": "pretraining the base model",
          "library": "training the LoRA library", "manifest": "writing the manifest"}


class BuildMarker:
    """The `.building` marker of the build running in this process, written as it goes."""

    def __init__(self, ws: Workspace, workers: int, typical_seconds: dict[str, float]):
        self.path, self.last_write = ws.building_marker, 0.0
        now = time.time()
        self.record: dict[str, Any] = {
            "pid": os.getpid(), "pid_start": process_start(os.getpid()), "workers": workers,
            "started": now, "stage": None, "stage_started": now, "done": 0, "total": 0,
            "unit": "", "finished_stages": {}, "typical_seconds": typical_seconds}
        self.write()

    def write(self) -> None:
        write_json_atomic(self.path, self.record)
        self.last_write = time.monotonic()

    def stage(self, name: str, total: int = 0, unit: str = "") -> None:
        now, rec = time.time(), self.record
        if rec["stage"] is not None:
            rec["finished_stages"][rec["stage"]] = now - rec["stage_started"]
        rec.update(stage=name, stage_started=now, done=0, total=total, unit=unit)
        self.write()

    def advance(self, done: int, every: float = 1.0) -> None:
        """`done` of the stage's total; written at most every `every` seconds (the last one always)."""
        self.record["done"] = done
        if done >= self.record["total"] or time.monotonic() - self.last_write >= every:
            self.write()


def build_progress(ws: Workspace) -> dict[str, Any] | None:
    """How far the build writing into `ws` has got, or None when none is running (no marker,
    or its process is gone: an interrupted build). The marker's fields, and:
    "elapsed" (s since the build started) and "left" (an estimate in s, or None)."""
    marker = read_json(ws.building_marker)
    if not isinstance(marker, dict) or not process_alive(marker.get("pid"), marker.get("pid_start")):
        return None
    now = time.time()
    return {**marker, "elapsed": now - marker.get("started", now), "left": seconds_left(marker, now)}


def seconds_left(marker: dict[str, Any], now: float) -> float | None:
    """The rest of this stage at its own pace so far (or, before it has any, its typical time),
    plus the later stages' typical times; typical times scaled by how this machine compares
    on the stages it has finished."""
    if marker.get("stage") not in STAGES:
        return None
    typical = marker.get("typical_seconds") or {}
    finished = marker.get("finished_stages") or {}
    expected = sum(typical.get(s, 0.0) for s in finished)
    pace = sum(finished.values()) / expected if expected > 0 else 1.0
    stage, done, total = marker["stage"], marker.get("done") or 0, marker.get("total") or 0
    spent = now - marker.get("stage_started", now)
    if done and total:
        this_stage = spent / done * (total - done)
    else:
        this_stage = max(typical.get(stage, 0.0) * pace - spent, 0.0)
    later = list(STAGES)[list(STAGES).index(stage) + 1:]
    return this_stage + sum(typical.get(s, 0.0) * pace for s in later)


def describe_build(progress: dict[str, Any]) -> str:
    """'training the LoRA library: adapter 3 of 8 · 1 min 5 s elapsed · about 40 s left'."""
    stage = progress.get("stage")
    text = STAGES.get(stage, "starting")
    done, total = progress.get("done") or 0, progress.get("total") or 0
    if stage == "library" and total:
        side = progress.get("workers") or 1
        text += f": adapter {min(done + 1, total)} of {total}" + (
            f" ({side} side by side)" if side > 1 and done + 1 < total else "")
    elif stage == "pretrain" and total:
        text += f": step {done} of {total}"
    text += f" · {_duration(progress.get('elapsed') or 0)} elapsed"
    if progress.get("left") is not None:
        text += f" · about {_duration(progress['left'])} left"
    return text


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


# Here, not in demo.world, which imports torch to build one: every page asks this first.
def world_status(ws: Workspace, check_hashes: bool = False) -> tuple[bool, str]:
    """(usable, reason). Usable means: a manifest exists and every file it lists matches."""
    if ws.building_marker.exists():
        if (building := build_progress(ws)) is not None:
            return False, f"being built now: {describe_build(building)}"
        return False, f"an interrupted build was found ({ws.building_marker} is still there)"
    manifest = ws.manifest()
    if manifest is None:
        leftovers = [d for d in WORLD_DIRS if (ws.root / d).exists()]
        if leftovers:
            return False, f"world files without a manifest ({', '.join(leftovers)}): a half-written build"
        return False, "no demo world yet"
    for rel, info in manifest["files"].items():
        path = ws.root / rel
        if not path.exists():
            return False, f"{rel} is missing"
        if path.stat().st_size != info["bytes"]:
            return False, f"{rel} has changed size since the build"
        if check_hashes and sha256_file(path) != info["sha256"]:
            return False, f"{rel} has changed since the build (hash differs)"
    return True, "ok"
