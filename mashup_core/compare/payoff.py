"""Will starting from a merge pay off, and by how much? Predicted from finished study cells.

Every finished train cell of a study is a measured example: what was known before training
(the relevance of the merged checkpoints and of the base, the merge's zero-shot accuracy on the
target's train rows, how alike the merged updates are, k, n, the method, the lr) and what
training gave against the scratch cell of the same target, lr and seed (Δ final accuracy in
pp, training-to-parity). Pure maths on a frame of such examples (`study.payoff` builds it):

- **The model**: ridge regression on standardised features (closed form, λ = `RIDGE`): small,
  inspectable (its coefficients are the teaching note), no dependency. A feature that does not
  vary in the examples, or that the query lacks, is left out of that fit.
- **Intervals: split-conformal by target** (cross-fitted): the residuals come from fits that
  never saw the residual's target, so they measure what a new target's error looks like; the
  interval is the prediction ± their (1 − α)(1 + 1/m) quantile (m residuals). Targets, not cells,
  are held out because a target's cells share its data and would make the residuals too small.
- **Validation, leave-one-target-out**: each target is predicted by a model fit on the others
  only (its intervals calibrated on the others too); reported: interval coverage, Spearman's
  rho of predicted vs measured, and the mean absolute error against a baseline that predicts
  the training targets' mean gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mashup_core.errors import MashupError

# Examples (cells) and targets a prediction needs at least: fewer and the "model" is noise.
MIN_CELLS = 8
MIN_TARGETS = 3
RIDGE = 1.0  # λ on standardised features: shrinks what few examples cannot pin down
ALPHA = 0.2  # 80 % intervals
NUMERIC = ("chosen_relevance", "base_relevance", "relevance_gain", "merged_train", "similarity",
           "k", "log2_n", "log10_lr")
OUTCOMES = {"delta_pp": "Δ final accuracy (pp)", "parity": "training to parity"}


class PredictionError(MashupError, ValueError):
    """Not enough finished cells to predict from; the message says how many there are."""


@dataclass
class Fit:
    features: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # on standardised features
    intercept: float

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        x = (rows[self.features].to_numpy(float) - self.mean) / self.scale
        return x @ self.coef + self.intercept

    def strongest(self) -> tuple[str, float]:
        """The feature that moves the prediction most per standard deviation, and its weight."""
        i = int(np.argmax(np.abs(self.coef)))
        return self.features[i], float(self.coef[i])


def design(cells: pd.DataFrame) -> pd.DataFrame:
    """The feature columns of a frame of cells: the numeric ones, and one column per merge
    method (1 where the cell used it)."""
    out = pd.DataFrame(index=cells.index)
    for column in NUMERIC:
        if column in cells:
            out[column] = pd.to_numeric(cells[column], errors="coerce")
    if "method" in cells:
        for method in sorted(cells["method"].dropna().unique()):
            out[f"method={method}"] = (cells["method"] == method).astype(float)
    return out


def usable_features(x: pd.DataFrame, query: pd.DataFrame | None = None) -> list[str]:
    """Features known for every example (and for the query) that vary across the examples."""
    keep = [c for c in x.columns if x[c].notna().all() and x[c].std(ddof=0) > 1e-12]
    if query is not None:
        keep = [c for c in keep if c in query and query[c].notna().all()]
    return keep


def fit(x: pd.DataFrame, y: np.ndarray, features: Sequence[str], lam: float = RIDGE) -> Fit:
    """Ridge on standardised features, closed form; the intercept is not shrunk."""
    features = list(features)
    values = x[features].to_numpy(float)
    mean, scale = values.mean(axis=0), values.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (values - mean) / scale
    centred = y - y.mean()
    coef = np.linalg.solve(z.T @ z + lam * np.eye(len(features)), z.T @ centred) if features \
        else np.zeros(0)
    return Fit(features, mean, scale, coef, float(y.mean()))


def _quantile(residuals: Sequence[float], alpha: float) -> float:
    """The split-conformal quantile: the ceil((1 − α)(m + 1))-th smallest |residual|."""
    r = np.sort(np.abs(np.asarray(residuals, float)))
    if not len(r):
        return math.inf
    rank = math.ceil((1 - alpha) * (len(r) + 1))
    return float(r[min(rank, len(r)) - 1]) if rank <= len(r) else float(r[-1])


def _cross_residuals(x: pd.DataFrame, y: np.ndarray, groups: np.ndarray, features) -> np.ndarray:
    """Each example's residual under a fit on the other groups' examples only."""
    out = np.empty(len(y))
    for g in np.unique(groups):
        held = groups == g
        model = fit(x[~held], y[~held], features)
        out[held] = y[held] - model.predict(x[held])
    return out


@dataclass
class Prediction:
    outcome: str
    value: float
    low: float
    high: float
    cells: int
    targets: int
    features: list[str]
    strongest: tuple[str, float]


def predict(cells: pd.DataFrame, query: pd.DataFrame, outcome: str = "delta_pp",
            alpha: float = ALPHA) -> Prediction:
    """The outcome for `query` (one row of features) from every finished cell, with its
    split-conformal interval (residuals cross-fitted by target)."""
    cells = cells.dropna(subset=[outcome])
    _enough(cells)
    x, q = design(cells), design(query)
    for column in x.columns:  # a method the query does not use: 0 there
        if column.startswith("method=") and column not in q:
            q[column] = 0.0
    features = usable_features(x, q)
    y, groups = cells[outcome].to_numpy(float), cells["target"].to_numpy()
    model = fit(x, y, features)
    width = _quantile(_cross_residuals(x, y, groups, features), alpha)
    value = float(model.predict(q)[0])
    return Prediction(outcome, value, value - width, value + width, len(cells),
                      int(cells["target"].nunique()), features,
                      model.strongest() if features else ("(none)", 0.0))


def _enough(cells: pd.DataFrame) -> None:
    targets = cells["target"].nunique() if len(cells) else 0
    if len(cells) < MIN_CELLS or targets < MIN_TARGETS:
        raise PredictionError(
            f"not enough finished cells to predict ({len(cells)} cells on {targets} targets; "
            f"needs {MIN_CELLS} on {MIN_TARGETS}): run a study with --train first")


@dataclass
class Validation:
    """Leave-one-target-out: every cell predicted by a model that never saw its target."""

    outcome: str
    table: pd.DataFrame  # target, predicted, low, high, measured, baseline (per cell)
    coverage: float
    spearman: float | None
    mae: float
    baseline_mae: float
    alpha: float = ALPHA
    strongest: tuple[str, float] = ("", 0.0)
    per_target: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def beats_baseline(self) -> bool:
        return self.mae < self.baseline_mae


def leave_one_target_out(cells: pd.DataFrame, outcome: str = "delta_pp",
                         alpha: float = ALPHA) -> Validation:
    from scipy.stats import spearmanr

    cells = cells.dropna(subset=[outcome]).reset_index(drop=True)
    _enough(cells)
    x = design(cells)
    y, groups = cells[outcome].to_numpy(float), cells["target"].to_numpy()
    rows = []
    for target in pd.unique(groups):
        held = groups == target
        train_x, train_y, train_g = x[~held], y[~held], groups[~held]
        features = usable_features(train_x)
        model = fit(train_x, train_y, features)
        width = _quantile(_cross_residuals(train_x, train_y, train_g, features), alpha)
        guess = model.predict(x[held])
        for i, value in zip(np.flatnonzero(held), guess, strict=True):
            rows.append({"target": target, "predicted": float(value), "low": float(value - width),
                         "high": float(value + width), "measured": float(y[i]),
                         "baseline": float(train_y.mean())})
    table = pd.DataFrame(rows)
    inside = (table["low"] <= table["measured"]) & (table["measured"] <= table["high"])
    rho = spearmanr(table["predicted"], table["measured"]).statistic if len(table) > 2 else None
    whole = fit(x, y, usable_features(x))
    per_target = table.groupby("target", sort=False)[["predicted", "low", "high", "measured",
                                                       "baseline"]].mean().reset_index()
    return Validation(
        outcome, table, float(inside.mean()),
        None if rho is None or np.isnan(rho) else float(rho),
        float((table["predicted"] - table["measured"]).abs().mean()),
        float((table["baseline"] - table["measured"]).abs().mean()), alpha,
        whole.strongest() if whole.features else ("(none)", 0.0), per_target)


def teaching_note(validation: Validation) -> str:
    """Which feature carries the prediction, and whether it beats guessing the mean."""
    name, weight = validation.strongest
    direction = "raises" if weight > 0 else "lowers"
    verdict = ("beats" if validation.beats_baseline else "does not beat")
    return (f"The fit leans most on **{name}**: one standard deviation more {direction} the "
            f"predicted {OUTCOMES.get(validation.outcome, validation.outcome)} by {abs(weight):.2f}. "
            f"Predicting each target from the others, it {verdict} the mean-gain baseline "
            f"(mean absolute error {validation.mae:.2f} vs {validation.baseline_mae:.2f}); its "
            f"{1 - validation.alpha:.0%} intervals held {validation.coverage:.0%} of the measured values.")
