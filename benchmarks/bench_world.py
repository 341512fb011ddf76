"""Build the full demo world from nothing and print its cost and quality as JSON.

    .venv/bin/python benchmarks/bench_world.py [--profile full] [--seed 0] [--keep DIR]

Reports: build time (tasks, pretraining, library), each adapter's accuracy on its own task
next to the base model's, the adapter x task transfer matrix, and the time of a second,
reusing build.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mashup_core.demo.world import build_world
from mashup_core.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="build here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(args.keep or tmp).resolve())
        report = build_world(ws, args.profile, args.seed, force=True, progress=False)
        t0 = time.perf_counter()
        reused = build_world(ws, args.profile, args.seed, progress=False)
        reuse_seconds = time.perf_counter() - t0
    wins = [t for t, a in report.adapter_accuracy.items() if a > report.base_accuracy[t] + 0.2]
    print(json.dumps({
        "benchmark": "demo_world_build",
        "profile": args.profile, "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "build_seconds": round(report.seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in report.timings.items()},
        "reuse_seconds": round(reuse_seconds, 3), "reused": reused.reused,
        "base_accuracy": report.base_accuracy,
        "adapter_accuracy": report.adapter_accuracy,
        "adapters_beating_base_by_0.2": f"{len(wins)}/{len(report.adapter_accuracy)}",
        "transfer_accuracy": report.cross_accuracy,
    }, indent=2))


if __name__ == "__main__":
    main()
