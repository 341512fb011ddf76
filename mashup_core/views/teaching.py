"""Teaching mode: what to notice in THIS workspace's numbers, beside each chart.

Every function takes the data a page already shows and returns a few short sentences computed
from it (a best donor and its accuracy, where a run reaches parity, how many checkpoints beat
the base model); none is canned text, so a note says something true of the study on screen.
An empty list means there is nothing to point at yet. Nothing here imports streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import mean
from typing import Any

import pandas as pd


def _pct(value: float) -> str:
    return f"{value:.0%}"


# --- overview and library ------------------------------------------------------------------


def overview_notes(summary) -> list[str]:
    """What is in the study and where the story starts (from `workspace_summary`)."""
    notes = [f"This study has {summary.checkpoints} checkpoint(s) to draw on and "
             f"{summary.targets} target(s) to adapt to."]
    if summary.runs or summary.studies:
        notes.append(f"{summary.runs} run(s) and {summary.studies} study(ies) have results to "
                     "compare on Merge methods and Convergence.")
    else:
        notes.append("No run or study yet: the Merge methods and Convergence pages fill once one "
                     "is launched.")
    return notes


def transfer_notes(report: Mapping[str, Any], target: str | None = None,
                   margin: float = 0.2) -> list[str]:
    """The transfer matrix's lessons (demo world build report: cross_accuracy, base_accuracy):
    the chosen target's best and worst donor, and how many targets have a helpful donor."""
    from mashup_core.demo.story import transfer_story

    cross, base = report.get("cross_accuracy") or {}, report.get("base_accuracy") or {}
    if not cross or not base:
        return []
    story = transfer_story(base, cross)
    notes = []
    shown = target if target in story.best else next(iter(story.best), None)
    if shown is not None:
        best = story.best[shown]
        notes.append(f"{shown}'s best donor is {best.donor} (acc {best.donor_acc:.2f} vs base "
                     f"{best.base_acc:.2f}): an adapter trained on another task already "
                     f"{'helps' if best.gain > 0 else 'does not help'} here.")
        if shown in story.harmful:
            worst = story.harmful[shown]
            notes.append(f"Not every donor helps: {worst.donor} drops {shown} to "
                         f"{worst.donor_acc:.2f}, below the base model.")
    helped = sum(1 for t in story.best.values() if t.gain >= margin)
    notes.append(f"{helped} of {len(story.best)} tasks have a donor that beats the base model by "
                 f"{margin:.2f} or more; the others are where scoring must pick carefully.")
    return notes


def library_notes(frame: pd.DataFrame) -> list[str]:
    """From the Library page's table: how many are usable, snapshots, and the own-task spread."""
    if frame.empty:
        return []
    ok = frame["status"].astype(str).str.startswith("ok")
    notes = [f"{int(ok.sum())} of {len(frame)} checkpoints passed validation."]
    if "stage" in frame:
        snapshots = int((frame["stage"] == "snapshot").sum())
        if snapshots:
            notes.append(f"{snapshots} are intermediate snapshots: scoring may prefer a "
                         "half-trained checkpoint when it transfers better.")
    if "own-task accuracy" in frame and frame["own-task accuracy"].notna().any():
        own = frame["own-task accuracy"].dropna()
        notes.append(f"On their own tasks they reach {own.min():.2f} to {own.max():.2f} accuracy.")
    return notes


# --- target and relevance ------------------------------------------------------------------


def target_notes(examples: Sequence, n: int) -> list[str]:
    """How many examples, how many choices, and what guessing would score."""
    if not examples:
        return []
    choices = [len(ex.choices) for ex in examples]
    chance = mean(1 / c for c in choices if c)
    shape = (f"{choices[0]} choices each" if len(set(choices)) == 1
             else f"{min(choices)} to {max(choices)} choices")
    return [f"{len(examples)} train examples with {shape}: guessing scores about {chance:.2f}, "
            "so an accuracy near that means the model knows nothing of the task yet.",
            f"Scoring reads the first {min(n, len(examples))} of them "
            f"({min(n, len(examples)) / len(examples):.0%} of the split)."]


