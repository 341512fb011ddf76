"""Comparisons of a mashup run with training from scratch, and the leave-one-out study.

Training-to-parity (the paper's headline number): how far into the scratch run's step budget
the mashup run first matches the scratch run's final accuracy. The wall-clock ratio adds what
the method itself costs (scoring and merging); the library is paid once and not counted.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import pandas as pd

from mashup_core.errors import MashupError

Curve = Sequence[tuple[float, float]]  # (step or seconds, accuracy), in any order


class ComparisonError(MashupError, ValueError):
    """Curves or timings that cannot be compared (empty, or a zero-length scratch run)."""


def _sorted(curve: Curve, what: str) -> list[tuple[float, float]]:
    points = sorted((float(x), float(y)) for x, y in curve)
    if not points:
        raise ComparisonError(f"the {what} curve has no evaluations; evaluate during training")
    return points


def first_reach(curve: Curve, target: float) -> float | None:
    """The x where `curve` first reaches `target`, linear between evaluations; None if never.

    Between evaluations the curve is unknown; a straight line is the least-assuming guess.
    """
    points = _sorted(curve, "mashup")
    prev = None
    for x, y in points:
        if y >= target:
            if prev is None:  # reached at the first evaluation: nothing to interpolate from
                return x
            return prev[0] + (target - prev[1]) / (y - prev[1]) * (x - prev[0])
        prev = (x, y)
    return None


def training_to_parity(
    scratch_curve: Curve, mashup_curve: Curve, mode: str = "normal"
) -> float | None:
    """Fraction of the scratch run's steps the mashup run needs to reach its final accuracy.

    Target = the scratch curve's final accuracy. The mashup curve should start with step 0
    (the merged model before training): reached there gives 0.0. Never reached gives 1.0
    (no saving) in 'normal' mode and None (the target is dropped from means) in 'strict'.
    """
    if mode not in ("normal", "strict"):
        raise ComparisonError(f"parity mode {mode!r}: use 'normal' or 'strict'")
    scratch = _sorted(scratch_curve, "scratch")
    total_steps, target = scratch[-1]
    if total_steps <= 0:
        raise ComparisonError("the scratch curve ends at step 0; it needs at least one trained step")
    reached = first_reach(mashup_curve, target)
    if reached is None:
        return 1.0 if mode == "normal" else None
    return reached / total_steps


def wallclock_ratio(
    scratch_seconds: float,
    mashup_train_seconds: float,
    parity_fraction: float | None,
    scoring_s: float = 0.0,
    merging_s: float = 0.0,
) -> float | None:
    """(scoring + merging + mashup training × parity) / scratch training time.

    Assumes the mashup run's time is spread evenly over its steps; `wallclock_ratio_timed`
    reads the time off the run instead. None when parity is None (strict, never reached).
    """
    if scratch_seconds <= 0:
        raise ComparisonError(f"scratch training time must be positive, got {scratch_seconds}")
    if parity_fraction is None:
        return None
    return (scoring_s + merging_s + mashup_train_seconds * parity_fraction) / scratch_seconds


def wallclock_ratio_timed(
    scratch_time_curve: Curve, mashup_time_curve: Curve, scoring_s: float = 0.0,
    merging_s: float = 0.0, mode: str = "normal",
) -> float | None:
    """Like `wallclock_ratio`, on (seconds since training started, accuracy) curves.

    The time to parity is read (interpolated) off the mashup run's own clock; never reached
    counts the whole mashup run in 'normal' mode and gives None in 'strict'.
    """
    scratch = _sorted(scratch_time_curve, "scratch")
    scratch_seconds, target = scratch[-1]
    reached = first_reach(mashup_time_curve, target)
    if reached is None:
        if mode == "strict":
            return None
        reached = _sorted(mashup_time_curve, "mashup")[-1][0]
    return wallclock_ratio(scratch_seconds, reached, 1.0, scoring_s, merging_s)


def mean_ranks(acc_by_target: Mapping[str, Mapping[Hashable, float]]) -> dict[Hashable, float]:
    """Mean rank of each cell across targets: rank 1 = best accuracy on a target, ties share
    the average of their ranks; a cell missing on a target is ranked on the others only."""
    frame = pd.DataFrame.from_dict({t: dict(cells) for t, cells in acc_by_target.items()}, orient="index")
    return dict(_mean_rank(frame).items())


def _mean_rank(wide: pd.DataFrame) -> pd.Series:
    """targets × cells accuracies -> each cell's mean rank (NaN = not run on that target)."""
    return wide.rank(axis=1, ascending=False, method="average").mean(axis=0)


