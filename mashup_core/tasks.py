"""Target datasets: one multiple-choice example type and the ways to get examples.

Every source (the demo suite, a user's JSONL/CSV, the paper's benchmarks through `datasets`)
ends as a list of `MCExample`, so scoring, merging search, training and evaluation never
care where the data came from.
"""

from __future__ import annotations

import json
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
    """Read examples written by `write_jsonl` (fields prompt, choices, gold)."""
    path = Path(path)
    examples: list[MCExample] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        for key in ("prompt", "choices", "gold"):
            if key not in row:
                raise DatasetError(f"{path}:{lineno}: missing field '{key}'")
        try:
            examples.append(
                MCExample(row["prompt"], tuple(row["choices"]), int(row["gold"]), row.get("meta", {}))
            )
        except DatasetError as exc:
            raise DatasetError(f"{path}:{lineno}: field 'gold': {exc}") from exc
    if not examples:
        raise DatasetError(f"{path}: no examples (empty file)")
    return examples
