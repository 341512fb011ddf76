"""The reference pipeline reproduced: its prompts byte for byte, its token accuracy exactly.

The expected user messages are written out here by hand from github 2son1a/mashup-learning's
src/mashup/dataset_transforms.py; the expected token accuracy is computed here with plain
transformers, the way its src/mashup/evaluation.py computes it (teacher forcing, argmax over
the whole vocabulary, special and trailing whitespace-only answer tokens left out).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from realistic import USER_MAPPING, build_base, build_bpe_tokenizer, make_adapter, save_base

from mashup_core.cli import main
from mashup_core.config import init_workspace
from mashup_core.data.examples import MCExample
from mashup_core.data.prompts import ChatTemplateError, format_examples
from mashup_core.data.targets import FieldMapping, benchmark_row_to_example, load_file
from mashup_core.models.library import scan_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.scoring import BASE_ROW, score_library
from mashup_core.workspace import Workspace

GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
         "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
         "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]

# One row of each benchmark in its Hub schema, and the reference's user message and answer.
ROWS = {
    "arc_easy": (
        {"id": "Mercury_7175875", "question": "Which is a renewable resource?",
         "choices": {"text": ["coal", "wind", "oil", "natural gas"], "label": ["A", "B", "C", "D"]},
         "answerKey": "B"},
        "Answer the question below by choosing the correct choice.\n\n"
        "Question: Which is a renewable resource?\n\n"
        "Choices: A: coal\nB: wind\nC: oil\nD: natural gas\n\n"
        "You must respond with the letter corresponding to the correct choice (A,B,C,D) without "
        "any explanation. Answer:",
        "B"),
    "piqa": (
        {"goal": "How do I ready a guinea pig cage for it's new occupants?",
         "sol1": "Provide the guinea pig with a cage full of a few inches of bedding.",
         "sol2": "Provide the guinea pig with a cage full of a few inches of jam.", "label": 0},
        "Answer the question below by choosing the correct choice.\n\n"
        "Goal: How do I ready a guinea pig cage for it's new occupants?\n\n"
        "Choices: A: Provide the guinea pig with a cage full of a few inches of bedding.\n"
        "B: Provide the guinea pig with a cage full of a few inches of jam.\n\n"
        "You must respond with the letter corresponding to the correct choice (A,B) without any "
        "explanation. Answer:",
        "A"),
    "hellaswag": (
        {"ind": 4, "activity_label": "Removing ice from car",
         "ctx_a": "Then, the man writes over the snow covering the window of a car.",
         "ctx_b": "a woman wearing winter clothes",
         "ctx": "Then, the man writes over the snow covering the window of a car. A woman wearing "
                "winter clothes",
         "endings": [", smiles.", "sits on a bench.", "walks away.", "is shown."],
         "source_id": "activitynet~v_-1IBHYS3L-Y", "split": "train", "split_type": "indomain",
         "label": "3"},
        "Complete the context below by choosing the correct continuation.\n\n"
        "Context: Then, the man writes over the snow covering the window of a car. A woman "
        "wearing winter clothes\n\n"
        "Choices: A: , smiles.\nB: sits on a bench.\nC: walks away.\nD: is shown.\n\n"
        "You must respond with the letter corresponding to the correct choice (A,B,C,D) without "
        "any explanation. Answer:",
        "D"),
    "openbookqa": (
        {"id": "7-980", "question_stem": "The sun is responsible for",
         "choices": {"text": ["puppies learning new tricks", "children growing up and getting old",
                              "flowers wilting in a vase", "plants sprouting, blooming and wilting"],
                     "label": ["A", "B", "C", "D"]}, "answerKey": "D"},
        "Complete the following passage or answer the question by choosing the correct "
        "choice.\n\n"
        "Question: The sun is responsible for\n\n"
        "Choices: A: puppies learning new tricks\nB: children growing up and getting old\n"
        "C: flowers wilting in a vase\nD: plants sprouting, blooming and wilting\n\n"
        "You must respond with the letter corresponding to the correct choice (A,B,C,D) without "
        "any explanation. Answer:",
        "D"),
    "winogrande": (
        {"sentence": "Ian volunteered to eat Dennis's menudo after already having a bowl because _ "
                     "despised eating intestine.", "option1": "Ian", "option2": "Dennis",
         "answer": "2"},
        "Answer the question below by choosing the correct choice.\n\n"
        "Question: Ian volunteered to eat Dennis's menudo after already having a bowl because _ "
        "despised eating intestine.\n\n"
        "Choices: 0: Ian\n1: Dennis\n\n"
        "You must respond with the number corresponding to the correct choice (0, 1) without any "
        "explanation.",
        "1"),
    "social_iqa": (
        {"context": "Cameron decided to have a barbecue and gathered her friends together.",
         "question": "How would Others feel as a result?", "answerA": "like attending",
         "answerB": "like staying home", "answerC": "a good friend to have", "label": "1"},
        "Answer the question below by choosing the correct choice.\n\n"
        "Context: Cameron decided to have a barbecue and gathered her friends together.\n\n"
        "Question: How would Others feel as a result?\n\n"
        "Choices: 1: like attending\n2: like staying home\n3: a good friend to have\n\n"
        "You must respond with the number corresponding to the correct choice (1, 2, 3) without "
        "any explanation. Answer:",
        "1"),
    "mathqa": (
        {"Problem": "the banker ' s gain of a certain sum due 3 years hence at 10 % per annum is "
                    "rs . 36 . what is the present worth ?",
         "Rationale": "\"explanation : t = 3 years r = 10 % td = ( bg × 100 ) / tr = ( 36 × 100 "
                      ") / ( 3 × 10 ) = 12 × 10 = rs . 120 answer : option a\"",
         "options": "a ) rs . 400 , b ) rs . 300 , c ) rs . 500 , d ) rs . 350 , e ) none of these",
         "correct": "a", "annotated_formula": "divide(multiply(const_100, divide(multiply(36, "
         "const_100), multiply(3, 10))), multiply(3, 10))",
         "linear_formula": "multiply(n2,const_100)|multiply(n0,n1)|divide(#0,#1)|multiply(#2,"
                           "const_100)|divide(#3,#1)|", "category": "gain"},
        "Answer the question below by choosing the correct choice.\n\n"
        "Question: the banker ' s gain of a certain sum due 3 years hence at 10 % per annum is "
        "rs . 36 . what is the present worth ?\n\n"
        "Choices: a ) rs . 400 , b ) rs . 300 , c ) rs . 500 , d ) rs . 350 , e ) none of these\n\n"
        "You must respond with the letter corresponding to the correct choice (a, b, c, d, e) "
        "without any explanation.",
        "a"),
    "commonsense_qa": (
        {"id": "075e483d21c29a511267ef62bedc0461",
         "question": "The sanctions against the school were a punishing blow, and they seemed to "
                     "what the efforts the school had made to change?",
         "question_concept": "punishing",
         "choices": {"label": ["A", "B", "C", "D", "E"],
                     "text": ["ignore", "enforce", "authoritarian", "yell at", "avoid"]},
         "answerKey": "A"},
        "Answer the question below by choosing the correct choice.\n\n"
        "Question: The sanctions against the school were a punishing blow, and they seemed to "
        "what the efforts the school had made to change?\n\n"
        "Choices: A: ignore\nB: enforce\nC: authoritarian\nD: yell at\nE: avoid\n\n"
        "You must respond with the letter corresponding to the correct choice (A,B,C,D,E) "
        "without any explanation. Answer:",
        "A"),
}


@pytest.fixture(scope="module")
def chat_tokenizer_folder(tmp_path_factory) -> Path:
    """A byte-level BPE with Gemma-style turn tokens (special, as Gemma's are) and its template."""
    folder = tmp_path_factory.mktemp("gemma-tok")
    tok = build_bpe_tokenizer(folder)
    tok.add_special_tokens({"additional_special_tokens": TURN_TOKENS})
    tok.chat_template = GEMMA
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain_tokenizer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plain-tok")
    build_bpe_tokenizer(folder)
    return folder


# --- the prompts -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ROWS))
def test_the_user_message_is_the_reference_one(name, chat_tokenizer_folder):
    row, user, answer = ROWS[name]
    tok = load_tokenizer(chat_tokenizer_folder)
    (ex,) = format_examples([benchmark_row_to_example(name, row)], "reference", tok)
    assert ex.meta["user"] == user
    assert ex.answer == answer and ex.meta["rendering"] == "benchmark"
    messages = [{"role": "user", "content": user}]
    # The prompt is the conversation up to the generation prompt, as the template renders it;
    # the template's BOS text is left to the tokenizer, which prepends it when encoding.
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.bos_token + ex.prompt == rendered
    assert ex.meta["turn"] == {"tail": "<end_of_turn>\n"}


def test_every_benchmark_of_the_paper_has_its_reference_message():
    from mashup_core.data.reference import REFERENCE_TURNS
    from mashup_core.data.targets import BENCHMARKS

    assert sorted(REFERENCE_TURNS) == sorted(BENCHMARKS) == sorted(ROWS)


def test_other_rows_get_the_generic_chat_layout_and_a_base_without_template_an_error(
        chat_tokenizer_folder, plain_tokenizer_folder):
    row = MCExample("Question: What colour is the sky?\nAnswer:", (" blue", " red"), 0)
    (ex,) = format_examples([row], "reference", load_tokenizer(chat_tokenizer_folder))
    assert ex.meta["rendering"] == "generic" and ex.choices == ("A", "B")
    assert "A. blue\nB. red" in ex.meta["user"]
    with pytest.raises(ChatTemplateError, match="--chat-template FILE"):
        format_examples([row], "reference", load_tokenizer(plain_tokenizer_folder))
    template = plain_tokenizer_folder / "chat_template.jinja"
    template.write_text(GEMMA)
    tok = load_tokenizer(plain_tokenizer_folder, chat_template=template)
    (with_file,) = format_examples([row], "reference", tok)
    assert with_file.prompt.endswith("<start_of_turn>model\n")


def test_targets_show_prints_the_rendered_rows(tmp_path, chat_tokenizer_folder, capsys):
    import json

    base = save_base(build_base("llama", load_tokenizer(chat_tokenizer_folder)),
                     load_tokenizer(chat_tokenizer_folder), tmp_path / "base")
    data = tmp_path / "piqa.jsonl"
    data.write_text("".join(json.dumps(ROWS["piqa"][0]) + "\n" for _ in range(6)))
    ws = ["--workspace", str(tmp_path / "ws")]
    assert main(["targets", *ws, "--show", "piqa", "--data", str(data), "--prompt-format",
                 "reference", "--base", str(base), "--json", "--n", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["examples"]) == 2 and out["prompt_format"]["name"] == "reference"
    first = out["examples"][0]
    assert first["user_message"] == ROWS["piqa"][1]
    assert first["templated"].endswith("<start_of_turn>model\n") and first["gold"] == 0


def test_a_workspace_chat_template_file_is_used(tmp_path, plain_tokenizer_folder, capsys):
    tok = load_tokenizer(plain_tokenizer_folder)
    base = save_base(build_base("llama", tok), tok, tmp_path / "base")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "chat.jinja").write_text(GEMMA)
    data = tmp_path / "user.jsonl"
    from realistic import write_user_dataset

    write_user_dataset(data, n=10)
    ws = Workspace(tmp_path / "ws")
    init_workspace(ws, str(base), [], [{"kind": "file", "name_or_path": str(data),
                                        "mapping": USER_MAPPING}],
                   prompt_format="reference", chat_template=str(ws.root / "chat.jinja"))
    text = (ws.root / "mashup.toml").read_text()
    assert 'chat_template = "chat.jinja"' in text, "kept relative to the workspace"
    assert main(["targets", "--workspace", str(ws.root), "--show", "user", "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "generic chat layout" in out and "<start_of_turn>model" in out


# --- the metric ------------------------------------------------------------------------------


def _counted(tok, ids: list[int]) -> list[bool]:
    """The reference's answer mask, written here from its source: special ids out; from the
    end, special and whitespace-only tokens out."""
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    keep = [i not in special for i in ids]
    end = len(ids)
    while end and (ids[end - 1] in special or tok.decode([ids[end - 1]]).strip() == ""):
        end -= 1
    return [k and j < end for j, k in enumerate(keep)]


@torch.no_grad()
def _reference_token_acc(model, tok, conversations) -> tuple[float, float]:
    """(token accuracy, exact match) as the reference computes them, on chat conversations."""
    hits = total = exact = 0
    for messages in conversations:
        full = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
        prompt = tok.apply_chat_template(messages[:-1], tokenize=True, return_dict=False,
                                         add_generation_prompt=True)
        answer = full[len(prompt):]
        mask = _counted(tok, answer)
        predicted = model(torch.tensor([full])).logits[0, len(prompt) - 1:-1].argmax(-1).tolist()
        right = [p == a for p, a, m in zip(predicted, answer, mask, strict=True) if m]
        hits, total = hits + sum(right), total + len(right)
        exact += bool(right) and all(right)
    return hits / total, exact / len(conversations)


def _taught_the_format(tok, rows, folder: Path) -> Path:
    """A tiny base finetuned 60 steps on the rows: it answers some labels right, not all."""
    from mashup_core.training.loop import TrainConfig, as_pairs, train

    model = build_base("llama", tok, seed=3)
    model.requires_grad_(True)
    train(model, tok, as_pairs(rows), TrainConfig(steps=60, batch_size=8, lr=3e-3))
    return save_base(model.eval(), tok, folder)


def test_token_acc_is_the_references_on_chat_rows_base_and_adapters(tmp_path, chat_tokenizer_folder):
    from peft import PeftModel

    tok = load_tokenizer(chat_tokenizer_folder)
    cloze = load_file(_user_file(tmp_path, 24), FieldMapping(**USER_MAPPING))
    rows = format_examples(cloze + [benchmark_row_to_example(n, r) for n, (r, _, _) in ROWS.items()],
                           "reference", tok)
    base = _taught_the_format(tok, rows, tmp_path / "base")
    adapters = [make_adapter(base, tmp_path / "lib" / f"r{r}", r=r, target_modules="all-linear",
                             seed=r) for r in (2, 8)]
    model = load_base_model(base, device="cpu", dtype=torch.float32)
    library = scan_library([str(tmp_path / "lib")], base_model_dir=str(base)).checkpoints
    table = score_library(model, tok, library, rows, progress=False)
    conversations = [[{"role": "user", "content": r.meta["user"]},
                      {"role": "assistant", "content": r.answer}] for r in rows]
    expected = {BASE_ROW: _reference_token_acc(model, tok, conversations)}
    for folder in adapters:
        peft = PeftModel.from_pretrained(load_base_model(base, device="cpu", dtype=torch.float32),
                                         str(folder))
        expected[folder.name] = _reference_token_acc(peft, tok, conversations)
    got = {r.name: (r.token_acc, r.exact_match) for r in [table.base, *table.rows]}
    assert got == expected
    assert 0 < expected[BASE_ROW][0] < 1, "a metric at 0 or 1 would not test the mask"
    assert len(set(expected.values())) > 1, "the adapters change what the model answers"


def _user_file(tmp_path: Path, n: int) -> Path:
    from realistic import write_user_dataset

    return write_user_dataset(tmp_path / "user.jsonl", n=n)


@torch.no_grad()
def _teacher_forced(model, tok, rows: list[MCExample]) -> tuple[float, float]:
    """Token accuracy on cloze rows: the gold answer's tokens as lm-eval splits them."""
    hits = total = exact = 0
    for ex in rows:
        ctx = tok(ex.prompt)["input_ids"]
        whole = tok(ex.prompt + ex.answer)["input_ids"]
        answer = whole[len(ctx):]
        mask = _counted(tok, answer)
        predicted = model(torch.tensor([whole])).logits[0, len(ctx) - 1:-1].argmax(-1).tolist()
        right = [p == a for p, a, m in zip(predicted, answer, mask, strict=True) if m]
        hits, total = hits + sum(right), total + len(right)
        exact += bool(right) and all(right)
    return hits / total, exact / len(rows)


@torch.no_grad()
def _greedy(model, tok, prompt: str, tokens: int) -> str:
    ids = tok(prompt)["input_ids"]
    for _ in range(tokens):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return tok.decode(ids[len(tok(prompt)["input_ids"]):])


def test_token_acc_equals_teacher_forcing_on_every_architecture(arch_worlds, tmp_path):
    from peft import PeftModel
    from realistic import ARCHITECTURES

    rows = load_file(_user_file(tmp_path, 12), FieldMapping(**USER_MAPPING))[:8]
    for arch in ARCHITECTURES:
        base, adapters = arch_worlds[arch]
        tok = load_tokenizer(base)
        model = load_base_model(base, device="cpu", dtype=torch.float32)
        # Half the rows answered by the base's own greedy tokens, so argmax hits happen.
        shown = [MCExample(ex.prompt, (_greedy(model, tok, ex.prompt, 3), *ex.choices[1:]), 0)
                 if i % 2 == 0 else ex for i, ex in enumerate(rows)]
        table = score_library(model, tok, scan_library([str(a) for a in adapters],
                                                       base_model_dir=str(base)).checkpoints,
                              shown, progress=False)
        expected = {BASE_ROW: _teacher_forced(model, tok, shown)}
        for folder in adapters:
            peft = PeftModel.from_pretrained(load_base_model(base, device="cpu",
                                                             dtype=torch.float32), str(folder))
            expected[folder.name] = _teacher_forced(peft, tok, shown)
        got = {r.name: (r.token_acc, r.exact_match) for r in [table.base, *table.rows]}
        assert got == expected, arch
        assert 0 < expected[BASE_ROW][0] < 1, f"{arch}: greedy answers hit, the others do not"


# --- the preset ------------------------------------------------------------------------------


def test_a_reference_study_on_the_demo_world_runs_and_reports_both_clocks(world_copy, capsys):
    """`mashup study --preset reference`: the reference's settings, what the workspace and the
    flags override printed first; its report has our wall-clock ratio and the reference's."""
    from mashup_core.study.report import study_table
    from mashup_core.study.spec import StudySpec
    from mashup_core.workspace import read_json

    ws = ["--workspace", str(world_copy.root)]
    assert main(["study", *ws, "--preset", "reference", "--tasks", "rev,tail", "--seeds", "0",
                 "--eval-limit", "16",
                 "--engine", "inline", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "preset reference (lora): configs/pipeline/leave_one_out_lora.yaml" in out
    assert "the workspace's [defaults] lr" in out and "given on the command line" in out
    assert "the base model has no chat template" in out, "the char tokenizer keeps cloze rows"
    (study_dir,) = world_copy.studies_dir.iterdir()
    spec = StudySpec.from_dict(read_json(study_dir / "spec.json"))
    assert (spec.scorers, spec.eval_metric, spec.ks, spec.ns, spec.methods) == \
        (("token_acc",), "token_acc", (2,), (256,), ("linear",))
    assert (spec.train_epochs, spec.evals_per_epoch, spec.train_batch_size, spec.inits) == \
        (1.0, 10, 32, ("merged-continue",))
    assert spec.seeds == (0,) and spec.lrs == (3e-3,) and spec.prompt_format == "cloze"
    table = study_table(study_dir)
    assert table.complete and set(table.results["target"]) == {"rev", "tail", "mean"}
    mean = table.results[table.results["target"] == "mean"].iloc[0]
    assert mean["wallclock"] > mean["wallclock_reference"] > 0, \
        "the reference counts one checkpoint's scoring per target, we count the fold's"
    curve = table.runs("train")["curve"].iloc[0]
    assert len(curve) == 11, "step 0 and 10 evaluations in the epoch"
    assert main(["study", "report", study_dir.name, *ws]) == 0
    report = (study_dir / "report" / "results.md").read_text()
    assert "wall-clock ratio (reference)" in report and "token accuracy" in report


# --- limits: rows longer than the model's context ----------------------------------------------


def test_a_row_longer_than_the_context_is_refused_with_its_line(world_copy, tmp_path, capsys):
    """A 5 MB prompt in line 3 of a user's file: refused before tokenising, naming the file,
    the line and the field; a row just over the context in tokens too."""
    import json

    from mashup_core.data.limits import TooLongError
    from mashup_core.selection.loglik import encode_examples

    data = tmp_path / "mine.jsonl"
    rows = [{"prompt": "rev:abc=", "choices": ["cba", "abc"], "gold": 0}] * 8
    rows[2] = {"prompt": "a" * 5_000_000, "choices": ["x", "y"], "gold": 0}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["score", "--workspace", str(world_copy.root), "--target", str(data), "--n", "8",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and f"{data}:3: field 'prompt' is 5,000,000 characters" in err
    assert "context of 64 tokens" in err
    tok = load_tokenizer(world_copy.base_dir)
    near = MCExample("rev:" + "a" * 58 + "=", ("abc", "b"), 0, where="near.jsonl:1")
    with pytest.raises(TooLongError, match=r"near.jsonl:1: field 'choice 1' with its answer is 67 tokens"):
        encode_examples(tok, [near], max_length=64)
    assert encode_examples(tok, [near], max_length=None)
