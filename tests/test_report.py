"""The study's report: seeds, best lr, the results table, figures and the exported files.

Study folders are written by hand (spec.json + cells.jsonl) with numbers chosen so every
expected value is computed here from the definitions, not read off the code."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from mashup_core.compare.protocol import (
    MEAN,
    best_lrs,
    lr_sweep,
    mean_std,
    results_table,
    seed_pair,
    summarise,
)
from mashup_core.study.report import format_rank_table, study_table
from mashup_core.study.spec import CELLS_FILE, SPEC_FILE, StudySpec
from mashup_core.views import report as views_report
from mashup_core.views.export import markdown_table, write_report

LR1, LR2 = 1e-4, 3e-4
STD2 = 1 / math.sqrt(2)  # the sample std of two values 1 apart


def std2(a: float, b: float) -> float:
    return abs(a - b) * STD2


# --- the maths ----------------------------------------------------------------------------------


def test_mean_std_over_seeds():
    assert mean_std([0.6, 0.8]) == (pytest.approx(0.7), pytest.approx(std2(0.6, 0.8)), 2)
    assert mean_std([0.5]) == (0.5, None, 1)  # one seed: no std
    assert mean_std([None, float("nan"), 0.4]) == (0.4, None, 1)  # missing values are dropped
    assert mean_std([]) == (None, None, 0)


def _runs(rows):
    return pd.DataFrame(rows, columns=["target", "lr", "seed", "acc"])


def test_best_lr_on_the_mean_over_seeds():
    runs = _runs([("a", LR1, 0, 0.9), ("a", LR1, 1, 0.5),  # mean 0.70, its best seed 0.9
                  ("a", LR2, 0, 0.8), ("a", LR2, 1, 0.8)])  # mean 0.80: the best
    sweep = lr_sweep(runs, ["target"])
    assert list(sweep["lr"]) == [LR1, LR2]
    assert list(sweep["mean"]) == pytest.approx([0.7, 0.8])
    assert sweep["std"].iloc[0] == pytest.approx(std2(0.9, 0.5)) and sweep["std"].iloc[1] == 0
    best = best_lrs(runs, ["target"])
    assert best.to_dict("records") == [{"target": "a", "lr": LR2, "mean": pytest.approx(0.8),
                                        "std": 0.0, "seeds": 2}]


def test_best_lr_tie_goes_to_the_smaller_lr_even_across_float_rounding():
    assert (0.34 + 0.56) / 2 > 0.45  # the larger lr's mean is 0.45 plus a rounding error
    runs = _runs([("b", LR2, 0, 0.34), ("b", LR2, 1, 0.56), ("b", LR1, 0, 0.45), ("b", LR1, 1, 0.45)])
    assert best_lrs(runs, ["target"])["lr"].tolist() == [LR1]
    runs.loc[runs["lr"] == LR2, "acc"] = [0.35, 0.56]  # a real difference wins
    assert best_lrs(runs, ["target"])["lr"].tolist() == [LR2]


def test_seed_pair_parity_and_wallclock():
    scratch = {"acc": 0.8, "curve": [[0, 0.3, 0], [20, 0.5, 50], [40, 0.8, 100]], "train_s": 100.0}
    mashup = {"acc": 0.9, "curve": [[0, 0.5, 0], [20, 0.9, 40], [40, 0.9, 80]], "train_s": 80.0,
              "scoring_s": 6.0, "merging_s": 4.0}
    got = seed_pair(scratch, mashup)
    # 0.8 is 3/4 of the way from 0.5 (step 0) to 0.9 (step 20): step 15 of 40
    assert got["parity"] == pytest.approx(15 / 40) and got["parity_strict"] == pytest.approx(15 / 40)
    assert got["delta_pp"] == pytest.approx(10.0)
    # (scoring 6 + merging 4 + 80 s × 15/40) / 100 s
    assert got["wallclock"] == pytest.approx((10 + 80 * 15 / 40) / 100)
    never = {**mashup, "acc": 0.7, "curve": [[0, 0.3], [40, 0.7]]}
    got = seed_pair(scratch, never)
    assert got["parity"] == 1.0 and got["parity_strict"] is None
    assert got["wallclock"] == pytest.approx((10 + 80) / 100) and got["wallclock_strict"] is None
    no_curve = seed_pair({"acc": 0.8}, {"acc": 0.85})
    assert no_curve["delta_pp"] == pytest.approx(5.0) and no_curve["parity"] is None


def test_summarise_mean_row():
    rows = pd.DataFrame({"target": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1],
                         "acc": [0.8, 0.6, 0.4, None]})
    out = summarise(rows, ["target"], ["acc"]).set_index("target")
    assert out.at["a", "acc"] == pytest.approx(0.7) and out.at["a", "acc_std"] == pytest.approx(std2(0.8, 0.6))
    assert out.at["b", "acc"] == pytest.approx(0.4) and pd.isna(out.at["b", "acc_std"])
    # the mean row: the mean of the targets' means; the std of the per-seed means over targets
    assert out.at[MEAN, "acc"] == pytest.approx((0.7 + 0.4) / 2)
    assert out.at[MEAN, "acc_std"] == pytest.approx(std2((0.8 + 0.4) / 2, 0.6))
    assert out.at[MEAN, "seeds"] == 2


def test_results_table_with_a_seed_still_running_and_a_target_without_scratch():
    curve = [[0, 0.2], [10, 0.4], [20, 0.6]]
    scratch = pd.DataFrame([
        {"target": "a", "lr": LR1, "seed": 0, "acc": 0.6, "curve": curve, "train_s": 10.0},
        {"target": "a", "lr": LR1, "seed": 1, "acc": 0.4, "curve": curve[:2], "train_s": 10.0}])
    mashup = pd.DataFrame([
        {"target": "a", "method": "linear", "lr": LR1, "seed": 0, "acc": 0.8,
         "curve": [[0, 0.4], [10, 0.8]], "train_s": 10.0, "merging_s": 1.0},
        {"target": "c", "method": "linear", "lr": LR1, "seed": 0, "acc": 0.9,
         "curve": [[0, 0.9]], "train_s": 10.0}])
    table = results_table(scratch, mashup, ["method"]).set_index("target")
    assert list(table.index) == ["a", MEAN]  # no scratch cell for c yet: no row
    a = table.loc["a"]
    assert a["scratch_acc"] == pytest.approx(0.5) and a["mashup_acc"] == pytest.approx(0.8)
    assert a["delta_pp"] == pytest.approx(30.0)  # the two means shown
    assert pd.isna(a["delta_pp_std"])  # one seed-matched pair
    # seed 0 only: 0.6 is halfway from 0.4 to 0.8 (step 5 of 20); (1 s + 10 s × 1/4) / 10 s
    assert a["parity"] == pytest.approx(5 / 20) and a["wallclock"] == pytest.approx(0.35)
    assert a["seeds"] == 2 and pd.isna(a["k"])  # columns it was not grouped by stay blank


def plots(html: str) -> int:
    """Figures drawn in a page: calls of Plotly.newPlot on a figure's div id (the inlined
    plotly.js bundle itself names newPlot too, more or less often by version)."""
    return len(re.findall(r'Plotly\.newPlot\(\s*"[0-9a-f-]{36}"', html))


# --- hand-built study folders -------------------------------------------------------------------


def write_study(path, spec: dict, records: list[dict]):
    path.mkdir(parents=True, exist_ok=True)
    (path / SPEC_FILE).write_text(json.dumps(spec))
    (path / CELLS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GRID = {"scorer": "acc", "weighting": "equal", "k": 1, "n": 64, "init": "merged-continue"}


def scratch_cell(target, lr, seed, acc, curve=None, train_s=100.0):
    return {"kind": "scratch", "target": target, "lr": lr, "seed": seed, "acc": acc,
            "curve": curve or [[0, 0.3, 0.0], [40, acc, train_s]], "train_s": train_s}


def train_cell(target, method, lr, seed, acc, curve=None, **grid):
    return {"kind": "train", "target": target, **GRID, "method": method, **grid, "lr": lr,
            "seed": seed, "acc": acc, "curve": curve or [[0, 0.3, 0.0], [40, acc, 80.0]],
            "train_s": 80.0, "scoring_s": 6.0, "relevance_min_s": 1.0, "merging_s": 4.0,
            "selected": ["x"], "weights": [1.0]}


def merge_cell(target, method, acc, **grid):
    grid = {k: v for k, v in {**GRID, **grid}.items() if k != "init"}
    return {"kind": "merge", "target": target, **grid, "method": method, "acc": acc,
            "selected": ["x"], "weights": [1.0]}


@pytest.fixture
def protocol_study(tmp_path):
    """2 targets × 2 methods × 2 lrs × 2 seeds; the numbers of the expected table below."""
    spec = StudySpec(tasks=("a", "b"), methods=("linear", "ties"), ks=(1,), ns=(64,),
                     lrs=(LR1, LR2), seeds=(0, 1), train=True, train_steps=40)
    records = [
        {"kind": "base", "target": "a", "acc": 0.3}, {"kind": "base", "target": "b", "acc": 0.4},
        merge_cell("a", "linear", 0.50), merge_cell("a", "ties", 0.40),
        merge_cell("b", "linear", 0.35), merge_cell("b", "ties", 0.45),
        # scratch a: LR2 is best (mean 0.75 > 0.65)
        scratch_cell("a", LR1, 0, 0.6), scratch_cell("a", LR1, 1, 0.7),
        scratch_cell("a", LR2, 0, 0.8, [[0, 0.3, 0], [20, 0.5, 50], [40, 0.8, 100]]),
        scratch_cell("a", LR2, 1, 0.7, [[0, 0.3, 0], [20, 0.5, 50], [40, 0.7, 100]]),
        # scratch b: a tie (0.45 against 0.45 + rounding) goes to LR1
        scratch_cell("b", LR1, 0, 0.45), scratch_cell("b", LR1, 1, 0.45),
        scratch_cell("b", LR2, 0, 0.34), scratch_cell("b", LR2, 1, 0.56),
        # linear a: LR1 is best (0.85 > 0.75); parity 15/40 and 30/40
        train_cell("a", "linear", LR1, 0, 0.9, [[0, 0.5, 0], [20, 0.9, 40], [40, 0.9, 80]]),
        train_cell("a", "linear", LR1, 1, 0.8, [[0, 0.5, 0], [20, 0.6, 40], [40, 0.8, 80]]),
        train_cell("a", "linear", LR2, 0, 0.7), train_cell("a", "linear", LR2, 1, 0.8),
        # linear b: LR2 is best (0.57 > 0.50); seed 0 reaches 0.45 with the merge itself,
        # seed 1 never does
        train_cell("b", "linear", LR1, 0, 0.5), train_cell("b", "linear", LR1, 1, 0.5),
        train_cell("b", "linear", LR2, 0, 0.7, [[0, 0.5, 0], [20, 0.6, 40], [40, 0.7, 80]]),
        train_cell("b", "linear", LR2, 1, 0.44, [[0, 0.3, 0], [20, 0.4, 40], [40, 0.44, 80]]),
        # ties: best 0.60 on a (LR2), 0.55 on b (LR1): below linear on both targets at its
        # best lr, though at LR1 alone it would beat linear on b
        train_cell("a", "ties", LR1, 0, 0.5), train_cell("a", "ties", LR1, 1, 0.5),
        train_cell("a", "ties", LR2, 0, 0.6), train_cell("a", "ties", LR2, 1, 0.6),
        train_cell("b", "ties", LR1, 0, 0.55), train_cell("b", "ties", LR1, 1, 0.55),
        train_cell("b", "ties", LR2, 0, 0.3), train_cell("b", "ties", LR2, 1, 0.3),
    ]
    return write_study(tmp_path / "proto", spec.to_dict(), records)


def _row(results, method, target):
    rows = results[(results["method"] == method) & (results["target"] == target)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_results_table_by_hand(protocol_study):
    table = study_table(protocol_study)
    assert table.complete and table.finished == table.planned == 2 * (1 + 2 + 4 + 8)
    results = table.results
    a, b, mean = (_row(results, "linear", t) for t in ("a", "b", MEAN))
    assert (a["scratch_lr"], a["mashup_lr"], b["scratch_lr"], b["mashup_lr"]) == (LR2, LR1, LR1, LR2)
    assert a["scratch_acc"] == pytest.approx(0.75) and a["scratch_acc_std"] == pytest.approx(std2(0.8, 0.7))
    assert a["mashup_acc"] == pytest.approx(0.85) and a["delta_pp"] == pytest.approx(10.0)
    assert a["delta_pp_std"] == pytest.approx(0.0, abs=1e-9)  # +10 pp on both seeds
    assert a["parity"] == pytest.approx((15 / 40 + 30 / 40) / 2)
    assert a["parity_std"] == pytest.approx(std2(15 / 40, 30 / 40))
    assert a["parity_strict"] == pytest.approx(a["parity"])
    assert a["wallclock"] == pytest.approx(((10 + 80 * 15 / 40) + (10 + 80 * 30 / 40)) / 2 / 100)
    assert b["scratch_acc"] == pytest.approx(0.45) and b["mashup_acc"] == pytest.approx(0.57)
    assert b["delta_pp"] == pytest.approx(12.0)
    assert b["parity"] == pytest.approx(0.5)  # 0 and 1 (never reached)
    # The reference's strict table leaves out a target where any seed never reaches parity.
    assert pd.isna(b["parity_strict"]) and pd.isna(b["wallclock_strict"])
    assert b["wallclock"] == pytest.approx((0.1 + 0.9) / 2)
    assert mean["scratch_acc"] == pytest.approx(0.6) and mean["mashup_acc"] == pytest.approx(0.71)
    assert mean["scratch_acc_std"] == pytest.approx(std2((0.8 + 0.45) / 2, (0.7 + 0.45) / 2))
    assert mean["delta_pp"] == pytest.approx(11.0)
    assert mean["parity"] == pytest.approx((0.5625 + 0.5) / 2)
    assert mean["parity_strict"] == pytest.approx(0.5625), "the mean of the targets left in"
    assert mean["wallclock"] == pytest.approx((0.55 + 0.5) / 2)
    assert mean["wallclock_strict"] == pytest.approx(0.55)
    # The reference counts a target's scoring as its cheapest relevance job: 1 s here, not 6.
    assert a["wallclock_reference"] == pytest.approx(
        ((1 + 4 + 80 * 15 / 40) + (1 + 4 + 80 * 30 / 40)) / 2 / 100)
    assert b["wallclock_reference"] == pytest.approx(((1 + 4 + 0) + (1 + 4 + 80)) / 2 / 100)
    assert mean["seeds"] == 2 and pd.isna(mean["scratch_lr"])
    assert table.scratch == {"a": pytest.approx(0.75), "b": pytest.approx(0.45)}


def test_mean_rank_after_training_is_at_the_best_lr(protocol_study):
    table = study_table(protocol_study)
    # at their best lrs linear beats ties on both targets (at LR1 alone ties would win b)
    assert table.trained_mean_rank.loc["linear", 1] == 1.0
    assert table.trained_mean_rank.loc["ties", 1] == 2.0
    assert table.mean_rank.loc["linear", 1] == 1.5  # merged: linear wins a, ties wins b
    assert table.best_setting("train")["method"] == "linear"
    assert table.accuracies("ties", 1, "train") == {"a": pytest.approx(0.6), "b": pytest.approx(0.55)}
    summary = table.to_dict()
    assert summary["parity"]["linear/k1"]["per_target"]["a"] == pytest.approx(0.5625)
    assert json.dumps(summary)  # the summary file stays plain JSON
    assert "after finetuning (each cell at its best lr)" in format_rank_table(table)


def test_report_figures_from_the_study(protocol_study):
    table = study_table(protocol_study)
    figures = {f.name: f for f in views_report.report_figures(table)}
    assert figures["fig2_accuracy_vs_n"].figure is None
    assert "several n" in figures["fig2_accuracy_vs_n"].reason
    assert figures["fig3_mean_rank_merged"].figure is not None
    lr = figures["fig4_accuracy_vs_lr"].figure
    scratch, mashup = lr.data
    assert list(scratch.x) == [LR1, LR2] and list(mashup.x) == [LR1, LR2]
    # scratch mean over targets: (0.65 + 0.45)/2 at LR1, (0.75 + 0.45)/2 at LR2
    assert list(scratch.y) == pytest.approx([0.55, 0.60])
    assert list(mashup.y) == pytest.approx([(0.85 + 0.5) / 2, (0.75 + 0.57) / 2])
    per_target = figures["fig5_accuracy_vs_lr_per_target"].figure
    assert len(per_target.data) == 4  # 2 targets × (scratch, mashup)
    assert [a.text for a in per_target.layout.annotations] == ["a", "b"]
    frame = views_report.results_frame(table)
    assert list(frame["target"]) == ["a", "b", MEAN]
    assert frame["Δ (pp)"].tolist() == pytest.approx([10.0, 12.0, 11.0])


def test_write_report_files(protocol_study, tmp_path):
    out = write_report(protocol_study, tmp_path / "out")
    assert {"results.csv", "results.md", "report.html", "fig3_mean_rank_trained.html",
            "fig4_accuracy_vs_lr.html", "fig5_accuracy_vs_lr_per_target.html"} <= set(out)
    assert "fig2_accuracy_vs_n.html" not in out and "fig2_accuracy_vs_n not drawn" in out["note"]
    # CSV round trip: the whole table (both settings), numbers as they were
    table = study_table(protocol_study).results
    back = pd.read_csv(out["results.csv"])
    assert list(back.columns) == list(table.columns) and len(back) == len(table) == 6
    numeric = [c for c in table.columns if c not in ("scorer", "weighting", "method", "init", "target")]
    pd.testing.assert_frame_equal(back[numeric].astype(float), table[numeric].astype(float))
    # Markdown: the best setting per target and mean, mean ± std with two seeds
    md = out["results.md"].read_text()
    assert "## Results: linear · k=1" in md
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 0.0003 | 0.0001 | 0.750 ± 0.071 |" in lines["a"] and "0.850 ± 0.071" in lines["a"]
    assert "+10.0 ± 0.0" in lines["a"] and "56% ± 27%" in lines["a"] and "0.55× ± 0.21×" in lines["a"]
    assert "+11.0" in lines[MEAN] and "0.600 ± 0.035" in lines[MEAN]
    assert "## Every setting (mean over targets)" in md
    assert "| ties · k=1 | 2.00 | 0.600 | 0.575 | -2.5 |" in md
    assert "## Mean rank, after training (each cell at its best lr)" in md
    # HTML: one standalone page, plotly.js inlined once, nothing fetched from the network
    html = out["report.html"].read_text()
    assert len(re.findall(r"\* plotly\.js v\d", html)) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", html)
    assert plots(html) == 4 and "Not drawn: needs a study with several n" in html
    assert "<td>a</td>" in html
    # each figure's page loads the one plotly.min.js beside it (offline too)
    figure = out["fig4_accuracy_vs_lr.html"].read_text()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in figure
    assert "* plotly.js v" in out["plotly.min.js"].read_text()[:200]
    standalone = views_report.figure_html(views_report.rank_figure(study_table(protocol_study)).figure)
    assert "* plotly.js v" in standalone and 'src="plotly.min.js"' not in standalone
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", standalone)


def test_images_only_with_kaleido(protocol_study, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kaleido" else real(name, *a))
    out = write_report(protocol_study, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.png")) and "kaleido is not installed" in out["note"]


def test_study_with_several_n(tmp_path):
    spec = StudySpec(tasks=("a", "b"), methods=("linear",), ks=(1,), ns=(16, 64), lrs=(LR1, LR2),
                     seeds=(0,), train=True)
    records = [scratch_cell(t, lr, 0, 0.5) for t in ("a", "b") for lr in (LR1, LR2)]
    accs = {("a", 16): (0.6, 0.7), ("a", 64): (0.8, 0.6), ("b", 16): (0.4, 0.3), ("b", 64): (0.5, 0.55)}
    for (target, n), (at1, at2) in accs.items():
        records += [merge_cell(target, "linear", 0.4, n=n),
                    train_cell(target, "linear", LR1, 0, at1, n=n),
                    train_cell(target, "linear", LR2, 0, at2, n=n)]
    table = study_table(write_study(tmp_path / "ns", spec.to_dict(), records))
    assert table.trained_mean_rank.index.tolist() == ["linear · n=16", "linear · n=64"]
    fig = views_report.accuracy_vs_n_figure(table).figure
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name["a"].x) == [16, 64]
    assert list(by_name["a"].y) == pytest.approx([0.7, 0.8])  # each n at its best lr
    assert list(by_name["mean over targets"].y) == pytest.approx([(0.7 + 0.4) / 2, (0.8 + 0.55) / 2])
    assert views_report.accuracy_vs_lr_figure(table).figure is not None


def test_a_study_with_a_recycle_init_reports_both(tmp_path):
    """Recycle cells run at k=0 and the top-k merges at k=1: the mean-rank matrix has holes
    (NaN) where a setting never ran, and the best setting is found among the cells that did."""
    spec = StudySpec(tasks=("a", "b"), methods=("linear",), ks=(1,), lrs=(LR1,), seeds=(0,),
                     inits=("merged-continue", "recycle"), train=True)
    recycle = {"scorer": "recycle", "weighting": "recycle", "k": 0, "init": "recycle"}
    records = [scratch_cell(t, LR1, 0, 0.5) for t in ("a", "b")]
    records += [train_cell("a", "linear", LR1, 0, 0.9), train_cell("b", "linear", LR1, 0, 0.6),
                train_cell("a", "recycle", LR1, 0, 0.7, **recycle),
                train_cell("b", "recycle", LR1, 0, 0.8, **recycle)]
    table = study_table(write_study(tmp_path / "rec", spec.to_dict(), records))
    assert table.trained_mean_rank.isna().any().any(), "the holes this test is about"
    assert table.best_setting("train")["label"] == "linear · merged-continue"  # rank 1.5 each: grid order
    out = write_report(tmp_path / "rec", tmp_path / "out")
    text = out["results.md"].read_text()
    assert "| recycle |" in text and "linear · merged-continue" in text


def test_merge_only_study_reports_the_best_merge(tmp_path):
    spec = StudySpec(tasks=("a", "b"), methods=("linear", "ties"), ks=(1, 2), lrs=(LR1,))
    records = [{"kind": "base", "target": "a", "acc": 0.3}, {"kind": "base", "target": "b", "acc": 0.5}]
    for target, accs in (("a", (0.4, 0.6, 0.35, 0.5)), ("b", (0.5, 0.7, 0.45, 0.6))):
        records += [merge_cell(target, m, acc, k=k)
                    for (m, k), acc in zip([("linear", 1), ("linear", 2), ("ties", 1), ("ties", 2)],
                                           accs, strict=True)]
    study = write_study(tmp_path / "merge", spec.to_dict(), records)
    table = study_table(study)
    assert table.results.empty and table.best_setting("merge")["k"] == 2
    frame = views_report.merge_frame(table)
    assert frame["merged acc"].tolist() == pytest.approx([0.6, 0.7, 0.65])
    assert frame["Δ (pp)"].tolist() == pytest.approx([30.0, 20.0, 25.0])
    out = write_report(study)
    assert out["results.md"].parent == study / "report"
    md = out["results.md"].read_text()
    assert "Merged zero-shot: linear · k=2" in md and "+25.0" in md
    assert "fig4_accuracy_vs_lr not drawn: needs a study that trains" in out["note"]
    assert "fig3_mean_rank_merged.html" in out


def test_old_format_study_still_reports(tmp_path):
    """A study written before lrs/seeds/inits/ns: one n, train_lr, seed; records without them."""
    spec = {"tasks": ["a"], "methods": ["linear"], "ks": [1], "scorers": ["acc"],
            "weightings": ["equal"], "n": 64, "seed": 0, "eval_split": "validation",
            "eval_limit": 0, "density": 0.5, "train": True, "train_steps": 40,
            "train_batch_size": 8, "train_lr": 2e-4, "eval_every": 20}
    old = {"scorer": "acc", "weighting": "equal", "method": "linear", "k": 1}
    records = [
        {"kind": "base", "target": "a", "acc": 0.3},
        {"kind": "merge", "target": "a", **old, "acc": 0.5, "selected": ["x"], "weights": [1.0]},
        {"kind": "scratch", "target": "a", "acc": 0.7, "init_acc": 0.3, "train_s": 100.0,
         "curve": [[0, 0.3, 0], [20, 0.5, 50], [40, 0.7, 100]]},
        {"kind": "train", "target": "a", **old, "acc": 0.8, "init_acc": 0.5, "train_s": 50.0,
         "scoring_s": 5.0, "merging_s": 5.0, "selected": ["x"], "weights": [1.0],
         "curve": [[0, 0.5, 0], [20, 0.7, 25], [40, 0.8, 50]]},
    ]
    study = write_study(tmp_path / "old", spec, records)
    table = study_table(study)
    assert table.complete and table.finished == 4
    row = _row(table.results, "linear", "a")
    assert (row["scratch_lr"], row["mashup_lr"], row["init"], row["n"]) == (2e-4, 2e-4, "merged-fold", 64)
    assert row["parity"] == pytest.approx(20 / 40) and pd.isna(row["parity_std"])
    assert row["wallclock"] == pytest.approx((10 + 50 * 0.5) / 100)
    md = write_report(study)["results.md"].read_text()
    line = next(x for x in md.splitlines() if x.startswith("| a "))
    assert "0.700" in line and "±" not in line  # one seed: no std


def test_markdown_table_escapes_pipes():
    text = markdown_table(pd.DataFrame({"x": ["a|b"], "y": [None]}))
    assert text.splitlines() == ["| x | y |", "|---|---|", "| a\\|b | – |"]


# --- a real tiny study --------------------------------------------------------------------------


def test_report_of_a_real_tiny_study(world_copy, capsys):
    """Trained for real (tiny world, 2 lrs × 1 seed, 4 steps), reported through the CLI."""
    from mashup_core.cli import main
    from mashup_core.compare.parity import training_to_parity
    from mashup_core.study.grid import run_study
    from mashup_core.study.spec import read_cells

    spec = StudySpec(tasks=("min",), methods=("linear",), ks=(1,), ns=(32,), eval_limit=16,
                     lrs=(1e-4, 1e-3), train=True, train_steps=4, eval_every=2,
                     train_batch_size=8)
    study = run_study(world_copy, spec, "tiny-report", progress=False, engine="inline")
    cells = list(read_cells(study).values())
    assert main(["study", "report", "tiny-report", "--workspace", str(world_copy.root)]) == 0
    assert "results.md" in capsys.readouterr().out
    report = study / "report"
    row = pd.read_csv(report / "results.csv").set_index("target").loc["min"]
    by_kind = {kind: [c for c in cells if c["kind"] == kind] for kind in ("scratch", "train")}
    for side, kind in (("scratch", "scratch"), ("mashup", "train")):
        runs = sorted(by_kind[kind], key=lambda c: (-c["acc"], c["lr"]))  # best, then smaller lr
        assert row[f"{side}_lr"] == runs[0]["lr"] and row[f"{side}_acc"] == pytest.approx(runs[0]["acc"])
    scratch = next(c for c in by_kind["scratch"] if c["lr"] == row["scratch_lr"])
    mashup = next(c for c in by_kind["train"] if c["lr"] == row["mashup_lr"])
    expected = training_to_parity([p[:2] for p in scratch["curve"]], [p[:2] for p in mashup["curve"]])
    assert row["parity"] == pytest.approx(expected)
    assert row["wallclock"] > 0
    html = (report / "report.html").read_text()
    assert plots(html) == 4  # Fig. 3 ×2, Fig. 4, Fig. 5 (one n: no Fig. 2)
