"""Successive halving vs full scoring: same top-k? at what cost? Prints JSON.

    .venv/bin/python benchmarks/bench_halving.py [--n 64] [--k 2] [--size 200] [--workspace DIR]

Builds the tiny demo world (or reads --workspace, e.g. the full demo world; nothing is written
there) and, from its trained adapters (the "related" ones), a synthetic library of --size
adapters (tests/synthetic_library.py: the real ones, noisy copies, random rank-8 ones). For
every demo task as the target (its own adapters left out, as the reference does), it scores
the library in full on n examples and runs successive halving for each (eta, min_n, margin)
setting, then reports how often halving's top-k set equals full scoring's (strict: the same
names; tie-aware: the same scores, which differs only where full scoring's k-th and (k+1)-th
are exactly tied), and the cost in example-forwards and in seconds. Full scoring's table is
computed once per target and shared by the settings.

Per target it also says how close full scoring's own call is (`kth_gap_se`: the (k+1)-th's
gap to the k-th in paired standard errors on the n examples; below ~2 another sample of n
could well swap them) and, where halving disagrees, where it lost each of full scoring's
top k (round, rank there, gap to the k-th in standard errors). `replay_same` checks that
`halving_from_table` on the full table picks what the live run picked (they differ only by
float rounding between batch compositions).

Eight targets are few for a rate near 95 %: with --samples R (default 4) it also scores each
target's library once on R x n examples and replays halving on each of the R disjoint samples
of n (`samples`: agreement over targets x R pairs, and how often full scoring's own top k on
n equals its top k on all R x n: below 1 where the k-th place is a near-tie).
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

from mashup_core.data.examples import sample_examples  # noqa: E402
from mashup_core.demo.world import build_world, load_split  # noqa: E402
from mashup_core.models.library import demo_library, scan_library  # noqa: E402
from mashup_core.models.loading import load_base_model, load_tokenizer  # noqa: E402
from mashup_core.selection.halving import (  # noqa: E402
    DEFAULT_ETA,
    DEFAULT_MARGIN,
    DEFAULT_MIN_N,
    HalvingResult,
    agreement,
    cost_floor,
    halving_from_table,
    paired_se,
    successive_halving,
)
from mashup_core.selection.scoring import ScoreTable, score_library  # noqa: E402
from mashup_core.workspace import Workspace  # noqa: E402

# (eta, min_n, margin): the default, plain successive halving, the earlier default.
SETTINGS = [(DEFAULT_ETA, DEFAULT_MIN_N, DEFAULT_MARGIN), (4.0, 4, 0.0), (2.0, 8, 0.0)]


def gap_se(table: ScoreTable, scorer: str, a: str, b: str) -> float | None:
    """How many paired standard errors b is behind a on table's examples (None: identical)."""
    pa, pb = table.per_example[a][scorer], table.per_example[b][scorer]
    se = paired_se(pb, pa)
    gap = abs(table.row(b).value(scorer) - table.row(a).value(scorer))
    return round(gap / se, 2) if se > 0 else None


def lost(result: HalvingResult, full: ScoreTable, full_top: list[str]) -> list[dict]:
    """Where halving dropped each of full scoring's top k it did not select, and how far it
    was behind that round's k-th (in paired standard errors on that round's examples)."""
    out = []
    for name in full_top:
        for r in result.rounds:
            if name in r.dropped:
                out.append({"checkpoint": name, "dropped_at_n": r.n,
                             "rank_there": r.alive.index(name) + 1, "kept": len(r.kept),
                             "gap_se": gap_se(full.head(r.n), result.scorer,
                                              r.alive[result.k - 1], name)})
    return out


