"""Letter-prompt accuracy and agreement with lm-evaluation-harness, on the tiny demo world."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from mashup_core.data.examples import MCExample
from mashup_core.demo.world import load_split
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.lm_eval_bridge import LmEvalError, lm_eval_accuracy, write_lm_eval_task
from mashup_core.selection.loglik import (
    CHAR_SAFE_LETTERS,
    PLAIN_LETTERS,
    LetterPromptError,
    evaluate_mc,
    letter_accuracy,
    letter_format_for,
    letter_logits,
)


@pytest.fixture(scope="module")
def base(tiny_world):
    return load_base_model(tiny_world.base_dir, device="cpu"), load_tokenizer(tiny_world.base_dir)


@pytest.fixture(scope="module")
def adapted(tiny_world):
    model = load_base_model(tiny_world.base_dir, device="cpu")
    return PeftModel.from_pretrained(model, tiny_world.library_dir / "sort"), load_tokenizer(tiny_world.base_dir)


def test_letter_format_fits_the_char_tokenizer(base):
    _, tok = base
    # The demo vocabulary has no capitals or newlines, so the reference layout would be <unk>s.
    assert letter_format_for(tok) == CHAR_SAFE_LETTERS
    ex = MCExample("sort:cab=", ("abc", "cba"), 0)
    prompt = CHAR_SAFE_LETTERS.prompt(ex)
    assert prompt == "sort:cab= a. abc b. cba answer:"
    assert tok.unk_token_id not in tok(prompt)["input_ids"]


def test_letter_logits_match_a_plain_forward(base, tiny_world):
    model, tok = base
    examples = load_split(tiny_world, "min", "validation")[:10]
    batched = letter_logits(model, tok, examples, batch_size=4)  # left-padded batches
    letters = [tok.convert_tokens_to_ids(c) for c in "abcd"]
    for ex, row in zip(examples, batched, strict=True):
        ids = tok(CHAR_SAFE_LETTERS.prompt(ex) + " ")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert row == pytest.approx(logits[letters].tolist(), abs=1e-4)


def test_exactly_one_gold_letter_wins(base, tiny_world):
    """The same question with the gold at each position: one letter wins, so exactly 1/4."""
    model, tok = base
    source = load_split(tiny_world, "sort", "validation")[:8]
    rotated = [MCExample(ex.prompt, ex.choices, g) for ex in source for g in range(4)]
    assert letter_accuracy(model, tok, rotated) == 0.25


def test_letters_the_tokenizer_cannot_spell_are_refused(base, tiny_world):
    model, tok = base
    examples = load_split(tiny_world, "sort", "validation")[:2]
    with pytest.raises(LetterPromptError, match="cannot read the letters 'ABCD' as single known tokens"):
        letter_accuracy(model, tok, examples, PLAIN_LETTERS)
    with pytest.raises(LetterPromptError, match="4 choices but only 2 letters"):
        letter_accuracy(model, tok, examples, CHAR_SAFE_LETTERS.__class__(letters="ab"))


def _uneven_lengths(examples):
    """Choices of different lengths, so acc and acc_norm can disagree."""
    return [MCExample(ex.prompt, (ex.answer, ex.answer[:2], ex.answer * 2, ex.choices[(ex.gold + 1) % 4][:3]), 0)
            for ex in examples]


@pytest.mark.parametrize("which", ["base", "adapted"])
def test_lm_eval_agrees_with_evaluate_mc(which, base, adapted, tiny_world, tmp_path):
    model, tok = base if which == "base" else adapted
    examples = load_split(tiny_world, "sort", "validation")[:24]
    examples += _uneven_lengths(load_split(tiny_world, "min", "validation")[:24])
    ours = evaluate_mc(model, tok, examples)
    theirs = lm_eval_accuracy(model, tok, examples, tmp_path / "task", batch_size=8)
    assert theirs["n"] == ours.n == 48
    assert theirs["acc"] == pytest.approx(ours.acc, abs=1e-9)
    assert theirs["acc_norm"] == pytest.approx(ours.acc_norm, abs=1e-9)
    if which == "adapted":
        assert ours.acc > 0.4  # the sort adapter solves the sort half: a meaningful comparison


def test_lm_eval_task_export_rejects_bad_input(tmp_path):
    with pytest.raises(LmEvalError, match="no examples"):
        write_lm_eval_task([], tmp_path)
    with pytest.raises(LmEvalError, match="must be letters, digits and underscores"):
        write_lm_eval_task([MCExample("q", ("a",), 0)], tmp_path, name="my task")
    yaml = write_lm_eval_task([MCExample("q", ("a",), 0)], tmp_path).read_text()
    assert 'target_delimiter: ""' in yaml


def test_empty_prompt_is_scored_against_end_of_text_without_bos():
    """A WinoGrande-style example whose blank starts the sentence has an empty prompt; with a
    tokenizer that adds no BOS (GPT-2 style) the answer is conditioned on EOS, as in lm-eval."""
    import torch.nn.functional as F
    from transformers import PreTrainedTokenizerFast

    from mashup_core.data.examples import MCExample
    from mashup_core.demo.tiny_model import TinyModelSpec, build_char_tokenizer, build_tiny_llama
    from mashup_core.selection.loglik import choice_loglikelihoods

    core = build_char_tokenizer().backend_tokenizer
    core.post_processor = None  # no BOS
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    assert tok("")["input_ids"] == []
    model = build_tiny_llama(len(tok), TinyModelSpec(hidden_size=32), seed=0).eval()
    example = MCExample("", ("abc", "ba"), 0)
    scores = choice_loglikelihoods(model, tok, [example])
    with torch.no_grad():
        for choice, got in zip(example.choices, scores.logprobs[0], strict=True):
            ids = [tok.eos_token_id, *tok(choice)["input_ids"]]
            logp = F.log_softmax(model(torch.tensor([ids])).logits[0], -1)
            expected = sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
            assert got == pytest.approx(expected, abs=1e-4)


def test_answer_tokens_shared_by_every_choice_are_read_in_the_prompts_pass():
    """Choices sharing leading tokens (none, one, more than the cap, a choice that is a prefix of
    another, a single choice) score exactly as one forward per prompt + answer does."""
    import torch.nn.functional as F

    from mashup_core.demo.tiny_model import TinyModelSpec, build_char_tokenizer, build_tiny_llama
    from mashup_core.selection.loglik import (
        MAX_SHARED_ANSWER_TOKENS,
        choice_loglikelihoods,
        encode_examples,
        shared_answer_tokens,
    )

    tok = build_char_tokenizer()
    model = build_tiny_llama(len(tok), TinyModelSpec(hidden_size=32), seed=0).eval()
    long_shared = " " + "a" * (MAX_SHARED_ANSWER_TOKENS + 2)
    examples = [
        MCExample("abc", (" x", " y", " z"), 0),          # the space is shared
        MCExample("ba", ("x", "y"), 1),                     # nothing shared
        MCExample("cab", (" ab", " abc", " ac"), 2),        # " ab" is a prefix of " abc"
        MCExample("a", (long_shared + "b", long_shared + "c"), 0),  # longer than the cap
        MCExample("bca", (" cc",), 0),                      # one choice
    ]
    shared = [shared_answer_tokens(e.continuations) for e in encode_examples(tok, examples)]
    assert shared == [1, 0, 2, MAX_SHARED_ANSWER_TOKENS, 2]
    scores = choice_loglikelihoods(model, tok, examples, batch_size=8)
    with torch.no_grad():
        for ex, got_row in zip(examples, scores.logprobs, strict=True):
            for choice, got in zip(ex.choices, got_row, strict=True):
                ctx = tok(ex.prompt)["input_ids"]
                ids = tok(ex.prompt + choice)["input_ids"]
                logp = F.log_softmax(model(torch.tensor([ids])).logits[0], -1)
                expected = sum(logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))
                assert got == pytest.approx(expected, abs=1e-4), (ex.prompt, choice)


def test_a_prompt_start_shared_by_every_example_runs_once_per_adapter(monkeypatch):
    """Few-shot examples every prompt starts with run once per adapter; each adapter's scores
    still equal one forward per prompt + answer with that adapter alone."""
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from mashup_core.demo.tiny_model import TinyModelSpec, build_char_tokenizer, build_tiny_llama
    from mashup_core.selection import loglik

    tok = build_char_tokenizer()
    model = build_tiny_llama(len(tok), TinyModelSpec(hidden_size=32), seed=0).eval()
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(1)
    model = get_peft_model(model, config, adapter_name="a")
    torch.manual_seed(2)
    model.add_adapter("b", config)
    model.eval()
    shots = "rev:ab=ba rev:abc=cba rev:"
    examples = [MCExample(shots + q, choices, 0) for q, choices in
                [("ba=", ("ab", "ba")), ("cab=", ("bac", "abc", "cab")), ("c=", ("c", "cc"))]]
    runs = []
    real = loglik._run_shared_prompt
    monkeypatch.setattr(loglik, "_run_shared_prompt", lambda *a: runs.append(real(*a)) or runs[-1])
    scores = loglik.library_loglikelihoods(model, tok, examples, ["__base__", "a", "b"], batch_size=2)
    assert runs[0] is not None and runs[0].length == len(tok(shots)["input_ids"])
    with torch.no_grad():
        for name, got in zip(["__base__", "a", "b"], scores, strict=True):
            for ex, got_row in zip(examples, got.logprobs, strict=True):
                for choice, value in zip(ex.choices, got_row, strict=True):
                    ctx = tok(ex.prompt)["input_ids"]
                    ids = tok(ex.prompt + choice)["input_ids"]
                    if name == "__base__":
                        with model.disable_adapter():
                            logits = model(input_ids=torch.tensor([ids])).logits[0]
                    else:
                        model.set_adapter(name)
                        logits = model(input_ids=torch.tensor([ids])).logits[0]
                    logp = F.log_softmax(logits, -1)
                    expected = sum(logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))
                    assert value == pytest.approx(expected, abs=1e-4), (name, ex.prompt, choice)
