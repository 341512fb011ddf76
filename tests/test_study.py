"""Training-to-parity, wall-clock ratio, mean ranks and the resumable leave-one-out study."""

from __future__ import annotations

import json

import pytest
from peft import PeftModel

from mashup_core.cli import main
from mashup_core.compare.parity import (
    ComparisonError,
    compare_runs,
    mean_ranks,
    training_to_parity,
    wallclock_ratio,
    wallclock_ratio_timed,
)
from mashup_core.data.examples import sample_examples
from mashup_core.defaults import DEMO_LEARNING_RATE
from mashup_core.demo.world import load_split
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.loglik import evaluate_mc
from mashup_core.study.grid import run_study
from mashup_core.study.report import study_table
from mashup_core.study.spec import CELLS_FILE, SUMMARY_FILE, StudyError, StudySpec, read_cells

SCRATCH = [(0, 0.25), (10, 0.40), (20, 0.60), (30, 0.70), (40, 0.80)]  # target 0.80, 40 steps


# --- training to parity ---------------------------------------------------------------------


def test_parity_interpolates_between_evaluations():
    mashup = [(0, 0.50), (10, 0.70), (20, 0.90), (30, 0.95), (40, 0.95)]
    # 0.80 is halfway from 0.70 (step 10) to 0.90 (step 20): step 15 of 40.
    assert training_to_parity(SCRATCH, mashup) == pytest.approx(15 / 40)
    assert training_to_parity(SCRATCH, mashup, "strict") == pytest.approx(15 / 40)


def test_parity_reached_exactly_at_an_evaluation_and_in_any_order():
    mashup = [(30, 0.9), (0, 0.3), (20, 0.80), (10, 0.5)]
    assert training_to_parity(list(reversed(SCRATCH)), mashup) == pytest.approx(20 / 40)


def test_parity_reached_by_the_merge_itself_is_zero():
    assert training_to_parity(SCRATCH, [(0, 0.85), (10, 0.7), (40, 0.9)]) == 0.0


def test_parity_never_reached():
    mashup = [(0, 0.5), (20, 0.79), (40, 0.78)]
    assert training_to_parity(SCRATCH, mashup, "normal") == 1.0
    assert training_to_parity(SCRATCH, mashup, "strict") is None


def test_parity_uses_the_first_crossing_not_the_best_point():
    mashup = [(0, 0.2), (10, 0.9), (20, 0.1), (30, 1.0)]
    assert training_to_parity(SCRATCH, mashup) == pytest.approx((0.6 / 0.7) * 10 / 40)


def test_parity_rejects_unusable_curves():
    with pytest.raises(ComparisonError, match="the scratch curve has no evaluations"):
        training_to_parity([], [(0, 1.0)])
    with pytest.raises(ComparisonError, match="the mashup curve has no evaluations"):
        training_to_parity(SCRATCH, [])
    with pytest.raises(ComparisonError, match="ends at step 0"):
        training_to_parity([(0, 0.5)], [(0, 1.0)])
    with pytest.raises(ComparisonError, match="parity mode 'loose'"):
        training_to_parity(SCRATCH, SCRATCH, "loose")


# --- wall-clock -----------------------------------------------------------------------------


def test_wallclock_ratio_counts_scoring_and_merging():
    # (scoring 6 + merging 4 + 100 s of training × 0.3) / 200 s from scratch
    assert wallclock_ratio(200.0, 100.0, 0.3, scoring_s=6.0, merging_s=4.0) == pytest.approx(0.2)
    assert wallclock_ratio(200.0, 100.0, 1.0) == pytest.approx(0.5)
    assert wallclock_ratio(200.0, 100.0, None, 6.0, 4.0) is None
    with pytest.raises(ComparisonError, match="must be positive"):
        wallclock_ratio(0.0, 1.0, 0.5)


def test_wallclock_ratio_timed_reads_the_clock_of_the_run():
    scratch = [(0.0, 0.2), (50.0, 0.5), (100.0, 0.8)]
    mashup = [(0.0, 0.6), (40.0, 0.7), (80.0, 0.9)]  # 0.8 at 60 s
    assert wallclock_ratio_timed(scratch, mashup, 5.0, 5.0) == pytest.approx((10 + 60) / 100)
    never = [(0.0, 0.1), (120.0, 0.5)]
    assert wallclock_ratio_timed(scratch, never, 10.0) == pytest.approx(130 / 100)
    assert wallclock_ratio_timed(scratch, never, 10.0, mode="strict") is None


def _metrics(curve, seconds_per_step):
    """metrics.jsonl-shaped records: a train record per step and an eval record per point."""
    rows = []
    for step, acc in curve:
        if step:
            rows.append({"phase": "train", "step": step, "seconds": step * seconds_per_step, "loss": 1.0})
        rows.append({"phase": "eval", "step": step, "seconds": step * seconds_per_step, "acc": acc})
    return rows


