"""The library page's data: the workspace's checkpoints, validated, with where each came from.

The sources live in mashup.toml, so a source added on the page is there after a reload, a
server restart, and for `mashup` on the command line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mashup_core.views._format import fingerprint, human_size
from mashup_core.views.workspace import ensure_config_file, local_path, short_path
from mashup_core.workspace import Workspace

COLUMNS = ["name", "source task", "stage", "own-task accuracy", "status", "kind", "rank", "size",
           "target modules", "tags", "source", "trained on"]
# What the Library page filters a large library by (column -> how a row's cell is split).
FILTERS = {"source task": None, "rank": None, "target modules": ", ", "tags": ", "}
FILTER_PARAMS = {"source task": "task", "rank": "rank", "target modules": "modules", "tags": "tag"}
ANY = "(any)"


def library_scan(ws: Workspace):
    """The config's sources, every checkpoint validated against the config's base model in one
    scan (so a name already taken is a rejection with its reason, not a silent drop)."""
    from mashup_core.config import workspace_library

    return workspace_library(ws)


def library_stamp(ws: Workspace) -> tuple:
    """A cache key that changes with the config, the base model and any local source."""
    from mashup_core.config import config_path, resolve_config

    config = resolve_config(ws)
    local = [Path(p) for p in (config.base_model, *config.sources) if Path(p).exists()]
    return fingerprint(config_path(ws), ws.manifest_path, *local)


def library_frame(scan, manifest: dict | None = None, sources: list[str] | tuple[str, ...] = (),
                  ws: Workspace | None = None) -> pd.DataFrame:
    """One row per checkpoint found, accepted or rejected, with the reason for any rejection
    and its provenance: the configured source it was found in and the base it records."""
    cross = (manifest or {}).get("report", {}).get("cross_accuracy", {})

    def shown(value: str | None) -> str:
        return short_path(value, ws) if value and ws is not None else value or ""

    rows = []
    for c in scan.checkpoints:
        own = c.meta.get("validation_accuracy")
        if own is None and c.source_task:
            own = cross.get(c.name, {}).get(c.source_task)
        rows.append({
            "name": c.name, "source task": c.source_task or "",
            "stage": "snapshot" if c.is_snapshot else "final", "own-task accuracy": own,
            "status": "ok" + (f" ({'; '.join(c.notes)})" if c.notes else ""),
            "kind": c.kind, "rank": c.rank, "size": human_size(c.size_bytes),
            # q_proj, k_proj, ... -> q, k, ...: the suffix is the same for every Llama-style layer
            "target modules": ", ".join(m.removesuffix("_proj") for m in c.target_modules),
            "tags": ", ".join(str(t) for t in c.card.get("tags") or ()),
            "source": shown(source_of(c.path, c.hub_id, sources)),
            "trained on": shown(c.base_model),
        })
    for r in scan.rejected:
        rows.append({"name": r.name, "status": f"rejected: {r.reason}",
                     "source": shown(source_of(r.path, None, sources))})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    # Task and own-task accuracy are known for the demo's adapters (and checkpoints that
    # record them); a library without any would show two empty columns before the useful ones.
    empty = [c for c in ("source task", "own-task accuracy", "tags")
             if frame[c].replace("", None).isna().all()]
    return frame.drop(columns=empty) if rows else frame


def filter_options(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per filterable column the frame has: its values (a list cell split into its items)."""
    out = {}
    for column, sep in FILTERS.items():
        if column not in frame:
            continue
        cells = frame[column].dropna().astype(str)
        values = {v.strip() for cell in cells for v in (cell.split(sep) if sep else [cell]) if v.strip()}
        if len(values) > 1:
            out[column] = [ANY, *sorted(values, key=_natural)]
    return out


def filter_library(frame: pd.DataFrame, chosen: dict[str, str]) -> pd.DataFrame:
    """The rows whose cell is (or, for a list column, holds) each chosen value."""
    for column, value in chosen.items():
        if value in (None, ANY) or column not in frame:
            continue
        sep = FILTERS[column]
        cells = frame[column].astype(str)
        keep = cells.map(lambda cell, s=sep, v=value: v in [x.strip() for x in cell.split(s)]) \
            if sep else cells == value
        frame = frame[keep]
    return frame


def _natural(text: str) -> tuple:
    """'rank-4' before 'rank-16': digits compared as numbers."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def source_of(path: Path, hub_id: str | None, sources: list[str] | tuple[str, ...]) -> str | None:
    """The configured source a checkpoint was found in (a Hub id, or the folder holding it)."""
    if hub_id:
        return hub_id
    path = Path(path)
    for source in sources:
        if str(path) == source:  # a rejected source itself (a missing folder, a failed fetch)
            return source
        try:
            path.resolve().relative_to(Path(source).resolve())
        except (ValueError, OSError):
            continue
        return source
    return None


def add_library_source(ws: Workspace, source: str):
    """Add a folder or Hub id to mashup.toml (a relative folder is read from the workspace)."""
    from mashup_core.config import add_source

    ensure_config_file(ws)
    return add_source(ws, local_path(source, ws))


def remove_library_source(ws: Workspace, source: str):
    from mashup_core.config import remove_source

    return remove_source(ws, source)


def mixed_library(scan) -> bool:
    """Do the library's LoRA adapters differ in target modules or rank? Then only merges that
    concatenate factors ('cat', 'cat_svd') combine any two of them exactly; methods that add
    factors entry by entry refuse such a pair."""
    shapes = {(frozenset(c.target_modules), c.rank) for c in scan.checkpoints if c.kind == "lora"}
    return len(shapes) > 1


def default_merge_method(scan) -> str:
    """The reference's 'linear' for a uniform library; 'cat' for a mixed one (see above)."""
    from mashup_core.defaults import MERGE_METHOD

    return "cat" if scan is not None and mixed_library(scan) else MERGE_METHOD
