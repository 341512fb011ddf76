"""Prompt formats: cloze (lm-eval's rows) and chat (the base's chat template, lettered answers).

A real byte-level BPE tokenizer (tests/realistic.py) carries Llama-3- and Gemma-style chat
templates written here as Jinja strings; nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import tomllib
import torch
from realistic import USER_MAPPING, build_base, build_bpe_tokenizer, save_base, write_user_dataset

from mashup_core.cli import main
from mashup_core.config import (
    ConfigError,
    find_target,
    init_workspace,
    load_config,
    load_target,
    parse_config,
    save_config,
    set_prompt_format,
)
from mashup_core.data.examples import MCExample, sample_examples
from mashup_core.data.prompts import (
    PROMPT_FORMATS,
    PromptFormatError,
    adds_bos,
    describes,
    format_examples,
)
from mashup_core.data.targets import FieldMapping, TargetSpec, benchmark_row_to_example
from mashup_core.demo.tiny_model import build_char_tokenizer
from mashup_core.selection.loglik import choice_loglikelihoods, encode_pair
from mashup_core.selection.store import sample_key
from mashup_core.training.loop import as_pairs, collate
from mashup_core.workspace import Workspace

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
          "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
         "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
         "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
GENERATION_PROMPT = {"llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     "gemma": "<start_of_turn>model\n"}
TEMPLATES = {"llama3": LLAMA3, "gemma": GEMMA}
MAPPING = USER_MAPPING

SKY = MCExample("Question: What colour is the sky?\nAnswer:", (" blue", " red", " green"), 0)


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer that prepends BOS and has no chat template (GPT-2-like)."""
    folder = tmp_path_factory.mktemp("plain-tok")
    build_bpe_tokenizer(folder)
    return folder


def _with_template(folder: Path, template: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def chat_base(tmp_path_factory, plain_folder) -> Path:
    """A tiny Llama base whose tokenizer has a Llama-3-style chat template (saved with it)."""
    folder = tmp_path_factory.mktemp("chat-base")
    tok = _with_template(plain_folder, LLAMA3)
    save_base(build_base("llama", tok, seed=0), tok, folder)
    return folder


@pytest.fixture
def chat_ws(tmp_path, chat_base) -> Workspace:
    """A user workspace: the chat base, a user file target, [defaults] prompt_format = chat."""
    data = write_user_dataset(tmp_path / "data" / "user.jsonl", n=40)
    ws = Workspace(tmp_path)
    init_workspace(ws, str(chat_base), [], [{"kind": "file", "name_or_path": str(data), "mapping": MAPPING}],
                   prompt_format="chat")
    return ws


# --- the chat format ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_rows_render_the_question_lettered_choices_and_the_generation_prompt(plain_folder, name):
    tok = _with_template(plain_folder, TEMPLATES[name])
    (row,) = format_examples([SKY], "chat", tok)
    assert "What colour is the sky?" in row.prompt
    assert "A. blue\nB. red\nC. green" in row.prompt
    assert "Answer with the letter of the correct option." in row.prompt
    assert "\nAnswer:" not in row.prompt, "the cloze cue is not left inside the chat turn"
    assert row.prompt.endswith(GENERATION_PROMPT[name])
    assert row.choices == ("A", "B", "C") and row.gold == SKY.gold and row.answer == "A"
    assert row.meta == {"prompt_format": "chat", "rendering": "chat-template"}
    assert describes("chat", tok).startswith("chat: one user turn in the base model's chat template")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_bos_is_not_doubled(plain_folder, name):
    tok = _with_template(plain_folder, TEMPLATES[name])
    bos = tok.bos_token_id
    assert adds_bos(tok), "this tokenizer prepends BOS itself, as Llama's and Gemma's do"
    raw = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                  add_generation_prompt=True)
    assert tok(raw)["input_ids"][:2] == [bos, bos], "the template writes a BOS too: the trap"
    (row,) = format_examples([SKY], "chat", tok)
    ctx, cont = encode_pair(tok, row.prompt, row.choices[0])  # how scoring encodes it
    assert ctx[0] == bos and ctx.count(bos) == 1 and bos not in cont
    batch = collate(tok, as_pairs([row]))  # how training encodes it
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert ids.count(bos) == 1 and ids[0] == bos
    answer = [t for t, label in zip(ids, batch["labels"][0].tolist(), strict=True) if label != -100]
    assert answer == [*tok("A", add_special_tokens=False)["input_ids"], tok.eos_token_id]


