"""Recycle (issue 15): multi-target weight search, the front, the saved search, its adapter
and its page, on the tiny world (real model, real PEFT adapters)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest

from mashup_core import access
from mashup_core.cli import main
from mashup_core.merging import recycle
from mashup_core.merging.recycle import (
    RecycleError,
    RecycleRequest,
    check_budget,
    pareto_front,
    parse_objective,
    preference_sweep,
)
from mashup_core.workspace import Workspace

TARGETS = ("sort", "min", "dmax")
HELD_OUT = "dsort"
CHECKPOINTS = ("sort", "min", "dsort", "tail")
BUDGET = 12
N = 16

# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(("points", "front"), [
    ([[1, 0], [0, 1], [0.5, 0.5], [0.4, 0.4]], [0, 1, 2]),  # (0.4, 0.4) is dominated
    ([[0.2, 0.2], [0.2, 0.2]], [0]),  # of identical points the first stays
    ([[0.5, 0.5], [0.5, 0.6]], [1]),  # better on one, equal on the other: dominates
    ([[1, 1, 1], [1, 1, 0.9], [0, 2, 0]], [0, 2]),
    ([[0.3]], [0]),
    ([], []),
])
def test_pareto_front_known_values(points, front):
    assert pareto_front(points) == front


def test_objectives_scalarise_as_named():
    accs = [0.2, 0.8, 0.5]
    assert parse_objective("mean", 3)(accs) == pytest.approx(0.5)
    assert parse_objective("min", 3)(accs) == 0.2
    weighted = parse_objective("weighted:2,1,1", 3)
    assert weighted.preference == (0.5, 0.25, 0.25)
    assert weighted(accs) == pytest.approx(0.5 * 0.2 + 0.25 * 0.8 + 0.25 * 0.5)


@pytest.mark.parametrize(("text", "message"), [
    ("weighted:0.5,0.5", "gives 2 weights for 3 targets"),
    ("weighted:0.5,-0.1,0.6", "must be non-negative"),
    ("weighted:0,0,0", "all 0"),
    ("weighted:a,b,c", "comma-separated numbers"),
    ("median", "objective must be mean, min or weighted"),
])
def test_bad_objectives_are_named(text, message):
    with pytest.raises(RecycleError, match=message):
        parse_objective(text, 3)


def test_preference_sweep_lies_on_the_simplex():
    assert preference_sweep(2, 2) == [pytest.approx((1 / 3, 2 / 3)), pytest.approx((2 / 3, 1 / 3))]
    sweep = preference_sweep(3, 5, seed=1)
    assert len(sweep) == 5 and sweep[0] == pytest.approx((2 / 3, 1 / 6, 1 / 6))
    assert all(min(p) >= 0 and sum(p) == pytest.approx(1) for p in sweep)
    assert preference_sweep(3, 5, seed=1) == sweep  # deterministic given the seed


def test_budget_below_the_number_of_weights_is_refused():
    with pytest.raises(RecycleError, match="fewer evaluations than the 16 weights"):
        check_budget(10, 16)
    with pytest.raises(RecycleError, match="split over 3 searches gives each 6"):
        check_budget(20, 8, runs=3)
    assert check_budget(24, 8, runs=3) == 8


# --------------------------------------------------------------------------- on the tiny world


@pytest.fixture(scope="module")
def recycled(tiny_world, tmp_path_factory):
    """A copy of the tiny world with one saved search; `loads` counts base-model loads."""
    import mashup_core.models.loading as loading

    ws = Workspace(tmp_path_factory.mktemp("recycle") / "ws")
    shutil.copytree(tiny_world.root, ws.root)
    loads, progress = [], []
    real = loading.load_base_model

    def spy(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "load_base_model", spy)
        req = RecycleRequest(targets=TARGETS, held_out=HELD_OUT, checkpoints=CHECKPOINTS,
                             budget=BUDGET, front_k=1, n=N)
        front = recycle.run_recycle(ws, req, on_progress=lambda *a: progress.append(a))
    return ws, front, loads, progress


def test_the_base_is_loaded_once_and_the_budget_counts_evaluations(recycled):
    _, front, loads, progress = recycled
    assert len(loads) == 1 and front["base_loads"] == 1
    assert front["evaluations"] == BUDGET == len(progress)
    assert [r["budget"] for r in front["runs"]] == [BUDGET - BUDGET // 2, BUDGET // 2]
    assert all(len(r["history"]) == r["budget"] for r in front["runs"])
    for run in front["runs"]:
        bests = [best for _, best in run["history"]]
        assert bests == sorted(bests)  # best so far never drops


def test_searched_merge_is_at_least_the_equal_weight_merge(recycled):
    _, front, _, _ = recycled
    equal = next(p for p in front["points"] if p["kind"] == "equal")
    result = front["result"]
    assert equal["weights"] == [1 / len(CHECKPOINTS)] * len(CHECKPOINTS)
    # the equal point is each search's first evaluation (x0): never beaten by construction
    assert result["value"] >= equal["objective"]
    assert result["history"][0][1] == equal["objective"]
    assert all(0 <= w <= 1 for w in result["weights"])
    assert set(result["per_target"]) == set(TARGETS)


def test_the_front_is_non_dominated_and_carries_held_out_accuracy(recycled):
    _, front, _, _ = recycled
    points = front["points"]
    kinds = [p["kind"] for p in points]
    assert kinds.count("base") == 1 and kinds.count("equal") == 1
    assert sorted(p["label"] for p in points if p["kind"] == "single") == sorted(CHECKPOINTS)
    on_front = [p for p in points if p["front"]]
    assert on_front
    accs = [[p["per_target"][t] for t in TARGETS] for p in points]
    assert {p["id"] for p in on_front} == {points[i]["id"] for i in pareto_front(accs)}
    for p in on_front:
        assert 0 <= p["held_out"] <= 1
    for p in points:
        if p["kind"] != "searched":
            assert p["held_out"] is not None
    # base = all weights 0: the base model itself
    base = next(p for p in points if p["kind"] == "base")
    assert base["weights"] == [0.0] * len(CHECKPOINTS)
    numbers = recycle.summary(front)
    assert numbers["n_checkpoints"] == len(CHECKPOINTS)
    corr = numbers["spearman_weight_own_score"]
    assert corr is None or -1 <= corr <= 1


def test_a_saved_search_reloads_from_disk(recycled):
    ws, front, _, _ = recycled
    assert front["id"] in recycle.list_fronts(ws)
    assert (ws.root / "recycle" / f"{front['id']}.json").exists()
    assert recycle.load_front(ws, front["id"]) == json.loads(json.dumps(front, default=str))
    with pytest.raises(RecycleError, match="no saved recycle search 'nope'"):
        recycle.load_front(ws, "nope")


def test_a_written_merge_loads_in_peft_and_reproduces_its_accuracy(recycled, monkeypatch):
    from peft import PeftModel

    from mashup_core.config import workspace_library
    from mashup_core.models.loading import load_base_model, load_tokenizer
    from mashup_core.selection.loglik import evaluate_mc

    ws, front, _, _ = recycled
    point = next(p for p in front["points"] if p.get("best_of_run") == 0)
    monkeypatch.setenv("MASHUP_READ_ONLY", "1")
    with pytest.raises(access.ReadOnlyError):
        recycle.write_recycled_adapter(ws, front["id"], point["id"], "recycled-best")
    monkeypatch.delenv("MASHUP_READ_ONLY")
    dest = recycle.write_recycled_adapter(ws, front["id"], point["id"], "recycled-best")
    meta = json.loads((dest / "mashup_meta.json").read_text())
    assert meta["kind"] == "recycle" and meta["merge_weights"] == point["weights"]
    assert meta["merged_from"] == list(CHECKPOINTS)
    with pytest.raises(RecycleError, match="already has 'recycled-best'"):
        recycle.write_recycled_adapter(ws, front["id"], point["id"], "recycled-best")

    scan = workspace_library(ws)
    assert "recycled-best" in scan.names  # in the library, for a run to start from
    assert "recycled-best" not in [c.name for c in recycle.library_choice(ws)]

    base = load_base_model(str(ws.base_dir), device="cpu")
    tokenizer = load_tokenizer(str(ws.base_dir))
    model = PeftModel.from_pretrained(base, str(dest)).eval()
    for target in TARGETS:
        rows = recycle.target_rows(ws, target, N, 0)
        acc = evaluate_mc(model, tokenizer, rows).acc
        assert abs(acc - point["per_target"][target]) <= 1 / N + 1e-9  # float noise: ≤ one row


def test_recycle_weights_is_callable_on_a_loaded_model(tiny_world):
    """The study's 'recycle' init calls it directly: factors in, weights out, within budget."""
    from mashup_core.merging.lora import load_lora_factors
    from mashup_core.models.loading import load_base_model, load_tokenizer

    ws = tiny_world
    factors = load_lora_factors([ws.library_dir / n for n in ("sort", "min", "dsort")])
    targets = {t: recycle.target_rows(ws, t, 8, 0) for t in TARGETS}
    model = load_base_model(str(ws.base_dir), device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = recycle.recycle_weights(model, load_tokenizer(str(ws.base_dir)), factors, targets,
                                     objective="min", budget=6, seed=0,
                                     held_out=recycle.target_rows(ws, HELD_OUT, 8, 0))
    assert result.evaluations == 6 == len(result.history) == len(result.points)
    assert len(result.weights) == 3 and result.checkpoints == ["sort", "min", "dsort"]
    equal = result.points[0]
    assert equal["weights"] == pytest.approx([1 / 3] * 3)
    assert result.value >= min(equal["per_target"].values())
    assert result.value == min(result.per_target.values())
    assert 0 <= result.held_out <= 1
    # the base's own weights are untouched: the merge lives in a LoRA slot
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
             for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(np.array_equal(after[k].numpy(), v.numpy()) for k, v in before.items())


@pytest.mark.parametrize(("argv", "message"), [
    (["--targets", "sort,min,sort"], "target 'sort' is given twice"),
    (["--targets", "sort,min", "--held-out", "min"], "the held-out target 'min' is also searched"),
    (["--targets", "sort,min", "--checkpoints", "sort,nowhere"], "not in the library: nowhere"),
    (["--targets", "sort,min", "--budget", "10"], "fewer evaluations than the 16 weights"),
    (["--targets", "sort,min", "--objective", "weighted:1,2,3"], "gives 3 weights for 2 targets"),
    (["--targets", "sort,min", "--objective", "weighted:1,-2"], "must be non-negative"),
    (["--targets", "sort,min", "--budget", "40", "--front", "2"], "split over 3 searches"),
    (["--targets", "sort", "--target", "min"], "not both"),
])
def test_bad_inputs_are_refused_before_any_model_work(tiny_world, argv, message, capsys,
                                                      monkeypatch):
    import mashup_core.models.loading as loading

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded for a bad request")

    monkeypatch.setattr(loading, "load_base_model", no_load)
    code = main(["search-weights", *argv, "--workspace", str(tiny_world.root), "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- the page


def test_the_page_draws_the_saved_front(recycled, monkeypatch):
    from streamlit.testing.v1 import AppTest

    ws, front, _, _ = recycled
    monkeypatch.setenv("MASHUP_WORKSPACE", str(ws.root))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"),
                           default_timeout=120)
    at.run()
    at.switch_page("pages/recycle.py").run()
    assert not at.exception, [e.message for e in at.exception]
    by_id = {p["id"]: p for p in front["points"]}

    # three targets: parallel coordinates, one line per reference merge and front merge
    parallel, held, weight_score = figures(at)
    dims = {d.label: list(d["values"]) for d in parallel.data[0].dimensions}
    drawn = [p for p in front["points"] if p["front"] or p["kind"] != "searched"]
    for t in TARGETS:
        assert dims[t] == [p["per_target"][t] for p in drawn]
    assert dims[f"held-out: {HELD_OUT}"] == [p["held_out"] for p in drawn]
    assert HELD_OUT in held.layout.yaxis.title.text  # the held-out target beside it
    assert list(weight_score.data[0].text) == list(CHECKPOINTS)
    assert "Spearman" in weight_score.layout.title.text
    assert any("Equal weights" in m.label for m in at.metric)

    # two of them: the scatter, with the front drawn as a line
    at.segmented_control[0].set_value("two targets").run()
    assert not at.exception, [e.message for e in at.exception]
    scatter = figures(at)[0]
    traces = {t.name: t for t in scatter.data}
    assert {"base model", "single checkpoints", "equal weights", "front (non-dominated)"} <= set(traces)
    assert traces["front (non-dominated)"].mode == "lines+markers"
    singles = traces["single checkpoints"]
    for pid, x, y in zip(singles.customdata, singles.x, singles.y, strict=True):
        assert (x, y) == (by_id[pid]["per_target"]["sort"], by_id[pid]["per_target"]["min"])
    # the line joins the merges no other merge beats on both drawn targets
    line = traces["front (non-dominated)"]
    pairs = [[p["per_target"]["sort"], p["per_target"]["min"]] for p in front["points"]]
    assert sorted(line.customdata) == sorted(front["points"][i]["id"] for i in pareto_front(pairs))

    # choosing a merge shows its weights; the button writes it into the library
    single = next(p for p in front["points"] if p["kind"] == "single")
    at.selectbox(key="recycle_point").set_value(single["id"]).run()
    weights = at.dataframe[0].value
    assert list(weights["weight"]) == single["weights"]
    at.text_input(key=f"recycle-name-{single['id']}").set_value("from-the-page").run()
    next(b for b in at.button if b.label.startswith("Write this merge")).click().run()
    assert not at.exception and (ws.library_dir / "from-the-page" / "adapter_config.json").exists()
    assert "from-the-page" in at.success[0].value


def figures(at) -> list:
    return [pio.from_json(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_a_search_launched_in_the_background_is_saved(world_copy):
    from waiting import poll

    req = RecycleRequest(targets=("sort", "min"), checkpoints=("sort", "min"), budget=4, n=4)
    front_id = recycle.launch_recycle(world_copy, req)
    state = poll(lambda: recycle.recycle_job(world_copy, front_id).get("state") in ("done", "failed")
                 and recycle.recycle_job(world_copy, front_id), timeout=180, every=0.5)
    assert state["state"] == "done", state
    saved = recycle.load_front(world_copy, front_id)
    assert saved["evaluations"] == 4 and saved["targets"] == ["sort", "min"]
    with pytest.raises(RecycleError, match="given twice"):  # refused before anything starts
        recycle.launch_recycle(world_copy, RecycleRequest(targets=("sort", "sort")))


@pytest.mark.browser
def test_the_page_in_a_browser(recycled, tmp_path):
    """The page served for real (tests/test_browser.py's server and Chromium): the figures'
    data read back from Plotly in the page; screenshots under test-artifacts/screenshots/."""
    from test_browser import SHOTS, _browser, _serve, settle

    ws, front, _, _ = recycled
    SHOTS.mkdir(parents=True, exist_ok=True)
    with _serve(ws.root, tmp_path) as url, _browser() as page:
        page.goto(f"{url}/recycle")
        page.get_by_role("heading", name="Recycle", level=1).wait_for(timeout=180_000)
        settle(page)
        assert page.get_by_test_id("stException").count() == 0
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        dims = page.evaluate("() => document.querySelector('.js-plotly-plot').data[0]"
                             ".dimensions.map(d => [d.label, Array.from(d.values)])")
        drawn = [p for p in front["points"] if p["front"] or p["kind"] != "searched"]
        assert dict(dims)["sort"] == [p["per_target"]["sort"] for p in drawn]
        page.screenshot(path=str(SHOTS / "recycle.png"), full_page=True)

        page.get_by_test_id("stButtonGroup").get_by_text("two targets", exact=True).click()
        settle(page)
        page.wait_for_function(  # the new figure, not the one being replaced (a busy machine)
            "() => Array.from(document.querySelector('.js-plotly-plot')?.data || [])"
            ".some(t => t.name === 'front (non-dominated)')", timeout=60_000)
        traces = page.evaluate("() => document.querySelector('.js-plotly-plot').data"
                               ".map(t => [t.name, Array.from(t.customdata || [])])")
        drawn_front = dict(traces)["front (non-dominated)"]
        pairs = [[p["per_target"]["sort"], p["per_target"]["min"]] for p in front["points"]]
        assert sorted(drawn_front) == sorted(front["points"][i]["id"] for i in pareto_front(pairs))
        page.screenshot(path=str(SHOTS / "recycle-two-targets.png"), full_page=True)


def test_the_page_starts_a_search_in_a_world_without_one(world_copy, monkeypatch):
    from streamlit.testing.v1 import AppTest
    from waiting import poll

    monkeypatch.setenv("MASHUP_WORKSPACE", str(world_copy.root))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"),
                           default_timeout=120)
    at.run()
    at.switch_page("pages/recycle.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "No recycle search in this workspace yet" in at.info[0].value
    at.multiselect[0].set_value(["sort", "min"])
    at.selectbox[0].set_value("dsort")
    at.text_input[0].set_value("weighted:0.5,0.5x")  # a bad objective: a message, nothing starts
    at.button[0].click().run()
    assert "comma-separated numbers" in at.error[0].value
    assert not recycle.job_dir(world_copy).exists()
    at.text_input[0].set_value("min")
    for label, value in (("Budget (evaluations)", 4), ("Front: preference searches", 0),
                         ("Rows per target", 4)):
        next(w for w in at.number_input if w.label == label).set_value(value)
    at.multiselect[1].set_value(["sort", "min"])
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    front_id = at.session_state["recycle_job"]
    poll(lambda: recycle.recycle_job(world_copy, front_id).get("state") in ("done", "failed"),
         timeout=180, every=0.5)
    saved = recycle.load_front(world_copy, front_id)
    assert (saved["targets"], saved["held_out_target"], saved["objective"]) == (["sort", "min"], "dsort", "min")
    assert saved["checkpoints"] == ["sort", "min"] and saved["evaluations"] == 4
