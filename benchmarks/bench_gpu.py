"""Scoring and LoRA training at real shapes, ours vs lm-eval's HFLM and HF Trainer; JSON.

    .venv/bin/python benchmarks/bench_gpu.py                 # on a GPU: the three stand-ins
    .venv/bin/python benchmarks/bench_gpu.py --tiny          # anywhere: tiny shapes, a smoke run
    .venv/bin/python benchmarks/bench_gpu.py --small         # a CPU: small models, real vocabularies
    .venv/bin/python benchmarks/bench_gpu.py --models llama --skip-train

Nothing is downloaded. Each stand-in is built from a config with random weights (on the GPU
in bf16, then saved as safetensors): Llama ~975M (hidden 2048, 16 layers, vocab 8k), Gemma-3-1B
shapes (hidden 1152, 26 layers, 4 heads / 1 KV head of 256, sliding window 512, vocab 262,144),
Mistral-7B shapes (hidden 4096, 32 layers, 8 KV heads, vocab 32k). The tokenizer is a
byte-level BPE trained in-process (tests/realistic.py); the model's vocabulary keeps the
stand-in's size. The library is 8 rank-8 all-linear PEFT adapters with random A and B; the
target 256 four-choice rows with 40-110-word prompts.

Scoring, load from disk included on both sides: ours is `score_library` (one base load, the
adapters in mixed-adapter groups) against `HFLM(pretrained=BASE, peft=ADAPTER, dtype=bfloat16,
batch_size=32)` per checkpoint (and the base alone), `loglikelihood` on the same requests; the
accuracies must be equal. Training: our LoRA step (`training.loop.train`) against HF `Trainer`
+ PEFT at batch 16 on the same rows and collator; steady-state seconds per step (median of the
second half), the first steps, and the loss curves. Printed: times, ratios, tokens/s, peak
memory, and the fraction of the card's bf16 peak (`--peak-tflops`, H200 dense: 989).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realistic import FILLER, build_bpe_tokenizer  # noqa: E402

from mashup_core.data.examples import MCExample  # noqa: E402
from mashup_core.models.library import scan_library  # noqa: E402
from mashup_core.models.loading import load_base_model, load_tokenizer  # noqa: E402
from mashup_core.selection.loglik import encode_examples  # noqa: E402
from mashup_core.selection.scoring import BASE_ROW, score_library  # noqa: E402

SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}  # build_bpe_tokenizer's


@dataclass(frozen=True)
class StandIn:
    name: str
    kind: str  # llama | gemma3 | mistral
    shape: dict


STAND_INS = {
    "llama": StandIn("Llama 975M", "llama", dict(
        vocab_size=8192, hidden_size=2048, intermediate_size=6912, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False)),
    "gemma": StandIn("Gemma-3-1B shapes", "gemma3", dict(
        vocab_size=262_144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=512, tie_word_embeddings=True)),
    "mistral": StandIn("Mistral-7B shapes", "mistral", dict(
        vocab_size=32_000, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, sliding_window=None,
        tie_word_embeddings=False)),
}
TINY = {  # the same code paths at toy size (--tiny)
    "llama": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gemma": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                  query_pre_attn_scalar=16, sliding_window=8, tie_word_embeddings=True),
    "mistral": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    sliding_window=None, tie_word_embeddings=False),
}


SMALL = {  # CPU-sized models with the stand-ins' real vocabularies (--small): the output head's
    # share of the work is then as large as in the real models, or larger
    "llama": dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gemma": dict(vocab_size=262_144, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                  query_pre_attn_scalar=64, sliding_window=512, tie_word_embeddings=True),
    "mistral": dict(vocab_size=32_000, hidden_size=256, intermediate_size=896,
                    num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                    head_dim=32, sliding_window=None, tie_word_embeddings=False),
}


def build_config(kind: str, shape: dict):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig

    cls = {"llama": LlamaConfig, "gemma3": Gemma3TextConfig, "mistral": MistralConfig}[kind]
    extra = {"max_position_embeddings": 4096, **SPECIAL_IDS}
    if kind == "gemma3":
        n = shape["num_hidden_layers"]  # five sliding-window layers, then a global one
        extra["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                for i in range(n)]
    return cls(**shape, **extra)


def build_base(folder: Path, stand_in: StandIn, shape: dict, device: torch.device,
               dtype: torch.dtype) -> int:
    """Random-init model saved with the tokenizer; returns its parameter count."""
    from transformers import AutoModelForCausalLM

    tokenizer = build_bpe_tokenizer(folder)
    config = build_config(stand_in.kind, shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    del model
    _free(device)
    return params


def build_adapters(base: Path, out: Path, count: int, device: torch.device,
                   dtype: torch.dtype) -> list[Path]:
    """`count` rank-8 all-linear adapters, A and B random (each moves the model)."""
    from peft import LoraConfig, get_peft_model

    model = load_base_model(base, device=device, dtype=dtype)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM",
                        init_lora_weights=False)
    folders = []
    for i in range(count):
        torch.manual_seed(100 + i)
        peft_model = get_peft_model(model, config)
        peft_model.peft_config["default"].base_model_name_or_path = str(base)
        peft_model.save_pretrained(out / f"adapter{i}")
        folders.append(out / f"adapter{i}")
        model = peft_model.unload()
    del model
    _free(device)
    return folders


def make_rows(count: int, seed: int = 0, words: tuple[int, int] = (40, 110)) -> list[MCExample]:
    """Four-choice rows with 40-110-word prompts of the tokenizer's corpus words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = " ".join(rng.choice(FILLER) for _ in range(rng.randint(*words)))
        choices = tuple(" " + " ".join(rng.choice(FILLER) for _ in range(rng.randint(1, 3)))
                        for _ in range(4))
        rows.append(MCExample(f"{prompt.capitalize()}.\nAnswer:", choices, rng.randrange(4)))
    return rows