def test_compare_runs_on_run_records():
    mashup_curve = [(0, 0.5), (10, 0.70), (20, 0.90), (30, 0.95), (40, 0.95)]
    timings = {"scoring_s": 3.0, "weight_search_s": 0.0, "merging_s": 1.0, "training_s": 40.0}
    result = compare_runs(_metrics(SCRATCH, 1.0), _metrics(mashup_curve, 1.0), timings)
    assert result["parity"] == pytest.approx(15 / 40)
    assert result["parity_strict"] == pytest.approx(15 / 40)
    assert result["parity_step"] == pytest.approx(15)
    assert result["delta_final_acc"] == pytest.approx(0.15)
    assert result["mashup_init_acc"] == 0.5
    # scratch time from its metrics (40 s), mashup from timings: (3 + 1 + 40 × 0.375) / 40
    assert result["wallclock_ratio"] == pytest.approx((4 + 15) / 40)
    assert result["wallclock_ratio_timed"] == pytest.approx((4 + 15) / 40)
    assert result["seconds"]["scoring_s"] == 3.0


# --- mean rank ------------------------------------------------------------------------------


def test_mean_rank_with_ties():
    acc = {"rev": {"linear": 0.9, "ties": 0.9, "cat_svd": 0.1},  # a tie for first: 1.5 each
           "sort": {"linear": 0.2, "ties": 0.5, "cat_svd": 0.5},
           "min": {"linear": 0.7, "ties": 0.7, "cat_svd": 0.7}}  # all tied: 2 each
    assert mean_ranks(acc) == pytest.approx({"linear": (1.5 + 3 + 2) / 3, "ties": (1.5 + 1.5 + 2) / 3,
                                             "cat_svd": (3 + 1.5 + 2) / 3})


def test_mean_rank_of_a_cell_missing_on_a_target():
    ranks = mean_ranks({"a": {"x": 0.9, "y": 0.1}, "b": {"x": 0.1}})
    assert ranks == pytest.approx({"x": 1.0, "y": 2.0})


# --- the study ------------------------------------------------------------------------------

SMALL = {"tasks": ("min",), "methods": ("linear", "cat_svd"), "ks": (1,), "ns": (32,), "eval_limit": 16}
INLINE = {"progress": False, "engine": "inline"}  # the same tasks as Ray runs, in this process


def test_study_runs_and_resumes_without_recomputing(world_copy, capsys):
    spec = StudySpec(**SMALL)
    seen = []
    study_dir = run_study(world_copy, spec, "s1", **INLINE, on_cell=seen.append)
    assert [c["kind"] for c in seen] == ["base", "merge", "merge"]
    merged = {c["method"]: c for c in seen if c["kind"] == "merge"}
    # k=1: both methods pick the same donor (never min's own adapter); a linear merge of one
    # adapter at weight 1 IS that adapter, so its accuracy is the adapter's own, exactly.
    (donor,) = merged["linear"]["selected"]
    assert merged["cat_svd"]["selected"] == [donor] and not donor.startswith("min")
    alone = PeftModel.from_pretrained(load_base_model(world_copy.base_dir, device="cpu"),
                                      world_copy.library_dir / donor)
    validation = sample_examples(load_split(world_copy, "min", "validation"), 16, 0)  # as a run
    expected = evaluate_mc(alone, load_tokenizer(world_copy.base_dir), validation).acc
    assert merged["linear"]["acc"] == expected
    assert merged["cat_svd"]["acc"] == pytest.approx(expected, abs=1 / 16 + 1e-9)  # re-factored
    lines = (study_dir / CELLS_FILE).read_text()

    again = []
    run_study(world_copy, spec, "s1", **INLINE, on_cell=again.append)
    assert again == []
    assert (study_dir / CELLS_FILE).read_text() == lines
    assert json.loads((study_dir / SUMMARY_FILE).read_text())["cells_computed_this_call"] == 0

    # The CLI on the same study: it resumes (nothing recomputed) and prints the rank table.
    code = main(["study", "--workspace", str(world_copy.root), "--tasks", "min", "--methods",
                 "linear,cat_svd", "--ks", "1", "--n", "32", "--eval-limit", "16", "--id", "s1",
                 "--no-progress", "--engine", "inline"])
    assert code == 0
    assert "mean rank, merged zero-shot accuracy" in capsys.readouterr().out
    assert (study_dir / CELLS_FILE).read_text() == lines


def test_study_recomputes_only_what_is_missing(world_copy):
    spec = StudySpec(**SMALL)
    study_dir = run_study(world_copy, spec, "s2", **INLINE)
    cells = (study_dir / CELLS_FILE).read_text().splitlines()
    # A kill mid-write leaves the last line cut short: that cell alone runs again.
    (study_dir / CELLS_FILE).write_text("\n".join(cells[:-1]) + "\n" + cells[-1][:20])
    seen = []
    run_study(world_copy, spec, "s2", **INLINE, on_cell=seen.append)
    assert [(c["kind"], c.get("method")) for c in seen] == [("merge", "cat_svd")]
    # A larger grid on the same study adds only its new cells.
    seen.clear()
    run_study(world_copy, StudySpec(**{**SMALL, "ks": (1, 2)}), "s2", **INLINE, on_cell=seen.append)
    assert sorted((c["method"], c["k"]) for c in seen) == [("cat_svd", 2), ("linear", 2)]
    table = study_table(study_dir)
    assert table.complete and table.finished == 5
    assert list(table.mean_rank.columns) == [1, 2] and set(table.mean_rank.index) == {"linear", "cat_svd"}
    # One target: each cell's rank among the four by accuracy, ties sharing their mean rank.
    acc = {(m, k): table.accuracies(m, k)["min"] for m in ("linear", "cat_svd") for k in (1, 2)}
    for (m, k), a in acc.items():
        better, tied = sum(b > a for b in acc.values()), sum(b == a for b in acc.values())
        assert table.mean_rank.loc[m, k] == better + (1 + tied) / 2
    assert set(table.accuracies("linear", 2)) == {"min"}


