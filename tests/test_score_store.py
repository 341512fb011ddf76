"""One score store: what a study scores, the Relevance map and page show, and nothing twice.

The reference pipeline computes every checkpoint on every target once (the N×N relevance
matrix) and each leave-one-out fold leaves out the target's own checkpoints. A study here does
the same through the workspace's score store, which the pages read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import plotly.io as pio
import pytest

from mashup_core.config import resolve_config
from mashup_core.study.grid import run_study, study_library
from mashup_core.study.report import study_table
from mashup_core.study.spec import StudySpec
from mashup_core.views import relevance_map as rmap
from mashup_core.workspace import Workspace

APP = Path(__file__).resolve().parent.parent / "app.py"
N = 16


@pytest.fixture(scope="module")
def studied(tiny_world, tmp_path_factory) -> Workspace:
    """A copy of the tiny world after a leave-one-out study over all 8 targets (merge cells)."""
    ws = Workspace(tmp_path_factory.mktemp("store") / "ws")
    shutil.copytree(tiny_world.root, ws.root)
    run_study(ws, StudySpec(tasks=tuple(resolve_config(ws).target_names()), methods=("linear",),
                            ks=(2,), ns=(N,), eval_limit=8), "loo-store", progress=False,
              engine="inline")
    return ws


def _entries(ws: Workspace) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((ws.cache_dir / "scores").rglob("*.json"))]


def test_a_study_scores_the_whole_matrix_once_and_folds_leave_their_own_out(studied):
    files = _entries(studied)
    library = study_library(studied)
    assert len(files) == 8, "one scoring sample per target"
    for data in files:  # every final checkpoint on every target, its own included, and the base
        assert len(data["entries"]) == len(library) + 1
    table = study_table(studied.studies_dir / "loo-store")
    for cell in table.runs("merge").to_dict("records"):
        own = {c.name for c in library if c.source_task == cell["target"]}
        assert own and not own & set(cell["selected"]), "the target's own checkpoint is left out"


def test_the_map_shows_every_target_the_study_scored_without_scoring(studied, monkeypatch):
    """The Relevance map after the study: all 8 targets, read from the store; the page runs no
    forward pass (scoring raises if it is reached)."""
    from streamlit.testing.v1 import AppTest

    import mashup_core.selection.scoring as scoring

    def no_scoring(*args, **kwargs):
        raise AssertionError("the map scored instead of reading the store")

    monkeypatch.setattr(scoring, "score_library", no_scoring)
    monkeypatch.setattr("mashup_core.selection.store.score_library", no_scoring)
    monkeypatch.setenv("MASHUP_WORKSPACE", str(studied.root))
    before = sorted(p.stat().st_mtime_ns for p in (studied.cache_dir / "scores").rglob("*.json"))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update({"target": "min", "n": str(N), "values": "raw", "order": "name",
                            "scorer": "token_acc"})
    at.run()
    at.switch_page("pages/relevance_map.py").run()
    assert not at.exception, [e.message for e in at.exception]
    (chart,) = at.get("plotly_chart")
    cells = pio.from_json(chart.proto.spec).data[0]
    config = resolve_config(studied)
    assert sorted(cells.x) == sorted(config.target_names())
    assert sorted(cells.y) == sorted(c.name for c in study_library(studied)), \
        "the snapshots no study scored have no row"
    scan = rmap.map_tables(studied, config, N, None)
    for j, target in enumerate(cells.x):
        for i, name in enumerate(cells.y):
            assert cells.z[i][j] == pytest.approx(scan.tables[target].row(name).token_acc, abs=1e-12)
    assert "not scored yet" in "\n".join(str(e.value) for e in at.info), \
        "the checkpoints no study scored are named as such"
    after = sorted(p.stat().st_mtime_ns for p in (studied.cache_dir / "scores").rglob("*.json"))
    assert after == before, "reading the map writes nothing"


def test_a_page_that_asks_for_more_scores_only_what_the_store_lacks(studied, tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(studied.root, ws.root)
    import mashup_core.selection.store as store

    seen: list[list[str]] = []
    real = store.score_library

    def spy(model, tokenizer, checkpoints, *args, **kwargs):
        seen.append([c.name for c in checkpoints])
        return real(model, tokenizer, checkpoints, *args, **kwargs)

    monkeypatch.setattr(store, "score_library", spy)
    config = resolve_config(ws)
    found = rmap.map_tables(ws, config, N, None)
    assert set(found.tables) == set(config.target_names()) and found.partial
    rmap.score_missing(ws, config, N, None, ["min"])
    final = {c.name for c in study_library(ws)}
    assert len(seen) == 1 and seen[0] and not set(seen[0]) & final, \
        "only the snapshots were scored: the study's rows came from the store"
    assert "min" not in rmap.map_tables(ws, config, N, None).partial


def test_a_read_only_visitors_huge_n_scores_and_writes_nothing(studied, monkeypatch):
    """`relevance?target=rev&n=999999999` on a read-only server: n is held to the split, the
    page only reads the store, nothing is scored or written."""
    from streamlit.testing.v1 import AppTest

    import mashup_core.selection.scoring as scoring

    def no_scoring(*args, **kwargs):
        raise AssertionError("a read-only page scored")

    monkeypatch.setattr(scoring, "score_library", no_scoring)
    monkeypatch.setattr("mashup_core.selection.store.score_library", no_scoring)
    monkeypatch.setenv("MASHUP_WORKSPACE", str(studied.root))
    monkeypatch.setenv("MASHUP_READ_ONLY", "1")
    before = sorted((p, p.stat().st_mtime_ns) for p in studied.cache_dir.rglob("*") if p.is_file())
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update({"target": "rev", "n": "999999999"})
    at.run()  # the first page opened says what the link asked for and what it shows
    assert "more than the 400 train rows" in "\n".join(str(w.value) for w in at.warning)
    at.switch_page("pages/relevance.py").run()
    assert not at.exception, [e.message for e in at.exception]
    shown = "\n".join(str(e.value) for e in [*at.info, *at.markdown])
    assert "**400** train examples" in shown and "999999999" not in shown
    assert "not scored yet at n = 400" in shown
    after = sorted((p, p.stat().st_mtime_ns) for p in studied.cache_dir.rglob("*") if p.is_file())
    assert after == before