def hflm_loglikelihoods(base: Path, adapter: Path | None, examples, *, device: str, dtype: str,
                        batch_size: int = 32) -> tuple[list[list[float]], float]:
    """lm-eval as a user runs it: a fresh HFLM per checkpoint, loglikelihood per choice;
    (per example, per choice log-likelihoods; seconds, load included)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    started = time.perf_counter()
    with _keep_vocabulary():
        lm = HFLM(pretrained=str(base), peft=str(adapter) if adapter else None,
                  batch_size=batch_size, device=device, dtype=dtype)
    requests = [Instance("loglikelihood", {}, (ex.prompt, choice), i)
                for i, ex in enumerate(examples) for choice in ex.choices]
    values = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    _sync(torch.device(device))
    seconds = time.perf_counter() - started
    del lm
    _free(torch.device(device))
    out, i = [], 0
    for ex in examples:
        out.append(values[i:i + len(ex.choices)])
        i += len(ex.choices)
    return out, seconds


@contextlib.contextmanager
def _keep_vocabulary():
    """HFLM(peft=...) resizes the embeddings to len(tokenizer) whenever the config's vocabulary
    differs (lm-eval issue #2748 shows it shrinking Qwen's). The stand-ins pair a real-size
    vocabulary with a small trained BPE, so HFLM would score adapters on a model whose output
    head had lost most of its rows: cheaper, and another model. A real checkpoint's tokenizer
    covers its vocabulary, so here the resize is skipped and both sides score the same model."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.resize_token_embeddings
    PreTrainedModel.resize_token_embeddings = lambda self, *a, **k: self.get_input_embeddings()
    try:
        yield
    finally:
        PreTrainedModel.resize_token_embeddings = original


def _vocab_size(base: Path) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base)
    return getattr(config.get_text_config(), "vocab_size", config.vocab_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)  # process RSS


def _acc(rows: list[list[float]], examples) -> float:
    return sum(max(range(len(r)), key=r.__getitem__) == ex.gold
               for r, ex in zip(rows, examples, strict=True)) / len(examples)


def token_counts(tokenizer, examples) -> tuple[int, int]:
    """(tokens our scoring runs per checkpoint: each prompt once, each answer but its last
    token per choice; tokens HFLM runs: each prompt+answer, less the last token)."""
    ours = theirs = 0
    for enc in encode_examples(tokenizer, examples):
        ours += len(enc.context) + sum(max(len(c) - 1, 0) for c in enc.continuations)
        theirs += sum(len(enc.context) + len(c) - 1 for c in enc.continuations)
    return ours, theirs


