"""Successive halving drawn for the Relevance page: checkpoints alive per round, each dropped one."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from mashup_core.selection.halving import (  # noqa: F401  (the Relevance page's settings)
    DEFAULT_ETA,
    DEFAULT_MARGIN,
    DEFAULT_MIN_N,
    SELECTIONS,
    HalvingResult,
)
from mashup_core.workspace import Workspace


def halving_figure(result: HalvingResult) -> go.Figure:
    """One column per round (x: examples scored so far): a bar of the checkpoints alive, each
    checkpoint a marker at its rank in that round; crosses are dropped there, circles went on
    past the 1/eta cut (tied with it, or within the margin of the k-th best), the top k of the
    last round are stars."""
    from mashup_core.views import COLORS
    from mashup_core.views._format import styled

    labels = [f"n={r.n}" for r in result.rounds]
    fig = go.Figure(go.Bar(
        x=labels, y=[len(r.alive) for r in result.rounds], name="alive",
        marker={"color": COLORS["other"]}, opacity=0.45,
        customdata=[[len(r.kept), r.cost, r.seconds] for r in result.rounds],
        hovertemplate="%{x}: %{y} scored, %{customdata[0]} kept, "
                      "%{customdata[1]} example-forwards, %{customdata[2]:.1f} s<extra></extra>"))
    kept_x, kept_y, kept_name, drop_x, drop_y, drop_name = [], [], [], [], [], []
    grace_x, grace_y, grace_name = [], [], []
    last = len(result.rounds) - 1
    for i, r in enumerate(result.rounds):
        cut = max(result.k, math.ceil(len(r.alive) / result.eta))
        for place, name in enumerate(r.alive, start=1):
            if i < last and place > cut and name in r.kept:
                grace_x.append(labels[i])
                grace_y.append(place)
                grace_name.append(name)
            if name in r.dropped:
                drop_x.append(labels[i])
                drop_y.append(place)
                drop_name.append(name)
            elif i == last:
                kept_x.append(labels[i])
                kept_y.append(place)
                kept_name.append(name)
    fig.add_trace(go.Scatter(
        x=drop_x, y=drop_y, mode="markers", name="dropped", text=drop_name,
        marker={"symbol": "x", "size": 7, "color": COLORS["base"]},
        hovertemplate="%{text}: dropped at %{x} (rank %{y})<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=grace_x, y=grace_y, mode="markers", name="kept past the cut", text=grace_name,
        marker={"symbol": "circle-open", "size": 9, "color": COLORS["chosen"]},
        hovertemplate="%{text}: rank %{y} at %{x}, below the 1/eta cut but tied with it or "
                      "within the margin of the k-th: kept<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=kept_x, y=kept_y, mode="markers+text", name=f"top {result.k}", text=kept_name,
        textposition="middle right", marker={"symbol": "star", "size": 13, "color": COLORS["chosen"]},
        hovertemplate="%{text}: selected (rank %{y})<extra></extra>"))
    fig.update_yaxes(title="checkpoints (rank in the round)", rangemode="tozero")
    grace = f", and any within {result.margin:g} SE of the k-th" if result.margin else ""
    fig.update_xaxes(title=f"round (examples scored; keep 1/{result.eta:g}{grace} each round)")
    return styled(fig, height=360, bargap=0.3)


def halving_for_target(ws: Workspace, target: dict[str, Any], n: int, **settings: Any) -> HalvingResult:
    """`successive_halving_cached` on a target of the dashboard (the library of the config, the
    target's train split), as `views.relevance_table` scores it in full."""
    from mashup_core.config import load_target, resolve_config, target_name
    from mashup_core.data.targets import TargetSpec
    from mashup_core.selection.halving import successive_halving_cached
    from mashup_core.selection.scoring import ScoringError
    from mashup_core.views.library import library_scan

    config = resolve_config(ws)
    scan = library_scan(ws)
    if not scan.checkpoints:
        raise ScoringError("the library has no usable checkpoint to score")
    spec = TargetSpec.from_dict({"split": "train", **target})
    examples = load_target(spec.with_split("train"), ws)
    return successive_halving_cached(ws, scan.checkpoints, examples, n=n,
                                     base_path=config.base_model, target=target_name(target),
                                     progress=False, **settings)
