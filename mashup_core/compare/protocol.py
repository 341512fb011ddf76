"""The paper's protocol over a study's cells: seeds, the best learning rate, the results table.

Pure maths on long frames (one row per finished cell, as `study.report` reads them):

- **Seeds**: every number is a mean over seeds with its standard deviation (the sample std,
  ddof=1; none for a single seed). A row named 'mean' per group averages the targets: its value
  is the mean over targets of their means, its std the std over seeds of the per-seed mean over
  targets (how much the whole-table mean moves with the seed).
- **Best learning rate**: chosen per (target, method setting) on the mean validation accuracy
  over seeds, separately for training from scratch and for each mashup setting, as the paper
  does. Means within 1e-12 of each other tie, and a tie goes to the smaller lr (the cheaper,
  more conservative choice). The study measures one split (its `eval_split`), so the number
  reported at the chosen lr is the one it was chosen on.
- **The results table**: per target and mean, scratch and mashup accuracy at their own best
  lrs, Δ in percentage points, training-to-parity (normal and strict, `compare.parity`) on the
  seed-matched curves at the chosen lrs, and the wall-clock ratio with scoring and merging
  counted (`compare.parity.wallclock_ratio`), each a mean over seeds.
- **Accounting, two ways.** `wallclock` counts a target's scoring as the sum of its fold's
  relevance rows (every checkpoint it draws on, and the base); `wallclock_reference` as the
  reference pipeline does (src/mashup/analysis/timing.py): the least seconds of any one
  checkpoint's relevance job on the target, a lower figure for the same work. Both use normal
  parity. Parity's edge cases are the reference's (analysis/speedup.py): 0 % when the merge
  already reaches the scratch run's final accuracy, 100 % when it never does (normal), and the
  strict table leaves out a target where any seed reaches 100 %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mashup_core.compare.parity import METHOD_COST_KEYS, training_to_parity, wallclock_ratio

# What makes one mashup setting (a train cell without its lr and seed).
SETTING = ("scorer", "weighting", "method", "k", "n", "init")
MEAN = "mean"  # the target name of the row that averages the targets
TIE = 1e-12  # mean accuracies closer than this are a tie (float sums in another order)

# Per-seed quantities of the results table, in table order.
METRICS = ("scratch_acc", "mashup_acc", "delta_pp", "parity", "parity_strict", "wallclock",
           "wallclock_strict", "wallclock_reference")


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std, count) of the values that are there; std None below two values."""
    kept = [float(v) for v in values if v is not None and not pd.isna(v)]
    if not kept:
        return None, None, 0
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    return float(np.mean(kept)), std, len(kept)


def _groups(frame: pd.DataFrame, by: Sequence[str]):
    return frame.groupby(list(by), dropna=False, sort=False)