def bench_scoring(base: Path, library: Path, examples, device: torch.device, dtype: torch.dtype,
                  args, params: int, peak_tflops: float | None) -> dict:
    checkpoints = scan_library([library], base_model_dir=base).checkpoints
    dtype_name = str(dtype).removeprefix("torch.")
    _reset_peak(device)
    started = time.perf_counter()
    model = load_base_model(base, device=device, dtype=dtype)
    tokenizer = load_tokenizer(base)
    table = score_library(model, tokenizer, checkpoints, examples, batch_size=args.batch_size,
                          progress=False)
    _sync(device)
    ours_s = time.perf_counter() - started
    ours_peak = _peak_gib(device)
    del model
    _free(device)

    theirs_s, agree, max_diff = 0.0, True, {"base": 0.0, "adapters": 0.0}
    _reset_peak(device)
    for name, path in [(BASE_ROW, None), *((c.name, c.path) for c in checkpoints)]:
        rows, seconds = hflm_loglikelihoods(base, path, examples, device=device.type,
                                            dtype=dtype_name, batch_size=args.hflm_batch_size)
        theirs_s += seconds
        agree &= _acc(rows, examples) == table.row(name).acc
        ours_rows = table.choice_scores[name].logprobs
        side = "base" if path is None else "adapters"
        max_diff[side] = max(max_diff[side], *(abs(a - b) for r, o in zip(rows, ours_rows, strict=True)
                                               for a, b in zip(r, o, strict=True)))
    theirs_peak = _peak_gib(device)
    ours_tokens, theirs_tokens = token_counts(load_tokenizer(base), examples)
    n_ckpt = len(checkpoints) + 1
    flops = 2 * params * ours_tokens * n_ckpt  # forward FLOPs of the work ours does
    out = {
        "checkpoints": n_ckpt, "rows": len(examples),
        "ours_s": round(ours_s, 2), "hflm_s": round(theirs_s, 2),
        "ratio_ours_over_hflm": round(ours_s / theirs_s, 3), "accuracies_equal": agree,
        "max_abs_loglik_diff_base": round(max_diff["base"], 4),
        "max_abs_loglik_diff_adapters": round(max_diff["adapters"], 4),
        # HFLM would have shrunk the output head for the adapters (`_keep_vocabulary`)
        "hflm_resize_skipped": len(load_tokenizer(base)) != _vocab_size(base),
        "ours_tokens_per_s": round(ours_tokens * n_ckpt / ours_s),
        "hflm_tokens_per_s": round(theirs_tokens * n_ckpt / theirs_s),
        "ours_work_pflop": round(flops / 1e15, 4),
        "ours_peak_gib": ours_peak, "hflm_peak_gib": theirs_peak,
    }
    if peak_tflops:
        out["ours_fraction_of_bf16_peak"] = round(flops / ours_s / (peak_tflops * 1e12), 4)
    return out


