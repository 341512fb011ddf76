"""The relevance map: every checkpoint scored on every workspace target, at a glance.

Rows are checkpoints, columns the workspace's targets, cells the chosen scorer's value (or its
gain over the base model on that target). Tables come from the workspace's score store
(`selection.store`), which a study's select tasks, the Relevance page and `mashup score` fill
too: what any of them scored shows here. A target (or a checkpoint) not scored yet is reported
as missing and only scored on request (`score_missing`, which scores just what the store
lacks), never by just looking. Nothing here imports streamlit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mashup_core.access import require_write
from mashup_core.errors import MashupError
from mashup_core.workspace import Workspace

ORDERS = {
    "cluster": "clustered (similar checkpoints and targets together)",
    "best target": "by the target each checkpoint fits best",
    "name": "by name",
}
MAX_CELL_TEXT = 40  # rows above this show no number in each cell (hover still has it)


@dataclass
class MapTables:
    """Each workspace target's score table, as far as it is cached."""

    labels: dict[str, dict[str, Any]]  # column label -> TargetSpec dict (train split)
    tables: dict[str, Any] = field(default_factory=dict)  # label -> ScoreTable (cached ones)
    missing: list[str] = field(default_factory=list)  # labels not scored yet at this n
    errors: dict[str, str] = field(default_factory=dict)  # label -> why it cannot be scored
    # label -> checkpoints of the library the store holds no score of on that target yet
    partial: dict[str, list[str]] = field(default_factory=dict)

    def unscored(self) -> list[str]:
        """Checkpoints not scored on some target (each once, in library order)."""
        return list(dict.fromkeys(name for names in self.partial.values() for name in names))


def map_targets(config) -> dict[str, dict[str, Any]]:
    """The workspace's targets: their short name (mashup.toml's) -> TargetSpec dict."""
    from mashup_core.config import target_name
    from mashup_core.views.targets import target_spec_dict

    return {target_name(entry): target_spec_dict(entry) for entry in config.targets}


def map_tables(ws: Workspace, config, n: int, scan) -> MapTables:
    """The cached score tables of every target at `n` (`config` None: the workspace's own
    mashup.toml); reads only, never scores."""
    from mashup_core.config import resolve_config
    from mashup_core.selection.store import NotCachedError
    from mashup_core.views.launch import relevance_table

    found = MapTables(map_targets(config if config is not None else resolve_config(ws)))
    for label, spec in found.labels.items():
        try:
            found.tables[label] = table = relevance_table(ws, spec, n, cached_only=True, scan=scan)
            if table.unscored:
                found.partial[label] = list(table.unscored)
        except NotCachedError:
            found.missing.append(label)
        except MashupError as exc:  # a target whose data cannot load, an empty library
            found.errors[label] = str(exc)
    return found


def score_missing(ws: Workspace, config, n: int, scan, labels: Sequence[str],
                  on_target: Callable[[int, str], None] | None = None) -> None:
    """Score the library on these targets (the score cache keeps them): a write, so refused
    in a read-only or locked dashboard. `on_target(i, label)` before each, for progress."""
    from mashup_core.views.launch import relevance_table

    require_write("scoring the library")
    targets = map_targets(config)
    for i, label in enumerate(labels):
        if on_target is not None:
            on_target(i, label)
        relevance_table(ws, targets[label], n, scan=scan)


def relevance_matrix(tables: Mapping[str, Any], scorer: str, relative: bool = False) -> pd.DataFrame:
    """checkpoint × target of `scorer`'s value; `relative`: the gain over the base model on that
    target, signed so that positive is better for either scorer. NaN where a checkpoint was
    not scored on a target (skipped, or not scored yet); a checkpoint scored on no target has
    no row."""
    from mashup_core.selection.scoring import get_scorer

    s = get_scorer(scorer)
    columns = {}
    for label, table in tables.items():
        values = {r.name: r.value(s.name) for r in table.rows}
        if relative and table.base is not None:
            base, sign = table.base.value(s.name), 1.0 if s.higher_is_better else -1.0
            values = {name: sign * (v - base) for name, v in values.items()}
        columns[label] = values
    frame = pd.DataFrame(columns).dropna(how="all")
    frame.index.name = "checkpoint"
    return frame


