"""Each step of the method on eight real architectures at toy size, with a trained BPE tokenizer.

The demo world is one Llama with a character tokenizer; real libraries are not. Here every
architecture in `realistic.ARCHITECTURES` (Llama, Qwen2, Mistral, Gemma 3 with a sliding
window shorter than the prompts, Phi-3's fused projections, GPT-2's Conv1D, GPT-NeoX, OLMo 2)
goes through the library scan, scoring (checked against lm-eval itself), a `cat` merge and
both kinds of finetune. Run with `-s` to see the per-architecture figures printed below.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from peft import PeftModel
from realistic import (
    ARCHITECTURES,
    BLOCK_LINEARS,
    USER_MAPPING,
    make_adapter,
    rows_of_mixed_lengths,
)
from transformers.pytorch_utils import Conv1D

from mashup_core.data.examples import MCExample
from mashup_core.data.targets import FieldMapping, load_file
from mashup_core.merging.lora import merge_adapters
from mashup_core.models.library import scan_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.loglik import choice_loglikelihoods, evaluate_mc
from mashup_core.selection.scoring import score_library
from mashup_core.training.loop import (
    TrainConfig,
    add_lora,
    answer_batch,
    answer_loss,
    as_pairs,
    collate,
    encode_pairs,
    init_model,
    train,
)

# The session fixture, bound here so pytest finds it. (Imported by name, ruff reports F811 at
# every test that takes it as an argument; an assignment is not a redefinition.)

ARCHS = list(ARCHITECTURES)

# Filled as the tests run and printed by them (visible with -s); the release notes quote them.
TRAINABLE_LORA_PARAMS: dict[str, int] = {}  # arch -> trainable parameters of the default LoRA
LM_EVAL_MAX_DIFF: dict[str, float] = {}  # arch -> max |ours - HFLM| over base and adapter


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[MCExample]:
    """The user's file read through their field mapping, plus one very short and one long
    prompt, so rows in a batch differ a lot in length and left padding is exercised."""
    return rows_of_mixed_lengths(tmp_path_factory.mktemp("arch-data"), n=14, seed=1, at=6)


def _base(base_dir):
    return load_base_model(base_dir, device="cpu", dtype=torch.float32)


def _adapter_model(base_dir, adapter_dir):
    return PeftModel.from_pretrained(_base(base_dir), str(adapter_dir)).eval()


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["What is the capital city of Kenya?\nAnswer: Nairobi",
                       "Which sound does a frog make?"], return_tensors="pt", padding=True)
    return model(**batch).logits.float()


def _flat(scores) -> list[float]:
    return [v for row in scores.logprobs for v in row]


# --- library ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_scan_accepts_the_adapters(arch, arch_worlds):
    base, adapters = arch_worlds[arch]
    for base_model_dir in (base, None):  # given explicitly, and as each adapter records it
        scan = scan_library([adapters[0].parent], base_model_dir=base_model_dir)
        assert [r.to_dict() for r in scan.rejected] == []
        assert sorted(scan.names) == sorted(a.name for a in adapters)
        assert {c.name: c.rank for c in scan} == {adapters[0].name: 8, adapters[1].name: 4}
        assert all(c.notes == () and c.base_model == str(base) for c in scan), [c.notes for c in scan]


# --- scoring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_choice_loglikelihoods_match_lm_eval(arch, arch_worlds, examples):
    """Our prompt-once, cached scoring gives lm-eval's numbers for the base and an adapter."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    base, adapters = arch_worlds[arch]
    tokenizer = load_tokenizer(base)
    assert tokenizer.padding_side == "left"
    context_lengths = {len(tokenizer(ex.prompt)["input_ids"]) for ex in examples}
    assert max(context_lengths) - min(context_lengths) > 20, context_lengths
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(ex.prompt, choice), idx=i)
        for ex in examples for i, choice in enumerate(ex.choices)
    ]
    results = {}
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    for which, model in (("base", _base(base)), ("adapter", _adapter_model(base, adapters[0]))):
        ours = _flat(choice_loglikelihoods(model, tokenizer, examples, batch_size=5))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
        theirs = [ll for ll, _greedy in lm.loglikelihood(requests, disable_tqdm=True)]
        assert len(ours) == len(theirs) == len(requests)
        results[which] = (ours, theirs)
    worst = max(abs(a - b) for ours, theirs in results.values() for a, b in zip(ours, theirs, strict=True))
    LM_EVAL_MAX_DIFF[arch] = worst
    print(f"\n[{arch}] max |ours - HFLM| = {worst:.2e}; all so far: "
          + ", ".join(f"{a}={d:.1e}" for a, d in LM_EVAL_MAX_DIFF.items()))
    assert worst < 1e-4
    # The adapter really is active in both computations (not a comparison of two bases).
    moved = max(abs(a - b) for a, b in zip(results["base"][0], results["adapter"][0], strict=True))
    assert moved > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_score_library_equals_each_adapter_alone(arch, arch_worlds, examples):
    base, adapters = arch_worlds[arch]
    tokenizer = load_tokenizer(base)
    scan = scan_library([adapters[0].parent], base_model_dir=base)
    model = _base(base)
    table = score_library(model, tokenizer, scan.checkpoints, examples, batch_size=4, progress=False)
    assert table.skipped == {}
    assert not isinstance(model, PeftModel) and not any("lora_" in n for n, _ in model.named_parameters())
    alone_base = evaluate_mc(_base(base), tokenizer, examples)
    assert table.base.acc == alone_base.acc and table.base.nll == pytest.approx(alone_base.nll, abs=1e-5)
    for ckpt in scan:
        alone = evaluate_mc(_adapter_model(base, ckpt.path), tokenizer, examples, batch_size=7)
        row = table.row(ckpt.name)
        assert (row.acc, row.acc_norm) == (alone.acc, alone.acc_norm), ckpt.name
        assert row.nll == pytest.approx(alone.nll, abs=1e-5), ckpt.name


