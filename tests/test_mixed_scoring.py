"""Mixed-adapter scoring (every adapter of a group in one forward) equals one adapter at a time.

The reference is the plain path: a fresh `PeftModel.from_pretrained(base, adapter)` per
checkpoint, scored by `choice_loglikelihoods` alone. `score_library` must give the same
per-choice log-likelihoods (fp32 on CPU: within 1e-4, float noise of different batch shapes) and the same accuracies, on real tiny
architectures with a BPE tokenizer (Llama, Qwen2 with q/k/v biases, GPT-2's Conv1D) and on
the demo world's library, whatever the grouping. The CUDA test does the same in bf16.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from realistic import rows_of_mixed_lengths

from mashup_core.data.examples import MCExample, sample_examples
from mashup_core.demo.world import load_split
from mashup_core.models.library import demo_library, scan_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection import loglik, scoring
from mashup_core.selection.loglik import choice_loglikelihoods, mc_result
from mashup_core.selection.scoring import BASE_ROW, score_library

ARCHS = ["llama", "qwen2", "gpt2"]


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[MCExample]:
    """User rows plus a very short and a long prompt (left padding and buckets exercised), and
    one three-choice row (the cache is then selected per row, not repeated)."""
    return rows_of_mixed_lengths(tmp_path_factory.mktemp("mixed-data"), n=12, seed=3, at=5)


def one_at_a_time(base_dir, checkpoints, examples, dtype=torch.float32, device="cpu"):
    """name -> per-choice log-likelihoods, each checkpoint on its own freshly loaded model."""
    tok = load_tokenizer(base_dir)
    out = {BASE_ROW: choice_loglikelihoods(load_base_model(base_dir, device=device, dtype=dtype),
                                           tok, examples, batch_size=5)}
    for ckpt in checkpoints:
        model = load_base_model(base_dir, device=device, dtype=dtype)
        peft_model = PeftModel.from_pretrained(model, str(ckpt.path)).eval()
        out[ckpt.name] = choice_loglikelihoods(peft_model, tok, examples, batch_size=5)
    return out


def assert_same(table, reference, examples, atol=1e-4):
    assert sorted(table.choice_scores) == sorted(reference)
    for name, ref in reference.items():
        ours = table.choice_scores[name]
        assert ours.num_tokens == ref.num_tokens and ours.num_bytes == ref.num_bytes
        for a, b in zip(ours.logprobs, ref.logprobs, strict=True):
            assert a == pytest.approx(b, abs=atol), name
        alone = mc_result(examples, ref)
        row = table.row(name)
        assert (row.acc, row.acc_norm) == (alone.acc, alone.acc_norm), name


def _lora_layers(model) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_batches_equal_one_adapter_at_a_time(arch, arch_worlds, examples):
    base_dir, adapters = arch_worlds[arch]
    checkpoints = scan_library([adapters[0].parent], base_model_dir=base_dir).checkpoints
    reference = one_at_a_time(base_dir, checkpoints, examples)
    model, tok = load_base_model(base_dir, device="cpu"), load_tokenizer(base_dir)
    for batch_size, max_group in ((7, None), (3, 1)):  # all in one group; one adapter a group
        table = score_library(model, tok, checkpoints, examples, batch_size=batch_size,
                              max_group=max_group, progress=False)
        assert table.skipped == {} and [r.name for r in table.rows] == [c.name for c in checkpoints]
        assert_same(table, reference, examples)
        assert _lora_layers(model) == 0  # handed back bare
    # The adapters really move the scores (not two bases compared).
    moved = max(abs(a - b) for c in checkpoints
                for ra, rb in zip(reference[c.name].logprobs, reference[BASE_ROW].logprobs, strict=True)
                for a, b in zip(ra, rb, strict=True))
    assert moved > 1e-2


def test_mixed_batches_on_the_demo_library(tiny_world):
    checkpoints = demo_library(tiny_world).checkpoints[:5]
    examples = sample_examples(load_split(tiny_world, "min", "train"), 24)
    reference = one_at_a_time(tiny_world.base_dir, checkpoints, examples)
    model, tok = load_base_model(tiny_world.base_dir, device="cpu"), load_tokenizer(tiny_world.base_dir)
    table = score_library(model, tok, checkpoints, examples, progress=False)
    assert_same(table, reference, examples)


def test_groups_follow_the_memory_budget(arch_worlds, examples, monkeypatch):
    """PEFT's path (what the bank does not hold): a budget smaller than two adapters gives
    groups of one, each freed before the next loads."""
    base_dir, adapters = arch_worlds["llama"]
    checkpoints = scan_library([adapters[0].parent], base_model_dir=base_dir).checkpoints
    model, tok = load_base_model(base_dir, device="cpu"), load_tokenizer(base_dir)
    whole = score_library(model, tok, checkpoints, examples[:6], progress=False, use_bank=False)
    smallest = min(scoring._adapter_bytes(c.path) for c in checkpoints)
    monkeypatch.setattr(scoring, "MIN_GROUP_BYTES", smallest)
    monkeypatch.setattr(scoring, "GROUP_FRACTION", 0.0)
    assert scoring.group_budget(model) == smallest
    held = []
    real = loglik.library_loglikelihoods  # scoring imports it when it scores

    def spy(peft_model, *args, **kwargs):
        held.append(len(peft_model.peft_config))
        return real(peft_model, *args, **kwargs)

    monkeypatch.setattr(loglik, "library_loglikelihoods", spy)
    split = score_library(model, tok, checkpoints, examples[:6], progress=False, use_bank=False)
    assert held == [1] * len(checkpoints)  # never more than one adapter loaded
    for name in [BASE_ROW, *(c.name for c in checkpoints)]:
        for a, b in zip(split.choice_scores[name].logprobs, whole.choice_scores[name].logprobs,
                        strict=True):
            assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_batches_on_cuda_bf16(arch, arch_worlds, examples):
    base_dir, adapters = arch_worlds[arch]
    checkpoints = scan_library([adapters[0].parent], base_model_dir=base_dir).checkpoints
    reference = one_at_a_time(base_dir, checkpoints, examples, dtype=torch.bfloat16, device="cuda")
    model = load_base_model(base_dir, device="cuda", dtype=torch.bfloat16)
    table = score_library(model, load_tokenizer(base_dir), checkpoints, examples, progress=False)
    for name, ref in reference.items():
        ours = table.choice_scores[name].logprobs
        agree = sum(max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
                    for a, b in zip(ours, ref.logprobs, strict=True))
        assert agree >= len(ours) - 1, name  # bf16: at most one near-tie may flip
        for a, b in zip(ours, ref.logprobs, strict=True):
            assert a == pytest.approx(b, rel=3e-2, abs=0.15), name
