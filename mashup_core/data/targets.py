"""Target datasets: one multiple-choice example type and the ways to get examples.

Every source (the demo suite, a user's JSONL/CSV, the paper's benchmarks through `datasets`)
ends as a list of `MCExample`, so scoring, merging search, training and evaluation never
care where the data came from.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import string
import tokenize
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mashup_core.data.examples import (  # noqa: F401  (the example type, where targets are)
    DatasetError,
    MCExample,
    parse_mathqa_options,
    sample_examples,
    sample_indices,
    write_jsonl,
)
from mashup_core.workspace import Workspace


def read_jsonl(path: Path) -> list[MCExample]:
    """Read examples written by `write_jsonl` (prompt, choices, gold index; meta kept)."""
    path = Path(path)
    examples = [
        replace(OWN_FIELDS.to_example(row, f"{path}:{lineno}"), meta=row.get("meta") or {})
        for lineno, row in read_rows(path)
    ]
    if not examples:
        raise DatasetError(f"{path}: no examples (the file is empty)")
    return examples


# --- the demo suite --------------------------------------------------------------------------


def list_demo_tasks(ws: Workspace) -> list[str]:
    """The demo world's task names (from its manifest, else its tasks folder)."""
    manifest = ws.manifest()
    if manifest and manifest.get("tasks"):
        return list(manifest["tasks"])
    if not ws.tasks_dir.is_dir():
        return []
    return sorted(d.name for d in ws.tasks_dir.iterdir() if d.is_dir())


def load_demo_task(ws: Workspace, task: str, split: str) -> list[MCExample]:
    path = ws.task_split_path(task, split)
    if not path.exists():
        if not path.parent.is_dir():
            known = ", ".join(list_demo_tasks(ws)) or "none: build the world with `mashup demo build`"
            raise DatasetError(f"no demo task {task!r} in {ws.tasks_dir} (known: {known})")
        splits = ", ".join(sorted(p.stem for p in path.parent.glob("*.jsonl")))
        raise DatasetError(f"demo task {task!r} has no {split!r} split (it has: {splits})")
    return read_jsonl(path)


# --- user files with a field mapping ---------------------------------------------------------


def _gold_index0(value: Any, choices: tuple[str, ...]) -> int:
    return _as_index(value, len(choices), base=0)


def _gold_index1(value: Any, choices: tuple[str, ...]) -> int:
    return _as_index(value, len(choices), base=1) - 1


def _gold_letter(value: Any, choices: tuple[str, ...]) -> int:
    letter, letters = str(value).strip().upper(), string.ascii_uppercase[: len(choices)]
    if len(letter) != 1 or letter not in letters:
        raise ValueError(f"{value!r} is not a letter A-{letters[-1]} for {len(choices)} choices")
    return letters.index(letter)


def _gold_text(value: Any, choices: tuple[str, ...]) -> int:
    wanted = str(value).strip()
    for i, choice in enumerate(choices):
        if choice.strip() == wanted:
            return i
    raise ValueError(f"answer text {wanted!r} is not one of the choices {list(choices)}")