# --- merging ----------------------------------------------------------------------------------


def _sum_of_deltas(base_dir, adapter_dirs, tokenizer) -> torch.Tensor:
    """Logits of W + ΔW_1 + ΔW_2, each ΔW folded in by PEFT itself: the reference."""
    model = _base(base_dir)
    for adapter in adapter_dirs:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return _logits(model.eval(), tokenizer)


def _check_cat_merge(base, first, second, out_dir) -> None:
    tokenizer = load_tokenizer(base)
    record = merge_adapters([first, second], [1.0, 1.0], "cat", out_dir)
    merged = _adapter_model(base, out_dir)
    got = _logits(merged, tokenizer)
    want = _sum_of_deltas(base, [first, second], tokenizer)
    assert (got - want).abs().max() < 1e-4
    # Both adapters matter: the sum is far from either one alone.
    for single in (first, second):
        assert (_logits(_adapter_model(base, single), tokenizer) - want).abs().max() > 1e-2
    assert record.method == "cat"


@pytest.mark.parametrize("arch", ARCHS)
def test_cat_merge_of_different_ranks_is_the_sum(arch, arch_worlds, tmp_path):
    """r=8 + r=4 over the same (all-linear) layers: the merge loads in PEFT and is exact."""
    base, adapters = arch_worlds[arch]
    r4 = make_adapter(base, tmp_path / "all-r4", r=4, target_modules="all-linear", seed=99)
    _check_cat_merge(base, adapters[0], r4, tmp_path / "merged")


@pytest.mark.parametrize("arch", ARCHS)
def test_cat_merge_of_the_library_pair_is_the_sum(arch, arch_worlds, tmp_path):
    """The fixture's own pair: all-linear r=8 and q/v-only r=4, as a real library mixes them."""
    base, adapters = arch_worlds[arch]
    _check_cat_merge(base, adapters[0], adapters[1], tmp_path / "merged")


# --- training ---------------------------------------------------------------------------------

STEPS = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_ratio=0.0, schedule="constant")


def _block_linears(model) -> list[str]:
    """Names of every linear (or GPT-2 Conv1D) layer inside the transformer blocks."""
    head = model.get_output_embeddings()
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D) and module is not head]


