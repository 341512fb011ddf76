"""The target page's data: the workspace's configured targets, labels, and adding one.

A target entry is a TargetSpec dict without its split, as mashup.toml keeps it: a demo task,
a benchmark (from the Hub, or from local files in its Hub schema) or a user's file with the
field mapping that reads it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mashup_core.access import require_write
from mashup_core.config import WorkspaceConfig, target_name
from mashup_core.errors import MashupError
from mashup_core.views._format import fingerprint, human_size
from mashup_core.views.workspace import check_target, ensure_config_file, short_path
from mashup_core.workspace import Workspace

KINDS = {"demo": "demo task", "benchmark": "benchmark", "file": "file"}
UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # as .streamlit/config.toml's server.maxUploadSize


class UploadError(MashupError):
    """An uploaded target file that cannot be stored (wrong type, too large, empty)."""


def target_label(entry: dict[str, Any]) -> str:
    """How the pages name a target: `sort (demo task)`, `piqa (benchmark)`, `user.jsonl (file)`."""
    kind = entry.get("kind")
    if kind == "file":
        return f"{Path(str(entry['name_or_path'])).name} (file)"
    if kind == "benchmark" and entry.get("data"):
        return f"{entry['name_or_path']} (benchmark, local data)"
    return f"{entry['name_or_path']} ({KINDS.get(kind, kind)})"


def default_target_entry(ws: Workspace, config: WorkspaceConfig) -> dict[str, Any] | None:
    """The target the pages start on: the demo world's clearest measured story when it is
    configured, else the first configured target; None when there is none yet."""
    if not config.targets:
        return None
    story = default_target(ws)
    for entry in config.targets:
        if entry.get("kind") == "demo" and entry.get("name_or_path") == story:
            return dict(entry)
    return dict(config.targets[0])


def mapping_summary(mapping: dict[str, Any] | None) -> str:
    """A field mapping in one line: `prompt ← "Question: {question}" · choices ← a, b · ...`."""
    if not mapping:
        return ""
    choices = mapping.get("choices") or []
    choices = ", ".join(choices) if isinstance(choices, list | tuple) else str(choices)
    delimiter = mapping.get("choices_delimiter")
    return (f"prompt ← {mapping.get('prompt')!r} · choices ← {choices}"
            + (f" (split on {delimiter!r})" if delimiter else "")
            + f" · gold ← {mapping.get('gold')} ({mapping.get('gold_format', 'index0')})")


def targets_frame(config: WorkspaceConfig, ws: Workspace) -> pd.DataFrame:
    """The configured targets, one row each, with where their data comes from and the mapping."""
    rows = []
    for entry in config.targets:
        kind = entry["kind"]
        where = {"demo": "the demo world", "file": short_path(str(entry["name_or_path"]), ws),
                 "benchmark": short_path(entry["data"], ws) if entry.get("data")
                 else "Hugging Face Hub"}[kind]
        rows.append({"target": target_name(entry), "kind": KINDS.get(kind, kind), "data": where,
                     "field mapping": mapping_summary(entry.get("mapping"))})
    return pd.DataFrame(rows, columns=["target", "kind", "data", "field mapping"])


def target_fields(path: str | Path) -> list[str]:
    """The fields of a target file, or of a folder's train split file (to map them)."""
    from mashup_core.data.targets import file_fields, split_files

    path = Path(path)
    return file_fields(split_files(path, "train")[0] if path.is_dir() else path)


def target_stamp(spec: dict[str, Any], ws: Workspace) -> tuple:
    """A cache key that changes with the target's files."""
    paths = [Path(p) for p in (spec.get("data"),
                               spec["name_or_path"] if spec.get("kind") == "file" else None) if p]
    return fingerprint(*(paths or [ws.tasks_dir]))


def add_workspace_target(ws: Workspace, entry: dict[str, Any]) -> dict[str, Any]:
    """Check a target (a file loads through its mapping, local data exists) and add it to
    mashup.toml, replacing one of the same name; returns the entry as stored."""
    from mashup_core.config import ConfigError, add_target, demo_config, load_config, target_name

    checked = check_target(ws, entry)
    name = target_name(checked)
    config = load_config(ws) or demo_config(ws)
    for known in config.targets if config else ():
        # Same name, same data: a new mapping for it. Other data under the name: refused,
        # rather than silently dropping the target that had the name (runs may name it).
        same = {k: known.get(k) for k in ("kind", "name_or_path", "data")} == \
            {k: checked.get(k) for k in ("kind", "name_or_path", "data")}
        if target_name(known) == name and not same:
            raise ConfigError(f"the workspace has a target named {name!r} already "
                              f"({known.get('data') or known['name_or_path']}); rename the file, "
                              "or remove that target from mashup.toml first")
    ensure_config_file(ws)
    config = add_target(ws, checked)
    return next(t for t in config.targets if target_name(t) == name)


def target_spec_dict(entry: dict[str, Any], split: str = "train") -> dict[str, Any]:
    """A configured entry as the TargetSpec dict of one split (what runs and caches record)."""
    from mashup_core.data.targets import TargetSpec

    return TargetSpec.from_dict({**entry, "split": split}).to_dict()


def read_target(ws: Workspace, spec: dict[str, Any]) -> list:
    """The examples a TargetSpec dict names (`config.load_target`), as the pages show them."""
    from mashup_core.config import load_target
    from mashup_core.data.targets import TargetSpec

    return load_target(TargetSpec.from_dict(spec), ws)


