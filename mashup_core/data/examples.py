"""The one multiple-choice example type, its JSONL form, and the one sampler.

Every source (the demo suite, a user's file, the paper's benchmarks) ends as a list of
`MCExample` (`data.targets` reads them), so scoring, merge search, training and evaluation
never care where the data came from.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mashup_core.errors import MashupError


class DatasetError(MashupError, ValueError):
    """A dataset that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class MCExample:
    prompt: str
    choices: tuple[str, ...]
    gold: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The row this example was converted from, in its benchmark's Hub schema, for a prompt
    # format that renders it its own way (the reference pipeline's). In memory only: not in
    # `to_json`, so a row's identity (and every cache key) is its converted form.
    source: dict[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)
    # Where the row was read (file:line), for messages about it; in memory only, like `source`.
    where: str | None = field(default=None, compare=False, hash=False, repr=False)

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
        row.pop("source")
        row.pop("where")
        row["choices"] = list(self.choices)
        if not row["meta"]:
            row.pop("meta")
        return row


def write_jsonl(path: Path, examples: list[MCExample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")



# --- sampling --------------------------------------------------------------------------------


def sample_indices(total: int, n: int | None, seed: int | None = None) -> list[int]:
    """Which `n` of `total` items to use; the one sampler of scoring, runs and studies.

    Without a seed: the first n (what the reference code does). With one: the first n of a
    seeded shuffle, so samples of different n are nested prefixes of each other (a sweep over
    n, or a study cell and a run with the same target, n and seed, see the same examples).
    """
    if n is not None and n < 1:
        raise DatasetError(f"a sample needs at least one example (n={n})")
    n = total if n is None else min(n, total)
    if seed is None:
        return list(range(n))
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return order[:n]


def sample_examples(examples: Sequence[MCExample], n: int | None, seed: int | None = None) -> list[MCExample]:
    """`n` examples by `sample_indices`: the first n, or a seeded, nested sample."""
    return [examples[i] for i in sample_indices(len(examples), n, seed)]



# --- a field two readers share: MathQA's options string (its rows, the reference's message)


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


