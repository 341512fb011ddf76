"""Reading a study: the Fig. 3 mean-rank table and its text form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mashup_core.compare.parity import _mean_rank, training_to_parity
from mashup_core.study.spec import (
    SPEC_FILE,
    StudyError,
    StudySpec,
    cell_key,
    planned_cells,
    read_cells,
)
from mashup_core.workspace import read_json

# --- Reading a study ---------------------------------------------------------------------------


@dataclass
class StudyTable:
    """A study's results, shaped for the Fig. 3 heatmap: rows = merge setting, columns = k."""

    spec: StudySpec
    cells: pd.DataFrame  # one row per finished merge/train cell (long form)
    base: dict[str, float]  # the base model's accuracy per target
    scratch: dict[str, float]  # accuracy after training from scratch per target (train studies)
    mean_rank: pd.DataFrame  # merged zero-shot: label × k, mean rank across targets (1 = best)
    trained_mean_rank: pd.DataFrame | None  # the same after finetuning from each merge
    planned: int
    finished: int

    @property
    def complete(self) -> bool:
        return self.finished >= self.planned

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
        return out


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None and not pd.isna(v)]
    return sum(kept) / len(kept) if kept else None


def _label(spec: StudySpec, cell: Mapping) -> str:
    """The heatmap row: the merge method, plus scorer and weighting when the study varies them."""
    parts = [cell["method"]]
    if len(spec.scorers) > 1:
        parts.append(cell["scorer"])
    if len(spec.weightings) > 1:
        parts.append(cell["weighting"])
    return " · ".join(parts)


def _rank_matrix(cells: pd.DataFrame, kind: str, spec: StudySpec) -> pd.DataFrame:
    rows = cells[cells["kind"] == kind]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index="target", columns=["label", "k"], values="acc")
    frame = _mean_rank(wide).unstack("k")
    labels = list(dict.fromkeys(_label(spec, {"method": m, "scorer": s, "weighting": w})
                                for s in spec.scorers for w in spec.weightings for m in spec.methods))
    return frame.reindex(index=[lab for lab in labels if lab in frame.index],
                         columns=sorted(frame.columns))


def study_table(study_dir: Path) -> StudyTable:
    """Per-target accuracies of every finished cell and the mean-rank matrices."""
    study_dir = Path(study_dir)
    data = read_json(study_dir / SPEC_FILE)
    if data is None:
        raise StudyError(f"{study_dir} is not a study folder (no {SPEC_FILE}); run `mashup study`")
    spec = StudySpec.from_dict(data)
    wanted = {cell_key(c) for c in planned_cells(spec)}
    done = {key: c for key, c in read_cells(study_dir).items() if key in wanted}
    base = {c["target"]: c["acc"] for c in done.values() if c["kind"] == "base"}
    scratch = {c["target"]: c for c in done.values() if c["kind"] == "scratch"}
    rows = []
    for c in done.values():
        if c["kind"] not in ("merge", "train"):
            continue
        row = {key: c.get(key) for key in ("kind", "target", "scorer", "weighting", "method", "k",
                                           "acc", "acc_norm", "nll", "selected", "weights")}
        row["label"] = _label(spec, c)
        if c["kind"] == "train" and c["target"] in scratch:
            ref = [(s, a) for s, a, *_ in scratch[c["target"]]["curve"]]
            mine = [(s, a) for s, a, *_ in c["curve"]]
            row["parity"] = training_to_parity(ref, mine, "normal")
            row["parity_strict"] = training_to_parity(ref, mine, "strict")
        rows.append(row)
    columns = ["kind", "target", "scorer", "weighting", "method", "k", "label", "acc", "acc_norm",
               "nll", "selected", "weights"]
    cells = pd.DataFrame(rows, columns=columns + (["parity", "parity_strict"] if spec.train else []))
    return StudyTable(
        spec=spec, cells=cells, base=base,
        scratch={t: c["acc"] for t, c in scratch.items()},
        mean_rank=_rank_matrix(cells, "merge", spec),
        trained_mean_rank=_rank_matrix(cells, "train", spec) if spec.train else None,
        planned=len(wanted), finished=len(done),
    )


def format_rank_table(table: StudyTable) -> str:
    """The mean-rank matrix as text (the CLI's output)."""
    lines = []
    for title, frame in (("merged zero-shot", table.mean_rank),
                         ("after finetuning", table.trained_mean_rank)):
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
