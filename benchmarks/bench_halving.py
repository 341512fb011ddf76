"""Successive halving vs full scoring: same top-k? at what cost? Prints JSON.

    .venv/bin/python benchmarks/bench_halving.py [--n 64] [--k 2] [--size 200] [--workspace DIR]

Builds the tiny demo world (or uses --workspace, e.g. the full demo world) and, from its
trained adapters (the "related" ones), a synthetic library of --size adapters
(tests/synthetic_library.py: the real ones, noisy copies, random rank-8 ones). For every demo
task as the target (its own adapters left out, as the reference does), it scores the library
in full on n examples and runs successive halving for each (eta, min_n) setting, then reports
how often halving's top-k set equals full scoring's, and the cost in example-forwards and in
seconds. Full scoring's table is computed once per target and shared by the settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic_library import build_synthetic_library  # noqa: E402

from mashup_core.data.targets import sample_examples  # noqa: E402
from mashup_core.demo.world import build_world, load_split  # noqa: E402
from mashup_core.models.library import demo_library, scan_library  # noqa: E402
from mashup_core.models.loading import load_base_model, load_tokenizer  # noqa: E402
from mashup_core.selection.halving import agreement, successive_halving  # noqa: E402
from mashup_core.selection.scoring import score_library  # noqa: E402
from mashup_core.workspace import Workspace  # noqa: E402

SETTINGS = [(2.0, 8), (3.0, 8), (4.0, 4)]  # (eta, min_n)


def run_library(name, model, tok, checkpoints, ws, tasks, n, k, seed, settings) -> dict:
    per_setting = {f"eta={eta:g},min_n={m}": {"agree": 0, "agree_top1": 0, "cost": 0,
                                               "full_cost": 0, "seconds": 0.0}
                   for eta, m in settings}
    full_seconds, per_target = 0.0, {}
    for task in tasks:
        examples = sample_examples(load_split(ws, task, "train"), n, seed)
        started = time.perf_counter()
        full = score_library(model, tok, checkpoints, examples, progress=False)
        full_seconds += time.perf_counter() - started
        per_target[task] = {"full_top_k": full.select_top_k("nll", k, exclude_task=task)}
        for eta, min_n in settings:
            key = f"eta={eta:g},min_n={min_n}"
            started = time.perf_counter()
            result = successive_halving(model, tok, checkpoints, examples, scorer="nll", k=k,
                                        eta=eta, min_n=min_n, exclude_task=task)
            seconds = time.perf_counter() - started
            same = agreement(result, full, exclude_task=task)
            top1 = result.selected[0] == per_target[task]["full_top_k"][0]
            s = per_setting[key]
            s["agree"] += same
            s["agree_top1"] += top1
            s["cost"] += result.cost
            s["full_cost"] += result.full_cost
            s["seconds"] += seconds
            per_target[task][key] = {"top_k": result.selected, "same": same,
                                     "cost_ratio": round(result.cost_ratio, 3)}
        print(json.dumps({name: {task: per_target[task]}}), file=sys.stderr, flush=True)
    summary = {key: {"top_k_agreement": round(s["agree"] / len(tasks), 3),
                     "top1_agreement": round(s["agree_top1"] / len(tasks), 3),
                     "cost_ratio_forwards": round(s["cost"] / s["full_cost"], 3),
                     "cost_ratio_seconds": round(s["seconds"] / full_seconds, 3)}
               for key, s in per_setting.items()}
    return {"library": name, "checkpoints": len(checkpoints), "targets": len(tasks),
            "full_seconds": round(full_seconds, 2), "settings": summary, "per_target": per_target}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--size", type=int, default=200, help="synthetic library size")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (nested prefixes)")
    parser.add_argument("--workspace", help="a built demo world (default: build the tiny one)")
    parser.add_argument("--library", choices=["demo", "synthetic", "both"], default="both",
                        help="which library to measure (each run is a few minutes on one core)")
    parser.add_argument("--tasks", help="comma-separated targets (default: every demo task)")
    parser.add_argument("--settings", default=",".join(f"{e:g}/{m}" for e, m in SETTINGS),
                        help="eta/min_n pairs, comma separated (default %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.workspace:
            ws = Workspace(Path(args.workspace))
        else:
            ws = Workspace(Path(tmp) / "world")
            build_world(ws, "tiny", seed=0, progress=False, log=lambda _msg: None)
        tasks = args.tasks.split(",") if args.tasks else list(ws.manifest()["tasks"])
        model, tok = load_base_model(ws.base_dir, device="cpu"), load_tokenizer(ws.base_dir)
        demo = demo_library(ws).checkpoints
        related = [c.path for c in demo_library(ws, include_snapshots=False).checkpoints]
        started = time.perf_counter()
        build_synthetic_library(related, Path(tmp) / "synthetic", size=args.size, seed=0)
        build_s = time.perf_counter() - started
        synthetic = scan_library([Path(tmp) / "synthetic"], base_model_dir=ws.base_dir).checkpoints
        settings = [(float(e), int(m)) for e, m in
                    (pair.split("/") for pair in args.settings.split(",") if pair)]
        results = []
        if args.library in ("demo", "both"):
            results.append(run_library("demo", model, tok, demo, ws, tasks, args.n, args.k,
                                       args.seed, settings))
        if args.library in ("synthetic", "both"):
            results.append(run_library(f"synthetic-{args.size}", model, tok, synthetic, ws, tasks,
                                       args.n, args.k, args.seed, settings))
    print(json.dumps({
        "benchmark": "successive_halving_vs_full", "n": args.n, "k": args.k, "scorer": "nll",
        "world": args.workspace or "tiny (built)", "device": "cpu",
        "torch_threads": torch.get_num_threads(), "synthetic_build_seconds": round(build_s, 2),
        "goal": "top-k agreement >= 0.95 at cost <= 0.25x", "results": results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
