"""Peak memory of scoring: logits only where read, adapters freed once scored; prints JSON.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/bench_memory.py [--rows 64] [--libraries 50 200]

(a) vocab: a Llama with Gemma 3's 262,144-token vocabulary (hidden 64, 2 layers, random init
    from a config) and 4 rank-8 all-linear adapters scores `rows` four-choice examples with
    ~40-token prompts (`score_library`, batch size 32), with `choice_loglikelihoods` as it is
    ("now") and as it was ("before": loglik.py at commit BEFORE, read with `git show`, which
    computed logits for every prompt position).
(b) library: a small Llama scores libraries of 50 and 200 rank-8 all-linear adapters on n=8,
    now and with scoring.py at BEFORE (every adapter kept attached until the end).

Each case runs in a fresh process, because ru_maxrss is a per-process high-water mark; the
base model and adapters are built first (in a process of their own) and read from disk, as a
user's would be. The parent process imports no torch: Linux carries a parent's RSS high-water
mark over fork and exec into the child's ru_maxrss, so a big parent would hide small peaks
(VmHWM from /proc, reset by exec, is reported beside it as a cross-check).
`setup_rss_mb` is the high-water mark just before scoring (imports, model, adapter scan), so
`scoring_mb` = peak - setup is what scoring itself added. Exits with status 1 if (a)'s scores
differ between now and before by more than 1e-5, or (b)'s peak now grows by more than 10 %
from the smallest library to the largest.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "3da8c57b82429d53ce63bfa3410b4f994db3bb35"  # last commit before logits_to_keep / delete
VOCAB = 262_144  # Gemma 3
# (hidden, layers, heads, intermediate) of each case's model
MODELS = {"vocab": (64, 2, 4, 176), "library": (256, 4, 4, 704)}
VOCAB_ADAPTERS = 4
PREFIX = "give the last two letters of: "  # makes the demo's `tail` prompts ~40 tokens


def examples(n: int):
    from mashup_core.data.examples import MCExample
    from mashup_core.demo import synthetic

    raw = synthetic.generate_splits("tail", {"train": n}, seed=0)["train"]
    return [MCExample(PREFIX + ex.prompt, ex.choices, ex.gold) for ex in raw]


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def vm_hwm_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) / 1024


def child(*args: str) -> None:
    subprocess.run([sys.executable, __file__, *args], check=True)


# --- setup (a child process) -----------------------------------------------------------------


def build(case: str, root: Path, n_adapters: int) -> None:
    """Base model + tokenizer in root/base, random rank-8 all-linear adapters in root/library."""
    import torch
    from peft import LoraConfig, get_peft_model

    from mashup_core.demo.tiny_model import TinyModelSpec, build_char_tokenizer, build_tiny_llama
    from mashup_core.training.loop import ALL_LINEAR

    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(root / "base")
    hidden, layers, heads, intermediate = MODELS[case]
    spec = TinyModelSpec(hidden_size=hidden, num_layers=layers, num_heads=heads,
                         intermediate_size=intermediate, max_positions=128)
    model = build_tiny_llama(VOCAB if case == "vocab" else len(tokenizer), spec, seed=0)
    model.save_pretrained(root / "base", safe_serialization=True)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR, task_type="CAUSAL_LM",
                        init_lora_weights=False)  # random A and B: each adapter moves the model
    for i in range(n_adapters):
        torch.manual_seed(100 + i)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(root / "library" / f"adapter{i:04d}")
        model = peft_model.unload()


def run_case(case: str, code: str, root: Path, rows: int, adapters: int) -> dict:
    out = root / f"{case}-{code}-{adapters}.json"
    child("--case", case, "--code", code, "--root", str(root), "--rows", str(rows),
          "--adapters", str(adapters), "--out", str(out))
    return json.loads(out.read_text())


# --- one case (a fresh process) ---------------------------------------------------------------


def module_at_before(path: str) -> types.ModuleType:
    """`path` as it was at commit BEFORE, importable beside today's code."""
    source = subprocess.run(["git", "show", f"{BEFORE}:{path}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"before_{Path(path).stem}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{BEFORE[:7]}:{path}", "exec"), module.__dict__)
    return module


def measure(case: str, code: str, root: Path, rows: int, adapters: int) -> dict:
    import torch

    from mashup_core.models.library import scan_library
    from mashup_core.models.loading import load_base_model, load_tokenizer
    from mashup_core.selection import scoring

    score_library = scoring.score_library
    if code == "before" and case == "vocab":  # the old first pass; the rest as it is now
        scoring.choice_loglikelihoods = module_at_before(
            "mashup_core/selection/loglik.py").choice_loglikelihoods
    elif code == "before":  # the old library loop, with today's choice_loglikelihoods
        score_library = module_at_before("mashup_core/selection/scoring.py").score_library
    torch.set_num_threads(1)
    model = load_base_model(root / "base", device="cpu", dtype=torch.float32)
    tokenizer = load_tokenizer(root / "base")
    checkpoints = scan_library([root / "library"], base_model_dir=root / "base").checkpoints
    checkpoints = sorted(checkpoints, key=lambda c: c.name)[:adapters]
    sample = examples(rows)
    setup = max_rss_mb()
    started = time.perf_counter()
    table = score_library(model, tokenizer, checkpoints, sample, batch_size=32, progress=False)
    seconds = time.perf_counter() - started
    peak = max_rss_mb()
    return {
        "setup_rss_mb": round(setup, 1), "peak_rss_mb": round(peak, 1),
        "scoring_mb": round(peak - setup, 1), "peak_vmhwm_mb": round(vm_hwm_mb(), 1),
        "seconds": round(seconds, 2),
        "rows_scored": len(table.rows), "skipped": len(table.skipped),
        "prompt_tokens_mean": sum(len(tokenizer(ex.prompt)["input_ids"]) for ex in sample) / rows,
        "logprobs": {name: s.logprobs for name, s in table.choice_scores.items()},
    }


# --- report -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--libraries", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--case", choices=["vocab", "library"], help=argparse.SUPPRESS)
    parser.add_argument("--code", choices=["now", "before", "build"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapters", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.code == "build":  # a child: the models on disk
        build(args.case, args.root, args.adapters)
        return 0
    if args.case:  # a child: one measurement, written for the parent
        args.out.write_text(json.dumps(measure(args.case, args.code, args.root, args.rows,
                                               args.adapters)))
        return 0

    small, large = min(args.libraries), max(args.libraries)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_root, library_root = Path(tmp) / "vocab", Path(tmp) / "library"
        child("--case", "vocab", "--code", "build", "--root", str(vocab_root),
              "--adapters", str(VOCAB_ADAPTERS))
        vocab = {code: run_case("vocab", code, vocab_root, args.rows, VOCAB_ADAPTERS)
                 for code in ("before", "now")}
        child("--case", "library", "--code", "build", "--root", str(library_root),
              "--adapters", str(large))
        library = {f"{code}_{n}": run_case("library", code, library_root, 8, n)
                   for code in ("now", "before") for n in args.libraries}

    prompt_tokens = round(vocab["now"]["prompt_tokens_mean"], 1)
    before, now = vocab["before"]["logprobs"], vocab["now"]["logprobs"]
    max_diff = max(abs(a - b) for name in now for row_a, row_b in zip(now[name], before[name], strict=True)
                   for a, b in zip(row_a, row_b, strict=True))
    for result in [*vocab.values(), *library.values()]:  # compared or summarised above
        del result["logprobs"], result["prompt_tokens_mean"]
    growth = library[f"now_{large}"]["peak_rss_mb"] / library[f"now_{small}"]["peak_rss_mb"] - 1
    report = {
        "benchmark": "scoring_peak_memory",
        "measure": "ru_maxrss of a fresh process per case (MiB); scoring_mb = peak - setup",
        "before_code": f"git {BEFORE[:7]} (loglik.py for vocab, scoring.py for library)",
        "vocab": {
            "model": {"vocab": VOCAB, "hidden": MODELS["vocab"][0], "layers": MODELS["vocab"][1]},
            "adapters": VOCAB_ADAPTERS, "lora": "r=8, all-linear, random A and B", "rows": args.rows,
            "choices": 4, "prompt_tokens_mean": prompt_tokens,
            "batch_size": 32, **vocab,
            "scoring_mb_ratio_now_over_before": round(
                vocab["now"]["scoring_mb"] / vocab["before"]["scoring_mb"], 3),
            "max_abs_logprob_diff": max_diff,
        },
        "library": {
            "model": {"hidden": MODELS["library"][0], "layers": MODELS["library"][1],
                      "intermediate": MODELS["library"][3]},
            "lora": "r=8, all-linear", "n_examples": 8, **library,
            f"peak_growth_now_{small}_to_{large}": round(growth, 4),
            "flat_within_10_percent": growth <= 0.10,
        },
        "torch_threads_per_case": 1,
    }
    print(json.dumps(report, indent=2))
    return 0 if max_diff <= 1e-5 and growth <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
