"""The Recycle page's data: a saved multi-target search (`merging.recycle`) as figures and tables.

Every figure carries each merge's id in `customdata`, so a click on a point names the merge
the page then shows (and may write as an adapter).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from mashup_core.merging.recycle import (  # noqa: F401  (the page's actions, through this view)
    RecycleRequest,
    launch_recycle,
    list_fronts,
    load_front,
    pareto_front,
    recycle_dir,
    recycle_job,
    summary,
    weight_vs_own_score,
    write_recycled_adapter,
)
from mashup_core.views._format import styled

KIND_STYLE = {  # kind → (legend name, colour, marker symbol, size)
    "searched": ("searched merges", "#B8C4D6", "circle", 7),
    "single": ("single checkpoints", "#4C78A8", "diamond", 10),
    "base": ("base model", "#54585D", "square", 12),
    "equal": ("equal weights", "#F3A712", "star", 15),
}
FRONT_COLOR = "#E4572E"




def point_label(point: dict[str, Any]) -> str:
    return f"{point['id']} · {point['label']}"


def front_scatter(front: dict[str, Any], x: str, y: str) -> go.Figure:
    """Per-target accuracy of two targets: base, each single checkpoint, the equal merge, the
    searched merges, and the front (the merges non-dominated on these two) as a line."""
    points = front["points"]
    fig = go.Figure()
    for kind in ("searched", "single", "base", "equal"):
        chosen = [p for p in points if p["kind"] == kind]
        if not chosen:
            continue
        name, color, symbol, size = KIND_STYLE[kind]
        fig.add_trace(go.Scatter(
            x=[p["per_target"][x] for p in chosen], y=[p["per_target"][y] for p in chosen],
            mode="markers", name=name, customdata=[p["id"] for p in chosen],
            text=[point_label(p) for p in chosen],
            marker={"color": color, "symbol": symbol, "size": size, "line": {"width": 1, "color": "white"}},
            hovertemplate="%{text}<br>" + f"{x} %{{x:.3f}}<br>{y} %{{y:.3f}}<extra></extra>",
        ))
    # The merges no other beats on both drawn targets (with more targets searched, the
    # stored front's other members lie inside this plane's front).
    flat = pareto_front([[p["per_target"][x], p["per_target"][y]] for p in points])
    on_front = sorted((points[i] for i in flat), key=lambda p: (p["per_target"][x], -p["per_target"][y]))
    fig.add_trace(go.Scatter(
        x=[p["per_target"][x] for p in on_front], y=[p["per_target"][y] for p in on_front],
        mode="lines+markers", name="front (non-dominated)", customdata=[p["id"] for p in on_front],
        text=[point_label(p) for p in on_front], line={"color": FRONT_COLOR, "width": 2},
        marker={"color": FRONT_COLOR, "size": 9, "symbol": "circle-open", "line": {"width": 2}},
        hovertemplate="%{text}<br>" + f"{x} %{{x:.3f}}<br>{y} %{{y:.3f}}<extra></extra>",
    ))
    fig.update_xaxes(title=f"accuracy on {x}")
    fig.update_yaxes(title=f"accuracy on {y}")
    return styled(fig, top=40, height=460, clickmode="event+select")


def front_parallel(front: dict[str, Any]) -> go.Figure:
    """Three or more targets: one line per merge across the targets' accuracies (and the
    held-out one where measured); the front in red, references in their colours."""
    points = [p for p in front["points"] if p["front"] or p["kind"] != "searched"]
    codes = {"base": 0, "single": 1, "equal": 2, "front": 3}
    dims = [{"label": t, "values": [p["per_target"][t] for p in points], "range": [0, 1]}
            for t in front["targets"]]
    if front.get("held_out_target"):
        dims.append({"label": f"held-out: {front['held_out_target']}", "range": [0, 1],
                     "values": [p["held_out"] if p.get("held_out") is not None else 0 for p in points]})
    color = [codes["front"] if p["front"] else codes[p["kind"]] for p in points]
    scale = [[0, KIND_STYLE["base"][1]], [0.33, KIND_STYLE["single"][1]],
             [0.66, KIND_STYLE["equal"][1]], [1, FRONT_COLOR]]
    fig = go.Figure(go.Parcoords(line={"color": color, "colorscale": scale, "cmin": 0, "cmax": 3},
                                 dimensions=dims, customdata=[p["id"] for p in points]))
    return styled(fig, top=40, height=420, margin={"l": 60, "r": 60, "t": 60, "b": 20})


def held_out_figure(front: dict[str, Any]) -> go.Figure | None:
    """The held-out target's accuracy of the base, the equal merge, the best single
    checkpoint (on the searched objective) and each merge on the front."""
    target = front.get("held_out_target")
    if not target:
        return None
    points = front["points"]
    singles = [p for p in points if p["kind"] == "single"]
    rows = [p for p in points if p["kind"] in ("base", "equal")]
    if singles:
        rows.append(max(singles, key=lambda p: p["objective"]))
    rows += [p for p in points if p["front"] and p not in rows]
    colors = [FRONT_COLOR if p["front"] else KIND_STYLE[p["kind"]][1] for p in rows]
    fig = go.Figure(go.Bar(
        x=[point_label(p) for p in rows], y=[p.get("held_out") for p in rows],
        marker_color=colors, customdata=[p["id"] for p in rows],
        hovertemplate="%{x}<br>held-out accuracy %{y:.3f}<extra></extra>",
    ))
    fig.update_yaxes(title=f"accuracy on {target} (held out)", range=[0, 1])
    return styled(fig, top=40, height=460, showlegend=False)


def weight_score_figure(front: dict[str, Any], point_id: str | None = None) -> go.Figure:
    """Each checkpoint's weight in a merge against its own score on the targets, with the
    Spearman correlation in the title (the paper's third finding, on this workspace)."""
    data = weight_vs_own_score(front, point_id)
    corr = data["spearman"]
    fig = go.Figure(go.Scatter(
        x=data["own_score"], y=data["weights"], mode="markers+text", text=data["checkpoints"],
        textposition="top center", marker={"size": 10, "color": KIND_STYLE["single"][1]},
        hovertemplate="%{text}<br>own score %{x:.3f}<br>weight %{y:.3f}<extra></extra>",
    ))
    fig.update_xaxes(title=f"own score on the targets ({front['objective']})")
    fig.update_yaxes(title=f"weight in {data['point']}")
    title = "Spearman ρ = " + ("undefined (a constant side)" if corr is None else f"{corr:.2f}")
    return styled(fig, top=40, height=420, title={"text": title, "x": 0})


def points_frame(front: dict[str, Any], only_front: bool = False) -> pd.DataFrame:
    """One row per merge: kind, per-target accuracy, the objective, held-out, on the front."""
    rows = []
    for p in front["points"]:
        if only_front and not p["front"]:
            continue
        if not only_front and p["kind"] == "searched" and not p["front"] and p["best_of_run"] is None:
            continue
        rows.append({"id": p["id"], "merge": p["label"], "kind": p["kind"],
                     **{t: p["per_target"][t] for t in front["targets"]},
                     front["objective"]: p["objective"],
                     f"held-out {front.get('held_out_target') or ''}".strip(): p.get("held_out"),
                     "front": p["front"]})
    return pd.DataFrame(rows)


def weights_frame(front: dict[str, Any], point_id: str) -> pd.DataFrame:
    point = next(p for p in front["points"] if p["id"] == point_id)
    own = {p["label"]: p["objective"] for p in front["points"] if p["kind"] == "single"}
    return pd.DataFrame({"checkpoint": front["checkpoints"], "weight": point["weights"],
                         "own score": [own.get(n) for n in front["checkpoints"]]})


def selectable_points(front: dict[str, Any]) -> list[str]:
    """Merges worth choosing: the front, each search's best, then the references."""
    points = front["points"]
    first = [p["id"] for p in points if p["front"] or p.get("best_of_run") is not None]
    return first + [p["id"] for p in points if p["kind"] != "searched" and p["id"] not in first]


def clicked_point(event) -> str | None:
    """The merge id of a Plotly selection event (a click on a point), if any."""
    points = (event.selection.points if event and getattr(event, "selection", None) else []) or []
    for point in points:
        custom = point.get("customdata")
        if isinstance(custom, list | tuple):
            custom = custom[0] if custom else None
        if isinstance(custom, str):
            return custom
    return None
