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
import random
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mashup_core.errors import MashupError
from mashup_core.workspace import Workspace


class DatasetError(MashupError, ValueError):
    """A dataset that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class MCExample:
    prompt: str
    choices: tuple[str, ...]
    gold: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.choices:
            raise DatasetError("an example needs at least one choice")
        if not 0 <= self.gold < len(self.choices):
            raise DatasetError(f"gold index {self.gold} out of range for {len(self.choices)} choices")

    @property
    def answer(self) -> str:
        return self.choices[self.gold]

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["choices"] = list(self.choices)
        if not row["meta"]:
            row.pop("meta")
        return row


def write_jsonl(path: Path, examples: list[MCExample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[MCExample]:
    """Read examples written by `write_jsonl` (prompt, choices, gold index; meta kept)."""
    path = Path(path)
    default = FieldMapping()
    examples = [
        replace(default.to_example(row, f"{path}:{lineno}"), meta=row.get("meta") or {})
        for lineno, row in read_rows(path)
    ]
    if not examples:
        raise DatasetError(f"{path}: no examples (the file is empty)")
    return examples


# --- sampling --------------------------------------------------------------------------------


def sample_indices(total: int, n: int | None, seed: int | None = None) -> list[int]:
    """Which `n` of `total` items to use: all when `n` is None or at least `total`; the first
    `n` when `seed` is None (what the reference code does); else a seeded sample, kept in the
    original order so that a larger `n` with the same seed tends to share rows with a smaller one."""
    if n is None or n >= total:
        return list(range(total))
    if n < 1:
        raise DatasetError(f"a sample needs at least one example (n={n})")
    if seed is None:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(total), n))


def sample_examples(examples: Sequence[MCExample], n: int | None, seed: int | None = None) -> list[MCExample]:
    """`n` examples: the first n (seed None, as the reference code) or a seeded sample (see
    `sample_indices`)."""
    return [examples[i] for i in sample_indices(len(examples), n, seed)]


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
    """

    prompt: str = "prompt"
    choices: tuple[str, ...] = ("choices",)
    gold: str = "gold"
    gold_format: str = "index0"
    choices_delimiter: str | None = None

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
        return MCExample(prompt, choices, gold)

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
    """A JSON array of objects (rows numbered by item), or JSON lines under a .json name."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line
            return _jsonl_rows(text, path)
        raise DatasetError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
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


READERS: dict[str, Callable[[str, Path], list[Row]]] = {
    ".jsonl": _jsonl_rows,
    ".ndjson": _jsonl_rows,
    ".json": _json_rows,
    ".csv": _csv_rows,
    ".tsv": lambda text, path: _csv_rows(text, path, delimiter="\t"),
}


def read_rows(path: Path) -> list[Row]:
    """The raw rows of a JSONL/JSON/CSV/TSV file with their line numbers (UTF-8, BOM allowed)."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(READERS)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                           "re-save the file as UTF-8") from exc
    return reader(text, path)


def file_fields(path: Path) -> list[str]:
    """The field names of a file's first row, to build a `FieldMapping` from."""
    rows = read_rows(path)
    return list(rows[0][1]) if rows else []


def load_file(path: Path, mapping: FieldMapping | None = None) -> list[MCExample]:
    """A user's JSONL/JSON/CSV/TSV file as examples; `mapping` defaults to our own JSONL fields."""
    path = Path(path)
    mapping = mapping or FieldMapping()
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
    return MCExample(prompt, _cloze(texts), labels.index(key))


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


MATHQA_MARK = "(?:^|,)\\s*{letter}\\s*\\)"


def parse_mathqa_options(options: str) -> list[str]:
    """MathQA's options string, "a ) 12 , b ) 15 , c ) 1,200 , ...", as ['12', '15', '1,200', ...].

    Tolerates any spacing around the letters, parentheses and commas, and values that contain
    commas. A few rows store a Python-style list of "a ) ..." strings instead; those are joined.
    """
    text = options.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            text = " , ".join(str(item) for item in ast.literal_eval(text))
        except (ValueError, SyntaxError):
            text = text[1:-1]
    marks, pos = [], 0
    for letter in "abcde":
        found = re.compile(MATHQA_MARK.format(letter=letter), re.IGNORECASE).search(text, pos)
        if found is None:
            break
        marks.append(found)
        pos = found.end()
    ends = [m.start() for m in marks[1:]] + [len(text)]
    values = [text[m.end():end].strip(" ,'\"") for m, end in zip(marks, ends, strict=True)] if marks else []
    if len(values) < 2 or any(not v for v in values):
        raise ValueError(f"cannot read options like 'a ) .. , b ) ..' from {options!r}")
    return values


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

    @property
    def path(self) -> str:
        return self.sources[0][0]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "path": self.path,
                "config": self.sources[0][1], "splits": list(self.splits), "sizes": self.sizes}


# The script-free copies are the ones lm-eval loads: `datasets` no longer runs loading
# scripts, which some original repos still need. Their schemas are the same.
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("arc_easy", "ARC-Easy", (("allenai/ai2_arc", "ARC-Easy"),), _arc_row,
              {"train": 2251, "validation": 570}, ("train", "validation", "test")),
    Benchmark("commonsense_qa", "CommonsenseQA", (("tau/commonsense_qa", None),), _commonsense_qa_row,
              {"train": 9741, "validation": 1221}),
    Benchmark("hellaswag", "HellaSwag", (("Rowan/hellaswag", None),), _hellaswag_row,
              {"train": 39905, "validation": 10042}),
    Benchmark("mathqa", "MathQA", (("allenai/math_qa", None), ("regisss/math_qa", None)), _mathqa_row,
              {"train": 29837, "validation": 4475}, ("train", "validation", "test")),
    Benchmark("openbookqa", "OpenBookQA", (("allenai/openbookqa", "main"),), _openbookqa_row,
              {"train": 4957, "validation": 500}, ("train", "validation", "test")),
    Benchmark("piqa", "PIQA", (("ybisk/piqa", None), ("baber/piqa", None)), _piqa_row,
              {"train": 16113, "validation": 1838}),
    Benchmark("social_iqa", "SocialIQA", (("allenai/social_i_qa", None), ("lighteval/siqa", None)),
              _social_iqa_row, {"train": 33410, "validation": 1954}),
    Benchmark("winogrande", "WinoGrande", (("allenai/winogrande", "winogrande_xl"),), _winogrande_row,
              {"train": 40398, "validation": 1267}),
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
    return MCExample(example.prompt, example.choices, example.gold, {"benchmark": bench.name})