def test_study_refuses_other_settings_under_the_same_id(world_copy):
    run_study(world_copy, StudySpec(**SMALL), "s3", **INLINE)
    with pytest.raises(StudyError, match=r"study s3 was run with other settings "
                       r"\(eval_limit differ: eval_limit=16\)"):
        run_study(world_copy, StudySpec(**{**SMALL, "eval_limit": 8}), "s3", **INLINE)


def test_study_rejects_bad_grids_before_any_work(world_copy):
    with pytest.raises(StudyError, match="methods: mean unknown; choose from linear"):
        run_study(world_copy, StudySpec(**{**SMALL, "methods": ("mean",)}), **INLINE)
    with pytest.raises(StudyError, match="k=9 but each target's library holds only 7 checkpoints"):
        run_study(world_copy, StudySpec(**{**SMALL, "ks": (9,)}), **INLINE)
    with pytest.raises(StudyError, match="tasks: no target 'nosuch': not a demo task"):
        run_study(world_copy, StudySpec(**{**SMALL, "tasks": ("nosuch",)}), **INLINE)
    with pytest.raises(StudyError, match="weightings: cmaes unknown"):
        run_study(world_copy, StudySpec(**{**SMALL, "weightings": ("cmaes",)}), **INLINE)
    assert not world_copy.studies_dir.exists() or not any(world_copy.studies_dir.iterdir())


def test_study_with_training_records_curves_and_parity(world_copy):
    spec = StudySpec(**{**SMALL, "methods": ("linear",), "train": True, "train_steps": 4,
                        "eval_every": 2, "train_batch_size": 8, "inits": ("merged-fold",)})
    study_dir = run_study(world_copy, spec, "s4", **INLINE)
    cells = {c["kind"]: c for c in read_cells(study_dir).values()}
    merge, trained, scratch = cells["merge"], cells["train"], cells["scratch"]
    assert [p[0] for p in trained["curve"]] == [0, 2, 4]
    assert trained["init_acc"] == pytest.approx(merge["acc"])  # step 0 is the merge, folded
    assert scratch["init_acc"] == cells["base"]["acc"]  # a fresh LoRA starts as the base, exactly
    assert trained["lr"] == scratch["lr"] == DEMO_LEARNING_RATE  # the workspace's, fixed at open
    assert (trained["seed"], scratch["seed"], trained["init"]) == (0, 0, "merged-fold")
    summary = study_table(study_dir).to_dict()
    parity = summary["parity"]["linear/k1"]["per_target"]["min"]
    ref = [(s, a) for s, a, _ in scratch["curve"]]
    assert parity == training_to_parity(ref, [(s, a) for s, a, _ in trained["curve"]])
    assert summary["trained_mean_rank"]["values"] == [[1.0]]


def test_parity_command_compares_two_real_runs(world_copy, capsys):
    from mashup_core.jobs.runner import execute_run
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.store import create_run, get_run
    from mashup_core.training.loop import TrainConfig

    spec = RunSpec(target="min", kind="mashup", library=[str(world_copy.library_dir / "sort")],
                   n=16, k=1, train=TrainConfig(steps=4, batch_size=8, lr=3e-3), eval_every=2,
                   checkpoint_every=4, eval_limit=16, device="cpu")
    ids = {}
    for kind, run_spec in (("scratch", spec.scratch_baseline()), ("mashup", spec)):
        ids[kind] = create_run(world_copy, run_spec)
        execute_run(world_copy, ids[kind], progress=False, echo=False)
    capsys.readouterr()
    assert main(["parity", "--workspace", str(world_copy.root), "--scratch", ids["scratch"],
                 "--mashup", ids["mashup"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    scratch, mashup = get_run(world_copy, ids["scratch"]), get_run(world_copy, ids["mashup"])
    expected = compare_runs(scratch.metrics, mashup.metrics, mashup.timings, scratch.timings)
    assert shown["parity"] == pytest.approx(expected["parity"])
    assert shown["mashup_init_acc"] == pytest.approx(mashup.evals[0]["acc"])
    seconds = shown["seconds"]
    assert seconds["scoring_s"] > 0  # the method's own cost is counted
    cost = seconds["scoring_s"] + seconds["weight_search_s"] + seconds["merging_s"]
    assert shown["wallclock_ratio"] == pytest.approx(
        (cost + seconds["mashup_training_s"] * shown["parity"]) / seconds["scratch_training_s"])
