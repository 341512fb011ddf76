"""Relevance scoring on the tiny demo world: real tiny Llama, real PEFT adapters."""

from __future__ import annotations

import itertools
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from world_checks import check_measured_story

from mashup_core.cli import main
from mashup_core.data.examples import sample_examples, write_jsonl
from mashup_core.demo.world import load_split
from mashup_core.models.library import demo_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.loglik import evaluate_mc
from mashup_core.selection.scoring import (
    BASE_ROW,
    SCORERS,
    ScoreRow,
    ScoreTable,
    ScoringError,
    explain_choice,
    kendall_tau,
    score_library,
    sweep_from_table,
    sweep_n,
)
from mashup_core.selection.store import score_library_cached

N = 32


@pytest.fixture(scope="module")
def base(tiny_world):
    return load_base_model(tiny_world.base_dir, device="cpu"), load_tokenizer(tiny_world.base_dir)


@pytest.fixture(scope="module")
def checkpoints(tiny_world):
    return demo_library(tiny_world).checkpoints


@pytest.fixture(scope="module")
def min_examples(tiny_world):
    return sample_examples(load_split(tiny_world, "min", "train"), N)


@pytest.fixture(scope="module")
def min_table(base, checkpoints, min_examples):
    model, tok = base
    return score_library(model, tok, checkpoints, min_examples, target="min", progress=False)


def _lora_layers(model) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in model.modules())


# --- the ranking itself ----------------------------------------------------------------------


def test_scoring_reproduces_the_builds_transfer_matrix(tiny_world):
    check_measured_story(tiny_world)  # seeds 1 and 2: test_world.py (slow)


def test_every_checkpoint_and_the_base_are_scored(min_table, checkpoints):
    assert [r.name for r in min_table.rows] == [c.name for c in checkpoints]
    assert min_table.base.name == BASE_ROW and min_table.base.n == N
    assert not min_table.skipped
    for row in min_table.rows:
        assert 0 <= row.acc <= 1 and row.nll > 0 and row.n == N and row.seconds > 0
        per = min_table.per_example[row.name]
        assert math.isclose(sum(per["acc"]) / N, row.acc)
        assert math.isclose(sum(per["nll"]) / N, row.nll, rel_tol=1e-9)


def test_scores_match_a_separately_loaded_adapter(tiny_world, min_table, min_examples):
    from peft import PeftModel

    fresh = load_base_model(tiny_world.base_dir, device="cpu")
    tok = load_tokenizer(tiny_world.base_dir)
    peft_model = PeftModel.from_pretrained(fresh, str(tiny_world.library_dir / "sort"))
    alone = evaluate_mc(peft_model, tok, min_examples)
    row = min_table.row("sort")
    assert alone.acc == row.acc
    assert alone.nll == pytest.approx(row.nll, abs=1e-5)


