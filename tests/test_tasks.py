"""Target datasets: the demo suite, user files with a field mapping, the eight benchmark
schemas (on hand-written rows of the real shapes), sampling and the recorded target spec."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from mashup_core.config import load_target
from mashup_core.data.examples import (
    DatasetError,
    MCExample,
    parse_mathqa_options,
    sample_examples,
    sample_indices,
)
from mashup_core.data.targets import (
    BENCHMARKS,
    FieldMapping,
    TargetSpec,
    benchmark_row_to_example,
    file_fields,
    get_benchmark,
    list_demo_tasks,
    load_benchmark,
    load_benchmark_file,
    load_demo_task,
    load_file,
    resolve_target,
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
    assert seeded == sample_examples(items, 5, seed=3) and len(set(seeded)) == 5
    assert seeded != [0, 1, 2, 3, 4] and seeded != sample_examples(items, 5, seed=4)
    assert sample_examples(items, 9, seed=3)[:5] == seeded  # nested: a larger n extends a smaller
    assert sorted(sample_indices(3, 10, seed=0)) == [0, 1, 2] and sample_indices(3, None) == [0, 1, 2]
    assert len(sample_examples(items, 500, seed=1)) == 100
    with pytest.raises(DatasetError, match="at least one example"):
        sample_indices(10, 0)


# --- user files ---------------------------------------------------------------------------------


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


LAYOUTS = {
    "jsonl-list-index0": (
        "t.jsonl", FieldMapping(target_delimiter=""),
        "\n".join(json.dumps({"prompt": e.prompt, "choices": list(e.choices), "gold": e.gold}) for e in EXPECTED),
    ),
    "jsonl-index1-template": (
        "t.jsonl", FieldMapping(prompt="{topic}{op}", choices="options", gold="label", gold_format="index1", target_delimiter=""),
        "\n".join(json.dumps({"topic": e.prompt[:-1], "op": e.prompt[-1], "options": list(e.choices),
                              "label": e.gold + 1}) for e in EXPECTED),
    ),
    "csv-columns-letter": (
        "t.csv", FieldMapping(prompt="q", choices="a,b,c", gold="key", gold_format="letter", target_delimiter=""),
        "q,a,b,c,key\n" + "\n".join(f"{e.prompt},{','.join(e.choices)},{'ABC'[e.gold]}" for e in EXPECTED),
    ),
    "csv-delimited-text": (
        "t.csv", FieldMapping(prompt="q", choices="opts", gold="answer", gold_format="text", choices_delimiter="|", target_delimiter=""),
        "q,opts,answer\n" + "\n".join(f"{e.prompt},{'|'.join(e.choices)},{e.answer}" for e in EXPECTED),
    ),
    "csv-json-list-cell-lowercase-letter": (
        "t.csv", FieldMapping(prompt="q", choices="opts", gold="key", gold_format="letter", target_delimiter=""),
        "q,opts,key\n" + "\n".join(f'{e.prompt},"{json.dumps(list(e.choices)).replace(chr(34), 2 * chr(34))}",{"abc"[e.gold]}'
                                   for e in EXPECTED),
    ),
    "tsv-bom-index0-strings": (
        "t.tsv", FieldMapping(prompt="q", choices=("x", "y", "z"), gold="g", target_delimiter=""),
        "\ufeffq\tx\ty\tz\tg\n" + "\n".join(f"{e.prompt}\t" + "\t".join(e.choices) + f"\t{e.gold}" for e in EXPECTED),
    ),
    "json-array": (
        "t.json", FieldMapping(gold="answer", gold_format="text", target_delimiter=""),
        json.dumps([{"prompt": e.prompt, "choices": list(e.choices), "answer": e.answer} for e in EXPECTED]),
    ),
    "json-data-key": (
        "t.json", FieldMapping(target_delimiter=""),
        json.dumps({"version": 1, "data": [{"prompt": e.prompt, "choices": list(e.choices), "gold": e.gold}
                                           for e in EXPECTED]}),
    ),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_field_mapping_loads_every_layout_and_gold_format(tmp_path, layout):
    name, mapping, text = LAYOUTS[layout]
    assert load_file(_write(tmp_path / name, text), mapping) == EXPECTED


def test_user_file_in_parquet_and_in_the_hubs_folder_layout(tmp_path):
    """Parquet is one more row reader, so user files get it too, and a user's folder may be laid
    out as on the Hub (data/<split>-00000-of-00001.parquet)."""
    frame = pd.DataFrame([{"q": e.prompt, "opts": list(e.choices), "key": "ABC"[e.gold]} for e in EXPECTED])
    mapping = FieldMapping(prompt="q", choices="opts", gold="key", gold_format="letter", target_delimiter="")
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    assert load_file(tmp_path / "t.parquet", mapping) == EXPECTED
    assert file_fields(tmp_path / "t.parquet") == ["q", "opts", "key"]
    (tmp_path / "hub" / "data").mkdir(parents=True)
    frame.to_parquet(tmp_path / "hub" / "data" / "validation-00000-of-00001.parquet", index=False)
    assert load_target(TargetSpec("file", str(tmp_path / "hub"), "validation", mapping)) == EXPECTED


def test_csv_rows_with_fewer_choices_leave_last_columns_empty(tmp_path):
    path = _write(tmp_path / "t.csv", "q,a,b,c,g\nfirst,x,y,,1\nsecond,x,y,z,2\n")
    examples = load_file(path, FieldMapping(prompt="q", choices="a,b,c", gold="g", target_delimiter=""))
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
    # Labels other than A, B, ... (ARC's 1-4) are kept: the chat prompt format lists them.
    labels = case["row"]["choices"].get("label") if isinstance(case["row"].get("choices"), dict) else None
    own = {"labels": labels} if labels and labels != list("ABCDE"[: len(labels)]) else {}
    assert ex.meta == {"benchmark": case["benchmark"], **own}


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


# --- a benchmark from local files in its Hub schema ------------------------------------------------
# An export of the real dataset, read with the benchmark's own converter: whatever the format,
# load_target must give exactly what the converter gives on the same rows.

PROMPT_FIELD = {"arc_easy": "question", "commonsense_qa": "question", "hellaswag": "activity_label",
                "mathqa": "Problem", "openbookqa": "question_stem", "piqa": "goal", "social_iqa": "context",
                "winogrande": "sentence"}


def _bench_rows(name: str, n: int, start: int = 0) -> list[dict]:
    """`n` distinct rows of a benchmark's schema: the hand-written ones, numbered in the field
    the prompt comes from (so that order and hold-out are checked row by row)."""
    base = [c["row"] for c in BENCH_CASES if c["benchmark"] == name]
    field = PROMPT_FIELD[name]
    return [{**row, field: f"{start + i} {row[field]}"} for i, row in enumerate((base * n)[:n])]


def _converted(name: str, rows: list[dict]) -> list[MCExample]:
    return [benchmark_row_to_example(name, row) for row in rows]


def _to_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _to_json(path: Path, data: list[dict] | dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _to_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def _to_csv_json_cells(path: Path, rows: list[dict], delimiter: str = ",") -> None:
    """Lists and dicts as JSON in their cell: how a careful hand export keeps them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()}
                         for row in rows)


