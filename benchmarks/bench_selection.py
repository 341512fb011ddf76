"""P1: scoring a LoRA library on a target, ours vs lm-eval's HFLM (and a naive loop); JSON.

    .venv/bin/python benchmarks/bench_selection.py [--n 64] [--adapters 8] [--no-naive]

Builds a ~20M-parameter Llama from a config (random init, saved with save_pretrained) and
random rank-8 all-linear LoRA adapters (B non-zero, so each changes the model), then scores
every adapter and the base by answer accuracy on n four-choice `tail` examples:
- ours: `score_library` -- the base loaded once, the adapters in memory-sized groups on one
  PeftModel (mixed-adapter batches where a forward spans adapters), each prompt run once per
  adapter with its KV cache shared across the choices, length-bucketed batches;
- HFLM: what a user runs with lm-eval, `HFLM(pretrained=BASE, peft=ADAPTER, batch_size=32)` per
  checkpoint (and once without, for the base), `loglikelihood` on the same (context,
  continuation) requests (`bench_gpu.hflm_loglikelihoods`, fp32 on the CPU);
- naive (second line): per checkpoint, reload base + adapter, one forward per example x choice.
All include loading from disk. Ours must agree with the naive loop (accuracy equal, per-choice
log-likelihoods within 1e-4) or the script exits with status 1; agreement with HFLM is
reported (lm-eval moves a prompt's trailing spaces into the answer, so strings ending in
spaces may tokenise differently there).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_gpu import hflm_loglikelihoods  # benchmarks/ is on sys.path when run as a script
from peft import LoraConfig, PeftModel, get_peft_model

from mashup_core.demo import synthetic
from mashup_core.demo.tiny_model import TinyModelSpec, build_char_tokenizer, build_tiny_llama
from mashup_core.models.library import scan_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.loglik import encode_pair
from mashup_core.selection.scoring import score_library
from mashup_core.training.loop import ALL_LINEAR

SPEC = TinyModelSpec(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=1408)


def build(root: Path, n_adapters: int) -> tuple[Path, Path, int]:
    base_dir, library_dir = root / "base", root / "library"
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(base_dir)
    model = build_tiny_llama(len(tokenizer), SPEC, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(base_dir, safe_serialization=True)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR, task_type="CAUSAL_LM",
                        init_lora_weights=False)  # random A and B: each adapter moves the model
    for i in range(n_adapters):
        torch.manual_seed(100 + i)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(library_dir / f"adapter{i}")
        model = peft_model.unload()
    return base_dir, library_dir, n_params


@torch.no_grad()
def naive_scores(base_dir: Path, checkpoints, examples) -> dict[str, list[list[float]]]:
    """The straightforward way: fresh base + adapter per checkpoint, one sequence at a time."""
    tokenizer = load_tokenizer(base_dir)
    out = {}
    for ckpt in [None, *checkpoints]:
        model = load_base_model(base_dir, device="cpu")
        if ckpt is not None:
            model = PeftModel.from_pretrained(model, str(ckpt.path)).eval()
        rows = []
        for ex in examples:
            row = []
            for choice in ex.choices:
                ctx, cont = encode_pair(tokenizer, ex.prompt, choice)
                ids = torch.tensor([ctx + cont])
                logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
                # token at position t is predicted by the logits at position t-1
                row.append(sum(float(logp[len(ctx) + j - 1, tok]) for j, tok in enumerate(cont)))
            rows.append(row)
        out["(base model)" if ckpt is None else ckpt.name] = rows
    return out


def accuracy(rows: list[list[float]], examples) -> float:
    return sum(max(range(len(r)), key=r.__getitem__) == ex.gold
               for r, ex in zip(rows, examples, strict=True)) / len(examples)


def _max_diff(theirs: dict[str, list[list[float]]], table) -> float:
    return max(abs(a - b) for name, rows in theirs.items()
               for row, ours_row in zip(rows, table.choice_scores[name].logprobs, strict=True)
               for a, b in zip(row, ours_row, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-naive", action="store_true", help="skip the one-sequence loop")
    args = parser.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    examples = synthetic.generate_splits("tail", {"train": args.n}, seed=0)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, library_dir, n_params = build(Path(tmp), args.adapters)
        checkpoints = scan_library([library_dir], base_model_dir=base_dir).checkpoints

        t0 = time.perf_counter()
        model = load_base_model(base_dir, device="cpu")
        table = score_library(model, load_tokenizer(base_dir), checkpoints, examples,
                              batch_size=args.batch_size, progress=False)
        ours_s = time.perf_counter() - t0

        hflm, hflm_s = {}, 0.0
        for name, path in [("(base model)", None), *((c.name, c.path) for c in checkpoints)]:
            hflm[name], seconds = hflm_loglikelihoods(base_dir, path, examples, device="cpu",
                                                      dtype="float32", batch_size=32)
            hflm_s += seconds

        naive, naive_s = None, None
        if not args.no_naive:
            t0 = time.perf_counter()
            naive = naive_scores(base_dir, checkpoints, examples)
            naive_s = time.perf_counter() - t0

    hflm_acc_equal = all(accuracy(hflm[name], examples) == table.row(name).acc for name in hflm)
    result = {
        "benchmark": "P1_selection_scoring",
        "model_parameters": n_params,
        "model": {"hidden": SPEC.hidden_size, "layers": SPEC.num_layers, "heads": SPEC.num_heads,
                  "intermediate": SPEC.intermediate_size},
        "adapters": len(checkpoints), "lora": "r=8, all-linear, random A and B",
        "n_examples": args.n, "choices": len(examples[0].choices), "task": "tail",
        "device": "cpu", "torch_threads": torch.get_num_threads(),
        "ours_seconds": round(ours_s, 2), "hflm_per_adapter_seconds": round(hflm_s, 2),
        "ratio_ours_over_hflm": round(ours_s / hflm_s, 3),
        "hflm_accuracy_equal": hflm_acc_equal, "hflm_max_abs_logprob_diff": _max_diff(hflm, table),
        "accuracies": {name: table.row(name).acc for name in hflm},
    }
    agree = True
    if naive is not None:
        max_diff = _max_diff(naive, table)
        acc_equal = all(accuracy(naive[name], examples) == table.row(name).acc for name in naive)
        agree = acc_equal and max_diff <= 1e-4
        result.update({"naive_seconds": round(naive_s, 2),
                       "ratio_ours_over_naive": round(ours_s / naive_s, 3),
                       "naive_accuracy_equal": acc_equal, "naive_max_abs_logprob_diff": max_diff})
    print(json.dumps(result, indent=2))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
