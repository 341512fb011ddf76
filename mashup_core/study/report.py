"""Reading a study: its cells as frames, the Fig. 3 mean-rank tables, the results table.

A study folder holds spec.json and cells.jsonl (`study.spec.read_cells` completes records
written before the protocol grid: one n, lr and seed, merged-fold training)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mashup_core.compare.parity import _mean_rank
from mashup_core.compare.protocol import SETTING, at_best_lr, results_table
from mashup_core.study.spec import (
    RECYCLE,
    SPEC_FILE,
    StudyError,
    StudySpec,
    cell_key,
    planned_cells,
    read_cells,
)
from mashup_core.workspace import read_json

# `acc` is the study's evaluation metric (`StudySpec.eval_metric`: lm-eval's acc unless the
# study says e.g. token_acc, the reference's), so every table, rank and parity reads one column;
# `mc_acc` keeps lm-eval's accuracy whatever the metric.
RECORD_COLUMNS = ["kind", "target", *SETTING, "lr", "seed", "label", "acc", "mc_acc", "acc_norm",
                  "nll", "token_acc", "exact_match", "init_acc", "selected", "weights", "curve",
                  "train_s", "scoring_s", "relevance_min_s", "weight_search_s", "merging_s"]

# --- Reading a study ---------------------------------------------------------------------------


def setting_label(spec: StudySpec, cell: Mapping) -> str:
    """The heatmap row: the merge method, plus each setting the study varies (scorer,
    weighting, n, and for train cells the init). A recycle cell is 'recycle' (it has no
    scorer, weighting or method of its own; its k is 0, the whole library)."""
    parts = [str(cell["method"])]
    if cell["method"] != RECYCLE:
        if len(spec.scorers) > 1:
            parts.append(str(cell["scorer"]))
        if len(spec.weightings) > 1:
            parts.append(str(cell["weighting"]))
    if len(spec.ns) > 1:
        parts.append(f"n={cell['n']}")
    if cell["kind"] == "train" and len(spec.inits) > 1 and cell["method"] != RECYCLE:
        parts.append(str(cell["init"]))
    return " · ".join(parts)


@dataclass
class StudyTable:
    """A study's results, shaped for the Fig. 3 heatmap: rows = merge setting, columns = k.

    `cells` has one row per merge cell and per train setting (taken at its best lr, accuracy
    the mean over seeds, `acc_std` its std); `records` has every finished cell as recorded
    (all lrs and seeds); `results` is the paper's
    results table (`compare.protocol.results_table`) for studies that train."""

    spec: StudySpec
    cells: pd.DataFrame  # one row per finished merge cell / train setting at its best lr
    base: dict[str, float]  # the base model's accuracy per target
    scratch: dict[str, float]  # from scratch per target, at its best lr (mean over seeds)
    mean_rank: pd.DataFrame  # merged zero-shot: label × k, mean rank across targets (1 = best)
    trained_mean_rank: pd.DataFrame | None  # the same after finetuning from each merge
    planned: int
    finished: int
    records: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RECORD_COLUMNS))
    results: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def complete(self) -> bool:
        return self.finished >= self.planned

    @property
    def metric_label(self) -> str:
        """What the tables' accuracy is: "validation accuracy", "validation token accuracy", ..."""
        from mashup_core.selection.scoring import get_scorer

        return f"{self.spec.eval_split} {get_scorer(self.spec.eval_metric).label}"

    def runs(self, kind: str) -> pd.DataFrame:
        """Every finished cell of one kind (all lrs and seeds)."""
        return self.records[self.records["kind"] == kind].reset_index(drop=True)

    def settings(self, kind: str = "train") -> pd.DataFrame:
        """The distinct settings of merge or train cells (SETTING columns, label, k), grid order."""
        rows = self.cells[self.cells["kind"] == kind]
        return rows[[*SETTING, "label"]].drop_duplicates(subset=["label", "k"]).reset_index(drop=True)

    def best_setting(self, kind: str = "train") -> dict | None:
        """The setting with the best (lowest) mean rank across targets: what a report shows
        by default. Ties go to the first in grid order; None when no cell of that kind is done."""
        ranks = self.mean_rank if kind == "merge" else self.trained_mean_rank
        if ranks is None or ranks.empty or ranks.isna().all().all():
            return None
        # A (label, k) the grid never ran (recycle runs at k=0 only) is NaN: never the best.
        stacked = ranks.stack().dropna()
        label, k = stacked.index[int(stacked.to_numpy().argmin())]
        rows = self.settings(kind)
        row = rows[(rows["label"] == label) & (rows["k"] == k)].iloc[0]
        return {c: row[c] for c in (*SETTING, "label")}

    def accuracies(self, label: str, k: int, kind: str = "merge") -> dict[str, float]:
        """Per-target accuracy of one heatmap cell (what a click on it shows)."""
        rows = self.cells[(self.cells["kind"] == kind) & (self.cells["label"] == label)
                          & (self.cells["k"] == k)]
        return dict(zip(rows["target"], rows["acc"], strict=True))

    def hover(self, kind: str = "merge") -> pd.DataFrame:
        """label × k: the per-target accuracies as text, for the heatmap's hover."""
        rows = self.cells[self.cells["kind"] == kind]
        text = rows.groupby(["label", "k"]).apply(
            lambda g: "<br>".join(f"{t}: {a:.2f}" for t, a in zip(g["target"], g["acc"], strict=True)),
            include_groups=False)
        if not len(text):
            return pd.DataFrame()
        order = self.mean_rank if kind == "merge" else self.trained_mean_rank
        return text.unstack("k").reindex(index=order.index, columns=order.columns)

    def to_dict(self) -> dict:
        def matrix(frame: pd.DataFrame | None) -> dict | None:
            if frame is None or frame.empty:
                return None
            return {"rows": [str(i) for i in frame.index], "columns": [int(c) for c in frame.columns],
                    "values": [[None if pd.isna(v) else float(v) for v in row] for row in frame.to_numpy()]}

        per_target = {}
        for kind in ("merge", "train"):
            rows = self.cells[self.cells["kind"] == kind]
            per_target[kind] = {f"{label}/k{k}": dict(zip(g["target"], g["acc"], strict=True))
                                for (label, k), g in rows.groupby(["label", "k"])}
        out = {"spec": self.spec.to_dict(), "planned": self.planned, "finished": self.finished,
               "complete": self.complete, "base": self.base, "scratch": self.scratch,
               "mean_rank": matrix(self.mean_rank), "trained_mean_rank": matrix(self.trained_mean_rank),
               "accuracy": per_target["merge"], "trained_accuracy": per_target["train"]}
        if "parity" in self.cells:
            trained = self.cells[self.cells["kind"] == "train"]
            out["parity"] = {f"{label}/k{k}": {
                "mean": _mean(g["parity"]), "mean_strict": _mean(g["parity_strict"]),
                "per_target": {t: None if pd.isna(p) else float(p)
                               for t, p in zip(g["target"], g["parity"], strict=True)}}
                for (label, k), g in trained.groupby(["label", "k"])}
        if not self.results.empty:
            out["results"] = [{k: _plain(v) for k, v in row.items()}
                              for row in self.results.to_dict("records")]
        return out