# --- Comparing two runs ----------------------------------------------------------------------

# timings.json keys (pipeline.MashupInit.timings) that are the method's own cost, paid
# before a mashup run trains.
METHOD_COST_KEYS = ("scoring_s", "weight_search_s", "merging_s")


def eval_curve(metrics: Sequence[Mapping], x: str = "step", metric: str = "acc") -> list[tuple[float, float]]:
    """(x, metric) of a run's evaluation records (metrics.jsonl rows with phase 'eval')."""
    return [(float(r[x]), float(r[metric])) for r in metrics
            if r.get("phase", "eval") == "eval" and r.get(x) is not None and r.get(metric) is not None]


def _training_seconds(metrics: Sequence[Mapping], timings: Mapping, key: str) -> float:
    """Training time from timings.json if recorded, else the last record's wall-clock column."""
    if timings.get(key):
        return float(timings[key])
    seconds = [float(r["seconds"]) for r in metrics if r.get("seconds") is not None]
    if not seconds:
        raise ComparisonError("no training time: neither timings nor a 'seconds' column in the metrics")
    return max(seconds)


def compare_runs(
    scratch_metrics: Sequence[Mapping], mashup_metrics: Sequence[Mapping], timings: Mapping,
    scratch_timings: Mapping | None = None, metric: str = "acc",
) -> dict:
    """Parity (normal and strict), Δ final accuracy and wall-clock ratios of a mashup run
    against its from-scratch baseline, on the evaluation `metric` (the run's `eval_metric`).

    `timings` is the mashup run's timings.json (scoring, merging and weight-search seconds,
    training_s); the scratch run's training time comes from `scratch_timings` or its metrics.
    """
    scratch, mashup = eval_curve(scratch_metrics, metric=metric), eval_curve(mashup_metrics, metric=metric)
    scratch_s = _training_seconds(scratch_metrics, scratch_timings or {}, "training_s")
    mashup_s = _training_seconds(mashup_metrics, timings, "training_s")
    cost = {key: float(timings.get(key) or 0.0) for key in METHOD_COST_KEYS}
    overhead = sum(cost.values())
    parity = training_to_parity(scratch, mashup, "normal")
    strict = training_to_parity(scratch, mashup, "strict")
    target = _sorted(scratch, "scratch")[-1][1]
    reached_step = first_reach(mashup, target)
    timed = None
    scratch_t = eval_curve(scratch_metrics, "seconds", metric)
    mashup_t = eval_curve(mashup_metrics, "seconds", metric)
    if scratch_t and mashup_t:
        timed = wallclock_ratio_timed(scratch_t, mashup_t, overhead, 0.0)
    return {
        "metric": metric,
        "target_acc": target,
        "scratch_final_acc": target,
        "mashup_final_acc": _sorted(mashup, "mashup")[-1][1],
        "mashup_init_acc": _sorted(mashup, "mashup")[0][1],
        "delta_final_acc": _sorted(mashup, "mashup")[-1][1] - target,
        "parity": parity,
        "parity_strict": strict,
        "parity_step": reached_step,
        "wallclock_ratio": wallclock_ratio(scratch_s, mashup_s, parity, overhead, 0.0),
        "wallclock_ratio_strict": wallclock_ratio(scratch_s, mashup_s, strict, overhead, 0.0),
        "wallclock_ratio_timed": timed,
        "seconds": {"scratch_training_s": scratch_s, "mashup_training_s": mashup_s, **cost},
    }