def replay_samples(big: ScoreTable, task: str, n: int, k: int, settings, keys, totals) -> int:
    """Replay each setting on the disjoint samples of n in `big`; how many of them have full
    scoring's top k on n equal to its top k on all of `big`."""
    everything = set(big.select_top_k("nll", k, exclude_task=task))
    stable = 0
    for i in range(big.n // n):
        full = big.subsample(range(i * n, (i + 1) * n))
        stable += set(full.select_top_k("nll", k, exclude_task=task)) == everything
        for key, (eta, min_n, margin) in zip(keys, settings, strict=True):
            result = halving_from_table(full, scorer="nll", k=k, eta=eta, min_n=min_n,
                                        margin=margin, exclude_task=task)
            t = totals[key]
            t["s_pairs"] += 1
            t["s_strict"] += agreement(result, full, exclude_task=task)
            t["s_ties"] += agreement(result, full, exclude_task=task, ties=True)
            t["s_cost"] += result.cost
            t["s_full_cost"] += result.full_cost
            t["s_worst"] = max(t["s_worst"], result.cost_ratio)
    return stable


def run_library(name, model, tok, checkpoints, ws, tasks, n, k, seed, settings,
                samples: int) -> dict:
    keys = [f"eta={eta:g},min_n={m},margin={z:g}" for eta, m, z in settings]
    totals = {key: {"strict": 0, "ties": 0, "top1": 0, "replay": 0, "cost": 0, "full_cost": 0,
                    "seconds": 0.0, "floor": 0.0, "s_pairs": 0, "s_strict": 0, "s_ties": 0,
                    "s_cost": 0, "s_full_cost": 0, "s_worst": 0.0} for key in keys}
    full_seconds, per_target, stable, pairs = 0.0, {}, 0, 0
    for task in tasks:
        split = load_split(ws, task, "train")
        examples = sample_examples(split, n, seed)
        started = time.perf_counter()
        full = score_library(model, tok, checkpoints, examples, progress=False)
        full_seconds += time.perf_counter() - started
        ranked = full.rank("nll", exclude_task=task)
        nxt = ranked[k] if len(ranked) > k else None
        info = per_target[task] = {
            "full_top_k": ranked[:k], "next": nxt,
            "kth_gap_se": gap_se(full, "nll", ranked[k - 1], nxt) if nxt else None,
        }
        for key, (eta, min_n, margin) in zip(keys, settings, strict=True):
            started = time.perf_counter()
            result = successive_halving(model, tok, checkpoints, examples, scorer="nll", k=k,
                                        eta=eta, min_n=min_n, margin=margin, exclude_task=task)
            seconds = time.perf_counter() - started
            replay = halving_from_table(full, scorer="nll", k=k, eta=eta, min_n=min_n,
                                        margin=margin, exclude_task=task)
            row = {"top_k": result.selected,
                   "strict": agreement(result, full, exclude_task=task),
                   "ties": agreement(result, full, exclude_task=task, ties=True),
                   "cost_ratio": round(result.cost_ratio, 3), "seconds": round(seconds, 2),
                   "alive": [len(r.alive) for r in result.rounds],
                   "replay_same": set(replay.selected) == set(result.selected)}
            if not row["strict"]:
                row["lost"] = lost(result, full, ranked[:k])
            t = totals[key]
            t["strict"] += row["strict"]
            t["ties"] += row["ties"]
            t["top1"] += result.selected[0] == ranked[0]
            t["replay"] += row["replay_same"]
            t["cost"] += result.cost
            t["full_cost"] += result.full_cost
            t["seconds"] += seconds
            info[key] = row
            t["floor"] += cost_floor(result.full_cost // n - 1, k, n, min_n)
        if samples > 1:
            r = min(samples, len(split) // n)
            big = score_library(model, tok, checkpoints, sample_examples(split, r * n, seed),
                                progress=False)
            stable += replay_samples(big, task, n, k, settings, keys, totals)
            pairs += r
        print(json.dumps({name: {task: info}}), file=sys.stderr, flush=True)
    summary = {key: {"top_k_agreement": round(t["strict"] / len(tasks), 3),
                     "top_k_agreement_tie_aware": round(t["ties"] / len(tasks), 3),
                     "top1_agreement": round(t["top1"] / len(tasks), 3),
                     "cost_ratio_forwards": round(t["cost"] / t["full_cost"], 3),
                     "cost_ratio_seconds": round(t["seconds"] / full_seconds, 3),
                     "cost_floor": round(t["floor"] / len(tasks), 3),
                     "halving_seconds": round(t["seconds"], 2),
                     "replay_agrees": f"{t['replay']}/{len(tasks)}"}
               for key, t in totals.items()}
    if pairs:
        for key, t in totals.items():
            summary[key]["samples"] = {
                "pairs": t["s_pairs"], "top_k_agreement": round(t["s_strict"] / t["s_pairs"], 3),
                "top_k_agreement_tie_aware": round(t["s_ties"] / t["s_pairs"], 3),
                "cost_ratio_forwards": round(t["s_cost"] / t["s_full_cost"], 3),
                "worst_cost_ratio": round(t["s_worst"], 3)}
    return {"library": name, "checkpoints": len(checkpoints), "targets": len(tasks),
            "full_seconds": round(full_seconds, 2),
            "full_top_k_on_n_equals_top_k_on_all_samples": round(stable / pairs, 3) if pairs
            else None, "settings": summary, "per_target": per_target}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--size", type=int, default=200, help="synthetic library size")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (nested prefixes)")
    parser.add_argument("--workspace", help="a built demo world, read only (default: build the "
                        "tiny one)")
    parser.add_argument("--library", choices=["demo", "synthetic", "both"], default="both",
                        help="which library to measure (the synthetic one is ~1 h on one core)")
    parser.add_argument("--tasks", help="comma-separated targets (default: every demo task)")
    parser.add_argument("--samples", type=int, default=4,
                        help="disjoint samples of n per target for the replayed agreement "
                        "(1: none; default %(default)s)")
    parser.add_argument("--settings", default=",".join(f"{e:g}/{m}/{z:g}" for e, m, z in SETTINGS),
                        help="eta/min_n/margin triples, comma separated (default %(default)s)")
    args = parser.parse_args()
    settings = []
    for triple in filter(None, args.settings.split(",")):
        eta, min_n, *margin = triple.split("/")
        settings.append((float(eta), int(min_n), float(margin[0]) if margin else 0.0))
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
        results = []
        if args.library in ("demo", "both"):
            results.append(run_library("demo", model, tok, demo, ws, tasks, args.n, args.k,
                                       args.seed, settings, args.samples))
        if args.library in ("synthetic", "both"):
            results.append(run_library(f"synthetic-{args.size}", model, tok, synthetic, ws, tasks,
                                       args.n, args.k, args.seed, settings, args.samples))
    print(json.dumps({
        "benchmark": "successive_halving_vs_full", "n": args.n, "k": args.k, "scorer": "nll",
        "world": args.workspace or "tiny (built)", "device": "cpu",
        "torch_threads": torch.get_num_threads(), "synthetic_build_seconds": round(build_s, 2),
        "goal": "top-k agreement >= 0.95 at cost <= 0.25x", "results": results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
