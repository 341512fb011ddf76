"""A workspace at scale, fast: 200 adapters, 50 runs and 3 studies on the tiny world's base.

Everything is hand-written in the shapes the core writes (adapter folders with their
mashup_meta.json, the score cache under its real key, run folders with spec/status/metrics/
pair, study folders with spec.json and cells.jsonl), so the dashboard reads it exactly as it
reads a real one, without training or scoring anything. The numbers are made up from the tiny
world's transfer matrix plus seeded noise: for timing pages and paging tables, not for results.

    make_scale_workspace(tiny_world, dst)   # the test fixture and benchmarks/bench_pages.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from mashup_core.workspace import Workspace, write_json_atomic

ADAPTERS, RUNS, STUDIES = 200, 50, 3
SCALE_N = 64  # the score cache is written for the pages' default n


def make_scale_workspace(world: Workspace, dst: Path, *, adapters: int = ADAPTERS,
                         runs: int = RUNS, studies: int = STUDIES, seed: int = 0) -> Workspace:
    """A copy of `world` (a built tiny demo world) grown to `adapters` checkpoints, `runs` runs
    (mashup + scratch pairs) and `studies` merge-only leave-one-out studies."""
    ws = Workspace(Path(dst))
    shutil.copytree(world.root, ws.root, ignore=shutil.ignore_patterns("cache", "runs", "studies"))
    rng = random.Random(seed)
    _grow_library(ws, adapters)
    _write_scores(ws, rng)
    _write_runs(ws, runs, rng)
    _write_studies(ws, studies, rng)
    return ws


def _grow_library(ws: Workspace, adapters: int) -> None:
    """Copies of the world's final adapters (weights hard-linked) until the library holds
    `adapters` checkpoints, each with its own name and mashup_meta.json."""
    originals = sorted(p for p in ws.library_dir.iterdir() if (p / "adapter_config.json").exists())
    finals = [p for p in originals if "-step" not in p.name]
    for i in range(adapters - len(originals)):
        src = finals[i % len(finals)]
        out = ws.library_dir / f"{src.name}-v{i:03d}"
        out.mkdir()
        for f in src.iterdir():
            if f.suffix == ".safetensors":
                os.link(f, out / f.name)
            else:
                shutil.copy2(f, out / f.name)


def _tasks(ws: Workspace) -> list[str]:
    return list((ws.manifest() or {}).get("tasks") or [])


def _acc(ws: Workspace, donor_task: str | None, target: str, rng: random.Random) -> float:
    report = (ws.manifest() or {}).get("report", {})
    cross = report.get("cross_accuracy", {}).get(donor_task or "", {})
    base = report.get("base_accuracy", {}).get(target, 0.25)
    return min(1.0, max(0.0, cross.get(target, base) + rng.uniform(-0.05, 0.05)))


def _write_scores(ws: Workspace, rng: random.Random) -> None:
    """Each workspace target's score table at SCALE_N, under the key `score_library_cached`
    computes for this library, so the pages find it cached."""
    from mashup_core.config import load_target, resolve_config, target_name, workspace_library
    from mashup_core.data.examples import sample_examples
    from mashup_core.data.targets import TargetSpec
    from mashup_core.models.loading import default_device, default_dtype
    from mashup_core.selection.scoring import BASE_ROW, SCORERS, ScoreRow, ScoreTable
    from mashup_core.selection.store import ScoreStore, sample_key

    config = resolve_config(ws)
    checkpoints = workspace_library(ws).checkpoints
    device = default_device()
    for entry in config.targets:
        name = target_name(entry)
        examples = load_target(TargetSpec.from_dict({**entry, "split": "train"}), ws)
        sample = sample_examples(examples, SCALE_N, None)
        rows, per_example = [], {}
        for ckpt in [None, *checkpoints]:
            acc = _acc(ws, ckpt.source_task if ckpt else "", name, rng)
            hits = [1.0 if rng.random() < acc else 0.0 for _ in sample]
            nll = [max(0.05, 2.5 * (1 - h) + rng.uniform(0, 0.5)) for h in hits]
            values = {"acc": hits, "acc_norm": hits, "nll": nll, "token_acc": hits,
                      "exact_match": hits}
            per_example[ckpt.name if ckpt else BASE_ROW] = {**values, "answer_tokens": [1.0] * len(hits)}
            mean = {s: sum(v) / len(v) for s, v in values.items()}
            rows.append(ScoreRow(ckpt.name if ckpt else BASE_ROW, ckpt.source_task if ckpt else None,
                                 n=len(sample), seconds=0.01, kind=ckpt.kind if ckpt else "base",
                                 **mean))
        assert set(SCORERS) <= set(values)
        table = ScoreTable(rows=rows[1:], base=rows[0], target=name, per_example=per_example)
        key = sample_key(sample, n=SCALE_N, seed=None, base_path=config.base_model,
                         device=device.type, dtype=str(default_dtype(device)), root=ws.root)
        ScoreStore(ws).put_table(key, checkpoints, table)


def _write_runs(ws: Workspace, runs: int, rng: random.Random) -> None:
    """`runs` finished runs: mashup + scratch pairs on the world's tasks, with eval curves."""
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.store import sync_index
    from mashup_core.training.loop import TrainConfig

    tasks, now = _tasks(ws), time.time()
    for i in range(runs // 2):
        task = tasks[i % len(tasks)]
        group = f"pair-{i:03d}"
        ids = {}
        for kind in ("scratch", "mashup"):
            run_id = f"20260101-{i:06d}-{kind}-{task}-{i:06x}"
            rd = ws.runs_dir / run_id
            rd.mkdir(parents=True)
            start = 0.25 if kind == "scratch" else _acc(ws, tasks[(i + 1) % len(tasks)], task, rng)
            curve = [(step, min(1.0, start + (0.9 - start) * step / (step + 30)
                                + rng.uniform(-0.02, 0.02))) for step in range(0, 101, 10)]
            metrics = [{"phase": "eval", "step": s, "seconds": s * 0.4, "acc": a,
                        "acc_norm": a, "nll": 2.0 * (1 - a)} for s, a in curve]
            metrics += [{"phase": "train", "step": s, "loss": 2.0 * (1 - a)} for s, a in curve if s]
            (rd / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
            write_json_atomic(rd / "timings.json", {"training_s": 40.0, "scoring_s": 2.0,
                                                    "merging_s": 0.5} if kind == "mashup"
                              else {"training_s": 40.0})
            write_json_atomic(rd / "status.json", {
                "state": "done", "created": now - 1000 + 2 * i + (kind == "mashup"),
                "started": now - 900, "finished": now - 800, "pid": None, "device": "cpu",
                "final": {"acc": curve[-1][1], "best_acc": max(a for _, a in curve)}})
            spec = RunSpec(target=task, kind=kind, group=group, n=SCALE_N,
                           train=TrainConfig(steps=100, batch_size=8))
            write_json_atomic(rd / "spec.json", spec.to_dict())
            ids[kind] = run_id
        write_json_atomic(ws.runs_dir / ids["mashup"] / "pair.json",
                          {"group": group, "baseline": ids["scratch"], "reused": False})
    sync_index(ws)


def _write_studies(ws: Workspace, studies: int, rng: random.Random) -> None:
    """`studies` merge-only leave-one-out studies over the world's tasks, every cell finished."""
    grids = [("linear", "cat_svd", "ties"), ("linear", "ties"), ("cat_svd",)]
    for i in range(studies):
        write_study(ws, f"scale-{i}", _tasks(ws), grids[i % len(grids)], (1, 2, 3), rng)


def write_study(ws: Workspace, study_id: str, tasks, methods, ks, rng: random.Random) -> Path:
    """A finished merge-only study, as the study's own folder has it (spec.json through
    `open_study`, one cells.jsonl record per planned base and merge cell)."""
    from mashup_core.study.spec import StudySpec, append_cell, open_study, planned_cells

    study_dir = open_study(ws, StudySpec(tasks=tuple(tasks), methods=tuple(methods),
                                         ks=tuple(ks), eval_limit=64), study_id)
    spec = StudySpec.from_dict(json.loads((study_dir / "spec.json").read_text()))
    others = _tasks(ws)
    for cell in planned_cells(spec):
        target = cell["target"]
        if cell["kind"] == "base":
            append_cell(study_dir, {**cell, "acc": _acc(ws, "", target, rng)})
            continue
        donors = [t for t in others if t != target][: cell["k"]]
        acc = sum(_acc(ws, d, target, rng) for d in donors) / len(donors)
        append_cell(study_dir, {**cell, "acc": acc, "acc_norm": acc, "nll": 2 * (1 - acc),
                                "selected": donors, "weights": [1 / len(donors)] * len(donors)})
    return study_dir
