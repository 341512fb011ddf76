"""P2: merging at Mistral-7B projection shapes. Prints JSON.

1. TIES (density 0.2) over 8 random rank-8 adapters, every module of `--layers` layers:
   seconds and peak RSS growth (dense methods stream module by module, in row blocks).
2. Exact linear merge re-factored to rank 8: ours (`cat_svd`: QR of the stacked factors and an
   SVD of a 64×64 core) on every module, against dense ΔW = Σ w_i ΔW_i + `torch.linalg.svd` on
   the `--dense-modules` only (a full SVD of a 14336×4096 matrix takes minutes on 2 cores).
   Products B·A are compared, not factors: singular vectors have arbitrary signs.
3. How close the randomized SVD that the dense methods use above 1024 columns comes to the
   exact truncation, on a TIES output small enough to decompose exactly.

    .venv/bin/python benchmarks/bench_merge.py [--layers 2] [--dense-modules 0.k_proj,0.v_proj]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from peft.utils import merge_utils

from mashup_core.merging.lora import (
    EXACT_SVD_MAX_DIM,
    MERGE_METHODS,
    LoraAdapter,
    LoraFactors,
    MergeParams,
    merge_factors,
    truncated_svd,
)

SHAPES = {  # module: (out, in) in Mistral-7B (hidden 4096, 8 kv heads × 128, intermediate 14336)
    "q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096),
    "gate_proj": (14336, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336),
}
PREFIX = "base_model.model.model.layers.{layer}.{part}.{name}"


def random_adapters(n: int, rank: int, layers: int, seed: int) -> list[LoraAdapter]:
    gen = torch.Generator().manual_seed(seed)
    adapters = []
    for i in range(n):
        modules = {}
        for layer in range(layers):
            for name, (out_dim, in_dim) in SHAPES.items():
                part = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                A = torch.randn(rank, in_dim, generator=gen) / in_dim**0.5
                B = torch.randn(out_dim, rank, generator=gen) * 0.01
                modules[PREFIX.format(layer=layer, part=part, name=name)] = LoraFactors(A, B, 16 / rank)
        adapters.append(LoraAdapter(Path(f"random-{i}"), {}, modules, torch.float32, "", None))
    return adapters


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def product(f: LoraFactors) -> torch.Tensor:
    return f.delta()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--dense-modules", default="0.k_proj,0.v_proj",
                        help="LAYER.NAME list timed with a dense SVD too; 'all' for every module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    adapters = random_adapters(args.adapters, args.rank, args.layers, args.seed)
    weights = [1 / args.adapters] * args.adapters
    modules = list(adapters[0].modules)
    report = {
        "setup": {"adapters": args.adapters, "rank": args.rank, "layers": args.layers,
                  "modules": len(modules), "dtype": "float32", "shapes": SHAPES,
                  "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "load_average_at_start": os.getloadavg()},
    }

    # 1. TIES first, so the peak RSS it reports is its own.
    before, t0 = rss_bytes(), time.perf_counter()
    ties = merge_factors(adapters, weights, "ties", density=args.density, rank=args.rank)
    report["ties"] = {
        "seconds": time.perf_counter() - t0, "density": args.density, "out_rank": ties.rank,
        "peak_rss_growth_gb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 1e9,
        "target_peak_gb": 2.0,
        "note": f"per module: dense ΔW_i in row blocks via peft.utils.merge_utils, then rank-{args.rank} "
                f"truncation (exact SVD up to {EXACT_SVD_MAX_DIM} columns, randomized above)",
    }
    del ties
    log(f"ties: {report['ties']['seconds']:.1f} s")

    # 2. Exact linear merge re-factored to rank r: ours on every module, dense on a subset.
    t0 = time.perf_counter()
    ours = merge_factors(adapters, weights, "cat_svd", rank=args.rank)
    ours_all = time.perf_counter() - t0
    log(f"cat_svd, all modules: {ours_all:.2f} s")
    chosen = modules if args.dense_modules == "all" else [
        next(m for m in modules if m.endswith(f"layers.{spec.split('.')[0]}.{_part(spec)}.{spec.split('.')[1]}"))
        for spec in args.dense_modules.split(",")
    ]
    params, w = MergeParams(rank=args.rank), torch.tensor(weights)
    rows, ours_subset, dense_subset, worst = [], 0.0, 0.0, 0.0
    for name in chosen:
        factors = [a.modules[name] for a in adapters]
        t0 = time.perf_counter()
        fast = MERGE_METHODS["cat_svd"].fn(factors, w, params)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        delta = merge_utils.task_arithmetic([f.delta() for f in factors], w)
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        best = (U[:, : args.rank] * S[: args.rank]) @ Vh[: args.rank]
        t_dense = time.perf_counter() - t0
        diff = (product(fast) - best).abs().max().item() / best.abs().max().item()
        fro = ((product(fast) - best).norm() / best.norm()).item()
        rows.append({"module": name.removeprefix("base_model.model.model."), "shape": list(delta.shape),
                     "ours_s": t_ours, "dense_s": t_dense, "ratio": t_ours / t_dense,
                     "max_rel_diff": diff, "fro_rel_diff": fro})
        ours_subset, dense_subset, worst = ours_subset + t_ours, dense_subset + t_dense, max(worst, diff)
        del delta, U, S, Vh, best
        log(f"dense {name}: {t_dense:.1f} s")
    report["exact_linear_rank_r"] = {
        "ours_seconds_all_modules": ours_all,
        "dense_timed_on": f"{len(chosen)} of {len(modules)} modules (dense full SVD is minutes per "
                          "large module on 2 cores)" if len(chosen) < len(modules) else "all modules",
        "ours_seconds_same_modules": ours_subset, "dense_seconds_same_modules": dense_subset,
        "ratio": ours_subset / dense_subset, "target_ratio": 0.01,
        "max_rel_diff_of_BA": worst, "target_rel_diff": 1e-4, "per_module": rows,
    }
    del ours

    # 3. Randomized vs exact truncation on a TIES output whose exact SVD is affordable.
    name = next(m for m in modules if m.endswith("k_proj"))
    factors = [a.modules[name] for a in adapters]
    ties_delta = merge_utils.ties([f.delta() for f in factors], w, args.density)
    exact, approx = (truncated_svd(ties_delta, args.rank, randomized=r) for r in (False, True))
    residual = [(ties_delta - (U * S) @ Vh).norm().item() for U, S, Vh in (exact, approx)]
    report["randomized_svd_check"] = {
        "module": name.removeprefix("base_model.model.model."), "matrix": "ties output",
        "residual_excess": residual[1] / residual[0] - 1,
        "note": "‖M - M_r‖ of the randomized truncation over that of the exact one, minus 1",
    }
    report["total_seconds"] = time.perf_counter() - started
    print(json.dumps(report, indent=2))


def _part(spec: str) -> str:
    return "mlp" if spec.split(".")[1] in ("gate_proj", "up_proj", "down_proj") else "self_attn"


if __name__ == "__main__":
    main()