def mapping_guess(path: str | Path) -> tuple[list[str], dict[str, Any]]:
    """A file's (or a folder's train file's) fields and a first guess at their mapping, from
    its first rows (so the gold label's format can be guessed too)."""
    from mashup_core.data.targets import read_rows, split_files

    path = Path(path)
    file = split_files(path, "train")[0] if path.is_dir() else path
    rows = [row for _, row in read_rows(file)[:50]]
    fields = list(rows[0]) if rows else []
    return fields, guess_mapping(fields, rows)


def default_target(ws: Workspace) -> str | None:
    """The demo task whose best donor helps most (measured), else the first task."""
    from mashup_core.demo.story import world_story

    story = world_story(ws)
    if story is not None and story.default_target:
        return story.default_target
    return next(iter((ws.manifest() or {}).get("tasks") or []), None)


def demo_tasks_frame(ws: Workspace) -> pd.DataFrame:
    from mashup_core.data.targets import list_demo_tasks

    descriptions = (ws.manifest() or {}).get("descriptions", {})
    rows = []
    for task in list_demo_tasks(ws):
        sizes = {p.stem: sum(1 for line in p.open() if line.strip())
                 for p in (ws.tasks_dir / task).glob("*.jsonl")}
        rows.append({"task": task, "what it asks": descriptions.get(task, ""),
                     **{s: sizes.get(s) for s in ("train", "validation", "test")}})
    return pd.DataFrame(rows, columns=["task", "what it asks", "train", "validation", "test"])


def benchmarks_frame() -> pd.DataFrame:
    from mashup_core.data.targets import BENCHMARKS

    return pd.DataFrame([
        {"benchmark": b.name, "title": b.title,
         "dataset": b.path + (f" ({b.sources[0][1]})" if b.sources[0][1] else ""),
         "train": b.sizes.get("train"), "validation": b.sizes.get("validation")}
        for b in BENCHMARKS.values()
    ])


def hub_offline() -> bool:
    return any(os.environ.get(v, "0") not in ("", "0", "false", "False")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def save_upload(ws: Workspace, filename: str, data: bytes,
                max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Store an uploaded target file inside `ws.uploads_dir` and return its path.

    The name is reduced to safe characters (no folders, no dot-files), so an upload can only
    land in the uploads folder; the same content under the same name is stored once.
    """
    require_write("uploading a file")
    suffix = Path(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadError(f"{filename!r}: unsupported file type {suffix or '(none)'}; "
                          f"upload one of {', '.join(UPLOAD_SUFFIXES)}")
    if len(data) > max_bytes:
        raise UploadError(f"{filename!r} is {human_size(len(data))}; the limit is "
                          f"{human_size(max_bytes)}. Upload a sample of the train split.")
    if not data.strip():
        raise UploadError(f"{filename!r} is empty; upload a file with one example per row")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(filename).stem).strip("_") or "upload"
    ws.uploads_dir.mkdir(parents=True, exist_ok=True)
    path = ws.uploads_dir / f"{stem[:60]}{suffix}"
    if path.exists() and path.read_bytes() != data:  # keep the older file: a run may use it
        path = path.with_name(f"{path.stem}-{hashlib.sha256(data).hexdigest()[:8]}{suffix}")
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def guess_mapping(fields: Sequence[str], rows: Sequence[dict] = ()) -> dict[str, Any]:
    """A first guess at a `FieldMapping` for a file's fields (the user corrects it); `rows`,
    a few of the file's rows, let it guess how the gold label is written."""
    lower = {f.lower(): f for f in fields}

    def first(*names: str) -> str | None:
        return next((lower[n] for n in names if n in lower), None)

    prompt = first("prompt", "question", "query", "input", "goal", "sentence", "ctx", "text")
    choices = first("choices", "options", "endings", "answers", "candidates")
    # sol1, sol2 / option_a, option_b / ending0 ...: one column per choice
    columns = [f for f in fields
               if re.fullmatch(r"(sol|option|choice|ending|answer)_?(\d+|[a-h])", f.lower())]
    gold = first("gold", "label", "answer", "answerkey", "answer_key", "target", "correct")
    gold = gold or (fields[-1] if fields else "gold")
    values = [str(r.get(gold, "")).strip() for r in rows if r.get(gold) is not None]
    if values and all(re.fullmatch(r"[A-Ha-h]", v) for v in values):
        gold_format = "letter"
    elif values and all(v.isdigit() for v in values) and "0" not in values:
        gold_format = "index1" if columns and any(int(v) == len(columns) for v in values) else "index0"
    elif values and not all(v.lstrip("-").isdigit() for v in values):
        gold_format = "text"
    else:
        gold_format = "index0"
    return {"prompt": prompt or (fields[0] if fields else "prompt"),
            "choices": [choices] if choices else (columns or [f for f in fields[1:2]]),
            "gold": gold, "gold_format": gold_format}


def examples_frame(examples: Sequence, limit: int = 8) -> pd.DataFrame:
    """The first examples as a table: prompt, choices (gold marked) and answer."""
    rows = [{"prompt": ex.prompt,
             "choices": "  |  ".join(f"✔ {c}" if i == ex.gold else c for i, c in enumerate(ex.choices)),
             "answer": ex.answer} for ex in list(examples)[:limit]]
    return pd.DataFrame(rows, columns=["prompt", "choices", "answer"])
