"""Target datasets: the demo suite, user files with a field mapping, the eight benchmark
schemas (on hand-written rows of the real shapes), sampling and the recorded target spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mashup_core.data.targets import (
    BENCHMARKS,
    DatasetError,
    FieldMapping,
    MCExample,
    TargetSpec,
    benchmark_row_to_example,
    file_fields,
    get_benchmark,
    list_demo_tasks,
    load_benchmark,
    load_demo_task,
    load_file,
    load_target,
    parse_mathqa_options,
    resolve_target,
    sample_examples,
    sample_indices,
)

DATA = Path(__file__).parent / "data"
BENCH_CASES = [json.loads(line) for line in (DATA / "benchmark_rows.jsonl").read_text().splitlines()]

# One small dataset, written below in every supported layout.
EXPECTED = [
    MCExample("2+2=", ("3", "4", "5"), 1),
    MCExample("capital of france", ("paris", "rome", "oslo"), 0),
    MCExample("sky colour", ("green", "red", "blue"), 2),
]


# --- the demo suite ----------------------------------------------------------------------------


def test_demo_task_loads_and_names_missing_task_and_split(tiny_world):
    assert list_demo_tasks(tiny_world) == ["rev", "tail", "sort", "min", "dsort", "dmax", "shift", "count"]
    examples = load_demo_task(tiny_world, "sort", "validation")
    assert len(examples) == 64 and examples[0].prompt.startswith("sort:")
    with pytest.raises(DatasetError, match=r"no demo task 'nope' .*known: rev, tail"):
        load_demo_task(tiny_world, "nope", "train")
    with pytest.raises(DatasetError, match=r"demo task 'sort' has no 'dev' split \(it has: test, train, validation\)"):
        load_demo_task(tiny_world, "sort", "dev")


# --- sampling ------------------------------------------------------------------------------------


def test_sampling_first_n_or_seeded():
    items = list(range(100))
    assert sample_examples(items, 5) == [0, 1, 2, 3, 4]  # the reference code: the first n
    seeded = sample_examples(items, 5, seed=3)
    assert seeded == sample_examples(items, 5, seed=3) == sorted(seeded)
    assert seeded != [0, 1, 2, 3, 4] and seeded != sample_examples(items, 5, seed=4)
    assert sample_indices(3, 10, seed=0) == [0, 1, 2] and sample_indices(3, None) == [0, 1, 2]
    with pytest.raises(DatasetError, match="at least one example"):
        sample_indices(10, 0)


# --- user files ---------------------------------------------------------------------------------


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


LAYOUTS = {
    "jsonl-list-index0": (
        "t.jsonl", FieldMapping(),
        "\n".join(json.dumps({"prompt": e.prompt, "choices": list(e.choices), "gold": e.gold}) for e in EXPECTED),
    ),
    "jsonl-index1-template": (
        "t.jsonl", FieldMapping(prompt="{topic}{op}", choices="options", gold="label", gold_format="index1"),
        "\n".join(json.dumps({"topic": e.prompt[:-1], "op": e.prompt[-1], "options": list(e.choices),
                              "label": e.gold + 1}) for e in EXPECTED),
    ),
    "csv-columns-letter": (
        "t.csv", FieldMapping(prompt="q", choices="a,b,c", gold="key", gold_format="letter"),
        "q,a,b,c,key\n" + "\n".join(f"{e.prompt},{','.join(e.choices)},{'ABC'[e.gold]}" for e in EXPECTED),
    ),
    "csv-delimited-text": (
        "t.csv", FieldMapping(prompt="q", choices="opts", gold="answer", gold_format="text", choices_delimiter="|"),
        "q,opts,answer\n" + "\n".join(f"{e.prompt},{'|'.join(e.choices)},{e.answer}" for e in EXPECTED),
    ),
    "csv-json-list-cell-lowercase-letter": (
        "t.csv", FieldMapping(prompt="q", choices="opts", gold="key", gold_format="letter"),
        "q,opts,key\n" + "\n".join(f'{e.prompt},"{json.dumps(list(e.choices)).replace(chr(34), 2 * chr(34))}",{"abc"[e.gold]}'
                                   for e in EXPECTED),
    ),
    "tsv-bom-index0-strings": (
        "t.tsv", FieldMapping(prompt="q", choices=("x", "y", "z"), gold="g"),
        "\ufeffq\tx\ty\tz\tg\n" + "\n".join(f"{e.prompt}\t" + "\t".join(e.choices) + f"\t{e.gold}" for e in EXPECTED),
    ),
    "json-array": (
        "t.json", FieldMapping(gold="answer", gold_format="text"),
        json.dumps([{"prompt": e.prompt, "choices": list(e.choices), "answer": e.answer} for e in EXPECTED]),
    ),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_field_mapping_loads_every_layout_and_gold_format(tmp_path, layout):
    name, mapping, text = LAYOUTS[layout]
    assert load_file(_write(tmp_path / name, text), mapping) == EXPECTED


def test_csv_rows_with_fewer_choices_leave_last_columns_empty(tmp_path):
    path = _write(tmp_path / "t.csv", "q,a,b,c,g\nfirst,x,y,,1\nsecond,x,y,z,2\n")
    examples = load_file(path, FieldMapping(prompt="q", choices="a,b,c", gold="g"))
    assert [len(e.choices) for e in examples] == [2, 3] and examples[1].answer == "z"


def test_file_fields_lists_the_first_rows_fields(tmp_path):
    assert file_fields(_write(tmp_path / "t.csv", "goal,sol1,sol2,label\ng,a,b,0\n")) == ["goal", "sol1", "sol2", "label"]


MALFORMED = {
    # case: (file name, content, mapping, regex the message must match: file, line, field)
    "missing field": ("m.jsonl", '{"prompt": "a", "choices": ["x", "y"], "gold": 0}\n\n{"prompt": "b", "choices": ["x", "y"]}\n',
                      FieldMapping(), r"m\.jsonl:3: missing field 'gold'"),
    "label out of range": ("r.csv", "q,a,b,g\nok,x,y,1\nbad,x,y,2\n", FieldMapping(prompt="q", choices="a,b", gold="g"),
                           r"r\.csv:3: field 'g': label 2 out of range for 2 choices \(0-1\)"),
    "index1 zero": ("z.jsonl", '{"prompt": "a", "choices": ["x", "y"], "gold": 0}\n', FieldMapping(gold_format="index1"),
                    r"z\.jsonl:1: field 'gold': label 0 out of range for 2 choices \(1-2\)"),
    "letter out of range": ("l.csv", "q,a,b,c,d,k\nq1,w,x,y,z,E\n",
                            FieldMapping(prompt="q", choices="a,b,c,d", gold="k", gold_format="letter"),
                            r"l\.csv:2: field 'k': 'E' is not a letter A-D for 4 choices"),
    "answer text not a choice": ("t.jsonl", '{"prompt": "a", "choices": ["x", "y"], "gold": "w"}\n',
                                 FieldMapping(gold_format="text"), r"t\.jsonl:1: field 'gold': answer text 'w' is not one of"),
    "gold not a number": ("n.jsonl", '{"prompt": "a", "choices": ["x", "y"], "gold": "first"}\n', FieldMapping(),
                          r"n\.jsonl:1: field 'gold': 'first' is not a whole number"),
    "bad json": ("j.jsonl", '{"prompt": "a", "choices": ["x", "y"], "gold": 0}\n{"prompt": "b", "choices": [\n',
                 FieldMapping(), r"j\.jsonl:2: invalid JSON"),
    "not an object": ("o.jsonl", '["a", ["x", "y"], 0]\n', FieldMapping(), r"o\.jsonl:1: expected a JSON object"),
    "wrong encoding": ("e.csv", "q,a,b,g\nok,x,y,0\ncaf\xe9,x,y,0\n".encode("latin-1"),
                       FieldMapping(prompt="q", choices="a,b", gold="g"), r"e\.csv:3: not UTF-8 text \(byte 0xe9\)"),
    "empty file": ("empty.jsonl", "", FieldMapping(), r"empty\.jsonl: no examples"),
    "header only": ("h.csv", "q,a,b,g\n", FieldMapping(prompt="q", choices="a,b", gold="g"), r"h\.csv: no examples"),
    "choices as plain string": ("s.csv", "q,opts,g\nq1,x|y,0\n", FieldMapping(prompt="q", choices="opts", gold="g"),
                                r"s\.csv:2: field 'opts': a string, not a list of choices; set choices_delimiter"),
    "one choice": ("c.jsonl", '{"prompt": "a", "choices": ["x"], "gold": 0}\n', FieldMapping(),
                   r"c\.jsonl:1: field 'choices': needs at least 2 choices"),
    "empty choice": ("ec.csv", "q,a,b,c,g\nq1,x,,z,0\n", FieldMapping(prompt="q", choices="a,b,c", gold="g"),
                     r"ec\.csv:2: field 'b': a choice must be non-empty text"),
    "extra csv values": ("x.csv", "q,a,b,g\nq1,x,y,0,surplus\n", FieldMapping(prompt="q", choices="a,b", gold="g"),
                         r"x\.csv:2: more values than the header has columns"),
    "template field missing": ("p.jsonl", '{"context": "c", "choices": ["x", "y"], "gold": 0}\n',
                               FieldMapping(prompt="{context} {question}"), r"p\.jsonl:1: missing field 'question'"),
    "unsupported type": ("data.xlsx", "whatever", FieldMapping(), r"data\.xlsx: unsupported file type '\.xlsx'"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_files_name_file_line_and_field(tmp_path, case):
    name, content, mapping, message = MALFORMED[case]
    with pytest.raises(DatasetError, match=message):
        load_file(_write(tmp_path / name, content), mapping)


def test_bad_mapping_is_refused():
    with pytest.raises(DatasetError, match="gold_format 'roman' is not one of index0, index1, letter, text"):
        FieldMapping(gold_format="roman")
    with pytest.raises(DatasetError, match=r"unknown keys \['answer'\]"):
        FieldMapping.from_dict({"answer": "x"})


# --- the eight benchmarks -------------------------------------------------------------------------


def test_every_benchmark_has_a_hand_written_row():
    assert {c["benchmark"] for c in BENCH_CASES} == set(BENCHMARKS)
    assert {n: (b.sizes["train"], b.sizes["validation"]) for n, b in BENCHMARKS.items()}["hellaswag"] == (39905, 10042)


@pytest.mark.parametrize("case", BENCH_CASES, ids=lambda c: c["benchmark"])
def test_benchmark_schema_adapters(case):
    ex = benchmark_row_to_example(case["benchmark"], case["row"])
    assert (ex.prompt, list(ex.choices), ex.gold) == (case["prompt"], case["choices"], case["gold"])
    assert ex.meta == {"benchmark": case["benchmark"]}


@pytest.mark.parametrize("options, expected", [
    ("a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these",
     ["38", "27.675", "30", "data inadequate", "none of these"]),
    ("a)12,b)15,c)18,d)21,e)24", ["12", "15", "18", "21", "24"]),
    ("  a  )  rs . 1,200 ,b ) 1 , 300 ,  c ) 1,400,d ) 1,500 , e )1,600  ", ["rs . 1,200", "1 , 300", "1,400", "1,500", "1,600"]),
    ("A ) x , B ) y , C ) z , D ) w , E ) v", ["x", "y", "z", "w", "v"]),
    ("['a ) 26 , 28', 'b ) 30', 'c ) 32', 'd ) 34', 'e ) 36']", ["26 , 28", "30", "32", "34", "36"]),
])
def test_mathqa_options_parsing_with_odd_spacing(options, expected):
    assert parse_mathqa_options(options) == expected


@pytest.mark.parametrize("name, row, message", [
    ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": -1}, r"PIQA: field 'label': label -1 out of range"),
    ("hellaswag", {"activity_label": "x", "ctx_a": "c", "ctx_b": "", "endings": ["a", "b"], "label": ""},
     r"HellaSwag: field 'label': missing or empty \(an unlabeled test row\?\)"),
    ("commonsense_qa", {"question": "q", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "C"},
     r"CommonsenseQA: field 'answerKey': 'C' is not one of the labels"),
    ("winogrande", {"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"},
     r"WinoGrande: field 'sentence': needs exactly one '_' blank"),
    ("mathqa", {"Problem": "p", "options": "12, 15, 18", "correct": "a"}, r"MathQA: field 'options': cannot read options"),
    ("mathqa", {"Problem": "p", "options": "a ) 1 , b ) 2", "correct": "c"},
     r"MathQA: field 'correct': 'c' is not one of the option letters ab"),
    ("social_iqa", {"context": "c", "question": "q", "answerA": "x", "answerB": "y", "label": "1"},
     r"SocialIQA: field 'answerC': missing"),
    ("arc_easy", {"question": "q", "choices": "A) x B) y", "answerKey": "A"}, r"ARC-Easy: row does not have the allenai/ai2_arc schema"),
])
def test_benchmark_bad_rows_name_benchmark_and_field(name, row, message):
    with pytest.raises(DatasetError, match=message):
        benchmark_row_to_example(name, row)


def test_benchmark_names_and_splits():
    assert get_benchmark("ARC-Easy").name == get_benchmark("arc_easy").name == "arc_easy"
    assert get_benchmark("SocialIQA").path == "allenai/social_i_qa"
    with pytest.raises(DatasetError, match="unknown benchmark 'mmlu'; choose from arc_easy, commonsense_qa"):
        get_benchmark("mmlu")
    with pytest.raises(DatasetError, match=r"PIQA has labels only in train, validation \(asked: 'test'\)"):
        load_benchmark("piqa", "test")


def test_load_benchmark_offline_says_what_to_do():
    with pytest.raises(DatasetError, match=r"cannot load WinoGrande \(validation\): benchmarks need the Hugging "
                       r"Face Hub once.*offline mode is on.*allenai/winogrande"):
        load_benchmark("winogrande", "validation", n=4)


@pytest.fixture
def fake_hub(monkeypatch):
    """`datasets.load_dataset` answering from local rows: script-only originals fail, mirrors serve."""
    import datasets

    rows = {c["benchmark"]: c["row"] for c in BENCH_CASES}
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append(path)
        if path == "ybisk/piqa":
            raise RuntimeError("Dataset scripts are no longer supported, but found piqa.py")
        bench = next(b for b in BENCHMARKS.values() if path in [p for p, _ in b.sources])
        return datasets.Dataset.from_list([{**rows[bench.name], "n": i} for i in range(20)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_load_benchmark_samples_before_converting_and_falls_back_to_the_mirror(fake_hub):
    first = load_benchmark("piqa", "train", n=4, seed=None)
    assert fake_hub == ["ybisk/piqa", "baber/piqa"] and len(first) == 4
    assert first[0] == benchmark_row_to_example("piqa", BENCH_CASES[8]["row"])
    assert len(load_benchmark("arc_easy", "validation")) == 20
    assert load_benchmark("mathqa", "train", n=5, seed=1) == load_benchmark("mathqa", "train", n=5, seed=1)


# --- target specs ----------------------------------------------------------------------------------


def test_target_spec_round_trips_through_json():
    spec = TargetSpec("file", "/data/q.csv", "validation",
                      FieldMapping(prompt="q", choices="a,b", gold="k", gold_format="letter"))
    back = TargetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.mapping.choices == ("a", "b")
    assert TargetSpec.from_dict(TargetSpec("demo", "rev").to_dict()) == TargetSpec("demo", "rev", "train")
    with pytest.raises(DatasetError, match="target kind 'url' is not one of demo, file, benchmark"):
        TargetSpec("url", "x")
    with pytest.raises(DatasetError, match=r"unknown keys \['n'\], missing keys \['name_or_path'\]"):
        TargetSpec.from_dict({"kind": "demo", "n": 3})


def test_load_target_for_each_kind(tiny_world, tmp_path, fake_hub):
    assert load_target(TargetSpec("demo", "min", "test"), tiny_world) == load_demo_task(tiny_world, "min", "test")
    folder = tmp_path / "mine"
    folder.mkdir()
    _write(folder / "validation.csv", "q,a,b,g\nq1,x,y,1\n")
    mapping = FieldMapping(prompt="q", choices="a,b", gold="g")
    assert load_target(TargetSpec("file", str(folder), "validation", mapping), tiny_world) == [MCExample("q1", ("x", "y"), 1)]
    with pytest.raises(DatasetError, match=r"mine: no train file \(train\.jsonl"):
        load_target(TargetSpec("file", str(folder), "train", mapping), tiny_world)
    assert len(load_target(TargetSpec("benchmark", "openbookqa", "validation"), tiny_world)) == 20


def test_resolve_target_from_what_a_user_types(tiny_world, tmp_path):
    assert resolve_target("dmax", tiny_world) == TargetSpec("demo", "dmax")
    assert resolve_target("Social-IQA", tiny_world, "validation") == TargetSpec("benchmark", "social_iqa", "validation")
    path = _write(tmp_path / "q.jsonl", "")
    assert resolve_target(str(path), tiny_world).kind == "file"
    with pytest.raises(DatasetError, match=r"no target 'mnli': not a demo task \(rev, tail.*not a benchmark \(arc_easy"):
        resolve_target("mnli", tiny_world)


def test_single_file_target_holds_out_a_validation_split(tmp_path):
    """One uploaded file: train and validation are disjoint and together are the whole file."""
    from mashup_core.data.targets import load_target, write_jsonl

    examples = [MCExample(f"q{i}:", ("a", "b"), i % 2) for i in range(23)]
    path = tmp_path / "mine.jsonl"
    write_jsonl(path, examples)
    train = load_target(TargetSpec("file", str(path), "train"))
    validation = load_target(TargetSpec("file", str(path), "validation"))
    assert len(validation) == 4 and len(train) == 19
    assert {ex.prompt for ex in train}.isdisjoint(ex.prompt for ex in validation)
    assert sorted(ex.prompt for ex in train + validation) == sorted(ex.prompt for ex in examples)
    write_jsonl(path, examples[:3])
    with pytest.raises(DatasetError, match="too few to hold out a validation split"):
        load_target(TargetSpec("file", str(path), "validation"))
