"""Successive halving on the tiny world's library and a synthetic library around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_library import build_synthetic_library

from mashup_core.cli import main
from mashup_core.data.targets import sample_examples
from mashup_core.demo.world import load_split
from mashup_core.models.library import demo_library, scan_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.halving import (
    agreement,
    halving_schedule,
    successive_halving,
)
from mashup_core.selection.scoring import BASE_ROW, ScoringError, score_library

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
        assert len(before.kept) == max(2, -(-len(before.alive) // 2))
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


def test_halving_is_json_round_tripped(halved):
    from mashup_core.selection.halving import HalvingResult

    again = HalvingResult.from_dict(json.loads(json.dumps(halved.to_dict())))
    assert again.rounds == halved.rounds and again.selected == halved.selected
    assert again.table.rows == halved.table.rows and again.dropped_at() == halved.dropped_at()


def test_cli_halving(world_copy, capsys):
    args = ["score", "--workspace", str(world_copy.root), "--target", "min", "--n", "16",
            "--selection", "halving", "--min-n", "4", "--eta", "2", "--k", "2", "--no-snapshots",
            "--no-progress"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["selection"] == "halving" and len(out["selected"]["nll"]) == 2
    assert [r["n"] for r in out["halving"]["rounds"]] == [4, 8, 16]
    assert not out["from_cache"] and out["halving"]["cost"] < out["halving"]["full_cost"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Successive halving (eta 2, by nll)" in text and "from the cache" in text
    assert main([*args, "--scorer", "all"]) == 2
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
    (fig,) = [pio.from_json(c.proto.spec) for c in at.get("plotly_chart")]
    bars, dropped, stars = fig.data
    assert bars.type == "bar" and bars.name == "alive"
    assert stars.name == "top 2" and len(stars.x) == 2
    alive = [int(v) for v in views_values(bars.y)]
    assert alive == sorted(alive, reverse=True) and alive[-1] >= 2
    assert len(dropped.x) == alive[0] - 2  # every checkpoint but the top 2 is dropped once
    assert "ranks first" in "\n".join(str(e.value) for e in at.info)
    assert at.session_state["selection"]["strategy"] == "halving"


def views_values(array) -> list:
    import base64

    import numpy as np

    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)
