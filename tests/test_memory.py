"""Memory without changed numbers: logits only where read, one adapter held at a time while
scoring, gradient accumulation and checkpointing that train exactly as the plain loop does.

Built on a tiny random Llama and the demo's character tokenizer, without the demo world, so
the file runs in a few seconds on its own.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from mashup_core.data.examples import MCExample
from mashup_core.demo.tiny_model import TinyModelSpec, build_char_tokenizer, build_tiny_llama
from mashup_core.selection import loglik, scoring
from mashup_core.selection.loglik import choice_loglikelihoods, encode_examples, evaluate_mc
from mashup_core.training.loop import LoraSpec, TrainConfig, add_lora, train, trainable_state

SPEC = TinyModelSpec(hidden_size=32, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def tiny_model(tok, seed: int = 0):
    return build_tiny_llama(len(tok), SPEC, seed=seed).eval()


# Prompts of different lengths (left padding), answers of different lengths, one example with
# three choices (the uneven cache-expansion path).
EXAMPLES = [
    MCExample("sort:cab=", ("abc", "cba", "bac", "a"), 0),
    MCExample("min:9,3,7=", ("3", "7", "93", "9"), 0),
    MCExample("max of 12 and 5 is?", ("12", "5", "125"), 0),
    MCExample("q", ("yes", "no", "maybe", "never mind"), 1),
]
ONE_TOKEN = [MCExample("pick:", ("a", "b", "c", "d"), 2), MCExample("x=", ("1", "2", "3", "4"), 0)]


def full_forward_loglik(model, tok, ex: MCExample) -> list[float]:
    """Each prompt+choice as one sequence, every position's logits: the plain reference."""
    out = []
    for choice in ex.choices:
        ctx = tok(ex.prompt)["input_ids"]
        ids = tok(ex.prompt + choice)["input_ids"]
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        out.append(sum(logp[t - 1, ids[t]].item() for t in range(len(ctx), len(ids))))
    return out


