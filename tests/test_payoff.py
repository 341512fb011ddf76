"""The payoff predictor on constructed cells: it recovers a known law, its intervals cover at
their nominal rate, and a target's own cells never enter its prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mashup_core.compare import payoff
from mashup_core.compare.payoff import PredictionError, leave_one_target_out, predict


def cells(rng: np.random.Generator, targets: int = 8, per: int = 6, noise: float = 1.0,
          slope: float = 20.0) -> pd.DataFrame:
    """Δ = slope × relevance gain + noise; the other features carry nothing."""
    rows = []
    for t in range(targets):
        offset = rng.normal(0, noise / 2)  # a target's cells share something
        for _ in range(per):
            gain = rng.uniform(-0.2, 0.4)
            rows.append({"target": f"t{t}", "relevance_gain": gain,
                         "chosen_relevance": 0.5 + gain, "base_relevance": 0.5,
                         "similarity": rng.uniform(0, 1), "k": int(rng.integers(1, 4)),
                         "log2_n": 6.0, "log10_lr": float(rng.choice([-3, -2.5])),
                         "method": str(rng.choice(["linear", "ties"])),
                         "delta_pp": slope * gain + offset + rng.normal(0, noise),
                         "parity": float(np.clip(0.8 - gain, 0, 1))})
    return pd.DataFrame(rows)


def test_the_fit_recovers_the_law_and_names_the_feature_that_carries_it():
    rng = np.random.default_rng(0)
    data = cells(rng, targets=10, per=10, noise=0.3)
    query = pd.DataFrame([{"relevance_gain": 0.3, "chosen_relevance": 0.8, "base_relevance": 0.5,
                           "similarity": 0.5, "k": 2, "log2_n": 6.0, "log10_lr": -3.0,
                           "method": "linear"}])
    got = predict(data, query)
    assert got.value == pytest.approx(20.0 * 0.3, abs=0.8)
    assert got.low < got.value < got.high and got.cells == 100 and got.targets == 10
    assert got.strongest[0] in ("relevance_gain", "chosen_relevance") and got.strongest[1] > 0
    assert "base_relevance" not in got.features and "log2_n" not in got.features, \
        "a feature that never varies is left out"
    check = leave_one_target_out(data)
    assert check.beats_baseline and check.spearman > 0.8
    assert "beats the mean-gain baseline" in payoff.teaching_note(check)


def test_intervals_cover_at_their_nominal_rate():
    """Over many draws, a new target's cells fall inside the 80 % intervals about 80 % of the
    time (split-conformal by target)."""
    rates = []
    for seed in range(30):
        rng = np.random.default_rng(100 + seed)
        check = leave_one_target_out(cells(rng, targets=8, per=6, noise=2.0), alpha=0.2)
        rates.append(check.coverage)
    assert 0.7 <= float(np.mean(rates)) <= 0.92


def test_a_targets_own_cells_never_enter_its_prediction():
    rng = np.random.default_rng(1)
    data = cells(rng)
    first = leave_one_target_out(data).table
    changed = data.copy()
    changed.loc[changed["target"] == "t0", "delta_pp"] += 1000.0  # only t0's own outcomes move
    again = leave_one_target_out(changed).table
    mine, other = again["target"] == "t0", again["target"] != "t0"
    assert np.allclose(again.loc[mine, "predicted"], first.loc[mine, "predicted"]), \
        "t0's prediction did not see t0's outcomes"
    assert not np.allclose(again.loc[other, "predicted"], first.loc[other, "predicted"])


def test_too_few_cells_are_refused_with_the_count():
    rng = np.random.default_rng(2)
    with pytest.raises(PredictionError, match=r"5 cells on 2 targets; needs 8 on 3"):
        predict(cells(rng, targets=2, per=3).head(5), cells(rng).head(1))


def test_a_study_records_what_the_predictor_reads(world_copy):
    """A tiny trained study: each merge cell knows its zero-shot value on the train rows and
    how alike the merged updates are; the examples join train and scratch cells."""
    from mashup_core.study.grid import run_study
    from mashup_core.study.payoff import missing_features, workspace_examples
    from mashup_core.study.report import study_table
    from mashup_core.study.spec import StudySpec

    study = run_study(world_copy, StudySpec(tasks=("min", "sort", "rev"), methods=("linear",),
                                            ks=(1, 2), ns=(8,), lrs=(3e-3,), seeds=(0,),
                                            train=True, train_steps=4, eval_every=2,
                                            eval_limit=8), "loo-pay", progress=False,
                      engine="inline")
    merges = study_table(study).runs("merge")
    assert len(merges) == 6
    examples = workspace_examples(world_copy)
    assert len(examples) == 6 and set(examples["target"]) == {"min", "sort", "rev"}
    assert examples["merged_train"].between(0, 1).all()
    assert (examples.loc[examples["k"] == 1, "similarity"] == 1.0).all()
    assert examples.loc[examples["k"] == 2, "similarity"].between(-1, 1).all()
    assert not missing_features(examples)
    assert examples["parity"].between(0, 1).all()


def write_trained_study(ws, tasks, rng: np.random.Generator):
    """A finished trained study in the study's own file shapes, whose gains follow the
    relevance of the merged checkpoints (so the predictor has something to find)."""
    from mashup_core.study.spec import StudySpec, append_cell, open_study, planned_cells

    study_dir = open_study(ws, StudySpec(tasks=tuple(tasks), methods=("linear",), ks=(1, 2),
                                         lrs=(1e-3, 3e-3), seeds=(0,), train=True,
                                         train_steps=40), "loo-trained")
    spec = StudySpec.from_dict(__import__("json").loads((study_dir / "spec.json").read_text()))
    gains = {}
    for cell in planned_cells(spec):
        target, kind = cell["target"], cell["kind"]
        if kind == "base":
            append_cell(study_dir, {**cell, "acc": 0.3})
            continue
        if kind == "merge":
            gain = gains.setdefault((target, cell["k"]), float(rng.uniform(0, 0.5)))
            append_cell(study_dir, {**cell, "acc": 0.3 + gain, "train_value": 0.3 + gain,
                                    "selected": ["x"] * cell["k"], "weights": [1.0] * cell["k"],
                                    "scores": [0.3 + gain] * cell["k"], "base_score": 0.3,
                                    "similarity": 0.5})
            continue
        final = 0.7 if kind == "scratch" else 0.7 + 0.4 * gains[(target, cell["k"])] \
            + float(rng.normal(0, 0.01))
        start = 0.3 if kind == "scratch" else 0.3 + gains[(target, cell["k"])]
        record = {**cell, "acc": final, "curve": [[0, start, 0.0], [20, (start + final) / 2, 5.0],
                                                   [40, final, 10.0]], "train_s": 10.0}
        if kind == "train":
            record.update(scores=[0.3 + gains[(target, cell["k"])]] * cell["k"], base_score=0.3,
                          similarity=0.5, selected=["x"] * cell["k"], weights=[1.0] * cell["k"])
        append_cell(study_dir, record)
    return study_dir


def test_launch_predicts_for_a_target_with_enough_cells_and_refuses_otherwise(world_copy,
                                                                                monkeypatch):
    from streamlit.testing.v1 import AppTest

    from mashup_core.views import relevance_table

    write_trained_study(world_copy, ("min", "sort", "rev", "tail", "shift"), np.random.default_rng(3))
    monkeypatch.setenv("MASHUP_WORKSPACE", str(world_copy.root))
    relevance_table(world_copy, {"kind": "demo", "name_or_path": "dsort"}, 64)  # scored

    def launch(target: str) -> AppTest:
        at = AppTest.from_file("../app.py", default_timeout=120)
        at.query_params["target"] = target
        at.run()
        at.switch_page("pages/launch.py").run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    at = launch("dsort")
    text = "\n".join(str(i.value) for i in at.info)
    assert "predicted Δ accuracy" in text and "fit on 20 cells of 5 other targets" in text
    at = launch("count")  # not scored yet: the prediction would need its relevance
    assert "score the library on this target first" in "\n".join(str(c.value) for c in at.caption)


def test_the_report_draws_predicted_against_measured(world_copy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from mashup_core.compare.payoff import leave_one_target_out
    from mashup_core.study.payoff import workspace_examples

    write_trained_study(world_copy, ("min", "sort", "rev", "tail"), np.random.default_rng(4))
    monkeypatch.setenv("MASHUP_WORKSPACE", str(world_copy.root))
    at = AppTest.from_file("../app.py", default_timeout=120)
    at.query_params["study"] = "loo-trained"
    at.run()
    at.switch_page("pages/report.py").run()
    assert not at.exception, [e.message for e in at.exception]
    import plotly.io as pio

    (chart,) = [c for c in at.get("plotly_chart") if c.proto.id and "payoff" in str(c.proto.id)] or \
        [at.get("plotly_chart")[-1]]
    from test_app import values  # a figure's array, plain or plotly's base64 typed array

    figure = pio.from_json(chart.proto.spec)
    measured = sorted(x for trace in figure.data for x in values(trace.x))
    expected = leave_one_target_out(workspace_examples(world_copy))
    assert measured == pytest.approx(sorted(expected.table["measured"]))
    assert f"held {expected.coverage:.0%}" in "\n".join(str(c.value) for c in at.caption)
