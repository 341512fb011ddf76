"""Recycle (issue 15): a 3-target merge-weight search with one target held out. Prints JSON.

1. Cost: the search at `--budget` evaluations (CMA-ES over one weight per library checkpoint,
   each evaluation a low-rank merge scored on every target's rows), evaluations per second,
   total time, and how often the base model was loaded (once).
2. What it finds (issue 15's "Must show"): the searched merge's mean and held-out accuracy
   against equal weights over the same checkpoints and against the best single checkpoint, on
   the search rows and again on the targets' validation splits (rows no search saw); the
   number of checkpoints with weight > 0.05; the Spearman correlation of weight and own score;
   the front. With `--figure`, the front's scatter is written as HTML.

    .venv/bin/python benchmarks/bench_recycle.py [--workspace DIR] [--targets sort,min,dsort]
        [--held-out dmax] [--budget 60] [--front 2] [--front-budget 60] [--n 64]
        [--figure front.html]

Without --workspace a tiny demo world is built in a temporary folder first (the test
fixtures' code path: `build_world(ws, "tiny", seed=0)`, about 15 s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import mashup_core.models.loading as loading
from mashup_core.merging import recycle
from mashup_core.workspace import Workspace


def validation_accuracies(ws: Workspace, front: dict, points: list[dict], held_out: str | None,
                          limit: int) -> dict[str, dict[str, float]]:
    """Each point's accuracy on the validation split of every target (and the held-out one)."""
    from mashup_core.config import find_target, load_target
    from mashup_core.data.examples import sample_examples
    from mashup_core.merging.lora import load_lora_factors
    from mashup_core.models.loading import load_tokenizer

    names = list(front["targets"]) + ([held_out] if held_out else [])
    rows = {t: sample_examples(load_target(find_target(ws, t, "validation"), ws), limit or None, 0)
            for t in names}
    model = loading.load_base_model(front["base_model"], device="cpu")
    evaluator = recycle.MultiTargetObjective(model, load_tokenizer(front["base_model"]),
                                             load_lora_factors(front["checkpoint_paths"]), rows,
                                             method=front["method"])
    return {p["label"]: evaluator.per_target(p["weights"]) for p in points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="a built world (default: build the tiny one)")
    parser.add_argument("--targets", default="sort,min,dsort")
    parser.add_argument("--held-out", default="dmax")
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--front", type=int, default=2, help="preference searches of part 2")
    parser.add_argument("--front-budget", type=int,
                        help="part 2's budget, shared by its searches (default: --budget)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--validation", type=int, default=0, help="validation rows (0 = all)")
    parser.add_argument("--figure", help="write the front's scatter (first two targets) here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        built = None
        if args.workspace:
            ws = Workspace(Path(args.workspace).resolve())
        else:
            from mashup_core.demo.world import build_world

            ws = Workspace(Path(tmp) / "ws")
            t0 = time.perf_counter()
            build_world(ws, "tiny", seed=0, progress=False, log=lambda _m: None)
            built = time.perf_counter() - t0
        world = (ws.manifest() or {}).get("profile", "user workspace")
        targets = tuple(args.targets.split(","))

        loads = []
        real = loading.load_base_model

        def counted(*a, **k):
            loads.append(a)
            return real(*a, **k)

        loading.load_base_model = counted
        t0 = time.perf_counter()
        cost = recycle.run_recycle(ws, recycle.RecycleRequest(
            targets=targets, held_out=args.held_out, budget=args.budget, front_k=0, n=args.n))
        total = time.perf_counter() - t0
        base_loads = len(loads)
        loads.clear()
        t1 = time.perf_counter()
        front = recycle.run_recycle(ws, recycle.RecycleRequest(
            targets=targets, held_out=args.held_out, budget=args.front_budget or args.budget,
            front_k=args.front, n=args.n))
        front_seconds = time.perf_counter() - t1
        front_loads = len(loads)
        loading.load_base_model = real

        numbers = recycle.summary(cost)
        chosen = [p for p in cost["points"] if p.get("best_of_run") == 0 or p["kind"] == "equal"]
        singles = [p for p in cost["points"] if p["kind"] == "single"]
        chosen.append(max(singles, key=lambda p: p["objective"]))
        val = validation_accuracies(ws, cost, chosen, args.held_out, args.validation)

        def on_validation(label: str) -> dict:
            accs = val[label]
            return {"per_target": {t: accs[t] for t in targets},
                    "mean": sum(accs[t] for t in targets) / len(targets),
                    "held_out": accs.get(args.held_out)}

        if args.figure:
            from mashup_core.views.recycle import front_scatter

            front_scatter(front, targets[0], targets[1]).write_html(args.figure)
        print(json.dumps({
            "benchmark": "recycle_search",
            "world": world, "world_built_seconds": built and round(built, 1),
            "torch_threads": torch.get_num_threads(),
            "targets": list(targets), "held_out": args.held_out, "n_rows_per_target": args.n,
            "checkpoints": len(cost["checkpoints"]), "method": cost["method"],
            "search": {
                "budget": args.budget, "evaluations": cost["evaluations"],
                "search_seconds": round(cost["seconds"], 2),
                "evaluations_per_second": round(cost["evaluations"] / cost["seconds"], 2),
                "merges_evaluated_incl_references": cost["merges_evaluated"],
                "total_seconds_incl_loading_and_references": round(total, 2),
                "base_loads": base_loads,
            },
            "on_search_rows": numbers,
            "on_validation_rows": {
                "searched": on_validation(numbers["searched"]["label"]),
                "equal": on_validation("equal weights"),
                "best_single": {"label": numbers["best_single"]["label"],
                                **on_validation(numbers["best_single"]["label"])},
            },
            "front_sweep": {
                "front_k": args.front, "budget": args.front_budget or args.budget,
                "seconds": round(front_seconds, 2), "base_loads": front_loads,
                "runs": [{"objective": r["objective"], "budget": r["budget"], "value": r["value"]}
                         for r in front["runs"]],
                "front": [{"label": p["label"], "per_target": p["per_target"],
                           "held_out": p["held_out"]} for p in front["points"] if p["front"]],
            },
        }, indent=2))


if __name__ == "__main__":
    main()