def test_a_template_without_bos_text_keeps_its_text(plain_folder):
    tok = _with_template(plain_folder, LLAMA3.replace("{{ bos_token }}", ""))
    (row,) = format_examples([SKY], "chat", tok)
    assert row.prompt.startswith("<|start_header_id|>user")
    assert tok(row.prompt)["input_ids"].count(tok.bos_token_id) == 1


def test_a_benchmark_with_numbered_labels_is_answered_with_numbers(plain_folder):
    tok = _with_template(plain_folder, LLAMA3)
    row = {"question": "Which is a planet?", "answerKey": "3",
           "choices": {"text": ["the Moon", "the Sun", "Mars", "a comet"], "label": ["1", "2", "3", "4"]}}
    cloze = benchmark_row_to_example("arc_easy", row)
    (chat,) = format_examples([cloze], "chat", tok)
    assert chat.choices == ("1", "2", "3", "4") and chat.gold == 2 == cloze.gold
    assert "1. the Moon\n2. the Sun\n3. Mars\n4. a comet" in chat.prompt
    assert "Answer with the number" in chat.prompt
    lettered = benchmark_row_to_example("arc_easy", {**row, "answerKey": "C", "choices": {
        "text": row["choices"]["text"], "label": list("ABCD")}})
    assert lettered.meta == {"benchmark": "arc_easy"}, "A-D rows keep their cloze identity"
    assert format_examples([lettered], "chat", tok)[0].choices == ("A", "B", "C", "D")