def test_base_model_is_handed_back_bare(base, checkpoints, min_examples):
    model, tok = base
    ids = torch.tensor([[1, 10, 11, 12]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    score_library(model, tok, checkpoints[:2], min_examples[:4], progress=False)
    assert _lora_layers(model) == 0 and not hasattr(model, "peft_config")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_broken_adapter_is_skipped_and_the_rest_scored(tmp_path, tiny_world, base, min_examples):
    model, tok = base
    broken = tmp_path / "broken"
    broken.mkdir()
    good = tiny_world.library_dir / "sort"
    (broken / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(
        (good / "adapter_model.safetensors").read_bytes()[:500])
    ckpts = [SimpleNamespace(name="broken", path=broken, source_task="sort"),
             SimpleNamespace(name="sort", path=good, source_task="sort")]
    table = score_library(model, tok, ckpts, min_examples[:8], progress=False)
    assert [r.name for r in table.rows] == ["sort"]
    assert "cannot load the adapter" in table.skipped["broken"]
    assert _lora_layers(model) == 0  # the failed first load was undone


def test_full_checkpoints_are_skipped_with_a_reason(base, min_examples, tiny_world):
    model, tok = base
    full = SimpleNamespace(name="full-copy", path=tiny_world.base_dir, kind="full")
    table = score_library(model, tok, [full], min_examples[:4], progress=False)
    assert table.rows == [] and "include_full=True" in table.skipped["full-copy"]
    table = score_library(model, tok, [full], min_examples[:4], progress=False, include_full=True)
    assert table.row("full-copy").nll == pytest.approx(table.base.nll, abs=1e-6)


# --- selection -------------------------------------------------------------------------------


def test_top_k_larger_than_the_library_is_a_clear_error(min_table):
    eligible = len(min_table.rank("nll", exclude_task="min"))
    with pytest.raises(ScoringError, match=rf"top {eligible + 1} .* only {eligible} of "
                                           r".*trained on 'min' are excluded"):
        min_table.select_top_k("nll", eligible + 1, exclude_task="min")
    with pytest.raises(ScoringError, match="k must be at least 1"):
        min_table.select_top_k("acc", 0)
    with pytest.raises(ScoringError, match="unknown scorer 'loss'; choose from nll, acc"):
        min_table.rank("loss")


def test_exclusions_and_direction(min_table):
    by_nll = min_table.rank("nll", exclude_task="min", exclude_names=["sort"])
    assert "sort" not in by_nll and not any(n.startswith("min") for n in by_nll)
    nlls = [min_table.row(n).nll for n in by_nll]
    assert nlls == sorted(nlls)  # lower is better
    accs = [min_table.row(n).acc for n in min_table.rank("acc")]
    assert accs == sorted(accs, reverse=True)  # higher is better
    assert {s.name for s in SCORERS.values()} >= {"nll", "acc"}


# --- smaller n from one pass, the sweep --------------------------------------------------------


def test_head_equals_scoring_on_the_prefix(base, checkpoints, min_table, min_examples):
    model, tok = base
    direct = score_library(model, tok, checkpoints[:3], min_examples[:8], progress=False)
    head = min_table.head(8)
    for row in [direct.base, *direct.rows]:
        ours = head.row(row.name)
        assert ours.n == 8 and ours.acc == row.acc
        assert ours.nll == pytest.approx(row.nll, abs=1e-5)


def tau_b_by_pairs(x, y) -> float | None:
    """Kendall's tau-b counted pair by pair: (C - D) / sqrt((P - Tx)(P - Ty)), P pairs, Tx and
    Ty the pairs tied in x and in y."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    sign = [(x[i] > x[j]) - (x[i] < x[j]) for i, j in pairs], [(y[i] > y[j]) - (y[i] < y[j]) for i, j in pairs]
    untied_x, untied_y = sum(s != 0 for s in sign[0]), sum(s != 0 for s in sign[1])
    if not untied_x or not untied_y:
        return None
    return sum(a * b for a, b in zip(*sign, strict=True)) / math.sqrt(untied_x * untied_y)


@pytest.mark.parametrize(("x", "y", "tau"), [
    ([1, 2, 3, 4], [1, 2, 3, 4], 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 3, 4], [1, 2, 4, 3], (5 - 1) / 6),  # one adjacent swap: 1 of 6 pairs discordant
    ([1, 2, 3, 4, 5], [3, 2, 1, 4, 5], (7 - 3) / 10),  # 1 and 3 swapped: pairs 12, 13, 23 flip
    ([1, 2, 2, 3], [1, 2, 3, 4], 5 / math.sqrt(5 * 6)),  # C=5, D=0; one pair tied in x
    ([1, 2, 2, 3], [1, 1, 2, 3], 4 / math.sqrt(5 * 5)),  # C=4, D=0; one tie on each side
    ([1, 1, 2, 2], [1, 2, 1, 2], 0.0),  # C=1, D=1
])
def test_kendall_tau_known_values(x, y, tau):
    assert kendall_tau(x, y) == pytest.approx(tau, abs=1e-12)
    assert kendall_tau(y, x) == pytest.approx(tau, abs=1e-12)
    assert tau_b_by_pairs(x, y) == pytest.approx(tau, abs=1e-12)


def test_kendall_tau_of_a_constant_side_is_undefined():
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None
    assert kendall_tau([0.3, 0.1, 0.2], [2.0, 2.0, 2.0]) is None


def test_sweep_from_one_scored_sample(min_table):
    sweep = sweep_from_table(min_table, [4, 8, N, 4 * N], "nll", reshuffles=4,
                             exclude_task="min")
    assert sweep.ns == [4, 8, N] and "only 32 examples" in sweep.notes[0]
    assert sweep.tau[N] == pytest.approx(1.0) and sweep.top1_agreement[N] == 1.0
    assert sweep.rankings[N] == min_table.rank("nll", exclude_task="min")
    full_rank = min_table.rank("nll", exclude_task="min")
    at_all = [min_table.row(name).nll for name in full_rank]
    for n in sweep.ns:  # tau-b of the nll on the first n examples against all N, pair by pair
        at_n = [min_table.head(n).row(name).nll for name in full_rank]
        assert sweep.tau[n] == pytest.approx(tau_b_by_pairs(at_n, at_all))
    assert json.loads(json.dumps(sweep.to_dict()))["tau"][str(N)] == pytest.approx(1.0)


def test_sweep_n_scores_once_on_the_largest_n(base, checkpoints, tiny_world):
    model, tok = base
    examples = load_split(tiny_world, "min", "train")
    sweep = sweep_n(model, tok, checkpoints[:3], examples, ns=(4, 8), scorer="acc", seed=0,
                    progress=False, reshuffles=2)
    assert sweep.ns == [4, 8] and sweep.scorer == "acc" and sweep.top1_agreement[8] == 1.0
    assert sorted(sweep.rankings[8]) == sorted(c.name for c in checkpoints[:3])


# --- serialisation, cache, explanation -------------------------------------------------------


def test_round_trip_and_frame(min_table):
    again = ScoreTable.from_dict(json.loads(json.dumps(min_table.to_dict())))
    assert again.rows == min_table.rows and again.base == min_table.base
    assert again.rank("acc") == min_table.rank("acc")
    frame = min_table.to_frame()
    assert len(frame) == len(min_table.rows) + 1 and frame["is_base"].iloc[-1]
    assert frame["name"].iloc[0] == min_table.rank("nll")[0]


def test_cache_hits_survives_corruption_and_sees_changes(world_copy):
    ws = world_copy
    ckpts = [c for c in demo_library(ws).checkpoints if c.name in ("sort", "min")]
    examples = load_split(ws, "min", "train")

    def run():
        return score_library_cached(ws, ckpts, examples, n=8, seed=1, progress=False)

    first = run()
    files = list((ws.cache_dir / "scores").rglob("*.json"))
    assert not first.from_cache and len(files) == 1
    second = run()
    assert second.from_cache and second.rows == first.rows
    files[0].write_text("{ not json")
    third = run()
    assert not third.from_cache
    assert [(r.name, r.acc, r.nll) for r in third.rows] == [(r.name, r.acc, r.nll) for r in first.rows]
    assert json.loads(files[0].read_text())["kind"] == "mashup-scores"  # rewritten
    weights = ws.library_dir / "sort" / "adapter_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    fourth = run()
    assert not fourth.from_cache  # a rewritten adapter is scored again, and only it
    assert set(fourth.choice_scores) == {BASE_ROW, "sort"}
    stored = json.loads(files[0].read_text())["entries"]
    assert len(stored) == 4, "one sample's file: the base, min, and sort before and after"


def _table(rows, base):
    return ScoreTable(rows=[ScoreRow(*r, n=64, seconds=0.1) for r in rows],
                      base=ScoreRow(BASE_ROW, None, *base, n=64, seconds=0.1), target="dsort")


def test_explanation_names_the_choice_and_flags_the_traps(min_table):
    text = explain_choice(min_table, "nll", 1, exclude_task="min")
    top = min_table.row(min_table.select_top_k("nll", 1, exclude_task="min")[0])
    assert text.splitlines()[1].startswith(f"{top.name} (trained on {top.source_task}) ranks first")
    assert f"{top.acc:.0%} correctly vs {min_table.base.acc:.0%} for the base model" in text

    # loss prefers a confident wrong-format donor; accuracy prefers another (the dsort lesson)
    trap = _table([("sort", "sort", 0.10, 0.10, 1.2), ("dmax", "dmax", 0.40, 0.40, 1.9)],
                  base=(0.30, 0.30, 1.5))
    text = explain_choice(trap, "nll", 1)
    assert "by accuracy dmax would rank first instead" in text
    assert "sort (10%) answers fewer examples correctly than the base model (30%)" in text

    useless = _table([("rev", "rev", 0.2, 0.2, 2.5)], base=(0.3, 0.3, 1.5))
    assert "no better than the base model" in explain_choice(useless, "nll", 1)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_score_json_with_sweep(world_copy, capsys):
    code = main(["score", "--workspace", str(world_copy.root), "--target", "min", "--n", "16",
                 "--sweep", "8,16", "--k", "2", "--no-snapshots", "--json", "--no-progress",
                 "--scorer", "nll"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["n"] == 16 and out["exclude_task"] == "min"
    donors = [r for r in out["table"]["rows"] if r["source_task"] != "min"]
    assert out["selected"]["nll"] == [r["name"] for r in sorted(donors, key=lambda r: r["nll"])[:2]]
    assert not any("-step" in r["name"] for r in out["table"]["rows"])
    assert out["sweep"]["ns"] == [8, 16]


def test_cli_text_and_jsonl_target(world_copy, capsys, tmp_path):
    target = tmp_path / "mine.jsonl"
    write_jsonl(target, load_split(world_copy, "min", "train")[:10])  # 8 train + 2 held out
    code = main(["score", "--workspace", str(world_copy.root), "--target", str(target),
                 "--n", "8", "--scorer", "all", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "Target mine.jsonl (train): 8 examples, ranked by answer NLL per token" in text
    assert BASE_ROW in text and "top 2 by acc:" in text and "ranks first" in text


def test_cli_unknown_target_is_a_clear_error(world_copy, capsys):
    code = main(["score", "--workspace", str(world_copy.root), "--target", "nosuch",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no target 'nosuch': not a demo task (rev, tail," in err
    assert "not a benchmark (arc_easy," in err and "not a file" in err
