"""P1: scoring a LoRA library on a target, ours vs the straightforward way; prints JSON.

    .venv/bin/python benchmarks/bench_selection.py [--n 64] [--adapters 8] [--device cpu]

Builds a ~20M-parameter Llama from a config (random init, saved with save_pretrained) and
random rank-8 all-linear LoRA adapters (B non-zero, so each changes the model), then scores
every adapter and the base by answer accuracy on n four-choice `tail` examples:
- ours: `score_library` -- the base loaded once, every adapter on one PeftModel, prompts
  batched and run once per example with the KV cache shared across the choices;
- naive: per checkpoint, reload base + adapter from disk, one forward per example x choice.
Both include loading the base from disk. The scores must agree (accuracy equal, per-choice
log-likelihoods within 1e-4) or the script exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    examples = synthetic.generate_splits("tail", {"train": args.n}, seed=0)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, library_dir, n_params = build(Path(tmp), args.adapters)
        checkpoints = scan_library([library_dir], base_model_dir=base_dir).checkpoints

        t0 = time.perf_counter()
        model = load_base_model(base_dir, device="cpu")
        table = score_library(model, load_tokenizer(base_dir), checkpoints, examples,
                              batch_size=args.batch_size, progress=False)
        ours_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        naive = naive_scores(base_dir, checkpoints, examples)
        naive_s = time.perf_counter() - t0

    max_diff = max(abs(a - b)
                   for name, rows in naive.items()
                   for row, ours_row in zip(rows, table.choice_scores[name].logprobs, strict=True)
                   for a, b in zip(row, ours_row, strict=True))
    acc_equal = all(accuracy(naive[name], examples) == table.row(name).acc for name in naive)
    agree = acc_equal and max_diff <= 1e-4
    print(json.dumps({
        "benchmark": "P1_selection_scoring",
        "model_parameters": n_params,
        "model": {"hidden": SPEC.hidden_size, "layers": SPEC.num_layers, "heads": SPEC.num_heads,
                  "intermediate": SPEC.intermediate_size},
        "adapters": len(checkpoints), "lora": "r=8, all-linear, random A and B",
        "n_examples": args.n, "choices": len(examples[0].choices), "task": "tail",
        "device": "cpu", "torch_threads": torch.get_num_threads(),
        "ours_seconds": round(ours_s, 2), "naive_seconds": round(naive_s, 2),
        "ratio_ours_over_naive": round(ours_s / naive_s, 3),
        "accuracy_equal": acc_equal, "max_abs_logprob_diff": max_diff,
        "accuracies": {name: table.row(name).acc for name in naive},
    }, indent=2))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