@pytest.mark.parametrize("arch", ARCHS)
def test_default_lora_covers_every_linear_layer_and_trains(arch, arch_worlds, examples):
    base, _ = arch_worlds[arch]
    tokenizer = load_tokenizer(base)
    model = _base(base)
    expected = _block_linears(model)
    # The generic list really is the architecture's layers (fused ones, Conv1D), two blocks' worth.
    suffixes = BLOCK_LINEARS[model.config.model_type]
    assert len(expected) == 2 * len(suffixes)
    assert all(any(name.endswith(s) for name in expected) for s in suffixes), expected
    torch.manual_seed(0)
    peft_model = add_lora(model)  # the project's default spec
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    covered = {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable}
    assert sorted(covered) == sorted(expected)
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    TRAINABLE_LORA_PARAMS[arch] = sum(p.numel() for p in trainable.values())
    print(f"\n[{arch}] default LoRA trains {TRAINABLE_LORA_PARAMS[arch]} parameters over "
          f"{len(covered)} layers; all so far: {TRAINABLE_LORA_PARAMS}")

    before = {n: p.detach().clone() for n, p in trainable.items()}
    state = train(peft_model, tokenizer, as_pairs(examples), STEPS)
    assert len(state.history) == STEPS.steps
    assert all(math.isfinite(log.loss) for log in state.history)
    changed = [n for n, p in peft_model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(before)


@pytest.mark.parametrize("arch", ARCHS)
def test_answer_loss_equals_hf_loss_and_gradients(arch, arch_worlds, examples):
    """Our loss (left-padded rows, the output head on the answer columns only) is HF's own
    `model(labels=...).loss` on a right-padded batch, and so are the LoRA gradients: rows of
    very different lengths, so positions and masks are really exercised."""
    base, _ = arch_worlds[arch]
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    model = add_lora(_base(base))
    pairs = as_pairs(examples)[:8]
    lora = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # B starts at zero, which would leave A without a gradient to compare
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)

    def loss_and_grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in lora]

    hf_loss, hf_grads = loss_and_grads(lambda: model(**collate(tokenizer, pairs), use_cache=False).loss)
    batch = answer_batch(encode_pairs(tokenizer, pairs), tokenizer.pad_token_id or 0)
    assert batch.keep < batch.input_ids.shape[1] // 2  # the head really ran on a few columns
    ours_loss, our_grads = loss_and_grads(lambda: answer_loss(model, batch, torch.device("cpu")) / batch.count)
    assert ours_loss == pytest.approx(hf_loss, rel=1e-5)
    for ours, theirs in zip(our_grads, hf_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_full_finetune_trains_every_parameter(arch, arch_worlds, examples):
    base, _ = arch_worlds[arch]
    tokenizer = load_tokenizer(base)
    model = init_model(_base(base), finetune="full")
    assert not isinstance(model, PeftModel)
    params = dict(model.named_parameters())
    assert all(p.requires_grad for p in params.values())
    before = {n: p.detach().clone() for n, p in params.items()}
    state = train(model, tokenizer, as_pairs(examples), STEPS)
    assert len(state.history) == STEPS.steps
    assert all(math.isfinite(log.loss) for log in state.history), [log.loss for log in state.history]
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(moved) == sorted(params)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- the user's world: mixed LoRA configs and the user's own file schema ----------------------



def test_user_world_scans_scores_and_merges_mixed_configs(user_world, tmp_path):
    """rsLoRA, an alpha pattern and plain LoRAs of several ranks: each one's scale must be read
    as PEFT reads it, or the merge silently differs from the adapters' sum."""
    base, adapters = user_world["base"], user_world["adapters"]
    scan = scan_library([user_world["adapters_dir"]], base_model_dir=base)
    assert [r.to_dict() for r in scan.rejected] == []
    assert sorted(scan.names) == sorted(adapters)
    mapping = FieldMapping(**USER_MAPPING)
    from_jsonl, from_csv = load_file(user_world["jsonl"], mapping), load_file(user_world["csv"], mapping)
    assert from_jsonl == from_csv and len(from_jsonl) == 40
    tokenizer = load_tokenizer(base)
    table = score_library(_base(base), tokenizer, scan.checkpoints, from_csv[:12], batch_size=5,
                          progress=False)
    assert table.skipped == {} and len(table.rows) == len(adapters)
    mixed = [adapters[name] for name in ("all-r8", "all-r16-rslora", "alpha-pattern")]
    merge_adapters(mixed, [1.0, 1.0, 1.0], "cat", tmp_path / "merged")
    got = _logits(_adapter_model(base, tmp_path / "merged"), tokenizer)
    assert (got - _sum_of_deltas(base, mixed, tokenizer)).abs().max() < 1e-4
