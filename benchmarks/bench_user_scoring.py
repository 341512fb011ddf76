"""Scoring a user's own library: ours vs lm-eval's HFLM run per adapter; prints JSON.

    .venv/bin/python benchmarks/bench_user_scoring.py [--n 32] [--arch llama]

The world is the tests' realistic fixture (tests/realistic.py): a base of a real architecture
built from its config with a trained byte-level BPE tokenizer (sub-word, left padding, BOS),
and four PEFT adapters with mixed configs (q,v-only r=4; all-linear r=8; rsLoRA r=16; an
alpha_pattern), plus a CSV in the user's own schema read through a field mapping.
- ours: `score_library` -- the base loaded once, every adapter attached to one PeftModel;
- HFLM: what a user runs with lm-eval, `HFLM(pretrained=BASE, peft=ADAPTER)` for each adapter
  (and once without, for the base), `loglikelihood` on the same (context, continuation)
  requests, the base loaded from disk each time.
Both include loading from disk. Accuracies must be equal, or the script exits with status 1
(per-choice log-likelihoods are compared with HFLM's within 1e-4 by tests/test_architectures.py).
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
from realistic import USER_MAPPING, build_user_world  # noqa: E402

from mashup_core.data.targets import FieldMapping, load_file  # noqa: E402
from mashup_core.models.library import scan_library  # noqa: E402
from mashup_core.models.loading import load_base_model, load_tokenizer  # noqa: E402
from mashup_core.selection.scoring import score_library  # noqa: E402


def hflm_scores(base: Path, adapter: Path | None, examples) -> tuple[list[list[float]], float]:
    """lm-eval as a user runs it: a fresh HFLM per checkpoint, loglikelihood per choice."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    started = time.perf_counter()
    lm = HFLM(pretrained=str(base), peft=str(adapter) if adapter else None, batch_size=32,
              device="cpu", dtype="float32")
    requests = [Instance("loglikelihood", {}, (ex.prompt, choice), i)
                for i, ex in enumerate(examples) for choice in ex.choices]
    values = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    seconds = time.perf_counter() - started
    out, i = [], 0
    for ex in examples:
        out.append(values[i:i + len(ex.choices)])
        i += len(ex.choices)
    return out, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="examples (four choices each)")
    parser.add_argument("--arch", default="llama", help="one of tests/realistic.py's ARCHITECTURES")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        world = build_user_world(Path(tmp) / "world", arch=args.arch)
        examples = load_file(world["jsonl"], FieldMapping(**USER_MAPPING))[: args.n]
        checkpoints = scan_library([world["adapters_dir"]], base_model_dir=world["base"]).checkpoints

        started = time.perf_counter()
        model, tok = load_base_model(world["base"], device="cpu"), load_tokenizer(world["base"])
        table = score_library(model, tok, checkpoints, examples, progress=False)
        ours_s = time.perf_counter() - started

        theirs_s, agree = 0.0, True
        for name, path in [("(base model)", None), *((c.name, c.path) for c in checkpoints)]:
            lls, seconds = hflm_scores(world["base"], path, examples)
            theirs_s += seconds
            row = table.base if path is None else table.row(name)
            hf_acc = sum(max(range(len(ll)), key=ll.__getitem__) == ex.gold
                         for ll, ex in zip(lls, examples, strict=True)) / len(examples)
            agree &= hf_acc == row.acc
    result = {
        "what": "scoring base + 4 mixed-config PEFT adapters on a user CSV, CPU fp32, load included",
        "arch": args.arch, "examples": len(examples), "choices": 4, "threads": 2,
        "ours_s": round(ours_s, 3), "hflm_per_adapter_s": round(theirs_s, 3),
        "ratio_ours_over_hflm": round(ours_s / theirs_s, 3),
        "accuracies_equal": agree, "accuracy": {r.name: r.acc for r in [table.base, *table.rows]},
    }
    print(json.dumps(result, indent=2))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