def lr_sweep(runs: pd.DataFrame, by: Sequence[str], value: str = "acc") -> pd.DataFrame:
    """Mean, std and number of seeds of `value` per `by` group and lr (sorted by lr)."""
    columns = [*by, "lr", "mean", "std", "seeds"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    out = _groups(runs, [*by, "lr"])[value].agg(mean="mean", std="std", seeds="count")
    return out.reset_index().sort_values([*by, "lr"], kind="stable").reset_index(drop=True)[columns]


def best_lrs(runs: pd.DataFrame, by: Sequence[str], value: str = "acc") -> pd.DataFrame:
    """One row per `by` group: the lr with the best mean `value` over seeds (ties: smaller lr)."""
    sweep = lr_sweep(runs, by, value)
    if sweep.empty:
        return sweep
    sweep["_key"] = (sweep["mean"] / TIE).round() * TIE
    ranked = sweep.sort_values(["_key", "lr"], ascending=[False, True], kind="stable")
    return ranked.groupby(list(by), dropna=False, sort=False).head(1).drop(columns="_key") \
        .sort_values(list(by), kind="stable").reset_index(drop=True)


def at_best_lr(runs: pd.DataFrame, by: Sequence[str], value: str = "acc") -> pd.DataFrame:
    """The runs (every seed) at their group's best lr."""
    if runs.empty:
        return runs
    best = best_lrs(runs, by, value)[[*by, "lr"]]
    return runs.merge(best, on=[*by, "lr"], how="inner")


def summarise(rows: pd.DataFrame, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean and std over seeds of each value per `by` group (`by` includes 'target'), plus a
    'mean' target row per group of the other keys (see the module's note on seeds).

    Columns: by, then per value `v` and `v_std`, then `seeds` (how many seeds the group has)."""
    others = [c for c in by if c != "target"]
    columns = [*by, *(x for v in values for x in (v, f"{v}_std")), "seeds"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for key, group in _groups(rows, others or ["target"]) if others else [((), rows)]:
        key = key if isinstance(key, tuple) else (key,)
        fixed = dict(zip(others, key, strict=True)) if others else {}
        per_target = []
        for target, g in _groups(group, ["target"]):
            row = {**fixed, "target": target[0] if isinstance(target, tuple) else target}
            for v in values:
                row[v], row[f"{v}_std"], _ = mean_std(list(g[v]))
            row["seeds"] = g["seed"].nunique()
            per_target.append(row)
        out += per_target
        by_seed = group.groupby("seed")[list(values)].mean()  # mean over targets, NaN skipped
        mean_row = {**fixed, "target": MEAN, "seeds": len(by_seed)}
        for v in values:
            mean_row[v] = mean_std([r[v] for r in per_target])[0]
            mean_row[f"{v}_std"] = mean_std(list(by_seed[v]))[1]
        out.append(mean_row)
    frame = pd.DataFrame(out)
    return frame.reindex(columns=columns)


def _curve(run: Mapping) -> list[tuple[float, float]] | None:
    curve = run.get("curve")
    if curve is None or (isinstance(curve, float) and pd.isna(curve)) or not len(curve):
        return None
    return [(float(p[0]), float(p[1])) for p in curve]


def _number(run: Mapping, key: str) -> float | None:
    value = run.get(key)
    return None if value is None or pd.isna(value) else float(value)


def seed_pair(scratch: Mapping, mashup: Mapping) -> dict[str, float | None]:
    """One seed's comparison of a mashup cell with its scratch cell (same target and seed).

    Cells carry `acc`, `curve` ([step, acc, ...] evaluations; the mashup's starts at step 0 with
    the merge), `train_s`, and the mashup's method cost (`compare.parity.METHOD_COST_KEYS`:
    scoring, weight search, merging). Parity and wall-clock are None when a curve or a training
    time is missing; strict ones also when the scratch accuracy is never reached."""
    out: dict[str, float | None] = {
        "scratch_acc": _number(scratch, "acc"), "mashup_acc": _number(mashup, "acc"),
        "delta_pp": None, "parity": None, "parity_strict": None, "wallclock": None,
        "wallclock_strict": None, "wallclock_reference": None,
    }
    if out["scratch_acc"] is not None and out["mashup_acc"] is not None:
        out["delta_pp"] = 100.0 * (out["mashup_acc"] - out["scratch_acc"])
    ref, mine = _curve(scratch), _curve(mashup)
    if ref is None or mine is None:
        return out
    out["parity"] = training_to_parity(ref, mine, "normal")
    out["parity_strict"] = training_to_parity(ref, mine, "strict")
    scratch_s, mashup_s = _number(scratch, "train_s"), _number(mashup, "train_s")
    if scratch_s and mashup_s is not None:
        overhead = sum(_number(mashup, key) or 0.0 for key in METHOD_COST_KEYS)
        out["wallclock"] = wallclock_ratio(scratch_s, mashup_s, out["parity"], overhead)
        out["wallclock_strict"] = wallclock_ratio(scratch_s, mashup_s, out["parity_strict"], overhead)
        relevance = _number(mashup, "relevance_min_s")
        relevance = relevance if relevance is not None else _number(mashup, "scoring_s") or 0.0
        out["wallclock_reference"] = wallclock_ratio(
            scratch_s, mashup_s, out["parity"], relevance + (_number(mashup, "merging_s") or 0.0))
    return out


def strict_as_the_reference(per_seed: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The reference's strict parity: a target is left out (None on every seed) when any of
    its seeds does not reach parity before the end (normal parity 100 %)."""
    out = per_seed.copy()
    never = out.groupby(list(by), dropna=False)["parity"].transform(
        lambda p: bool((p.dropna() >= 1.0).any()))
    out.loc[never.astype(bool), ["parity_strict", "wallclock_strict"]] = None
    return out


RESULT_COLUMNS = [*SETTING, "target", "scratch_lr", "mashup_lr",
                  *(x for v in METRICS for x in (v, f"{v}_std")), "seeds"]


def results_table(scratch: pd.DataFrame, mashup: pd.DataFrame,
                  setting: Sequence[str] = SETTING) -> pd.DataFrame:
    """The paper's results table: one row per (mashup setting, target) and a 'mean' row per
    setting (columns `RESULT_COLUMNS`).

    `scratch` has one row per scratch cell (target, lr, seed, acc, curve, train_s); `mashup` one
    per train cell (the `setting` columns, target, lr, seed, acc, curve, train_s and the method
    cost). Each side is taken at its own best lr per target (and setting); parity and wall-clock
    pair the two on the same seed. Δ is mashup − scratch accuracy in percentage points (the
    difference of the two means shown; its std is over the seed-matched differences)."""
    setting = list(setting)
    if scratch.empty or mashup.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    s_best = at_best_lr(scratch, ["target"])
    m_best = at_best_lr(mashup, [*setting, "target"])
    per_seed = []
    for key, group in _groups(m_best, [*setting, "target"]):
        fixed = dict(zip([*setting, "target"], key, strict=True))
        ref = s_best[s_best["target"] == fixed["target"]]
        if ref.empty:
            continue  # no scratch cell for this target yet
        mine = {r["seed"]: r for r in group.to_dict("records")}
        theirs = {r["seed"]: r for r in ref.to_dict("records")}
        for seed in sorted(set(mine) | set(theirs)):
            pair = seed_pair(theirs.get(seed, {}), mine.get(seed, {}))
            per_seed.append({**fixed, "seed": seed, "scratch_lr": float(ref["lr"].iloc[0]),
                             "mashup_lr": float(group["lr"].iloc[0]), **pair})
    if not per_seed:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    rows = strict_as_the_reference(pd.DataFrame(per_seed), [*setting, "target"])
    table = summarise(rows, [*setting, "target"], METRICS)
    table["delta_pp"] = 100.0 * (table["mashup_acc"] - table["scratch_acc"])
    lrs = rows.groupby([*setting, "target"], dropna=False)[["scratch_lr", "mashup_lr"]].first()
    table = table.merge(lrs.reset_index(), on=[*setting, "target"], how="left")
    for column in SETTING:  # a caller that groups by fewer columns gets them blank
        if column not in table:
            table[column] = None
    return table.reindex(columns=RESULT_COLUMNS)