def _plain(value):
    """A JSON-ready scalar (NaN → None, numpy numbers → Python's)."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None and not pd.isna(v)]
    return sum(kept) / len(kept) if kept else None


def _rank_matrix(cells: pd.DataFrame, kind: str) -> pd.DataFrame:
    rows = cells[cells["kind"] == kind]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index="target", columns=["label", "k"], values="acc")
    frame = _mean_rank(wide).unstack("k")
    labels = list(dict.fromkeys(rows["label"]))  # grid order (cells are sorted by the plan)
    return frame.reindex(index=[lab for lab in labels if lab in frame.index],
                         columns=sorted(frame.columns))


def _trained_cells(train: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """One row per (train setting, target): at its best lr, accuracy the mean over seeds."""
    if train.empty:
        return pd.DataFrame(columns=RECORD_COLUMNS)
    keys = [*SETTING, "target"]
    best = at_best_lr(train, keys)
    grouped = best.groupby(keys, dropna=False, sort=False)
    out = grouped.first()  # label, lr, selected, weights: the same for every seed's cell
    for column in ("acc", "acc_norm", "nll", "init_acc"):
        out[column] = grouped[column].mean()
    out["acc_std"] = grouped["acc"].std()
    out["seeds"] = grouped["seed"].nunique()
    out = out.reset_index()
    if not results.empty:
        parity = results[results["target"] != "mean"][[*keys, "parity", "parity_strict"]]
        out = out.merge(parity, on=keys, how="left")
    return out


def study_table(study_dir: Path) -> StudyTable:
    """Per-target accuracies of every finished cell, the mean-rank matrices, the results table."""
    study_dir = Path(study_dir)
    data = read_json(study_dir / SPEC_FILE)
    if data is None:
        raise StudyError(f"{study_dir} is not a study folder (no {SPEC_FILE}); run `mashup study`")
    spec = StudySpec.from_dict(data)
    plan = planned_cells(spec)
    order = {cell_key(c): i for i, c in enumerate(plan)}
    done = {key: c for key, c in read_cells(study_dir).items() if key in order}
    ordered = sorted(done.values(), key=lambda c: order[cell_key(c)])
    rows = []
    for c in ordered:
        row = {column: c.get(column) for column in RECORD_COLUMNS}
        row["mc_acc"] = c.get("acc")
        row["acc"] = c.get(spec.eval_metric)
        if c["kind"] == "train" and "init_value" in c:
            row["init_acc"] = c["init_value"]
        if c["kind"] in ("merge", "train"):
            row["label"] = setting_label(spec, c)
        rows.append(row)
    # base cells have no k, n or seed: nullable integers keep the others' ints as ints
    records = pd.DataFrame(rows, columns=RECORD_COLUMNS).astype(
        {"k": "Int64", "n": "Int64", "seed": "Int64", "lr": float})
    base = {c["target"]: c.get(spec.eval_metric) for c in ordered if c["kind"] == "base"}
    scratch_runs = records[records["kind"] == "scratch"]
    train_runs = records[records["kind"] == "train"]
    results = results_table(scratch_runs, train_runs)
    scratch_best = at_best_lr(scratch_runs, ["target"]).groupby("target", sort=False)["acc"].mean()
    merge = records[records["kind"] == "merge"]
    cells = pd.concat([frame for frame in (merge, _trained_cells(train_runs, results))
                       if not frame.empty], ignore_index=True) if len(merge) + len(train_runs) \
        else pd.DataFrame(columns=RECORD_COLUMNS)
    if spec.train and "parity" not in cells:
        cells["parity"], cells["parity_strict"] = None, None
    return StudyTable(
        spec=spec, cells=cells, base=base, scratch={str(t): float(a) for t, a in scratch_best.items()},
        mean_rank=_rank_matrix(cells, "merge"),
        trained_mean_rank=_rank_matrix(cells, "train") if spec.train else None,
        planned=len(plan), finished=len(done), records=records, results=results,
    )


def format_rank_table(table: StudyTable) -> str:
    """The mean-rank matrix as text (the CLI's output)."""
    lines = []
    for title, frame in (("merged zero-shot", table.mean_rank),
                         ("after finetuning (each cell at its best lr)", table.trained_mean_rank)):
        if frame is None or frame.empty:
            continue
        width = max(len(str(i)) for i in frame.index) + 2
        lines.append(f"mean rank, {title} accuracy (1 = best; {len(set(table.cells['target']))} targets)")
        lines.append(" " * width + "".join(f"{'k=' + str(k):>8}" for k in frame.columns))
        for label, row in frame.iterrows():
            lines.append(f"{label:<{width}}" + "".join(
                f"{'-' if pd.isna(v) else f'{v:.2f}':>8}" for v in row))
        lines.append("")
    status = "complete" if table.complete else f"{table.finished}/{table.planned} cells"
    lines.append(f"{status}; base accuracy: " + ", ".join(f"{t} {a:.2f}" for t, a in table.base.items()))
    return "\n".join(lines)
