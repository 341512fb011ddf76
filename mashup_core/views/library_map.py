"""The library map: every adapter placed by how alike its update is to the others'.

The pairwise cosines of the adapters' updates ΔW = BA (`selection.similarity`, exact, in rank
space) are laid out in 2D (classical MDS) and clustered; the Relevance map's scores colour
the points by relevance on a target, and the question the two maps answer together — do
similar updates help the same targets? — is one number: Spearman's rho between update
similarity and relevance-profile similarity over every pair. The map costs pairs × layers ×
rank² × width, so it is computed on request (a writer) and kept in the workspace's cache,
keyed by the adapters' files; a page only reads it. Nothing here imports streamlit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mashup_core.access import require_write
from mashup_core.errors import MashupError
from mashup_core.workspace import Workspace, write_json_atomic

MAP_VERSION = 1


class MapNotComputed(MashupError):
    """The library map of this library is not in the cache: nothing was computed."""


@dataclass
class LibraryMap:
    names: list[str]
    source_task: dict[str, str | None]
    cosine: np.ndarray  # N × N update cosines over the model
    points: np.ndarray  # N × 2 layout
    cluster: np.ndarray  # N cluster labels
    skipped: dict[str, str] = field(default_factory=dict)  # adapters not on the map, and why

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"checkpoint": self.names, "x": self.points[:, 0], "y": self.points[:, 1],
                             "cluster": self.cluster.astype(int),
                             "source_task": [self.source_task.get(n) or "-" for n in self.names]})

    def neighbours(self, name: str, k: int = 5) -> pd.DataFrame:
        i = self.names.index(name)
        order = [j for j in np.argsort(-self.cosine[i]) if j != i][:k]
        return pd.DataFrame({"checkpoint": [self.names[j] for j in order],
                             "update cosine": [float(self.cosine[i, j]) for j in order],
                             "source_task": [self.source_task.get(self.names[j]) or "-" for j in order]})


def _key(ws: Workspace, checkpoints) -> str:
    from mashup_core.selection.store import checkpoint_key

    keys = [(c.name, checkpoint_key(c, ws.root)) for c in checkpoints]
    return hashlib.sha256(json.dumps([MAP_VERSION, keys]).encode()).hexdigest()[:32]


def _paths(ws: Workspace, key: str) -> tuple[Path, Path]:
    folder = ws.cache_dir / "library_map"
    return folder / f"{key}.json", folder / f"{key}.npz"


def _lora(scan) -> list:
    return [c for c in scan.checkpoints if c.kind == "lora"]


def read_library_map(ws: Workspace, scan) -> LibraryMap:
    """The cached map of this library (`MapNotComputed` if there is none); reads only."""
    meta_path, arrays_path = _paths(ws, _key(ws, _lora(scan)))
    try:
        meta = json.loads(meta_path.read_text())
        with np.load(arrays_path, allow_pickle=False) as arrays:  # never a pickle
            cosine, points, cluster = arrays["cosine"], arrays["points"], arrays["cluster"]
    except (OSError, ValueError, KeyError) as exc:
        raise MapNotComputed(f"the library map of these {len(_lora(scan))} adapters is not "
                             "computed yet") from exc
    return LibraryMap(meta["names"], meta["source_task"], cosine, points, cluster,
                      meta.get("skipped", {}))


def compute_library_map(ws: Workspace, scan, on_adapter: Callable[[int, int], None] | None = None,
                        ) -> LibraryMap:
    """Read every LoRA adapter's factors, compute the map and keep it in the cache (a write:
    refused in a read-only dashboard)."""
    from mashup_core.selection.bank import BankError, read_bank_adapter
    from mashup_core.selection.similarity import clusters, layout_2d, update_similarity

    require_write("computing the library map")
    checkpoints = _lora(scan)
    adapters, skipped = [], {}
    for i, c in enumerate(checkpoints):
        if on_adapter is not None:
            on_adapter(i, len(checkpoints))
        try:
            adapters.append(read_bank_adapter(c.path, c.name))
        except BankError as exc:
            skipped[c.name] = str(exc)
    if len(adapters) < 2:
        raise MashupError("the library map needs at least two LoRA adapters whose updates can be "
                          f"read ({len(adapters)} of {len(checkpoints)})")
    sim = update_similarity(adapters)
    found = LibraryMap(sim.names, {c.name: c.source_task for c in checkpoints}, sim.cosine,
                       layout_2d(sim.cosine), clusters(sim.cosine), skipped)
    meta_path, arrays_path = _paths(ws, _key(ws, checkpoints))
    arrays_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = arrays_path.with_name(f".{arrays_path.stem}.tmp.npz")
    np.savez(tmp, cosine=found.cosine.astype(np.float32), points=found.points,
             cluster=found.cluster)
    tmp.replace(arrays_path)
    write_json_atomic(meta_path, {"version": MAP_VERSION, "names": found.names,
                                  "source_task": found.source_task, "skipped": skipped})
    return found


def relevance_profiles(tables: Mapping[str, Any], scorer: str) -> dict[str, list[float]]:
    """Each checkpoint's gain over the base on every target that scored it (signed so that
    positive is better), targets in the order of `tables`; only checkpoints scored on all."""
    from mashup_core.views.relevance_map import relevance_matrix

    frame = relevance_matrix(tables, scorer, relative=True).dropna()
    return {name: [float(v) for v in row] for name, row in frame.iterrows()}


def update_vs_relevance(found: LibraryMap, profiles: Mapping[str, Any]) -> dict:
    """Do similar updates help the same targets? (`selection.similarity.similarity_vs_relevance`
    over the map's adapters and their relevance profiles.)"""
    from mashup_core.selection.similarity import similarity_vs_relevance

    return similarity_vs_relevance(found.names, found.cosine, dict(profiles))


def map_figure(found: LibraryMap, colour: str = "source task",
               relevance: Mapping[str, float] | None = None, scorer_label: str = "") -> go.Figure:
    """The adapters as points: colour by source task (or cluster), or by relevance on a target."""
    from mashup_core.views._format import styled

    frame = found.frame()
    custom = np.column_stack([frame["checkpoint"], frame["source_task"], frame["cluster"]])
    hover = ("<b>%{customdata[0]}</b><br>trained on %{customdata[1]}<br>cluster %{customdata[2]}"
             "<br>click for its nearest neighbours<extra></extra>")
    fig = go.Figure()
    if colour == "relevance" and relevance:
        values = [relevance.get(n) for n in frame["checkpoint"]]
        fig.add_trace(go.Scatter(
            x=frame["x"], y=frame["y"], mode="markers", customdata=custom,
            marker={"size": 9, "color": [np.nan if v is None else v for v in values],
                    "colorscale": "RdBu", "cmid": 0.0, "colorbar": {"title": scorer_label}},
            hovertemplate=hover.replace("<br>click", "<br>gain %{marker.color:.3f}<br>click"),
            name="adapters"))
    else:
        key = "cluster" if colour == "cluster" else "source_task"
        for group, rows in frame.groupby(key, sort=True):
            fig.add_trace(go.Scatter(
                x=rows["x"], y=rows["y"], mode="markers", name=str(group),
                customdata=custom[rows.index], marker={"size": 9}, hovertemplate=hover))
    fig.update_xaxes(title="", showticklabels=False, zeroline=False)
    fig.update_yaxes(title="", showticklabels=False, zeroline=False, scaleanchor="x")
    return styled(fig, height=520)
