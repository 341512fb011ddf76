"""The dashboard on a workspace at a lab's size: 200 adapters, 50 runs, 3 studies (made fast by
tests/scale_world.py). Every page renders; long tables page and filter instead of dumping;
the links keep the runs. Timing is benchmarks/bench_pages.py --scale's job, not the tests'."""

from __future__ import annotations

from pathlib import Path

import pytest
from scale_world import ADAPTERS, RUNS, STUDIES, make_scale_workspace

from mashup_core.workspace import Workspace

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGES = sorted(p.stem for p in (APP.parent / "pages").glob("*.py") if not p.stem.startswith("_"))


@pytest.fixture(scope="module")
def scale_world(tiny_world, tmp_path_factory) -> Workspace:
    return make_scale_workspace(tiny_world, tmp_path_factory.mktemp("scale") / "ws")


@pytest.fixture
def scale(scale_world, monkeypatch) -> Workspace:
    monkeypatch.setenv("MASHUP_WORKSPACE", str(scale_world.root))
    return scale_world


def render(page: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update(params)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [(e.message, e.stack_trace) for e in at.exception]
    return at


def test_the_fixture_is_the_size_it_says(scale):
    from mashup_core.config import workspace_library
    from mashup_core.jobs.store import list_runs
    from mashup_core.views import list_studies

    assert len(workspace_library(scale).checkpoints) == ADAPTERS
    assert len(list_runs(scale)) == RUNS
    assert len(list_studies(scale)) == STUDIES


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_at_scale(scale, page):
    at = render(page)
    assert at.title and at.title[0].value != "Set up this workspace"
    assert not at.error, [e.value for e in at.error]
    for frame in at.dataframe:
        assert len(frame.value) <= 50, f"{page}: a table of {len(frame.value)} rows is dumped"


def test_the_library_pages_and_filters(scale):
    at = render("library")
    assert len(at.dataframe[0].value) == 50
    assert any(f"{ADAPTERS} row(s); page 1 of 4" in c.value for c in at.caption)
    at.text_input(key="library-filter").set_value("min-v0").run()
    names = list(at.dataframe[0].value["name"])
    assert names and all("min-v0" in n for n in names)


def test_the_runs_list_pages_and_the_link_keeps_the_runs(scale):
    from mashup_core.jobs.store import list_runs

    at = render("launch")
    assert [len(d.value) for d in at.dataframe] == [50], "the runs list is paged"
    mashup = [r for r in list_runs(scale) if r["kind"] == "mashup"]
    picked = mashup[7]["id"]
    at = render("convergence", runs=picked)
    runs = next(w for w in at.multiselect if w.label == "Runs")
    assert runs.value == [picked]
    assert at.query_params["runs"] == [picked] or at.query_params["runs"] == picked
    runs.set_value([mashup[3]["id"], mashup[4]["id"]]).run()
    assert at.query_params["runs"] == [mashup[3]["id"], mashup[4]["id"]]


def test_the_relevance_map_shows_every_checkpoint_from_the_cache(scale):
    import plotly.io as pio

    from mashup_core.config import resolve_config
    from mashup_core.views import library_scan
    from mashup_core.views import relevance_map as rmap

    config = resolve_config(scale)
    found = rmap.map_tables(scale, config, 64, library_scan(scale))
    assert not found.missing and len(found.tables) == len(config.targets)
    at = render("relevance_map", values="raw", order="best target")
    (chart,) = at.get("plotly_chart")
    cells = pio.from_json(chart.proto.spec).data[0]
    assert len(cells.y) == ADAPTERS and set(cells.x) == set(found.tables)
    for i in (0, 99, 199):
        name = cells.y[i]
        for j, target in enumerate(cells.x):
            assert cells.z[i][j] == pytest.approx(found.tables[target].row(name).acc, abs=1e-12)