def _as_index(value: Any, n: int, base: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError
        index = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if not base <= index < n + base:
        raise ValueError(f"label {index} out of range for {n} choices ({base}-{n - 1 + base})")
    return index


# How a gold label is written -> its 0-based choice index.
GOLD_FORMATS: dict[str, Callable[[Any, tuple[str, ...]], int]] = {
    "index0": _gold_index0,  # 0, 1, 2, ...
    "index1": _gold_index1,  # 1, 2, 3, ...
    "letter": _gold_letter,  # A, B, C, ... (any case)
    "text": _gold_text,  # the answer itself, equal to one choice
}


@dataclass(frozen=True)
class FieldMapping:
    """Where a row of a user's file keeps its prompt, choices and gold label.

    `prompt` is a field name or a template over fields (`"{context} {question}"`). `choices`
    is one field holding a list (or a delimited string, with `choices_delimiter`) or several
    columns (`("sol1", "sol2")`, or the string `"sol1,sol2"`).

    `target_delimiter` goes between the prompt and each choice, as lm-eval's does: with a
    sub-word tokenizer, "Answer:" + " blue" is a word the model knows and "Answer:" + "blue"
    is pieces of one, so the default is lm-eval's " ". Use "" for prompts that end in their
    own separator (the demo's character tasks end in "=").
    """

    prompt: str = "prompt"
    choices: tuple[str, ...] = ("choices",)
    gold: str = "gold"
    gold_format: str = "index0"
    choices_delimiter: str | None = None
    target_delimiter: str = " "

    def __post_init__(self) -> None:
        choices = self.choices.split(",") if isinstance(self.choices, str) else self.choices
        object.__setattr__(self, "choices", tuple(c.strip() for c in choices if c.strip()))
        if not self.choices:
            raise DatasetError("field mapping: name the choices field (or columns)")
        if self.gold_format not in GOLD_FORMATS:
            raise DatasetError(f"field mapping: gold_format {self.gold_format!r} is not one of "
                               f"{', '.join(GOLD_FORMATS)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldMapping:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise DatasetError(f"field mapping: unknown keys {sorted(unknown)}")
        return cls(**data)

    def to_example(self, row: dict[str, Any], where: str) -> MCExample:
        """One row -> one example; errors name `where` (file:line) and the field."""
        prompt = _render_prompt(self.prompt, row, where)
        choices = self._choices(row, where)
        value = _field(row, self.gold, where)
        try:
            gold = GOLD_FORMATS[self.gold_format](value, choices)
        except ValueError as exc:
            raise DatasetError(f"{where}: field '{self.gold}': {exc}") from exc
        return MCExample(prompt, tuple(self.target_delimiter + c for c in choices), gold,
                         where=where)

    def _choices(self, row: dict[str, Any], where: str) -> tuple[str, ...]:
        if len(self.choices) > 1:
            values = [_field(row, name, where) for name in self.choices]
            while values and values[-1] == "":  # rows with fewer choices leave the last columns empty
                values.pop()
            names = self.choices[: len(values)]
        else:
            name = self.choices[0]
            values = _field(row, name, where)
            if isinstance(values, str):
                values = self._split(values, name, where)
            if not isinstance(values, list):
                raise DatasetError(f"{where}: field '{name}': expected a list of choices, got "
                                   f"{type(values).__name__}")
            names = (name,) * len(values)
        if len(values) < 2:
            raise DatasetError(f"{where}: field '{self.choices[0]}': needs at least 2 choices, got {len(values)}")
        for name, value in zip(names, values, strict=True):
            if isinstance(value, dict | list) or value is None or str(value).strip() == "":
                raise DatasetError(f"{where}: field '{name}': a choice must be non-empty text, got {value!r}")
        return tuple(str(v) for v in values)

    def _split(self, text: str, name: str, where: str) -> list[str]:
        if self.choices_delimiter:
            return [part.strip() for part in text.split(self.choices_delimiter)]
        try:  # a JSON list inside a CSV cell
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list):
            raise DatasetError(f"{where}: field '{name}': a string, not a list of choices; set "
                               "choices_delimiter (e.g. '|') or list the choice columns")
        return parsed


# Our own JSONL (what `write_jsonl` writes): the choices are stored exactly as scored.
OWN_FIELDS = FieldMapping(target_delimiter="")


def _field(row: dict[str, Any], name: str, where: str) -> Any:
    value = row.get(name)
    if value is None:
        raise DatasetError(f"{where}: missing field '{name}' (fields here: {', '.join(k for k in row if k) or 'none'})")
    return value


def _render_prompt(template: str, row: dict[str, Any], where: str) -> str:
    if "{" not in template:
        value = _field(row, template, where)
        if isinstance(value, dict | list):
            raise DatasetError(f"{where}: field '{template}': the prompt must be text, got {type(value).__name__}")
        return str(value)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise DatasetError(f"field mapping: bad prompt template {template!r} ({exc})") from exc
    return template.format_map({name: _field(row, name, where) for name in names})


Row = tuple[int, dict[str, Any]]  # (line number, fields)


def _jsonl_rows(text: str, path: Path) -> list[Row]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows


def _json_rows(text: str, path: Path) -> list[Row]:
    """A JSON array of objects or {"data": [...]} (rows numbered by item), or JSON lines under a
    .json name (what `datasets`' `to_json` writes)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line
            return _jsonl_rows(text, path)
        raise DatasetError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # {"data": [...]}, the layout `datasets`' JSON loader takes with field="data"
    if isinstance(data, dict):
        return [(1, data)]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(f"{path}: expected a JSON array of objects")
    return list(enumerate(data, start=1))


def _csv_rows(text: str, path: Path, delimiter: str = ",") -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if None in row:
                raise DatasetError(f"{path}:{reader.line_num}: more values than the header has columns")
            if any(v for v in row.values()):
                rows.append((reader.line_num, {k: v for k, v in row.items() if v is not None}))
    except csv.Error as exc:
        raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from exc
    return rows


def _parquet_rows(path: Path) -> list[Row]:
    """A Parquet file's rows (numbered from 1), as the Hub's `refs/convert/parquet` holds them.

    Read with pyarrow (never pickle): nested columns come back as plain dicts and lists, so
    a benchmark's converter sees the same row as from `datasets`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.stat().st_size == 0:  # an empty export, reported as empty rather than damaged
            return []
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    return list(enumerate(table.to_pylist(), start=1))


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                           "re-save the file as UTF-8") from exc