def _with_datasets(method: str, suffix: str) -> Callable[[Path, list[dict]], None]:
    """A split written by `datasets` itself (to_json: JSON lines; to_csv: pandas' reprs of lists
    and dicts in the cells), as a researcher's export of the real dataset would be."""
    def write(path: Path, rows: list[dict]) -> None:
        import datasets

        path.parent.mkdir(parents=True, exist_ok=True)
        getattr(datasets.Dataset.from_list(rows), method)(str(path.with_suffix(suffix)))
    return write


# layout -> writes {split: rows} under a folder; the loader must find each split there.
FOLDER_LAYOUTS: dict[str, Callable[[Path, dict[str, list[dict]]], None]] = {
    "jsonl": lambda d, splits: [_to_jsonl(d / f"{s}.jsonl", rows) for s, rows in splits.items()],
    "datasets-to_json": lambda d, splits: [_with_datasets("to_json", ".json")(d / s, rows) for s, rows in splits.items()],
    "json-array": lambda d, splits: [_to_json(d / f"{s}.json", rows) for s, rows in splits.items()],
    "json-data-key": lambda d, splits: [_to_json(d / f"{s}.json", {"data": rows}) for s, rows in splits.items()],
    "hub-parquet-shards": lambda d, splits: [
        _to_parquet(d / "data" / f"{s}-{i:05d}-of-00002.parquet", half)  # read back in shard order
        for s, rows in splits.items() for i, half in enumerate((rows[: len(rows) // 2], rows[len(rows) // 2:]))],
    "refs-convert-parquet": lambda d, splits: [_to_parquet(d / "default" / s / "0000.parquet", rows)
                                               for s, rows in splits.items()],
    "csv-json-cells": lambda d, splits: [_to_csv_json_cells(d / f"{s}.csv", rows) for s, rows in splits.items()],
    "tsv-json-cells": lambda d, splits: [_to_csv_json_cells(d / f"{s}.tsv", rows, "\t") for s, rows in splits.items()],
    "datasets-to_csv": lambda d, splits: [_with_datasets("to_csv", ".csv")(d / s, rows) for s, rows in splits.items()],
}


@pytest.fixture
def no_hub(monkeypatch):
    """Local data must never reach for the Hub."""
    import mashup_core.data.targets as targets

    def refuse(*_args, **_kwargs):
        raise AssertionError("local data went to the Hub")

    monkeypatch.setattr(targets, "_load_split", refuse)


@pytest.mark.parametrize("layout", FOLDER_LAYOUTS)
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_from_a_local_folder_gives_what_the_converter_gives(tmp_path, no_hub, name, layout):
    splits = {"train": _bench_rows(name, 4), "validation": _bench_rows(name, 3, start=4)}
    FOLDER_LAYOUTS[layout](tmp_path / "export", splits)
    for split, rows in splits.items():
        examples = load_target(TargetSpec("benchmark", name, split, data=str(tmp_path / "export")))
        assert examples == _converted(name, rows)
        assert [e.meta for e in examples] == [e.meta for e in _converted(name, rows)]
        assert all(e.meta["benchmark"] == name for e in examples)


SINGLE_FILES: dict[str, Callable[[Path, list[dict]], None]] = {
    "t.parquet": _to_parquet,
    "t.jsonl": _to_jsonl,
    "t.csv": _to_csv_json_cells,
}


@pytest.mark.parametrize("file", SINGLE_FILES)
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_from_one_local_file_holds_out_every_fifth_row(tmp_path, no_hub, name, file):
    rows = _bench_rows(name, 10)
    SINGLE_FILES[file](tmp_path / file, rows)
    expected = _converted(name, rows)
    assert load_benchmark_file(name, tmp_path / file) == expected
    spec = TargetSpec("benchmark", name, "train", data=str(tmp_path / file))
    assert load_target(spec) == [e for i, e in enumerate(expected) if i not in (4, 9)]
    assert load_target(spec.with_split("validation")) == [expected[4], expected[9]]


def test_csv_cells_as_pandas_writes_them_keep_quotes_commas_and_newlines(tmp_path):
    """pandas writes a list cell as numpy's `['a' 'b']` (no commas): read as Python the strings
    would join into one choice, so each must come back separately, whatever they contain."""
    odd = ["it's, fine", 'say "hi"', "two\nlines", "[bracket] ok"]
    hellaswag = [{**_bench_rows("hellaswag", 1)[0], "endings": odd, "label": "2"}]
    arc = [{**_bench_rows("arc_easy", 1)[0], "choices": {"text": odd, "label": ["A", "B", "C", "D"]}, "answerKey": "C"}]
    for name, rows in (("hellaswag", hellaswag), ("arc_easy", arc)):
        _to_parquet(tmp_path / f"{name}.parquet", rows)
        pd.read_parquet(tmp_path / f"{name}.parquet").to_csv(tmp_path / f"{name}.csv", index=False)
        examples = load_benchmark_file(name, tmp_path / f"{name}.csv")
        assert examples == _converted(name, rows) and len(examples[0].choices) == 4


def test_a_hub_snapshot_is_read_from_the_benchmarks_config_folder(tmp_path, no_hub):
    """allenai/ai2_arc holds ARC-Challenge/ and ARC-Easy/: arc_easy reads only its own."""
    easy, challenge = _bench_rows("arc_easy", 3), _bench_rows("arc_easy", 3, start=100)
    _to_parquet(tmp_path / "ai2_arc" / "ARC-Challenge" / "train-00000-of-00001.parquet", challenge)
    _to_parquet(tmp_path / "ai2_arc" / "ARC-Easy" / "train-00000-of-00001.parquet", easy)
    assert load_target(TargetSpec("benchmark", "arc_easy", data=str(tmp_path / "ai2_arc"))) == _converted("arc_easy", easy)


def _user_csv(path: Path) -> None:
    path.write_text('prompt,choices,gold\nq1,"[""x"", ""y""]",0\n', encoding="utf-8")


WRONG_SCHEMA = {
    # case: (benchmark asked for, writes the file, regex the message must match)
    "piqa export as arc_easy": (
        "arc_easy", lambda d: _to_jsonl(d / "piqa.jsonl", _bench_rows("piqa", 2)),
        r"piqa\.jsonl:1: not an ARC-Easy row: expected fields question, choices, answerKey; "
        r"found goal, sol1, sol2, label \(it has the fields of PIQA\)"),
    "user csv as piqa": (
        "piqa", lambda d: _user_csv(d / "mine.csv"),
        r"mine\.csv:2: not a PIQA row: expected fields goal, sol1, sol2, label; found prompt, choices, gold "
        r"\(a file in another schema is a file target, with a field mapping\)"),
    "winogrande parquet as hellaswag": (
        "hellaswag", lambda d: _to_parquet(d / "w.parquet", _bench_rows("winogrande", 2)),
        r"w\.parquet:1: not a HellaSwag row: expected fields activity_label, ctx or ctx_a, endings, label; "
        r"found sentence, option1, option2, answer \(it has the fields of WinoGrande\)"),
    "a later row of another schema": (
        "piqa", lambda d: _to_jsonl(d / "mixed.jsonl", _bench_rows("piqa", 2) + _bench_rows("social_iqa", 1)),
        r"mixed\.jsonl:3: not a PIQA row: .*found context, question, answerA"),
    "a bad label in the right schema": (
        "arc_easy", lambda d: _to_jsonl(d / "a.jsonl", [*_bench_rows("arc_easy", 1),
                                                         {**_bench_rows("arc_easy", 1)[0], "answerKey": "E"}]),
        r"a\.jsonl:2: ARC-Easy: field 'answerKey': 'E' is not one of the labels"),
    "an unlabelled test export": (
        "hellaswag", lambda d: _to_jsonl(d / "test.jsonl", [{**_bench_rows("hellaswag", 1)[0], "label": ""}]),
        r"test\.jsonl:1: HellaSwag: field 'label': missing or empty \(an unlabeled test row\?\)"),
    "a cell that is not a list": (
        "arc_easy", lambda d: (d / "a.csv").write_text("question,choices,answerKey\nq,A) x B) y,A\n"),
        r"a\.csv:2: ARC-Easy: field 'choices': 'A\) x B\) y' is not a list or dict \(write nested fields as JSON"),
}


@pytest.mark.parametrize("case", WRONG_SCHEMA)
def test_benchmark_data_in_the_wrong_schema_names_file_row_and_fields(tmp_path, no_hub, case):
    name, write, message = WRONG_SCHEMA[case]
    write(tmp_path)
    (path,) = tmp_path.iterdir()
    with pytest.raises(DatasetError, match=message):
        load_target(TargetSpec("benchmark", name, "train", data=str(path)))


def test_empty_and_unreadable_benchmark_files(tmp_path, no_hub):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "header.csv").write_text("goal,sol1,sol2,label\n")
    (tmp_path / "zero.parquet").write_bytes(b"")
    pd.DataFrame({"goal": [], "sol1": [], "sol2": [], "label": []}).to_parquet(tmp_path / "norows.parquet")
    for name in ("empty.jsonl", "header.csv", "zero.parquet", "norows.parquet"):
        with pytest.raises(DatasetError, match=rf"{name.replace('.', '[.]')}: no examples \(the file is empty\)"):
            load_target(TargetSpec("benchmark", "piqa", "train", data=str(tmp_path / name)))
    (tmp_path / "bad.parquet").write_text("goal,sol1,sol2,label\n")
    with pytest.raises(DatasetError, match=r"bad\.parquet: not a readable Parquet file \("):
        load_target(TargetSpec("benchmark", "piqa", "train", data=str(tmp_path / "bad.parquet")))


def test_benchmark_folder_without_the_split_lists_what_it_holds(tmp_path, no_hub):
    export = tmp_path / "export"
    _to_jsonl(export / "train.jsonl", _bench_rows("piqa", 2))
    _to_parquet(export / "data" / "test-00000-of-00001.parquet", _bench_rows("piqa", 2))
    (export / "README.md").write_text("not data")
    with pytest.raises(DatasetError, match=r"export: no validation file \(validation\.jsonl, .*validation\.parquet, "
                       r"or shards like validation-00000-of-00001\.parquet, here or under data/, default/\); it "
                       r"holds: train\.jsonl, data/test-00000-of-00001\.parquet \(give one file itself"):
        load_target(TargetSpec("benchmark", "piqa", "validation", data=str(export)))
    (tmp_path / "bare").mkdir()
    with pytest.raises(DatasetError, match=r"bare: no train file .*it holds: no data files \(\.jsonl"):
        load_target(TargetSpec("benchmark", "piqa", "train", data=str(tmp_path / "bare")))
    with pytest.raises(DatasetError, match=r"gone: no such file or folder"):
        load_target(TargetSpec("benchmark", "piqa", "train", data=str(tmp_path / "gone")))
    with pytest.raises(DatasetError, match=r"PIQA has labels only in train, validation \(asked: 'test'\)"):
        load_target(TargetSpec("benchmark", "piqa", "test", data=str(export)))


def test_resolve_target_takes_local_data_for_a_benchmark_only(tiny_world, tmp_path, monkeypatch):
    _to_jsonl(tmp_path / "export" / "validation.jsonl", _bench_rows("arc_easy", 2))
    monkeypatch.chdir(tmp_path)  # a relative path is kept absolute: runs start elsewhere
    spec = resolve_target("ARC-Easy", tiny_world, "validation", data="export")
    assert spec == TargetSpec("benchmark", "arc_easy", "validation", data=str(tmp_path / "export"))
    assert spec.data == str(tmp_path / "export") and spec.label == "arc_easy (validation, local)"
    assert TargetSpec("benchmark", "arc_easy").label == "arc_easy (train)"
    assert load_target(spec, tiny_world) == _converted("arc_easy", _bench_rows("arc_easy", 2))
    with pytest.raises(DatasetError, match=r"'rev' is a demo task, read from the demo world; local data \(export\) "
                       r"is only for a benchmark \(arc_easy, "):
        resolve_target("rev", tiny_world, data="export")
    with pytest.raises(DatasetError, match=r"export/validation\.jsonl is a file target; local data \(export\) is only "
                       r"for a benchmark"):
        resolve_target("export/validation.jsonl", tiny_world, data="export")
    with pytest.raises(DatasetError, match=r"nowhere: no such file or folder \(the local data for ARC-Easy\)"):
        resolve_target("arc_easy", tiny_world, data="nowhere")
    with pytest.raises(DatasetError, match=r"ARC-Easy's local data is read in its own schema; a field mapping is "
                       r"only for a file target"):
        resolve_target("arc_easy", tiny_world, mapping=FieldMapping(), data="export")
    with pytest.raises(DatasetError, match=r"local data \(/x\) is only for a benchmark target, not a demo target"):
        TargetSpec("demo", "rev", data="/x")


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


def test_target_spec_with_local_data_round_trips_and_old_dicts_still_load():
    spec = TargetSpec("benchmark", "piqa", "validation", data="/exports/piqa")
    assert spec.to_dict()["data"] == "/exports/piqa"
    assert TargetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    old = {"kind": "benchmark", "name_or_path": "piqa", "split": "train", "mapping": None}
    assert TargetSpec.from_dict(old).data is None
    # Without data the dict is what it was before the field existed (run identities hash it).
    assert TargetSpec.from_dict(old).to_dict() == old
    assert TargetSpec.from_dict({**old, "data": ""}).to_dict() == old  # an empty form field
    with pytest.raises(DatasetError, match=r"unknown keys \['files'\], missing keys \[\]"):
        TargetSpec.from_dict({**spec.to_dict(), "files": ["a"]})


def test_load_target_for_each_kind(tiny_world, tmp_path, fake_hub):
    assert load_target(TargetSpec("demo", "min", "test"), tiny_world) == load_demo_task(tiny_world, "min", "test")
    folder = tmp_path / "mine"
    folder.mkdir()
    _write(folder / "validation.csv", "q,a,b,g\nq1,x,y,1\n")
    mapping = FieldMapping(prompt="q", choices="a,b", gold="g")
    # lm-eval's target delimiter: the choices are scored as " x" and " y" after the prompt
    assert load_target(TargetSpec("file", str(folder), "validation", mapping), tiny_world) == [MCExample("q1", (" x", " y"), 1)]
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
    from mashup_core.config import load_target
    from mashup_core.data.examples import write_jsonl

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