def base_values(tables: Mapping[str, Any], scorer: str) -> dict[str, float]:
    """The base model's value per target (no adapter), where the table has it."""
    return {label: t.base.value(scorer) for label, t in tables.items() if t.base is not None}


def better_is_higher(scorer: str, relative: bool) -> bool:
    from mashup_core.selection.scoring import get_scorer

    return relative or get_scorer(scorer).higher_is_better


def order_matrix(frame: pd.DataFrame, how: str, higher_is_better: bool = True) -> pd.DataFrame:
    """Rows (and for "cluster", columns) reordered: scipy's hierarchical clustering (average
    linkage, optimal leaf order), grouped by each checkpoint's best target, or by name."""
    if how not in ORDERS:
        raise MashupError(f"order {how!r}: choose one of {', '.join(ORDERS)}")
    if frame.empty or how == "name":
        return frame.sort_index()
    filled = frame.apply(lambda col: col.fillna(col.mean())).fillna(0.0)
    if how == "best target":
        signed = filled if higher_is_better else -filled
        best = signed.to_numpy().argmax(axis=1)
        key = pd.DataFrame({"best": best, "value": -signed.to_numpy().max(axis=1),
                            "name": frame.index}, index=frame.index)
        return frame.loc[key.sort_values(["best", "value", "name"]).index]
    return frame.iloc[_leaf_order(filled.to_numpy()), _leaf_order(filled.to_numpy().T)]


def _leaf_order(values: np.ndarray) -> list[int]:
    """Hierarchical-clustering leaf order of the rows (identity for fewer than 3 rows)."""
    if len(values) < 3:
        return list(range(len(values)))
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering

    tree = linkage(values, method="average", metric="euclidean")
    return [int(i) for i in leaves_list(optimal_leaf_ordering(tree, values))]


def relevance_map_figure(frame: pd.DataFrame, scorer: str, relative: bool = False,
                         base: Mapping[str, float] | None = None,
                         source_task: Mapping[str, str | None] | None = None) -> go.Figure:
    """The map as a heatmap: x = target, y = checkpoint (in `frame`'s order); a click on a cell
    names its target (the page opens that target's Relevance page)."""
    from mashup_core.selection.scoring import get_scorer
    from mashup_core.views._format import styled

    s = get_scorer(scorer)
    higher = better_is_higher(scorer, relative)
    z = [[None if pd.isna(v) else float(v) for v in row] for row in frame.to_numpy()]
    base, source_task = base or {}, source_task or {}
    custom = [[[source_task.get(name) or "-", _fmt(base.get(t))] for t in frame.columns]
              for name in frame.index]
    if relative:
        title, scale = f"{s.label} gain over base", "RdBu"
        span = float(np.nanmax(np.abs(frame.to_numpy()))) if frame.notna().any().any() else 1.0
        limits = {"zmid": 0.0, "zmin": -span, "zmax": span}
    else:
        title, scale = s.label, "Blues" if higher else "Blues_r"
        limits = {"zmin": 0.0, "zmax": 1.0} if higher else {}
    text = {}
    if len(frame.index) <= MAX_CELL_TEXT:
        text = {"text": [["" if v is None else f"{v:.2f}" for v in row] for row in z],
                "texttemplate": "%{text}"}
    fig = go.Figure(go.Heatmap(
        z=z, x=list(frame.columns), y=list(frame.index), colorscale=scale, **limits, **text,
        customdata=custom, colorbar={"title": title},
        hovertemplate=("checkpoint <b>%{y}</b> (trained on %{customdata[0]})<br>on target "
                       "<b>%{x}</b>: " + title + " %{z:.3f}<br>base model %{customdata[1]}"
                       "<br>click to open this target's Relevance page<extra></extra>"),
    ))
    fig.update_yaxes(autorange="reversed", title="checkpoint", type="category")
    fig.update_xaxes(title="target", side="top", type="category")
    rows = len(frame.index)
    return styled(fig, height=min(160 + (24 if rows <= MAX_CELL_TEXT else 12) * rows, 4000))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