class NoLogitsToKeep(torch.nn.Module):
    """The same model behind a forward without `logits_to_keep`: the full-logits path."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, **kwargs):
        assert "logits_to_keep" not in kwargs
        return self.model(**kwargs)


def test_only_the_read_logits_are_computed_and_scores_are_unchanged(tok):
    model = tiny_model(tok)
    widths = []  # positions the output head projected, per forward
    row_widths = []  # positions the decoder ran, per forward
    hooks = [model.lm_head.register_forward_hook(lambda _m, _i, out: widths.append(out.shape[1])),
             model.model.register_forward_hook(
                 lambda _m, _i, out: row_widths.append(out.last_hidden_state.shape[1]))]
    try:
        kept = choice_loglikelihoods(model, tok, EXAMPLES + ONE_TOKEN, batch_size=4)
    finally:
        for hook in hooks:
            hook.remove()
    # One forward per batch (two of four rows), each row its prompt then every choice but its
    # last token: the head runs on the columns that predict an answer token, no more.
    read = [1 + sum(len(c) - 1 for c in enc.continuations)
            for enc in encode_examples(tok, EXAMPLES + ONE_TOKEN)]
    assert len(widths) == 2 and max(widths) == max(read) and min(widths) >= min(read)
    assert all(w < r for w, r in zip(widths, row_widths, strict=True))  # never whole rows

    full = choice_loglikelihoods(NoLogitsToKeep(model), tok, EXAMPLES + ONE_TOKEN, batch_size=4)
    # Equal here bit for bit; a BLAS may sum a 1-row product in another order, hence 1e-6.
    for got, want in zip(kept.logprobs, full.logprobs, strict=True):
        assert got == pytest.approx(want, rel=0, abs=1e-6)
    for ex, got in zip(EXAMPLES + ONE_TOKEN, kept.logprobs, strict=True):
        assert got == pytest.approx(full_forward_loglik(model, tok, ex), abs=1e-5)


# --- scoring a library holds one adapter at a time ------------------------------------------


def _write_adapters(tok, root, n: int) -> list[SimpleNamespace]:
    ckpts = []
    for i in range(n):
        base = tiny_model(tok)  # seeds torch itself, so seed the adapter's init after it
        torch.manual_seed(100 + i)
        config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        peft_model = get_peft_model(base, config)  # random A and B: distinct scores
        peft_model.save_pretrained(root / f"a{i}")
        ckpts.append(SimpleNamespace(name=f"a{i}", path=root / f"a{i}", source_task=None))
    return ckpts


def _adapters_in_layers(model) -> set[str]:
    return {name for m in model.modules() if isinstance(m, BaseTunerLayer)
            for name in m.lora_A}


def test_score_library_deletes_each_adapter_once_measured(tok, tmp_path, monkeypatch):
    ckpts = _write_adapters(tok, tmp_path, 4)
    model = tiny_model(tok)
    ids = torch.tensor([[1, 10, 11, 12]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    held = []  # at each measurement: adapter configs and adapter weights in the layers
    measure = loglik.library_loglikelihoods  # scoring imports it when it scores

    def spy(m, *args, **kwargs):
        held.append((sorted(getattr(m, "peft_config", {})), sorted(_adapters_in_layers(m))))
        return measure(m, *args, **kwargs)

    monkeypatch.setattr(loglik, "library_loglikelihoods", spy)
    table = scoring.score_library(model, tok, ckpts, EXAMPLES, progress=False, max_group=1,
                                  use_bank=False)  # PEFT's path, what the bank does not hold
    # Groups of one (the base rides with the first): kept adapters would show up as ckpt0, ...
    assert held == [([f"ckpt{i}"], [f"ckpt{i}"]) for i in range(4)]
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert not hasattr(model, "peft_config")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    # Adapters 2-4 went into a PeftModel whose previous adapter was deleted: still exact.
    for ckpt in ckpts:
        alone = evaluate_mc(PeftModel.from_pretrained(tiny_model(tok), str(ckpt.path)), tok, EXAMPLES)
        assert table.row(ckpt.name).nll == pytest.approx(alone.nll, abs=1e-6)
    assert len({table.row(c.name).nll for c in ckpts}) == 4


# --- training options: same learning, less memory ---------------------------------------------

# Answers of different lengths, so micro-batches hold different numbers of loss tokens and a
# plain mean of micro-batch means would differ from the batch's mean.
PAIRS = [(f"sort:{w}=", "".join(sorted(w))) for w in
         ("c", "ba", "cab", "dcba", "edcba", "fedcba", "gfedcba", "hgfedcba", "b", "ih", "kji", "zyxw")]


def _checkpointing(model) -> bool:
    """Read from the layers: the property's name changed in transformers 5."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _train(tok, **options):
    torch.manual_seed(0)
    model = add_lora(tiny_model(tok), LoraSpec(r=4))
    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-2, warmup_ratio=0.0, seed=0, **options)
    checkpointing = []

    def on_step(_state, _log):
        checkpointing.append(_checkpointing(model))

    state = train(model, tok, PAIRS, cfg, on_step=on_step)
    return model, [log.loss for log in state.history], checkpointing


def test_grad_accum_trains_exactly_as_one_batch(tok):
    model1, losses1, _ = _train(tok)
    model2, losses2, _ = _train(tok, grad_accum=2)
    model4, losses4, _ = _train(tok, grad_accum=4)
    assert losses2 == pytest.approx(losses1, rel=1e-5) and losses4 == pytest.approx(losses1, rel=1e-5)
    w1 = trainable_state(model1)
    for other in (model2, model4):
        for name, value in trainable_state(other).items():
            torch.testing.assert_close(value, w1[name], rtol=1e-4, atol=1e-6)
    assert losses1[-1] < losses1[0]


def test_grad_accum_must_divide_the_batch(tok):
    model = add_lora(tiny_model(tok), LoraSpec(r=4))
    with pytest.raises(ValueError, match="must be at least 1 and divide batch_size"):
        train(model, tok, PAIRS, TrainConfig(steps=1, batch_size=8, grad_accum=3))


def test_gradient_checkpointing_trains_with_the_same_loss(tok):
    plain, losses, on = _train(tok)
    ckpt, ckpt_losses, ckpt_on = _train(tok, gradient_checkpointing=True, grad_accum=2)
    assert on == [False] * 3 and ckpt_on == [True] * 3  # it really recomputed
    assert ckpt_losses == pytest.approx(losses, rel=1e-5)
    w = trainable_state(plain)
    for name, value in trainable_state(ckpt).items():
        torch.testing.assert_close(value, w[name], rtol=1e-4, atol=1e-6)
    assert not _checkpointing(ckpt)  # off again after training