def test_without_a_chat_template_the_plain_lettered_layout(plain_folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(plain_folder)
    (row,) = format_examples([SKY], "chat", tok)
    assert row.prompt == "Question: What colour is the sky?\nA. blue\nB. red\nC. green\nAnswer:"
    assert row.choices == (" A", " B", " C") and row.gold == 0
    assert row.meta["rendering"] == "lettered-fallback"
    assert "no chat template" in describes("chat", tok)

    char = build_char_tokenizer()  # the demo's: no capitals, no newlines
    (demo,) = format_examples([MCExample("shift:bcgje=", ("abfid", "cdhkf", "bcgje"), 1)], "chat", char)
    assert demo.prompt == "shift:bcgje= a. abfid b. cdhkf c. bcgje answer:"
    assert demo.choices == (" a", " b", " c") and demo.gold == 1
    assert char.unk_token_id not in char(demo.prompt + demo.choices[2])["input_ids"]


def test_formatting_twice_is_a_no_op_and_another_format_an_error(plain_folder):
    tok = _with_template(plain_folder, LLAMA3)
    once = format_examples([SKY], "chat", tok)
    again = format_examples(once, "chat", tok)
    assert [r.to_json() for r in again] == [r.to_json() for r in once]
    with pytest.raises(PromptFormatError, match="in prompt format chat already"):
        format_examples(once, "cloze")
    assert format_examples([SKY], "cloze") == [SKY] and format_examples([SKY], None)[0].meta == {}
    with pytest.raises(PromptFormatError, match="'choices' is not one of cloze, chat"):
        format_examples([SKY], "choices", tok)
    with pytest.raises(PromptFormatError, match="needs the base model's tokenizer"):
        format_examples([SKY], "chat")


def test_chat_rows_score_as_a_hand_computed_log_likelihood(chat_base):
    from mashup_core.models.loading import load_base_model, load_tokenizer

    model, tok = load_base_model(chat_base, device="cpu"), load_tokenizer(chat_base)
    rows = format_examples([SKY, MCExample("Question: Two plus two?\nAnswer:", (" 4", " 5"), 0)], "chat", tok)
    scores = choice_loglikelihoods(model, tok, rows)
    for row, got in zip(rows, scores.logprobs, strict=True):
        for label, value in zip(row.choices, got, strict=True):
            ctx = tok(row.prompt)["input_ids"]
            whole = tok(row.prompt + label)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            expected = sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
            assert value == pytest.approx(expected, abs=1e-4)


# --- the workspace: config, CLI, and the one place rows are formatted ------------------------------


def test_config_validates_the_prompt_format(tmp_path, chat_base):
    base = {"base": {"model": str(chat_base)}}
    with pytest.raises(ConfigError, match=r"\[defaults\] prompt_format: 'chatty' is not one of cloze, chat"):
        parse_config({**base, "defaults": {"prompt_format": "chatty"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"\[\[targets\]\] #1: prompt format 'qa' is not one of cloze, chat"):
        parse_config({**base, "targets": [{"kind": "benchmark", "name_or_path": "piqa",
                                           "prompt_format": "qa"}]}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key 'prompt_fromat'; did you mean 'prompt_format'"):
        parse_config({**base, "defaults": {"prompt_fromat": "chat"}}, tmp_path)


def test_a_target_override_survives_a_save_and_follows_the_default_otherwise(tmp_path, chat_base):
    ws = Workspace(tmp_path)
    config = parse_config({"base": {"model": str(chat_base)}, "defaults": {"prompt_format": "chat"},
                           "targets": [{"kind": "benchmark", "name_or_path": "piqa"},
                                       {"kind": "benchmark", "name_or_path": "arc_easy",
                                        "prompt_format": "cloze"}]}, tmp_path)
    assert [t["prompt_format"] for t in config.targets] == ["chat", "cloze"]
    save_config(ws, config)
    stored = tomllib.loads((tmp_path / "mashup.toml").read_text())
    assert stored["defaults"]["prompt_format"] == "chat"
    assert [t.get("prompt_format") for t in stored["targets"]] == [None, "cloze"]
    assert load_config(ws) == config
    assert find_target(ws, "piqa").prompt_format == "chat"
    assert find_target(ws, "arc_easy").prompt_format == "cloze"
    assert find_target(ws, "arc_easy", prompt_format="chat").prompt_format == "chat"  # a flag wins
    assert find_target(ws, "hellaswag").prompt_format == "chat", "an unconfigured target: the default"
    config = set_prompt_format(ws, "cloze")
    assert [t.get("prompt_format") for t in config.targets] == [None, None]
    assert "prompt_format" not in tomllib.loads((tmp_path / "mashup.toml").read_text())["defaults"]
    config = set_prompt_format(ws, "chat", "arc_easy")
    assert [t.get("prompt_format") for t in load_config(ws).targets] == [None, "chat"]
    with pytest.raises(ConfigError, match="no target 'mmlu'"):
        set_prompt_format(ws, "chat", "mmlu")


def test_cli_init_config_and_verbs_take_a_prompt_format(tmp_path, chat_base, capsys):
    data = write_user_dataset(tmp_path / "data" / "user.jsonl", n=40)
    ws = ["--workspace", str(tmp_path)]
    assert main(["init", *ws, "--base", str(chat_base), "--target", str(data), "--prompt-format", "chat",
                 "--prompt-field", MAPPING["prompt"], "--choices-field", ",".join(MAPPING["choices"]),
                 "--gold-field", "answer", "--gold-format", "letter"]) == 0
    config = load_config(Workspace(tmp_path))
    assert config.defaults.prompt_format == "chat" and config.targets[0]["prompt_format"] == "chat"
    stored = tomllib.loads((tmp_path / "mashup.toml").read_text())
    assert "prompt_format" not in stored["targets"][0], "the target follows the default"
    assert "prompt format chat" in capsys.readouterr().out

    assert main(["config", *ws, "--prompt-format", "cloze", "--for-target", "user"]) == 0
    assert load_config(Workspace(tmp_path)).targets[0]["prompt_format"] == "cloze"
    capsys.readouterr()
    assert main(["new-spec", *ws, "--target", "user", "--prompt-format", "chat", "--steps", "2"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["target"]["prompt_format"] == "chat"
    assert main(["new-spec", *ws, "--target", "user", "--steps", "2"]) == 0
    assert "prompt_format" not in json.loads(capsys.readouterr().out)["target"], "cloze: as before"
    try:
        code = main(["new-spec", *ws, "--target", "user", "--prompt-format", "qa"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "invalid choice: 'qa'" in capsys.readouterr().err


def test_scoring_training_and_evaluation_see_the_same_chat_rows(chat_ws, monkeypatch):
    """The workspace says chat: the rows a score is cached for, a run trains and evaluates on,
    and a study evaluates on are the chat rows, and never share a cache key with cloze rows."""
    import mashup_core.training.loop as loop
    from mashup_core.jobs.runner import execute_run
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.store import create_run
    from mashup_core.study.spec import StudySpec, load_study_split, open_study
    from mashup_core.training.loop import TrainConfig
    from mashup_core.workspace import read_json

    spec = find_target(chat_ws, "user")
    assert spec.prompt_format == "chat" and spec.to_dict()["prompt_format"] == "chat"
    train = load_target(spec, chat_ws)
    cloze = load_target(TargetSpec.from_dict({**spec.to_dict(), "prompt_format": "cloze"}), chat_ws)
    assert len(train) == len(cloze) and all(r.meta["prompt_format"] == "chat" for r in train)
    assert [r.gold for r in train] == [r.gold for r in cloze]
    assert all(r.prompt.endswith(GENERATION_PROMPT["llama3"]) and r.choices == ("A", "B", "C", "D")
               for r in train)

    # scoring: the cache key covers the rows, so one format's scores never serve the other's
    def key(rows):
        return sample_key(sample_examples(rows, 8), n=8, seed=None, base_path="b", device="cpu",
                          dtype="float32")
    assert key(train) != key(cloze) and key(train) == key(load_target(spec, chat_ws))

    # evaluation in a study: the same loader, the same rows; a study fixes its format at open
    validation = load_target(spec.with_split("validation"), chat_ws)
    assert [r.to_json() for r in load_study_split(chat_ws, "user", "validation")] == \
        [r.to_json() for r in validation]
    study = StudySpec.from_dict(read_json(open_study(chat_ws, StudySpec(tasks=("user",))) / "spec.json"))
    assert study.prompt_format == "chat"
    assert [r.to_json() for r in load_study_split(chat_ws, "user", "validation", None, None,
                                                  study.prompt_format)] == [r.to_json() for r in validation]
    assert [r.prompt for r in load_study_split(chat_ws, "user", "validation", prompt_format="cloze")] == \
        [r.prompt for r in load_target(replace(spec.with_split("validation"), prompt_format="cloze"), chat_ws)]

    # a training run: its spec records the format; it trains and evaluates on the chat rows
    seen = {}
    real_fit = loop.fit

    def spy(model, tokenizer, pairs, validation, *args, **kwargs):
        seen["pairs"], seen["validation"] = list(pairs), list(validation)
        return real_fit(model, tokenizer, pairs, validation, *args, **kwargs)

    monkeypatch.setattr(loop, "fit", spy)
    run = RunSpec(target=spec, train=TrainConfig(steps=2, batch_size=4, lr=1e-3), eval_every=2,
                  checkpoint_every=2, train_limit=8, eval_limit=4, device="cpu",
                  base_model=str(load_config(chat_ws).base_model))
    assert run.target["prompt_format"] == "chat"
    assert run.identity() != replace(run, target={**run.target, "prompt_format": "cloze"}).identity()
    record = execute_run(chat_ws, create_run(chat_ws, run), progress=False, echo=False)
    assert record.status["state"] == "done", record.status
    assert seen["pairs"] == as_pairs(sample_examples(train, 8, 0))
    assert [r.to_json() for r in seen["validation"]] == [r.to_json() for r in sample_examples(validation, 4, 0)]


def test_cloze_is_the_default_and_changes_nothing(tmp_path, chat_base):
    data = write_user_dataset(tmp_path / "user.jsonl", n=20)
    spec = TargetSpec("file", str(data), mapping=FieldMapping(**MAPPING))
    assert spec.prompt_format == "cloze" and "prompt_format" not in spec.to_dict()
    assert TargetSpec.from_dict({**spec.to_dict(), "prompt_format": None}) == spec
    from mashup_core.data.targets import load_file

    rows = load_target(spec, Workspace(tmp_path))  # no workspace config needed for cloze
    every = [r.to_json() for i, r in enumerate(load_file(data, spec.mapping)) if i % 5 != 4]
    assert [r.to_json() for r in rows] == every  # one file: every 5th row held out
    assert all("prompt_format" not in r.meta for r in rows)
    assert sorted(PROMPT_FORMATS) == ["chat", "cloze", "reference"]


def test_a_verbs_base_renders_its_own_chat_rows(chat_ws, plain_folder, tmp_path, monkeypatch, capsys):
    """`mashup score --base OTHER` on a chat workspace: the rows are rendered with OTHER's chat
    template (the model that scores them), not the workspace base's."""
    import mashup_core.config as targets  # where a target's rows are formatted

    other = tmp_path / "gemma-base"
    tok = _with_template(plain_folder, GEMMA)
    save_base(build_base("llama", tok, seed=1), tok, other)
    rendered: list[str] = []
    real = targets.load_target

    def spy(spec, ws=None, tokenizer=None):
        rows = real(spec, ws, tokenizer)
        rendered.append(rows[0].prompt)
        return rows

    monkeypatch.setattr(targets, "load_target", spy)
    ws = ["--workspace", str(chat_ws.root)]
    # No library here: each call loads its rows, then stops at "no usable checkpoints".
    main(["score", *ws, "--target", "user", "--n", "4", "--no-progress"])
    main(["score", *ws, "--target", "user", "--n", "4", "--base", str(other), "--no-progress"])
    assert "no usable checkpoints" in capsys.readouterr().err
    assert len(rendered) == 2
    assert "<|start_header_id|>" in rendered[0] and "<start_of_turn>" not in rendered[0]
    assert "<start_of_turn>" in rendered[-1] and "<|start_header_id|>" not in rendered[-1]