def load_benchmark(name: str, split: str, n: int | None = None, seed: int | None = 0) -> list[MCExample]:
    """A benchmark split through `datasets.load_dataset` (needs the Hub once, then its cache).

    `n` rows are chosen as in `sample_indices` before conversion, so a sample of a large split
    costs little.
    """
    bench = get_benchmark(name)
    if split not in bench.splits:
        raise DatasetError(f"{bench.title} has labels only in {', '.join(bench.splits)} (asked: {split!r})")
    rows = _load_split(bench, split)
    indices = sample_indices(len(rows), n, seed)
    if len(indices) < len(rows):
        rows = rows.select(indices)
    return [benchmark_row_to_example(bench.name, row, f" {split} row {i}")
            for i, row in zip(indices, rows, strict=True)]


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
            + "; without the Hub, export the split to JSONL and use it as a file target")
    raise DatasetError(f"cannot load {bench.title} ({split}): {hint}. Tried " + "; ".join(failures))


# --- a target, recorded --------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """Which examples a study targets: a demo task, a user's file or a benchmark, and a split.

    For a file target, `name_or_path` is the file, or a folder holding `<split>.jsonl` (or
    .json/.csv/.tsv); `mapping` says where its fields are.
    """

    kind: str  # 'demo' | 'file' | 'benchmark'
    name_or_path: str
    split: str = "train"
    mapping: FieldMapping | None = None

    def __post_init__(self) -> None:
        if self.kind not in TARGET_LOADERS:
            raise DatasetError(f"target kind {self.kind!r} is not one of {', '.join(TARGET_LOADERS)}")
        if isinstance(self.mapping, dict):
            object.__setattr__(self, "mapping", FieldMapping.from_dict(self.mapping))
        object.__setattr__(self, "name_or_path", str(self.name_or_path))

    @property
    def label(self) -> str:
        name = Path(self.name_or_path).name if self.kind == "file" else self.name_or_path
        return f"{name} ({self.split})"

    def with_split(self, split: str) -> TargetSpec:
        return replace(self, split=split)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name_or_path": self.name_or_path, "split": self.split,
                "mapping": self.mapping.to_dict() if self.mapping else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetSpec:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        missing = [k for k in ("kind", "name_or_path") if k not in data]
        if unknown or missing:
            raise DatasetError(f"target spec: unknown keys {unknown}, missing keys {missing}")
        return cls(**data)


HELD_OUT_EVERY = 5  # a single-file target: every 5th row is its validation/test split


def _file_target(spec: TargetSpec, ws: Workspace) -> list[MCExample]:
    path = Path(spec.name_or_path)
    if path.is_dir():
        found = [path / f"{spec.split}{ext}" for ext in READERS if (path / f"{spec.split}{ext}").exists()]
        if not found:
            raise DatasetError(f"{path}: no {spec.split} file ({', '.join(spec.split + e for e in READERS)})")
        path = found[0]
        return load_file(path, spec.mapping)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    # One file holds every split: hold every 5th example out, so that validation curves and
    # the final accuracy never score rows the model was trained (or selected) on.
    examples = load_file(path, spec.mapping)
    held_out = spec.split != "train"
    chosen = [ex for i, ex in enumerate(examples) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held_out]
    if not chosen:
        raise DatasetError(f"{path}: {len(examples)} examples are too few to hold out a {spec.split} "
                           f"split (every {HELD_OUT_EVERY}th row); give a folder with train and "
                           "validation files instead")
    return chosen


TARGET_LOADERS: dict[str, Callable[[TargetSpec, Workspace], list[MCExample]]] = {
    "demo": lambda spec, ws: load_demo_task(ws, spec.name_or_path, spec.split),
    "file": _file_target,
    "benchmark": lambda spec, ws: load_benchmark(spec.name_or_path, spec.split, n=None),
}


def load_target(spec: TargetSpec, ws: Workspace | None = None) -> list[MCExample]:
    """All examples of the target's split (sample them with `sample_examples`)."""
    return TARGET_LOADERS[spec.kind](spec, ws or Workspace.resolve())


def resolve_target(
    name_or_path: str, ws: Workspace, split: str = "train", mapping: FieldMapping | None = None
) -> TargetSpec:
    """A spec from what a user typed: a demo task name, a benchmark name, or a file/folder path."""
    if name_or_path in list_demo_tasks(ws):
        return TargetSpec("demo", name_or_path, split)
    try:
        return TargetSpec("benchmark", get_benchmark(name_or_path).name, split)
    except DatasetError:
        pass
    if Path(name_or_path).exists():
        return TargetSpec("file", str(Path(name_or_path).resolve()), split, mapping)
    demo = ", ".join(list_demo_tasks(ws)) or "none (run `mashup demo build`)"
    raise DatasetError(f"no target {name_or_path!r}: not a demo task ({demo}), not a benchmark "
                       f"({', '.join(BENCHMARKS)}) and not a file")
