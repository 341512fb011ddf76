"""The target page's data: the workspace's configured targets, labels, and adding one.

A target entry is a TargetSpec dict without its split, as mashup.toml keeps it: a demo task,
a benchmark (from the Hub, or from local files in its Hub schema) or a user's file with the
field mapping that reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mashup_core.config import WorkspaceConfig, target_name
from mashup_core.views._format import fingerprint
from mashup_core.views.workspace import check_target, ensure_config_file, short_path
from mashup_core.workspace import Workspace

KINDS = {"demo": "demo task", "benchmark": "benchmark", "file": "file"}


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
    from mashup_core.views import default_target

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


def mapping_guess(path: str | Path) -> tuple[list[str], dict[str, Any]]:
    """A file's (or a folder's train file's) fields and a first guess at their mapping, from
    its first rows (so the gold label's format can be guessed too)."""
    from mashup_core.data.targets import read_rows, split_files
    from mashup_core.views import guess_mapping

    path = Path(path)
    file = split_files(path, "train")[0] if path.is_dir() else path
    rows = [row for _, row in read_rows(file)[:50]]
    fields = list(rows[0]) if rows else []
    return fields, guess_mapping(fields, rows)
