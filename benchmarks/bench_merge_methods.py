"""Every merge method at Mistral-7B layer shapes (one layer, CPU): merge time and peak memory.
Prints JSON.

- LoRA methods: `--adapters` random rank-`--rank` adapters on the 7 projections of one layer
  (q/k/v/o 4096-wide, 8 KV heads × 128, MLP 14336), merged by `merge_factors`; the
  dense-ΔW methods build each module's 14336 × 4096 update, the low-rank ones never do.
- Full-checkpoint methods: one layer's 9 tensors (the 7 projections and 2 norms) of a base
  and `--adapters` finetunes (base + a random Δ), in float32, through each method's pure
  function tensor by tensor, as `merge_full_checkpoints` streams them (file reads and writes
  are the same for every method and left out).

Each method runs in a fresh process, so its peak RSS is its own: `peak_mb` is the growth of
the process's peak over what it held before merging (its inputs, already in memory), on the
first merge. `seconds` is the fastest of `--repeat` merges (LoRA; full: one), so that other
work on a shared machine inflates it less.

    .venv/bin/python benchmarks/bench_merge_methods.py [--rank 8] [--adapters 3] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = {  # module: (out, in) in Mistral-7B
    "self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (1024, 4096),
    "self_attn.v_proj": (1024, 4096), "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (14336, 4096), "mlp.up_proj": (14336, 4096), "mlp.down_proj": (4096, 14336),
}
NORMS = {"input_layernorm": 4096, "post_attention_layernorm": 4096}
QUICK = 16  # --quick divides every dimension by this (a smoke run)
DENSITY = 0.5


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _shapes(quick: bool) -> dict[str, tuple[int, int]]:
    return {k: (o // QUICK, i // QUICK) if quick else (o, i) for k, (o, i) in SHAPES.items()}


def run_lora(method: str, rank: int, n: int, quick: bool, repeat: int = 1) -> dict:
    from mashup_core.merging.lora import MERGE_METHODS, LoraAdapter, LoraFactors, merge_factors

    gen = torch.Generator().manual_seed(0)
    adapters = []
    for i in range(n):
        modules = {f"base_model.model.model.layers.0.{name}": LoraFactors(
            torch.randn(rank, in_dim, generator=gen) / in_dim**0.5,
            torch.randn(out_dim, rank, generator=gen) * 0.01, 16 / rank)
            for name, (out_dim, in_dim) in _shapes(quick).items()}
        adapters.append(LoraAdapter(Path(f"a{i}"), {}, modules, torch.float32, "", None))
    spec = MERGE_METHODS[method]
    options = {"density": DENSITY} if spec.uses_density else {}
    before = _peak_bytes()
    times = []
    for i in range(max(1, repeat)):
        start = time.perf_counter()
        merged = merge_factors(adapters, None, method, **options)
        times.append(time.perf_counter() - start)
        if i == 0:
            peak = _peak_bytes() - before
    return {"seconds": round(min(times), 3), "peak_mb": round(peak / 2**20, 1),
            "output_rank": merged.rank, "family": spec.family}


def run_full(method: str, n: int, quick: bool) -> dict:
    from mashup_core.merging.full import FULL_MERGE_METHODS, tensor_seed
    from mashup_core.merging.registry import check_weights, resolve_params

    spec = FULL_MERGE_METHODS[method]
    n = spec.max_inputs or n
    params = {"t": 0.5} if method == "slerp" else {"t": 1e-3} if method == "nearswap" else {}
    if spec.uses_density:
        params["density"] = DENSITY
    weights = check_weights(spec, None, n)
    values = resolve_params(spec, params, n, weights=weights if spec.weights else None)
    gen = torch.Generator().manual_seed(0)
    shapes = {**_shapes(quick), **{k: (v // QUICK if quick else v,) for k, v in NORMS.items()}}
    tensors = {}
    for name, shape in shapes.items():
        base = torch.randn(*shape, generator=gen) * 0.02
        tensors[name] = (base, [base + 1e-3 * torch.randn(*shape, generator=gen) for _ in range(n)])
    before = _peak_bytes()
    start = time.perf_counter()
    for name, (base, inputs) in tensors.items():
        rng = torch.Generator().manual_seed(tensor_seed(0, name)) if spec.random else None
        # the driver hands each method fresh tensors (it reads them); the methods may reuse them
        spec.fn([t.clone() for t in inputs], base, values, rng)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "peak_mb": round((_peak_bytes() - before) / 2**20, 1),
            "family": spec.family}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="every dimension / 16: a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="LoRA merges timed (the fastest counts)")
    parser.add_argument("--only", help="lora:METHOD or full:METHOD (one run, in this process)")
    parser.add_argument("--kinds", default="lora,full")
    args = parser.parse_args()
    if args.only:
        kind, method = args.only.split(":")
        result = (run_lora(method, args.rank, args.adapters, args.quick, args.repeat) if kind == "lora"
                  else run_full(method, args.adapters, args.quick))
        print(json.dumps(result))
        return
    from mashup_core.merging.full import FULL_MERGE_METHODS
    from mashup_core.merging.lora import MERGE_METHODS

    report = {"shapes": "Mistral-7B, one layer" + (" / 16 (--quick)" if args.quick else ""),
              "rank": args.rank, "adapters": args.adapters, "density": DENSITY, "repeat": args.repeat,
              "threads": torch.get_num_threads(), "lora": {}, "full": {}}
    for kind, registry in (("lora", MERGE_METHODS), ("full", FULL_MERGE_METHODS)):
        if kind not in args.kinds.split(","):
            continue
        for method in registry:
            cmd = [sys.executable, __file__, "--only", f"{kind}:{method}", "--rank", str(args.rank),
                   "--adapters", str(args.adapters), "--repeat", str(args.repeat),
                   *(["--quick"] if args.quick else [])]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                report[kind][method] = {"error": done.stderr.strip().splitlines()[-1]}
            else:
                report[kind][method] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{kind} {method}: {report[kind][method]}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