def _text(parse: Callable[[str, Path], list[Row]]) -> Callable[[Path], list[Row]]:
    return lambda path: parse(_read_text(path), path)


# File suffix -> reader; the order is also the preference when a folder holds one split twice.
READERS: dict[str, Callable[[Path], list[Row]]] = {
    ".jsonl": _text(_jsonl_rows),
    ".ndjson": _text(_jsonl_rows),
    ".json": _text(_json_rows),
    ".csv": _text(_csv_rows),
    ".tsv": _text(lambda text, path: _csv_rows(text, path, delimiter="\t")),
    ".parquet": _parquet_rows,
}


def read_rows(path: Path) -> list[Row]:
    """The raw rows of a JSONL/JSON/CSV/TSV (UTF-8, BOM allowed) or Parquet file, numbered by
    line (JSONL, CSV) or by row (JSON array, Parquet)."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(READERS)}")
    return reader(path)


def file_fields(path: Path) -> list[str]:
    """The field names of a file's first row, to build a `FieldMapping` from."""
    rows = read_rows(path)
    return list(rows[0][1]) if rows else []


def load_file(path: Path, mapping: FieldMapping | None = None) -> list[MCExample]:
    """A user's JSONL/JSON/CSV/TSV/Parquet file as examples; without a `mapping`, our own JSONL
    fields, whose choices are stored exactly as scored."""
    path = Path(path)
    mapping = mapping or OWN_FIELDS
    examples = [mapping.to_example(row, f"{path}:{lineno}") for lineno, row in read_rows(path)]
    if not examples:
        raise DatasetError(f"{path}: no examples (the file is empty)")
    return examples


# --- the paper's eight benchmarks ------------------------------------------------------------
# Each adapter turns one row of the real Hub schema into an example with lm-eval's prompt for
# that task. Choices start with a space because lm-eval scores `" " + choice` after the prompt.
# All eight are cloze style (score the answer text); CommonsenseQA is lettered in lm-eval, but
# a lettered view of any example is evaluation's job (`evaluation.LetterFormat`).


class _FieldProblem(ValueError):
    def __init__(self, name: str, problem: str):
        super().__init__(problem)
        self.name = name