def relevance_notes(table, scorer: str, top: Sequence[str]) -> list[str]:
    """The top checkpoint against the base model, how many beat the base, and where the
    chosen top-k come from."""
    from mashup_core.selection.scoring import get_scorer

    if not table.rows:
        return []
    s = get_scorer(scorer)
    notes = []
    first = table.row(top[0]) if top else None
    if first is not None and table.base is not None:
        b, v = table.base.value(s.name), first.value(s.name)
        notes.append(f"{first.name} ranks first ({s.label} {v:.2f} vs base {b:.2f}).")
    if table.base is not None:
        b = table.base.value(s.name)
        beat = sum(1 for r in table.rows if s.better(r.value(s.name), b))
        notes.append(f"{beat} of {len(table.rows)} checkpoints beat the base model on {s.label}.")
    tasks = [table.row(name).source_task for name in top]
    if tasks and all(tasks):
        notes.append(f"The top {len(top)} come from {', '.join(dict.fromkeys(tasks))}.")
    return notes


def relevance_map_notes(frame: pd.DataFrame, higher_is_better: bool, relative: bool) -> list[str]:
    """Which checkpoint is best for the most targets, and targets with nothing above base."""
    if frame.empty or frame.notna().sum().sum() == 0:
        return []
    signed = frame if higher_is_better else -frame
    best = signed.idxmax(axis=0).dropna()
    counts = best.value_counts()
    top, times = counts.index[0], int(counts.iloc[0])
    notes = [f"{top} is the most relevant checkpoint for {times} of {len(best)} targets "
             f"({', '.join(t for t, c in best.items() if c == top)})."]
    if relative:
        none = [t for t in frame.columns if not (signed[t] > 0).any()]
        if none:
            notes.append(f"No checkpoint beats the base model on {', '.join(none)}: a mashup "
                         "there starts no better than the base.")
        spread = signed.max(axis=0).sort_values(ascending=False)
        notes.append(f"The library helps {spread.index[0]} most (best gain {spread.iloc[0]:+.2f}).")
    return notes


# --- merge methods ---------------------------------------------------------------------------


def merge_notes(table, trained: bool = False) -> list[str]:
    """The best (method, k) by mean rank, and why: its accuracy against the base (or scratch)
    and against the other values of k, averaged over targets."""
    ranks = table.trained_mean_rank if trained else table.mean_rank
    if ranks is None or ranks.empty or ranks.isna().all().all():
        return []
    stacked = ranks.stack().dropna()
    (label, k), rank = stacked.idxmin(), float(stacked.min())
    kind = "train" if trained else "merge"
    acc = table.accuracies(label, int(k), kind)
    reference = table.scratch if trained else table.base
    name = "scratch" if trained else "the base model"
    notes = [f"{label}, k={k} ranks best here (mean rank {rank:.2f} over {len(acc)} target(s))."]
    shared = [t for t in acc if t in reference]
    if shared:
        wins = sum(1 for t in shared if acc[t] > reference[t])
        notes.append(f"It averages {mean(acc[t] for t in shared):.2f} accuracy against "
                     f"{mean(reference[t] for t in shared):.2f} for {name}, and beats it on "
                     f"{wins} of {len(shared)} target(s).")
    cells = table.cells[(table.cells["kind"] == kind) & (table.cells["label"] == label)]
    by_k = cells.groupby("k")["acc"].mean()
    if len(by_k) > 1:
        others = ", ".join(f"k={int(kk)}: {v:.2f}" for kk, v in by_k.items() if kk != k)
        notes.append(f"k={k} ranks best because its merges score {by_k[k]:.2f} on average "
                     f"({others}): " + ("merging more checkpoints dilutes the best donor."
                                        if by_k.index.min() == k else
                                        "one donor alone is not enough here."))
    return notes


