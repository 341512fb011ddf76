"""The payoff predictor for the pages and the CLI: a query from what is known before training,
and the predicted-vs-measured figure. Nothing here imports streamlit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from mashup_core.compare.payoff import (  # noqa: F401  (teaching_note: the Report page's)
    OUTCOMES,
    Prediction,
    PredictionError,
    Validation,
    leave_one_target_out,
    predict,
    teaching_note,
)
from mashup_core.workspace import Workspace


def payoff_query(ws: Workspace, target: dict[str, Any], *, k: int, method: str, lr: float,
                 n: int, scorer: str) -> pd.DataFrame:
    """The features of a mashup run not started yet: its leave-one-out top k on the target (from
    the score store: never scores), their update similarity, k, n, method and lr."""
    from mashup_core.config import target_name
    from mashup_core.selection.scorers import get_scorer
    from mashup_core.study.cells import update_similarity_of
    from mashup_core.views.launch import relevance_table

    table = relevance_table(ws, target, n, cached_only=True)
    name = target_name(target)
    chosen = table.select_top_k(scorer, k, exclude_task=name)
    values = [table.row(c).value(scorer) for c in chosen]
    base = table.base.value(scorer) if table.base is not None else None
    sign = 1.0 if get_scorer(scorer).higher_is_better else -1.0
    paths = [table.provenance.get(c, {}).get("path") for c in chosen]
    mean = sum(values) / len(values)
    return pd.DataFrame([{
        "target": name, "method": method, "k": k, "log2_n": math.log2(n),
        "log10_lr": math.log10(lr), "chosen_relevance": mean, "base_relevance": base,
        "relevance_gain": None if base is None else sign * (mean - base),
        "similarity": update_similarity_of(paths) if all(paths) else None,
        "selected": ", ".join(chosen),
    }])


def predictions(ws: Workspace, query: pd.DataFrame, metric: str | None = None) -> dict[str, Prediction]:
    """Δ final value and parity for the query, each from the workspace's finished cells that
    evaluate with `metric` (default: lm-eval's acc), its own target's cells left out (a
    prediction for a target is about a new target)."""
    from mashup_core.defaults import EVAL_METRIC
    from mashup_core.study.payoff import workspace_examples

    examples = workspace_examples(ws, metric or EVAL_METRIC)
    if examples.empty:
        raise PredictionError(f"not enough finished cells to predict (0 cells: no study of this "
                              f"workspace evaluating with {metric or EVAL_METRIC} has trained "
                              "yet; run one with --train)")
    others = examples[examples["target"] != query["target"].iloc[0]]
    return {outcome: predict(others, query, outcome) for outcome in OUTCOMES}


def prediction_text(found: dict[str, Prediction]) -> str:
    gain, parity = found["delta_pp"], found["parity"]
    return (f"predicted Δ accuracy **{gain.value:+.1f} pp** [{gain.low:+.1f}, {gain.high:+.1f}], "
            f"parity **{parity.value:.0%}** [{max(parity.low, 0):.0%}, {min(parity.high, 1):.0%}], "
            f"fit on {gain.cells} cells of {gain.targets} other targets; it leans most on "
            f"{gain.strongest[0]}")


@dataclass
class PayoffCheck:
    """Could the gains have been predicted? The finished train cells of every study of the
    workspace (in one metric), the leave-one-target-out check over them, or why there is none."""

    examples: pd.DataFrame
    validation: Validation | None = None
    reason: str | None = None
    missing: dict[str, list[str]] = field(default_factory=dict)  # study -> features it lacks


def payoff_check(ws: Workspace, metric: str | None) -> PayoffCheck:
    """The check of the Report page: Δ final accuracy of each finished cell predicted by a model
    fit on the other targets' cells only (`compare.payoff.leave_one_target_out`)."""
    from mashup_core.study.payoff import missing_features, workspace_examples

    examples = workspace_examples(ws, metric)
    if examples.empty:
        return PayoffCheck(examples, reason="Not enough finished cells to predict: no study of "
                           "this workspace has trained yet.")
    try:
        validation = leave_one_target_out(examples, "delta_pp")
    except PredictionError as exc:
        return PayoffCheck(examples, reason=str(exc), missing=missing_features(examples))
    return PayoffCheck(examples, validation, missing=missing_features(examples))


def validation_figure(validation: Validation, highlight: str | None = None) -> go.Figure:
    """Predicted vs measured, one point per cell, its interval as an error bar; the diagonal
    is a perfect prediction."""
    from mashup_core.views import COLORS
    from mashup_core.views._format import styled

    t = validation.table
    fig = go.Figure()
    for inside, group in t.groupby((t["low"] <= t["measured"]) & (t["measured"] <= t["high"])):
        fig.add_trace(go.Scatter(
            x=group["measured"], y=group["predicted"], mode="markers",
            name="inside its interval" if inside else "outside its interval",
            marker={"size": 9, "color": COLORS["mashup"] if inside else COLORS["accent"]},
            error_y={"type": "data", "symmetric": False, "array": group["high"] - group["predicted"],
                     "arrayminus": group["predicted"] - group["low"], "thickness": 1},
            text=group["target"],
            hovertemplate="%{text}<br>measured %{x:.2f}<br>predicted %{y:.2f}<extra></extra>"))
    lo = float(min(t["measured"].min(), t["low"].min()))
    hi = float(max(t["measured"].max(), t["high"].max()))
    fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line={"dash": "dot", "color": "#888"})
    label = OUTCOMES.get(validation.outcome, validation.outcome)
    fig.update_xaxes(title=f"measured {label}")
    fig.update_yaxes(title=f"predicted {label} (target left out)")
    return styled(fig, height=420)