def _get(row: dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None or value == "":
        raise _FieldProblem(name, "missing or empty (an unlabeled test row?)")
    return value


def _cloze(choices: Iterable[Any]) -> tuple[str, ...]:
    return tuple(" " + str(c).strip() for c in choices)


def _labelled(row: dict[str, Any], prompt: str) -> MCExample:
    """choices = {text: [...], label: [...]} and answerKey = one of the labels (ARC, OBQA, CSQA)."""
    choices = _get(row, "choices")
    texts, labels = choices.get("text"), choices.get("label")
    if not texts or not labels or len(texts) != len(labels):
        raise _FieldProblem("choices", "needs equally long 'text' and 'label' lists")
    key = str(_get(row, "answerKey")).strip()
    if key not in labels:
        raise _FieldProblem("answerKey", f"{key!r} is not one of the labels {labels}")
    labels = [str(label).strip() for label in labels]
    # Labels other than A, B, C, ... (some ARC rows number theirs 1-4) are kept for the chat
    # prompt format, which lists the choices with the benchmark's own labels.
    own = {"labels": labels} if labels != list(string.ascii_uppercase[: len(labels)]) else {}
    return MCExample(prompt, _cloze(texts), labels.index(key), meta=own)


def _arc_row(row: dict[str, Any]) -> MCExample:
    return _labelled(row, f"Question: {_get(row, 'question')}\nAnswer:")


def _commonsense_qa_row(row: dict[str, Any]) -> MCExample:
    return _labelled(row, f"Question: {str(_get(row, 'question')).strip()}\nAnswer:")


def _openbookqa_row(row: dict[str, Any]) -> MCExample:
    return _labelled(row, str(_get(row, "question_stem")))


def _hellaswag_row(row: dict[str, Any]) -> MCExample:
    from lm_eval.tasks.hellaswag.utils import preprocess  # lm-eval's WikiHow bracket clean-up

    if "ctx_a" in row:
        ctx = f"{row['ctx_a']} {str(row.get('ctx_b') or '').capitalize()}".strip()
    else:
        ctx = str(_get(row, "ctx"))
    endings = _get(row, "endings")
    return MCExample(preprocess(f"{_get(row, 'activity_label')}: {ctx}"),
                     _cloze(preprocess(e) for e in endings), _index(row, "label", len(endings)))


def _index(row: dict[str, Any], name: str, n: int, base: int = 0) -> int:
    try:
        return _as_index(_get(row, name), n, base) - base
    except ValueError as exc:
        raise _FieldProblem(name, str(exc)) from exc


def _mathqa_row(row: dict[str, Any]) -> MCExample:
    try:
        choices = parse_mathqa_options(str(_get(row, "options")))
    except ValueError as exc:
        raise _FieldProblem("options", str(exc)) from exc
    letter, letters = str(_get(row, "correct")).strip().lower(), "abcde"[: len(choices)]
    if len(letter) != 1 or letter not in letters:
        raise _FieldProblem("correct", f"{letter!r} is not one of the option letters {letters}")
    return MCExample(f"Question: {_get(row, 'Problem')}\nAnswer:", _cloze(choices), ord(letter) - ord("a"))


def _piqa_row(row: dict[str, Any]) -> MCExample:
    return MCExample(f"Question: {_get(row, 'goal')}\nAnswer:",
                     _cloze([_get(row, "sol1"), _get(row, "sol2")]), _index(row, "label", 2))


def _social_iqa_row(row: dict[str, Any]) -> MCExample:
    answers = [_get(row, f"answer{x}") for x in "ABC"]
    return MCExample(f"Q: {_get(row, 'context')} {_get(row, 'question')}\nA:", _cloze(answers),
                     _index(row, "label", 3, base=1))


def _winogrande_row(row: dict[str, Any]) -> MCExample:
    """Choices are the whole sentence with the blank filled; the words before the blank are
    shared by both, so they become the prompt (the sum over the rest decides the same way).
    lm-eval's partial scoring (only the words after the option) is not done here."""
    sentence = str(_get(row, "sentence"))
    if sentence.count("_") != 1:
        raise _FieldProblem("sentence", "needs exactly one '_' blank")
    before, after = sentence.split("_")
    prompt, space = (before[:-1], " ") if before.endswith(" ") else (before, "")
    options = [_get(row, "option1"), _get(row, "option2")]
    return MCExample(prompt, tuple(f"{space}{o}{after}" for o in options), _index(row, "answer", 2, base=1))


@dataclass(frozen=True)
class Benchmark:
    name: str  # lm-eval's task name
    title: str
    sources: tuple[tuple[str, str | None], ...]  # (dataset path, config); later ones are fallbacks
    to_example: Callable[[dict[str, Any]], MCExample]
    sizes: dict[str, int]  # train / validation rows, as in the paper
    splits: tuple[str, ...] = ("train", "validation")  # the splits that carry labels
    # The fields the converter reads ("a|b": either), to tell a file in another schema at its
    # first row; and those holding a list or dict, which a CSV export writes as text in a cell.
    fields: tuple[str, ...] = ()
    nested: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return self.sources[0][0]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "path": self.path,
                "config": self.sources[0][1], "splits": list(self.splits), "sizes": self.sizes}


_LABELLED = {"fields": ("question", "choices", "answerKey"), "nested": ("choices",)}