# --- runs and convergence --------------------------------------------------------------------


def curves_notes(curves: pd.DataFrame) -> list[str]:
    """The head start: where each kind of run starts and ends (from `curves_frame`)."""
    if curves.empty:
        return []
    notes = []
    ends = {}
    for kind, runs in curves.dropna(subset=["acc"]).groupby("kind"):
        first = runs.sort_values("step").groupby("run").first()["acc"].mean()
        last = runs.sort_values("step").groupby("run").last()["acc"].mean()
        ends[kind] = (first, last)
    if "mashup" in ends and "scratch" in ends:
        (m0, m1), (s0, s1) = ends["mashup"], ends["scratch"]
        notes.append(f"The mashup run starts at {m0:.2f} accuracy, the scratch run at {s0:.2f}: "
                     f"a head start of {m0 - s0:+.2f} from the merge alone.")
        notes.append(f"At the last evaluation: mashup {m1:.2f}, scratch {s1:.2f}.")
    return notes


def parity_notes(comparison: pd.DataFrame) -> list[str]:
    """From `compare_pairs(...).table`: where the mashup run reaches scratch's final accuracy,
    and what the whole method costs in time."""
    if comparison.empty:
        return []
    row = comparison.iloc[0]
    notes = []
    if row.get("parity step") is not None and not pd.isna(row.get("parity step")):
        notes.append(f"On {row['target']}, the mashup run reaches the scratch run's final "
                     f"accuracy {row['scratch final acc']:.2f} at step {int(row['parity step'])}: "
                     f"{row['parity %']:.0f}% of the scratch run's training.")
    else:
        notes.append(f"On {row['target']}, the mashup run never reaches the scratch run's final "
                     f"accuracy {row['scratch final acc']:.2f} (parity counts as 100%).")
    ratio = row.get("time ratio incl. overhead")
    if ratio is not None and not pd.isna(ratio):
        notes.append(f"Counting scoring and merging, it takes {ratio:.2f}× the scratch run's "
                     "training time: " + ("the method saves time." if ratio < 1 else
                                          "here the method does not save time."))
    if len(comparison) > 1:
        notes.append(f"Over {len(comparison)} pairs, parity averages "
                     f"{comparison['parity %'].mean():.0f}%.")
    return notes


# --- the study's report ----------------------------------------------------------------------


def report_notes(results: pd.DataFrame, merged: pd.DataFrame | None = None) -> list[str]:
    """From the Report page's numbers (`views.report.results_frame`, else `merge_frame` for a
    study without training): on how many targets the mashup side wins, and by how much."""
    from mashup_core.compare.protocol import MEAN

    if results is not None and not results.empty:
        rows = results[results["target"] != MEAN].dropna(subset=["scratch acc", "mashup acc"])
        if rows.empty:
            return []
        wins = int((rows["mashup acc"] > rows["scratch acc"]).sum())
        delta = 100.0 * float((rows["mashup acc"] - rows["scratch acc"]).mean())
        notes = [f"Mashup beats scratch on {wins} of {len(rows)} target(s); mean Δ "
                 f"{delta:+.1f} pp (each side at its own best lr)."]
        parity = rows["parity"].dropna()
        if not parity.empty:
            notes.append(f"It reaches scratch's final accuracy in {_pct(float(parity.mean()))} of "
                         "scratch's steps on average (100% = never sooner).")
        return notes
    if merged is None or merged.empty:
        return []
    rows = merged[merged["target"] != MEAN].dropna(subset=["base acc", "merged acc"])
    if rows.empty:
        return []
    wins = int((rows["merged acc"] > rows["base acc"]).sum())
    delta = 100.0 * float((rows["merged acc"] - rows["base acc"]).mean())
    return [f"The best merge beats the base model on {wins} of {len(rows)} target(s) before any "
            f"training; mean Δ {delta:+.1f} pp. Train from it to see how much sooner it gets there."]
