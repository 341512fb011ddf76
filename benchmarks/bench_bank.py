"""A library of a thousand adapters scored: the adapter bank vs PEFT vs lm-eval; JSON.

    .venv/bin/python benchmarks/bench_bank.py [--sizes 8,64,256,1000] [--rows 64]
        [--models small,demo] [--hflm-max 64] [--peft-max 1000] [--halving 1000]

For each model (`small`: a ~19M-parameter Llama, `demo`: the demo world's 0.4M one, both with
the demo's character tokenizer, random init) a synthetic library of mixed ranks (8, 16) and
target-module sets (all-linear, q/v, attention) is written (`demo.library_gen`), and its
first N adapters are scored on the same `rows` four-choice rows:
- bank: `score_library` (the adapters copied into a bank of stacked factors, every row with
  its own adapter by gathered matmuls);
- peft: `score_library(use_bank=False)`, PEFT's mixed-adapter batches, adapters injected in
  groups;
- hflm: lm-eval's `HFLM(pretrained=BASE, peft=ADAPTER)` per adapter, as users run it (up to
  --hflm-max adapters);
- base forward: the bare base model scoring the same rows once (the floor: every adapter needs
  its own forward over the rows).
Each reports seconds, adapters per second, seconds per adapter over the base forward, and the
process's peak RSS above what it held before. `--halving N`: successive halving (eta 4,
min-n 4, n = rows) over N adapters, bank vs PEFT, with the share of its time the bank spent
reading adapters back in. Load included everywhere. Scores of the bank and PEFT must agree
(1e-4) or the script exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch
from bench_gpu import hflm_loglikelihoods  # benchmarks/ is on sys.path when run as a script

from mashup_core.demo import synthetic
from mashup_core.demo.library_gen import write_synthetic_library
from mashup_core.demo.tiny_model import TinyModelSpec, build_char_tokenizer, build_tiny_llama
from mashup_core.models.library import scan_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.halving import successive_halving
from mashup_core.selection.loglik import choice_loglikelihoods
from mashup_core.selection.scoring import score_library

MODELS = {"small": TinyModelSpec(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=1408),
          "demo": TinyModelSpec()}


@contextmanager
def peak_rss(out: dict):
    """The process's peak RSS above its RSS at the start, sampled every 20 ms, in MB."""
    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        out["seconds"] = round(time.perf_counter() - t0, 3)
        done.set()
        thread.join()
        out["peak_rss_mb"] = round((max(peak[0], proc.memory_info().rss) - start) / 2**20, 1)


def build(root: Path, spec: TinyModelSpec, n: int) -> tuple[Path, list]:
    base = root / "base"
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(base)
    build_tiny_llama(len(tokenizer), spec, seed=0).save_pretrained(base, safe_serialization=True)
    write_synthetic_library(base, root / "library", n, ranks=(8, 16), seed=1)
    return base, scan_library([root / "library"], base_model_dir=base).checkpoints


def rows(n: int) -> list:
    return synthetic.generate_splits("tail", {"train": n}, seed=0)["train"]


def run_model(name: str, spec: TinyModelSpec, args, root: Path) -> dict:
    base, library = build(root / name, spec, max(args.sizes))
    tok = load_tokenizer(base)
    examples = rows(args.rows)
    model = load_base_model(base, device="cpu", dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    floor: dict = {}
    choice_loglikelihoods(model, tok, examples)  # warm-up
    with peak_rss(floor):
        for _ in range(3):
            choice_loglikelihoods(model, tok, examples)
    floor["seconds"] = round(floor["seconds"] / 3, 4)
    out = {"params": n_params, "rows": len(examples), "base_forward_s": floor["seconds"],
           "sizes": {}}
    for size in args.sizes:
        ckpts = library[:size]
        entry: dict = {}
        for method in ("bank", "peft", "hflm"):
            if (method == "hflm" and size > args.hflm_max) or (method == "peft" and size > args.peft_max):
                continue
            measured: dict = {}
            with peak_rss(measured):
                if method == "hflm":
                    scores = {c.name: hflm_loglikelihoods(base, c.path, examples, device="cpu",
                                                          dtype="float32")[0] for c in ckpts}
                else:
                    loaded = load_base_model(base, device="cpu", dtype=torch.float32)
                    table = score_library(loaded, tok, ckpts, examples, progress=False,
                                          use_bank=method == "bank")
                    scores = {c.name: table.choice_scores[c.name].logprobs for c in ckpts}
            measured["adapters_per_s"] = round(size / measured["seconds"], 2)
            measured["per_adapter_over_base_forward"] = round(
                measured["seconds"] / size / out["base_forward_s"], 3)
            entry[method] = measured
            entry.setdefault("_scores", {})[method] = scores
        agree = _max_diff(entry["_scores"].get("bank"), entry["_scores"].get("peft"))
        entry["bank_vs_peft_max_abs_diff"] = agree
        if agree is not None and agree > 1e-4:
            print(json.dumps({"error": f"{name} n={size}: bank and PEFT differ by {agree}"}))
            sys.exit(1)
        entry.pop("_scores")
        out["sizes"][str(size)] = entry
        print(f"{name} {size}: " + ", ".join(f"{m} {v['seconds']} s" for m, v in entry.items()
                                           if isinstance(v, dict)), file=sys.stderr)
    if args.halving:
        ckpts = library[: args.halving]
        out["halving"] = {"adapters": len(ckpts)}
        for method in ("bank", "peft"):
            measured: dict = {}
            with peak_rss(measured):
                loaded = load_base_model(base, device="cpu", dtype=torch.float32)
                result = successive_halving(loaded, tok, ckpts, examples, scorer="nll", k=2,
                                            use_bank=method == "bank")
            measured.update(cost_ratio=round(result.cost_ratio, 4), selected=result.selected,
                            loads=result.loads, reloads=result.reloads,
                            load_share=round(result.load_s / measured["seconds"], 4),
                            reattach_share=round(result.reload_s / measured["seconds"], 4))
            out["halving"][method] = measured
    return out


def _max_diff(a, b) -> float | None:
    if not a or not b:
        return None
    return max(abs(x - y) for name in a for ra, rb in zip(a[name], b[name], strict=True)
               for x, y in zip(ra, rb, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")],
                        default=[8, 64, 256, 1000])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--models", type=lambda t: t.split(","), default=list(MODELS))
    parser.add_argument("--hflm-max", type=int, default=64)
    parser.add_argument("--peft-max", type=int, default=1000)
    parser.add_argument("--halving", type=int, default=1000)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # one core for the timed process on a 2-core box
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": {"cpus": psutil.cpu_count(), "torch": torch.__version__,
                              "threads": torch.get_num_threads()},
                  "models": {m: run_model(m, MODELS[m], args, Path(tmp)) for m in args.models}}
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