# The script-free copies are the ones lm-eval loads: `datasets` no longer runs loading
# scripts, which some original repos still need. Their schemas are the same.
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("arc_easy", "ARC-Easy", (("allenai/ai2_arc", "ARC-Easy"),), _arc_row,
              {"train": 2251, "validation": 570}, ("train", "validation", "test"), **_LABELLED),
    Benchmark("commonsense_qa", "CommonsenseQA", (("tau/commonsense_qa", None),), _commonsense_qa_row,
              {"train": 9741, "validation": 1221}, **_LABELLED),
    Benchmark("hellaswag", "HellaSwag", (("Rowan/hellaswag", None),), _hellaswag_row,
              {"train": 39905, "validation": 10042},
              fields=("activity_label", "ctx|ctx_a", "endings", "label"), nested=("endings",)),
    Benchmark("mathqa", "MathQA", (("allenai/math_qa", None), ("regisss/math_qa", None)), _mathqa_row,
              {"train": 29837, "validation": 4475}, ("train", "validation", "test"),
              fields=("Problem", "options", "correct")),
    Benchmark("openbookqa", "OpenBookQA", (("allenai/openbookqa", "main"),), _openbookqa_row,
              {"train": 4957, "validation": 500}, ("train", "validation", "test"),
              fields=("question_stem", "choices", "answerKey"), nested=("choices",)),
    Benchmark("piqa", "PIQA", (("ybisk/piqa", None), ("baber/piqa", None)), _piqa_row,
              {"train": 16113, "validation": 1838}, fields=("goal", "sol1", "sol2", "label")),
    Benchmark("social_iqa", "SocialIQA", (("allenai/social_i_qa", None), ("lighteval/siqa", None)),
              _social_iqa_row, {"train": 33410, "validation": 1954},
              fields=("context", "question", "answerA", "answerB", "answerC", "label")),
    Benchmark("winogrande", "WinoGrande", (("allenai/winogrande", "winogrande_xl"),), _winogrande_row,
              {"train": 40398, "validation": 1267}, fields=("sentence", "option1", "option2", "answer")),
)}


def get_benchmark(name: str) -> Benchmark:
    """By lm-eval name or title, any case: 'arc_easy', 'ARC-Easy', 'SocialIQA'."""
    wanted = _normalize(name)
    for bench in BENCHMARKS.values():
        if wanted in (_normalize(bench.name), _normalize(bench.title)):
            return bench
    raise DatasetError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def benchmark_row_to_example(name: str, row: dict[str, Any], where: str = "") -> MCExample:
    """One row of a benchmark's Hub schema -> an example; errors name the benchmark and field."""
    bench = get_benchmark(name)
    try:
        example = bench.to_example(row)
    except _FieldProblem as exc:
        raise DatasetError(f"{bench.title}{where}: field '{exc.name}': {exc}") from exc
    except (AttributeError, TypeError) as exc:
        raise DatasetError(f"{bench.title}{where}: row does not have the {bench.path} schema ({exc})") from exc
    return MCExample(example.prompt, example.choices, example.gold,
                     {**example.meta, "benchmark": bench.name}, source=dict(row),
                     where=where.strip() or None)


def load_benchmark(name: str, split: str, n: int | None = None, seed: int | None = 0) -> list[MCExample]:
    """A benchmark split through `datasets.load_dataset` (needs the Hub once, then its cache).

    `n` rows are chosen as in `sample_indices` before conversion, so a sample of a large split
    costs little.
    """
    bench = _labelled_split(name, split)
    rows = _load_split(bench, split)
    indices = sample_indices(len(rows), n, seed)
    if len(indices) < len(rows):
        rows = rows.select(indices)
    return [benchmark_row_to_example(bench.name, row, f" {split} row {i}")
            for i, row in zip(indices, rows, strict=True)]


def _labelled_split(name: str, split: str) -> Benchmark:
    bench = get_benchmark(name)
    if split not in bench.splits:
        raise DatasetError(f"{bench.title} has labels only in {', '.join(bench.splits)} (asked: {split!r})")
    return bench