def bench_training(base: Path, examples, device: torch.device, dtype: torch.dtype, args) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from mashup_core.training.loop import (
        LoraSpec,
        TrainConfig,
        add_lora,
        as_pairs,
        batch_indices,
        collate,
        train,
    )

    pairs = as_pairs(examples)
    steps, batch = args.train_steps, 16
    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "right"

    # ours
    _reset_peak(device)
    torch.manual_seed(0)
    model = add_lora(load_base_model(base, device=device, dtype=dtype), LoraSpec(r=8, alpha=16))
    state = train(model, tokenizer, pairs, TrainConfig(steps=steps, batch_size=batch, lr=1e-4,
                                                       seed=0, schedule="constant",
                                                       warmup_ratio=0.0))
    ours_times = [b.seconds - a.seconds for a, b in zip([_Zero(), *state.history],
                                                         state.history, strict=False)]
    ours_loss = [round(h.loss, 4) for h in state.history]
    ours_peak = _peak_gib(device)
    del model, state
    _free(device)

    # HF Trainer + PEFT, the same rows through the same collator
    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self._t = [], [], 0.0

        def on_step_begin(self, *a, **k):
            _sync(device)
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            _sync(device)
            self.times.append(time.perf_counter() - self._t)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 4))

    _reset_peak(device)
    torch.manual_seed(0)
    hf_model = load_base_model(base, device=device, dtype=dtype)
    hf_model = get_peft_model(hf_model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                   task_type="CAUSAL_LM"))
    class InOurOrder(Trainer):
        """Reads the rows in order: the dataset below is our batches, one after another."""

        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    # The same batches as ours, step by step, so the two loss curves can be compared.
    ours_order = [pairs[i] for step in range(steps)
                  for i in batch_indices(len(pairs), batch, 0, step)]
    timer = Timer()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = InOurOrder(
            model=hf_model,
            args=TrainingArguments(
                output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps,
                learning_rate=1e-4, lr_scheduler_type="constant", logging_steps=1,
                report_to=[], save_strategy="no", bf16=device.type == "cuda",
                use_cpu=device.type == "cpu", remove_unused_columns=False, max_grad_norm=1.0,
                dataloader_num_workers=0, disable_tqdm=True),
            train_dataset=ours_order, data_collator=lambda rows: collate(tokenizer, rows),
            callbacks=[timer])
        with contextlib.redirect_stdout(sys.stderr):  # it prints each log line: JSON stays clean
            trainer.train()
    hf_peak = _peak_gib(device)
    del trainer, hf_model
    _free(device)

    def steady(times: list[float]) -> float:
        return statistics.median(times[len(times) // 2:])

    first = min(5, steps)
    return {
        "batch": batch, "steps": steps,
        "ours_s_per_step": round(steady(ours_times), 4), "hf_s_per_step": round(steady(timer.times), 4),
        "ratio_ours_over_hf": round(steady(ours_times) / steady(timer.times), 3),
        f"ours_first_{first}_s": [round(t, 3) for t in ours_times[:first]],
        f"hf_first_{first}_s": [round(t, 3) for t in timer.times[:first]],
        "ours_loss": ours_loss, "hf_loss": timer.losses,
        "max_abs_loss_diff": round(max(abs(a - b) for a, b in zip(ours_loss, timer.losses,
                                                                    strict=False)), 4),
        "ours_peak_gib": ours_peak, "hf_peak_gib": hf_peak,
    }


@dataclass
class _Zero:
    seconds: float = 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy shapes (runs on a CPU)")
    parser.add_argument("--small", action="store_true",
                        help="CPU-sized models with the stand-ins' real vocabularies")
    parser.add_argument("--models", default="llama,gemma,mistral")
    parser.add_argument("--rows", type=int, default=None, help="default 256 (16 with --tiny)")
    parser.add_argument("--adapters", type=int, default=None, help="default 8 (2 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=64, help="ours: prompt rows a forward")
    parser.add_argument("--hflm-batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=None, help="default 40 (4 with --tiny)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-score", action="store_true")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak (default 989 on CUDA: H200)")
    args = parser.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cpu_sized = args.tiny or args.small
    if device.type != "cuda" and not cpu_sized:
        parser.error("full shapes need a GPU; use --tiny or --small to run the same code paths "
                     "on a CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = args.peak_tflops or (989.0 if device.type == "cuda" else None)
    rows = args.rows or (16 if args.tiny else 64 if args.small else 256)
    n_adapters = args.adapters or (2 if args.tiny else 8)
    args.train_steps = args.train_steps or (4 if args.tiny else 12 if args.small else 40)
    # shorter prompts keep the smoke run quick
    examples = make_rows(rows, words=(10, 30)) if args.tiny else make_rows(rows)
    results = {}
    for key in [m.strip() for m in args.models.split(",") if m.strip()]:
        stand_in = STAND_INS[key]
        shape = TINY[key] if args.tiny else SMALL[key] if args.small else stand_in.shape
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            base = Path(tmp) / "base"
            params = build_base(base, stand_in, shape, device, dtype)
            build_adapters(base, Path(tmp) / "library", n_adapters, device, dtype)
            entry = {"name": stand_in.name, "parameters": params, "shape": shape,
                     "build_s": round(time.perf_counter() - t0, 1)}
            if not args.skip_score:
                entry["scoring"] = bench_scoring(base, Path(tmp) / "library", examples, device,
                                                 dtype, args, params, peak)
            if not args.skip_train:
                entry["training"] = bench_training(base, examples, device, dtype, args)
        results[key] = entry
        print(json.dumps({key: entry}), file=sys.stderr)  # progress, in case a later one fails
    print(json.dumps({
        "benchmark": "gpu_scale", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype), "tiny": args.tiny, "small": args.small, "rows": rows, "adapters": n_adapters,
        "torch": torch.__version__, "peak_tflops": peak, "results": results,
    }, indent=2))
    ok = all(e.get("scoring", {}).get("accuracies_equal", True) for e in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
