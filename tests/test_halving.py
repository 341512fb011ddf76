"""Successive halving on the tiny world's library and a synthetic library around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_library import build_synthetic_library

from mashup_core.cli import main
from mashup_core.data.examples import sample_examples
from mashup_core.demo.world import load_split
from mashup_core.models.library import demo_library, scan_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.halving import (
    DEFAULT_ETA,
    DEFAULT_MARGIN,
    HalvingResult,
    agreement,
    cost_floor,
    halving_from_table,
    halving_schedule,
    paired_se,
    successive_halving,
    survivors,
)
from mashup_core.selection.scoring import (
    BASE_ROW,
    SCORERS,
    ScoreRow,
    ScoreTable,
    ScoringError,
    score_library,
)

N = 32
APP = Path(__file__).resolve().parent.parent / "app.py"


@pytest.mark.parametrize(("n", "min_n", "eta", "ns"), [
    (64, 8, 2, [8, 16, 32, 64]),
    (64, 8, 3, [8, 24, 64]),
    (10, 8, 2, [8, 10]),
    (8, 16, 2, [8]),
    (5, 1, 1.5, [1, 2, 3, 5]),  # grows by at least one example a round
])
def test_schedule(n, min_n, eta, ns):
    assert halving_schedule(n, min_n, eta) == ns


def test_schedule_refuses_eta_one():
    with pytest.raises(ScoringError, match="eta must be above 1"):
        halving_schedule(64, 8, 1.0)


def table_of(nll: dict[str, list[float]], acc: dict[str, list[float]] | None = None) -> ScoreTable:
    """A score table built from per-example values (acc_norm = acc; the base far behind)."""
    n = len(next(iter(nll.values())))
    per = {name: {"nll": values, "acc": (acc or {}).get(name, [0.0] * n)} for name, values in
           {**nll, BASE_ROW: [9.0] * n}.items()}
    for values in per.values():
        values["acc_norm"] = values["acc"]

    def row(name: str) -> ScoreRow:
        means = {s: sum(per[name][s]) / n for s in SCORERS if s in per[name]}
        return ScoreRow(name, "other", means["acc"], means["acc_norm"], means["nll"], n, 0.0,
                        "base" if name == BASE_ROW else "lora")

    return ScoreTable(rows=[row(name) for name in nll], base=row(BASE_ROW), per_example=per)


def test_paired_se():
    assert paired_se([4, 2], [1, 1]) == pytest.approx(1.0)  # differences 3, 1
    assert paired_se([2, 2, 2], [1, 1, 1]) == 0.0  # the same gap on every example
    assert paired_se([5], [1]) == 0.0


def test_a_cut_never_splits_a_tie():
    # 5 rows, eta 2: the best 3 go on, and the 4th, exactly tied with the 3rd, too.
    table = table_of({"a": [1, 1], "b": [1.2, 1.2], "c": [1.5, 1.5], "d": [1.5, 1.5],
                      "e": [1.6, 1.6]})
    assert survivors(table, "nll", 1, 2) == ["a", "b", "c", "d"]
    table.per_example["d"]["nll"] = [1.5, 1.5000001]
    table.rows[3] = table_of({"d": [1.5, 1.5000001]}).rows[0]
    assert survivors(table, "nll", 1, 2) == ["a", "b", "c"]
    assert survivors(table, "nll", 4, 2) == ["a", "b", "c", "d"]  # never fewer than k


@pytest.mark.parametrize(("margin", "kept"), [(0, ["a", "b"]), (1, ["a", "b"]),
                                              (2.5, ["a", "b", "noisy"])])
def test_margin_keeps_what_is_not_yet_distinguishable_from_the_kth(margin, kept):
    # "noisy" is 2 behind the best (k=1) with a paired standard error of 1; "steady" is 0.6
    # behind on every example (standard error 0): only a margin of 2+ SE keeps "noisy".
    table = table_of({"a": [1, 1], "b": [1.4, 1.4], "steady": [1.6, 1.6], "noisy": [4, 2],
                      "c": [1.5, 1.5]})
    assert survivors(table, "nll", 1, 2.5, margin) == kept


def test_margin_follows_the_scorers_direction():
    """acc: higher is better; a row one right answer behind on two examples is close."""
    nll = {name: [1.0, 1.0] for name in ("a", "b", "c", "d")}
    acc = {"a": [1, 1], "b": [1, 1], "c": [1, 0], "d": [0, 0]}
    table = table_of(nll, acc)
    assert survivors(table, "acc", 1, 4) == ["a", "b"]  # a and b tie on (acc, nll)
    assert survivors(table, "acc", 1, 4, margin=1.5) == ["a", "b", "c"]


def test_replay_with_margin_keeps_a_slow_starter():
    """The best on all 8 examples starts badly; plain halving drops it after two examples."""
    nll = {"a": [1.0] * 8, "b": [1.4] * 8, "c": [1.45] * 8, "d": [1.6] * 8,
           "best": [4, 2, 0, 0, 0, 0, 0, 0]}
    full = table_of(nll)
    assert full.select_top_k("nll", 1) == ["best"]
    plain = halving_from_table(full, scorer="nll", k=1, eta=2, min_n=2, margin=0)
    assert [r.n for r in plain.rounds] == [2, 4, 8]
    assert plain.dropped_at()["best"] == 2 and plain.selected == ["a"]
    assert not agreement(plain, full) and not agreement(plain, full, ties=True)
    safe = halving_from_table(full, scorer="nll", k=1, eta=2, min_n=2, margin=2.5)
    assert [len(r.alive) for r in safe.rounds] == [5, 4, 3]  # best kept twice by the margin
    assert safe.selected == ["best"] and agreement(safe, full)
    # The cost: every row alive (and the base) on each round's new examples only.
    assert [r.cost for r in safe.rounds] == [6 * 2, 5 * 2, 4 * 4]
    assert safe.cost == 38 and safe.full_cost == 6 * 8 and plain.cost == 6 * 2 + 4 * 2 + 3 * 4
    # The finalists' rows are the full table's.
    assert safe.table.row("best") == full.row("best") and safe.table.base == full.base


def test_cost_floor_is_one_round_then_the_finalists():
    nll = {"a": [1.0] * 8, "b": [1.4] * 8, "c": [1.45] * 8, "d": [1.6] * 8}
    direct = halving_from_table(table_of(nll), scorer="nll", k=1, eta=4, min_n=2, margin=0)
    assert [len(r.alive) for r in direct.rounds] == [4, 1]
    assert direct.cost == 5 * 2 + 2 * 6 and direct.cost_ratio == cost_floor(4, 1, 8, 2)
    assert cost_floor(14, 2, 64, 4) == 0.25  # a leave-one-task-out tiny demo library
    assert cost_floor(3, 2, 8, 16) == 1.0  # a first round of n examples is full scoring


def test_tie_aware_agreement():
    """Full scoring's 1st and 2nd tie exactly: select_top_k takes "a" by name; "b" is as good."""
    full = table_of({"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [1.5, 2.5]})
    assert full.select_top_k("nll", 1) == ["a"]

    def picked(name: str) -> HalvingResult:
        return HalvingResult("nll", 1, 2.0, 1, 2, [name], [], full, 0, 1)

    assert agreement(picked("a"), full) and agreement(picked("a"), full, ties=True)
    assert not agreement(picked("b"), full) and agreement(picked("b"), full, ties=True)
    assert not agreement(picked("c"), full) and not agreement(picked("c"), full, ties=True)


def test_replay_refuses_a_table_without_per_example_values():
    full = table_of({"a": [1.0], "b": [2.0]})
    full.per_example = {}
    with pytest.raises(ScoringError, match="per-example"):
        halving_from_table(full, scorer="nll", k=1)
    with pytest.raises(ScoringError, match="only 2 of 2 are eligible"):
        halving_from_table(table_of({"a": [1.0], "b": [2.0]}), scorer="nll", k=3)


@pytest.fixture(scope="module")
def base(tiny_world):
    return load_base_model(tiny_world.base_dir, device="cpu"), load_tokenizer(tiny_world.base_dir)


@pytest.fixture(scope="module")
def library(tiny_world, tmp_path_factory):
    related = [c.path for c in demo_library(tiny_world, include_snapshots=False).checkpoints]
    out = tmp_path_factory.mktemp("synthetic-library")
    build_synthetic_library(related, out, size=40, copies_per_related=2, seed=0)
    scan = scan_library([out], base_model_dir=tiny_world.base_dir)
    assert len(scan.checkpoints) == 40 and not scan.rejected
    return scan.checkpoints


@pytest.fixture(scope="module")
def examples(tiny_world):
    return sample_examples(load_split(tiny_world, "min", "train"), N, seed=3)


@pytest.fixture(scope="module")
def full(base, library, examples):
    model, tok = base
    return score_library(model, tok, library, examples, progress=False)


@pytest.fixture(scope="module")
def halved(base, library, examples):
    model, tok = base
    return successive_halving(model, tok, library, examples, scorer="nll", k=2, eta=2, min_n=4,
                              exclude_task="min")


def test_rounds_keep_the_better_part_and_reuse_rows(halved, library):
    own = {c.name for c in library if c.source_task == "min"}
    candidates = [c.name for c in library if c.name not in own]
    assert sorted(halved.excluded) == sorted(own) and own
    assert [r.n for r in halved.rounds] == [4, 8, 16, 32]
    assert sorted(halved.rounds[0].alive) == sorted(candidates)
    for before, after in zip(halved.rounds, halved.rounds[1:], strict=False):
        assert sorted(after.alive) == sorted(before.kept)
        cut = max(2, -(-len(before.alive) // 2))  # the best half, and any within the margin
        assert before.kept[:cut] == before.alive[:cut] and len(before.kept) >= cut
    dropped = [name for r in halved.rounds for name in r.dropped]
    assert sorted(dropped + halved.selected) == sorted(candidates)
    assert halved.selected == halved.rounds[-1].kept and len(halved.selected) == 2
    # Each round scores only the rows the earlier ones did not (nested prefixes), base included.
    sizes = [0] + [r.n for r in halved.rounds]
    assert [r.cost for r in halved.rounds] == [
        (len(r.alive) + 1) * (sizes[i + 1] - sizes[i]) for i, r in enumerate(halved.rounds)]
    assert halved.cost == sum(r.cost for r in halved.rounds)
    assert halved.full_cost == (len(candidates) + 1) * N and halved.cost_ratio < 0.5


def test_finalists_score_as_full_scoring_does(halved, full):
    """A finalist was scored once on each example, over four rounds: its row is full scoring's."""
    table = halved.table
    assert table.n == N and [r.name for r in table.rows] == halved.selected
    for name in [BASE_ROW, *halved.selected]:
        ours, theirs = table.row(name), full.row(name)
        assert (ours.acc, ours.acc_norm) == (theirs.acc, theirs.acc_norm)
        assert ours.nll == pytest.approx(theirs.nll, abs=1e-5)
    assert table.select_top_k("nll", 2) == halved.selected
    # Whatever halving kept, the finalists are the best of what it saw at n.
    full_rank = full.rank("nll", exclude_names=halved.excluded)
    assert full_rank.index(halved.selected[0]) < len(full_rank) // 4
    assert isinstance(agreement(halved, full), bool)


def test_replay_picks_what_the_live_run_picked(halved, full):
    """Same rounds from the full table's values (batch composition moves nll by ~1e-6 only)."""
    again = halving_from_table(full, scorer="nll", k=2, eta=2, min_n=4, exclude_task="min")
    assert [sorted(r.alive) for r in again.rounds] == [sorted(r.alive) for r in halved.rounds]
    assert again.selected == halved.selected and again.cost == halved.cost
    assert again.excluded == halved.excluded


def test_halving_is_json_round_tripped(halved):
    from mashup_core.selection.halving import HalvingResult

    again = HalvingResult.from_dict(json.loads(json.dumps(halved.to_dict())))
    assert again.rounds == halved.rounds and again.selected == halved.selected
    assert again.table.rows == halved.table.rows and again.dropped_at() == halved.dropped_at()


def test_cli_halving(world_copy, capsys):
    args = ["score", "--workspace", str(world_copy.root), "--target", "min", "--n", "16",
            "--selection", "halving", "--min-n", "4", "--eta", "2", "--margin", "0.5", "--k", "2",
            "--no-snapshots", "--no-progress", "--scorer", "nll"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["selection"] == "halving" and len(out["selected"]["nll"]) == 2
    assert [r["n"] for r in out["halving"]["rounds"]] == [4, 8, 16]
    assert not out["from_cache"] and out["halving"]["cost"] < out["halving"]["full_cost"]
    assert out["halving"]["margin"] == 0.5
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Successive halving (eta 2, margin 0.5 SE, by nll)" in text and "from the cache" in text
    assert main([*args[:-2], "--scorer", "all"]) == 2
    assert "ranks by one scorer" in capsys.readouterr().err


def test_relevance_page_draws_the_halving_rounds(world_copy, monkeypatch):
    """The Relevance page's halving option: the rounds chart, the top k and its explanation."""
    pytest.importorskip("streamlit.testing.v1")
    import plotly.io as pio
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MASHUP_WORKSPACE", str(world_copy.root))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    at.switch_page("pages/relevance.py").run()
    at.radio(key="selection_strategy").set_value("halving").run()
    assert not at.exception, [e.message for e in at.exception]
    # The page starts from the core's defaults, the margin included.
    assert at.number_input(key="halving_eta").value == DEFAULT_ETA
    assert at.number_input(key="halving_margin").value == DEFAULT_MARGIN
    (fig,) = [pio.from_json(c.proto.spec) for c in at.get("plotly_chart")]
    bars, dropped, grace, stars = fig.data
    assert bars.type == "bar" and bars.name == "alive"
    assert stars.name == "top 2" and len(stars.x) == 2 and grace.name == "kept past the cut"
    alive = [int(v) for v in views_values(bars.y)]
    assert alive == sorted(alive, reverse=True) and alive[-1] >= 2
    assert len(dropped.x) == alive[0] - 2  # every checkpoint but the top 2 is dropped once
    assert "ranks first" in "\n".join(str(e.value) for e in at.info)
    assert at.session_state["selection"]["strategy"] == "halving"


def test_halving_figure_circles_what_went_on_past_the_cut():
    from mashup_core.views.halving import halving_figure

    nll = {"a": [1.0] * 8, "b": [1.4] * 8, "c": [1.45] * 8, "d": [1.6] * 8,
           "best": [4, 2, 0, 0, 0, 0, 0, 0]}
    fig = halving_figure(halving_from_table(table_of(nll), scorer="nll", k=1, eta=2, min_n=2, margin=2.5))
    bars, dropped, grace, stars = fig.data
    assert list(grace.text) == ["best", "best"] and list(grace.y) == [5, 4]
    assert list(stars.text) == ["best"] and sorted(dropped.text) == ["a", "b", "c", "d"]
    assert "within 2.5 SE of the k-th" in fig.layout.xaxis.title.text


def views_values(array) -> list:
    import base64

    import numpy as np

    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)