def _load_split(bench: Benchmark, split: str):
    import datasets

    failures = []
    for path, config in bench.sources:
        try:
            return datasets.load_dataset(path, config, split=split)
        except (OSError, ValueError, RuntimeError) as exc:  # offline, gone, script-only, bad split
            failures.append(f"{path}: {exc}")
    offline = any(os.environ.get(v, "0") not in ("", "0", "false", "False")
                  for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    hint = ("benchmarks need the Hugging Face Hub once, then load from the datasets cache"
            + (" (offline mode is on: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if offline else "")
            + "; without the Hub, give an export of the dataset as the benchmark's local data "
            "(a folder with train/validation files, or one file)")
    raise DatasetError(f"cannot load {bench.title} ({split}): {hint}. Tried " + "; ".join(failures))


# --- a benchmark from local files in its Hub schema -----------------------------------------
# For a researcher without the Hub: an export of the real dataset (the Hub's Parquet files,
# `datasets`' to_json/to_csv, a JSON array) read row by row with the benchmark's own converter.


def load_benchmark_file(name: str, path: Path) -> list[MCExample]:
    """Every row of one local file in a benchmark's Hub schema (JSONL, JSON, CSV/TSV, Parquet),
    converted as a row from `datasets` is; errors name the file, the row and the field."""
    bench = get_benchmark(name)
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise DatasetError(f"{path}: no examples (the file is empty)")
    return [_local_row(bench, row, f"{path}:{n}") for n, row in rows]


def load_local_benchmark(name: str, split: str, data: str | Path) -> list[MCExample]:
    """A benchmark's `split` from local data: a folder laid out as on the Hub (see `split_files`;
    a config's folder such as `ARC-Easy/` is looked in too), or one file of which every 5th row
    is the held-out split, as for a user's single file."""
    bench = _labelled_split(name, split)
    configs = dict.fromkeys(config for _, config in bench.sources if config)
    return _local_split(Path(data), split, lambda path: load_benchmark_file(bench.name, path),
                        ("data", *configs, "default"))


def _local_row(bench: Benchmark, row: dict[str, Any], where: str) -> MCExample:
    # Tell a file in another schema by its fields first: the converter's own message would
    # name one missing field and hide that the whole file is something else.
    if not _has_fields(bench, row):
        raise DatasetError(f"{where}: {_not_a_row(bench, row)}")
    decoded = {name: _nested_cell(bench, name, row[name], where)
               for name in bench.nested if isinstance(row.get(name), str)}
    try:
        return benchmark_row_to_example(bench.name, {**row, **decoded})
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from exc


def _has_fields(bench: Benchmark, row: dict[str, Any]) -> bool:
    return all(any(alt in row for alt in wanted.split("|")) for wanted in bench.fields)


def _not_a_row(bench: Benchmark, row: dict[str, Any]) -> str:
    article = "an" if bench.title[0] in "AEIOU" else "a"
    expected = ", ".join(wanted.replace("|", " or ") for wanted in bench.fields)
    names = [str(k) for k in row]
    found = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "") or "none"
    others = [b.title for b in BENCHMARKS.values() if b is not bench and _has_fields(b, row)]
    hint = (f" (it has the fields of {' / '.join(others)})" if others
            else " (a file in another schema is a file target, with a field mapping)")
    return f"not {article} {bench.title} row: expected fields {expected}; found {found}{hint}"


class _Unarray(ast.NodeTransformer):
    """`array([...], dtype=object)` -> `[...]`, so that what pandas writes is a literal."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id == "array" and len(node.args) == 1:
            return self.visit(node.args[0])
        return node  # left for literal_eval to refuse


def _numpy_strings(text: str) -> list[Any] | None:
    """numpy's str() of a 1-D array of strings, `['a' 'b'\n 'c']`, which pandas writes for a list
    column; None for anything else. Read as Python it would be one list of one string (adjacent
    literals join), hence token by token."""
    skip = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(text.strip()).readline) if t.type not in skip]
    except (tokenize.TokenError, SyntaxError):
        return None
    if (len(tokens) < 3 or tokens[0].string != "[" or tokens[-1].string != "]"
            or any(t.type != tokenize.STRING for t in tokens[1:-1])):
        return None
    return [ast.literal_eval(t.string) for t in tokens[1:-1]]


def _nested_cell(bench: Benchmark, name: str, text: str, where: str) -> Any:
    """A list or dict that a CSV/TSV export wrote as text: JSON, or what pandas (and so
    `datasets`' to_csv) writes: `['a' 'b']` for a list, `{'text': array(['a', 'b'],
    dtype=object), ...}` for a dict of lists. Parsed as literals only: nothing in a cell is run."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        strings = _numpy_strings(text)
        if strings is not None:
            return strings
        return ast.literal_eval(_Unarray().visit(ast.parse(text.strip(), mode="eval")).body)
    except (SyntaxError, ValueError, TypeError, RecursionError) as exc:
        short = text if len(text) <= 60 else text[:57] + "..."
        raise DatasetError(f"{where}: {bench.title}: field '{name}': {short!r} is not a list or dict "
                           "(write nested fields as JSON in the cell, or export JSONL/Parquet)") from exc


# --- a target, recorded --------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """Which examples a study targets: a demo task, a user's file or a benchmark, and a split.

    For a file target, `name_or_path` is the file, or a folder holding `<split>.jsonl` (or
    .json/.csv/.tsv/.parquet, or the Hub's layouts: see `split_files`); `mapping` says where its
    fields are. A benchmark with `data` (a file or folder, kept absolute) reads that export of
    the dataset in the benchmark's own schema instead of the Hub. `prompt_format` is how its
    rows are shown (`data.prompts`: cloze, the rows as they are, or chat).
    """

    kind: str  # 'demo' | 'file' | 'benchmark'
    name_or_path: str
    split: str = "train"
    mapping: FieldMapping | None = None
    data: str | None = None
    prompt_format: str = "cloze"

    def __post_init__(self) -> None:
        if self.kind not in TARGET_LOADERS:
            raise DatasetError(f"target kind {self.kind!r} is not one of {', '.join(TARGET_LOADERS)}")
        if isinstance(self.mapping, dict):
            object.__setattr__(self, "mapping", FieldMapping.from_dict(self.mapping))
        object.__setattr__(self, "name_or_path", str(self.name_or_path))
        if self.data is not None and not str(self.data).strip():  # an empty form field: no local data
            object.__setattr__(self, "data", None)
        if self.data is not None:
            if self.kind != "benchmark":
                raise DatasetError(f"target spec: local data ({self.data}) is only for a benchmark target, "
                                   f"not a {self.kind} target")
            if self.mapping is not None:
                raise DatasetError(f"target spec: {self.name_or_path}'s local data is read in the benchmark's "
                                   "own schema; a field mapping is only for a file target")
            # Absolute, so that a run started from another folder reads the same files.
            object.__setattr__(self, "data", os.path.abspath(os.path.expanduser(str(self.data))))
        from mashup_core.data.prompts import check_format

        object.__setattr__(self, "prompt_format", check_format(self.prompt_format))  # None: cloze

    @property
    def label(self) -> str:
        name = Path(self.name_or_path).name if self.kind == "file" else self.name_or_path
        notes = [self.split, *(["local"] if self.data else []),
                 *([self.prompt_format] if self.prompt_format != "cloze" else [])]
        return f"{name} ({', '.join(notes)})"

    def with_split(self, split: str) -> TargetSpec:
        return replace(self, split=split)

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind, "name_or_path": self.name_or_path, "split": self.split,
               "mapping": self.mapping.to_dict() if self.mapping else None}
        # Only when set: run specs hash their target's dict, so a target without local data
        # keeps the identity (and the finished runs) it had before this field existed.
        if self.data is not None:
            out["data"] = self.data
        if self.prompt_format != "cloze":  # likewise: a cloze target keeps its identity
            out["prompt_format"] = self.prompt_format
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetSpec:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        missing = [k for k in ("kind", "name_or_path") if k not in data]
        if unknown or missing:
            raise DatasetError(f"target spec: unknown keys {unknown}, missing keys {missing}")
        return cls(**data)


HELD_OUT_EVERY = 5  # a single-file target: every 5th row is its validation/test split
SHARD = r"-\d+-of-\d+(?:-\w+)?"  # train-00000-of-00002.parquet; older Hub uploads add -<hash>


def split_files(folder: Path, split: str, subfolders: Sequence[str] = ("data",)) -> list[Path]:
    """The files that hold `split` in a folder laid out as on the Hub: `<split>.jsonl` (or any
    suffix in READERS), shards `<split>-00000-of-00002.parquet` ..., or a `<split>/` folder of
    files (refs/convert/parquet's `train/0000.parquet`); looked for in `folder`, then in each of
    `subfolders` (the Hub's `data/`). The first layout found wins; shards come in name order."""
    folder = Path(folder)
    shard = re.compile(re.escape(split) + SHARD)
    for base in (folder, *(folder / sub for sub in subfolders)):
        if not base.is_dir():
            continue
        files = [p for p in base.iterdir() if p.is_file()]
        inner = [p for p in (base / split).iterdir() if p.is_file()] if (base / split).is_dir() else []
        for ext in READERS:
            single = [p for p in files if p.stem == split and p.suffix.lower() == ext]
            shards = sorted(p for p in files if p.suffix.lower() == ext and shard.fullmatch(p.stem))
            in_folder = sorted(p for p in inner if p.suffix.lower() == ext)
            found = single[:1] or shards or in_folder
            if found:
                return found
    where = ", ".join(f"{sub}/" for sub in subfolders)
    holds = _data_files(folder)
    raise DatasetError(
        f"{folder}: no {split} file ({', '.join(split + ext for ext in READERS)}, or shards like "
        f"{split}-00000-of-00001.parquet, here or under {where}); it holds: "
        + (", ".join(holds) + " (give one file itself to hold out every 5th row)" if holds
           else f"no data files ({', '.join(READERS)})"))


def _data_files(folder: Path, depth: int = 3, limit: int = 20) -> list[str]:
    """Readable files under `folder` (a few levels down, as the Hub nests them), for messages."""
    found: list[str] = []
    for root, dirs, names in os.walk(folder):
        rel = Path(root).relative_to(folder)
        # Sorted for a stable message; hidden folders (.git, .cache/huggingface) hold no splits.
        dirs[:] = [] if len(rel.parts) >= depth - 1 else sorted(d for d in dirs if not d.startswith("."))
        found += [str(rel / n) for n in sorted(names) if Path(n).suffix.lower() in READERS]
    return found[:limit] + ([f"and {len(found) - limit} more"] if len(found) > limit else [])


def _local_split(
    path: Path, split: str, load: Callable[[Path], list[MCExample]], subfolders: Sequence[str] = ("data",)
) -> list[MCExample]:
    """`split` of a folder (its split files, see `split_files`) or of one file (held out)."""
    if path.is_dir():
        return [ex for file in split_files(path, split, subfolders) for ex in load(file)]
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    return _hold_out(load(path), split, path)


def _hold_out(examples: list[MCExample], split: str, path: Path) -> list[MCExample]:
    # One file holds every split: hold every 5th example out, so that validation curves and
    # the final accuracy never score rows the model was trained (or selected) on.
    held_out = split != "train"
    chosen = [ex for i, ex in enumerate(examples) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held_out]
    if not chosen:
        raise DatasetError(f"{path}: {len(examples)} examples are too few to hold out a {split} "
                           f"split (every {HELD_OUT_EVERY}th row); give a folder with train and "
                           "validation files instead")
    return chosen


def _file_target(spec: TargetSpec, ws: Workspace) -> list[MCExample]:
    return _local_split(Path(spec.name_or_path), spec.split, lambda path: load_file(path, spec.mapping))


def _benchmark_target(spec: TargetSpec, ws: Workspace) -> list[MCExample]:
    if spec.data is not None:
        return load_local_benchmark(spec.name_or_path, spec.split, spec.data)
    return load_benchmark(spec.name_or_path, spec.split, n=None)


TARGET_LOADERS: dict[str, Callable[[TargetSpec, Workspace], list[MCExample]]] = {
    "demo": lambda spec, ws: load_demo_task(ws, spec.name_or_path, spec.split),
    "file": _file_target,
    "benchmark": _benchmark_target,
}


def read_target(spec: TargetSpec, ws: Workspace) -> list[MCExample]:
    """Every row of the target's split as its source has it, before any prompt format
    (`config.load_target` formats them, with the workspace base's tokenizer when needed)."""
    return TARGET_LOADERS[spec.kind](spec, ws)


def resolve_target(
    name_or_path: str, ws: Workspace, split: str = "train", mapping: FieldMapping | None = None,
    data: str | Path | None = None,
) -> TargetSpec:
    """A spec from what a user typed: a demo task name, a benchmark name, or a file/folder path;
    `data` (a file or folder) is a benchmark's local export, read instead of the Hub."""
    if name_or_path in list_demo_tasks(ws):
        if data is not None:
            raise DatasetError(f"{name_or_path!r} is a demo task, read from the demo world; local data "
                               f"({data}) is only for a benchmark ({', '.join(BENCHMARKS)})")
        return TargetSpec("demo", name_or_path, split)
    try:
        bench = get_benchmark(name_or_path)
    except DatasetError:
        bench = None
    if bench is not None:
        if data is None:
            return TargetSpec("benchmark", bench.name, split)
        if not Path(data).expanduser().exists():
            raise DatasetError(f"{data}: no such file or folder (the local data for {bench.title})")
        if mapping is not None:
            raise DatasetError(f"{bench.title}'s local data is read in its own schema; a field mapping "
                               "is only for a file target (give the file itself as the target)")
        return TargetSpec("benchmark", bench.name, split, data=str(data))
    if Path(name_or_path).exists():
        if data is not None:
            raise DatasetError(f"{name_or_path} is a file target; local data ({data}) is only for a "
                               "benchmark: give the export as the benchmark's data, or use the file alone "
                               "with a field mapping")
        return TargetSpec("file", str(Path(name_or_path).resolve()), split, mapping)
    demo = ", ".join(list_demo_tasks(ws)) or "none (run `mashup demo build`)"
    raise DatasetError(f"no target {name_or_path!r}: not a demo task ({demo}), not a benchmark "
                       f"({', '.join(BENCHMARKS)}) and not a file")
