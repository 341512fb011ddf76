"""A workspace's finished study cells as examples for the payoff predictor (`compare.payoff`).

One example per train cell that has its scratch cell (same target, lr and seed) finished:
the features known before training (the merged checkpoints' relevance and the base's on the
scoring sample, the merge's zero-shot value on the train rows from the matching merge cell,
the update similarity of the merged checkpoints, k, n, method, lr) and the outcomes (Δ final
value in pp, training-to-parity on the study's evaluation metric). Studies recorded before a
feature was recorded give NaN there; `missing_features` says which.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mashup_core.compare.parity import training_to_parity
from mashup_core.study.report import study_table
from mashup_core.study.spec import SPEC_FILE
from mashup_core.workspace import Workspace

KEYS = ("target", "scorer", "weighting", "method", "k", "n")


def study_examples(study_dir: Path) -> pd.DataFrame:
    """The examples of one study (empty when it trains nothing or nothing finished)."""
    from mashup_core.selection.scorers import get_scorer

    table = study_table(study_dir)
    train, scratch = table.runs("train"), table.runs("scratch")
    if train.empty or scratch.empty:
        return pd.DataFrame()
    raw = {r.get("key", i): r for i, r in enumerate(_raw_cells(study_dir))}
    merges = {tuple(r.get(k) for k in KEYS): r for r in raw.values() if r.get("kind") == "merge"}
    trains = [r for r in raw.values() if r.get("kind") == "train" and r.get("init") != "recycle"]
    ref = {(r["target"], float(r["lr"]), r["seed"]): r for r in scratch.to_dict("records")}
    curves = {(r["target"], float(r["lr"]), r["seed"], r["method"], r["k"], r["n"], r["scorer"]): r
              for r in train.to_dict("records")}
    rows = []
    for cell in trains:
        key = (cell["target"], float(cell["lr"]), cell["seed"])
        base_ref = ref.get(key)
        mine = curves.get((*key, cell["method"], cell["k"], cell["n"], cell["scorer"]))
        if base_ref is None or mine is None:
            continue
        sign = 1.0 if get_scorer(cell["scorer"]).higher_is_better else -1.0
        chosen = sum(cell.get("scores") or []) / max(len(cell.get("scores") or []), 1)
        base_score = cell.get("base_score")
        merge = merges.get(tuple(cell.get(k) for k in KEYS), {})
        rows.append({
            "study": study_dir.name, "metric": table.spec.eval_metric,
            "target": cell["target"], "method": cell["method"],
            "k": cell["k"], "log2_n": math.log2(cell["n"]), "log10_lr": math.log10(cell["lr"]),
            "seed": cell["seed"], "lr": cell["lr"], "n": cell["n"], "scorer": cell["scorer"],
            "chosen_relevance": chosen,
            "base_relevance": base_score,
            "relevance_gain": None if base_score is None else sign * (chosen - base_score),
            "merged_train": merge.get("train_value"),
            "similarity": cell.get("similarity", merge.get("similarity")),
            "delta_pp": 100.0 * (mine["acc"] - base_ref["acc"]),
            "parity": training_to_parity([(p[0], p[1]) for p in base_ref["curve"]],
                                         [(p[0], p[1]) for p in mine["curve"]], "normal"),
        })
    return pd.DataFrame(rows)


def _raw_cells(study_dir: Path) -> list[dict]:
    from mashup_core.study.spec import read_cells

    return list(read_cells(study_dir).values())


def workspace_examples(ws: Workspace, metric: str | None = None) -> pd.DataFrame:
    """Every study of the workspace's examples, in one frame; with `metric`, only the studies
    that evaluate with it (a gain in token accuracy is not a gain in accuracy)."""
    frames = [study_examples(p.parent) for p in sorted(ws.studies_dir.glob(f"*/{SPEC_FILE}"))]
    frames = [f for f in frames if not f.empty and (metric is None or (f["metric"] == metric).all())]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def missing_features(examples: pd.DataFrame) -> dict[str, list[str]]:
    """Per study: the features its cells lack (recorded by studies run since)."""
    from mashup_core.compare.payoff import NUMERIC

    out = {}
    for study, rows in examples.groupby("study"):
        lacking = [f for f in NUMERIC if f in rows and rows[f].isna().any()]
        if lacking:
            out[str(study)] = lacking
    return out
