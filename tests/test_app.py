"""The dashboard through Streamlit's AppTest: every page renders on a real tiny world, shows
its key elements, and turns bad input into a message instead of a stack trace."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from mashup_core import views
from mashup_core.demo.story import world_story
from mashup_core.study.job import study_job
from mashup_core.workspace import Workspace, write_json_atomic

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402
from streamlit.testing.v1.util import patch_config_options  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGES = ["overview", "library", "target", "relevance", "merge", "launch", "convergence"]


def render(page: str | None = None, timeout: float = 120) -> AppTest:
    """The app (workspace from $MASHUP_WORKSPACE), switched to `page`, run without exception."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.run()
    if page is not None:
        at.switch_page(f"pages/{page}.py")
        at.run()
    check(at)
    return at


def check(at: AppTest) -> None:
    assert not at.exception, [(e.message, e.stack_trace) for e in at.exception]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def progress_texts(at: AppTest) -> str:
    return "\n".join(bar.text for bar in at.get("progress"))


def chosen_target(at: AppTest):
    """The target kept for the other pages (AppTest drops the sidebar after a page switch,
    so the choice is read from the session, where the sidebar reads it too)."""
    return at.session_state.get("target")


def figures(at: AppTest) -> list[go.Figure]:
    return [pio.from_json(chart.proto.spec) for chart in at.get("plotly_chart")]


def values(array) -> list:
    """A figure's array as a list, whether plain or plotly's base64 typed array."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def by_label(widgets, label: str):
    found = [w for w in widgets if w.label.startswith(label)]
    assert found, f"no widget labelled {label!r}; have {[w.label for w in widgets]}"
    return found[0]


@pytest.fixture(autouse=True)
def error_details():
    """The app hides exception details from users (.streamlit/config.toml); a failing test
    should show them."""
    with patch_config_options({"client.showErrorDetails": "full"}):
        yield


@pytest.fixture(scope="module")
def shared_world(tiny_world, tmp_path_factory) -> Workspace:
    """One copy of the tiny world for the read-only page tests (its score cache is shared),
    with a real, small leave-one-out study in it."""
    from mashup_core.study.grid import run_study
    from mashup_core.study.spec import StudySpec

    ws = Workspace(tmp_path_factory.mktemp("app") / "ws")
    shutil.copytree(tiny_world.root, ws.root)
    run_study(ws, StudySpec(tasks=("min", "sort"), methods=("linear",), ks=(1, 2), n=8,
                            eval_limit=8), "loo-test", progress=False)
    return ws


@pytest.fixture
def shared(shared_world, monkeypatch) -> Workspace:
    monkeypatch.setenv("MASHUP_WORKSPACE", str(shared_world.root))
    return shared_world


@pytest.fixture
def private(world_copy, monkeypatch) -> Workspace:
    monkeypatch.setenv("MASHUP_WORKSPACE", str(world_copy.root))
    return world_copy


# --- every page ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_a_caption_per_chart(shared, page):
    at = render(page)
    assert at.title, "every page has a title"
    charts = at.get("plotly_chart")
    assert len(at.caption) >= len(charts), "each chart has a caption saying how to read it"


def test_overview_shows_the_method_counts_and_links(shared):
    at = render()
    assert at.text_input(key="workspace").value == str(shared.root)
    chosen = world_story(shared).default_target  # the world's clearest measured story
    assert any(c.value == f"**Target:** {chosen} (demo task) · n = 64" for c in at.sidebar.caption)
    assert [m.label for m in at.metric] == ["Checkpoints", "Demo targets", "Runs", "Studies"]
    assert at.metric[0].value == "16" and at.metric[1].value == "8"
    assert len(at.get("page_link")) == 6
    (diagram,) = figures(at)
    titles = [a.text for a in diagram.layout.annotations if a.text]
    assert any("Score" in t for t in titles) and any("Merge" in t for t in titles)


def test_library_lists_checkpoints_and_the_transfer_heatmap(shared):
    at = render("library")
    frame = at.dataframe[0].value
    assert len(frame) == 16 and set(frame["status"]) == {"ok"}
    assert set(frame.loc[frame["stage"] == "final", "source task"]) == set(
        shared.manifest()["tasks"])
    (heatmap,) = figures(at)
    assert heatmap.data[0].type == "heatmap"
    assert list(heatmap.data[0].y) == [*shared.manifest()["tasks"], "base model"]


def test_library_rejects_a_broken_folder_with_its_reason(shared, tmp_path):
    broken = tmp_path / "extra" / "broken"
    shutil.copytree(shared.library_dir / "sort", broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    at = render("library")
    by_label(at.text_input, "Folder or Hub id").set_value(str(tmp_path / "extra"))
    by_label(at.button, "Validate and add").click().run()
    check(at)
    assert "broken" in texts(at.error) and "corrupted or truncated" in texts(at.error)
    frame = at.dataframe[0].value
    assert frame["status"].str.startswith("rejected").sum() == 1

    by_label(at.text_input, "Folder or Hub id").set_value("someone/adapters")  # offline in tests
    by_label(at.button, "Validate and add").click().run()
    check(at)
    assert "HF_HUB_OFFLINE is set" in texts(at.error)
    assert len(at.dataframe[0].value) == 18, "the good checkpoints are still listed"


def test_missing_workspace_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MASHUP_WORKSPACE", str(tmp_path / "empty"))
    for page in (None, "relevance"):
        at = render(page)
        assert at.title[0].value == "No demo world here yet"
        assert "mashup demo build" in texts(at.code)
        assert by_label(at.button, "Build the demo world")


def test_switching_the_workspace_in_the_sidebar(shared, tmp_path):
    at = render()
    assert at.title[0].value == "Mashup Explorer"
    at.text_input(key="workspace").set_value(str(tmp_path / "elsewhere")).run()
    check(at)
    assert at.title[0].value == "No demo world here yet"
    assert str(tmp_path / "elsewhere") in texts(at.markdown)


def test_half_built_workspace_names_the_problem(tiny_world, tmp_path, monkeypatch):
    shutil.copytree(tiny_world.tasks_dir, tmp_path / "ws" / "tasks")
    monkeypatch.setenv("MASHUP_WORKSPACE", str(tmp_path / "ws"))
    at = render("library")
    assert "half-written build" in texts(at.markdown)


# --- target ----------------------------------------------------------------------------------


def upload_page(at: AppTest, name: str, data: bytes, mime: str = "text/plain") -> AppTest:
    at.segmented_control[0].set_value("Upload a file").run()
    at.file_uploader[0].set_value((name, data, mime)).run()
    check(at)
    return at


def test_target_demo_task_sets_the_target_for_other_pages(shared):
    at = render("target")
    by_label(at.selectbox, "Demo task").set_value("sort").run()
    by_label(at.number_input, "Scoring examples n").set_value(16).run()
    check(at)
    assert (chosen_target(at).label, chosen_target(at).n) == ("sort (demo task)", 16)
    assert at.dataframe[0].value["prompt"].str.startswith("sort:").all()
    at.switch_page("pages/relevance.py").run()
    check(at)
    assert "16" in at.markdown[0].value and "sort" in at.markdown[0].value


def test_target_upload_with_a_field_mapping(private):
    csv = b"question,sol1,sol2,label\nwhich is bigger?,one,two,1\nwhich is first?,a,b,0\n"
    at = upload_page(render("target"), "my data.csv", csv, "text/csv")
    stored = list(private.uploads_dir.iterdir())
    assert [p.name for p in stored] == ["my_data.csv"]
    preview = at.dataframe[0].value
    assert list(preview["answer"]) == ["two", "a"]
    assert chosen_target(at).label == "my_data.csv (file)"

    by_label(at.multiselect, "Choices").set_value([]).run()
    check(at)
    assert "Pick the field" in texts(at.warning)


@pytest.mark.parametrize(("name", "data", "message"), [
    ("bad.jsonl", b'{"prompt": "x", "choices": ["a", "b"], "gold": 0}\n{"prompt": "y", ',
     "invalid JSON"),
    ("bad.csv", b"prompt,choices,gold\nx,\"[\"\"a\"\", \"\"b\"\"]\",7\n", "out of range"),
    ("empty.jsonl", b"  \n", "is empty"),
])
def test_target_malformed_upload_shows_a_clear_error(private, name, data, message):
    at = upload_page(render("target"), name, data)
    assert message in texts(at.error), texts(at.error)
    assert chosen_target(at) is None, "a bad file never becomes the target"


def test_save_upload_stays_inside_the_uploads_folder(tmp_path):
    ws = Workspace(tmp_path)
    path = views.save_upload(ws, "../../../etc/.passwd.jsonl", b'{"a": 1}\n')
    assert path.parent == ws.uploads_dir and path.name == "passwd.jsonl"
    other = views.save_upload(ws, "etc/passwd.jsonl", b'{"b": 2}\n')
    assert other != path and other.read_bytes() == b'{"b": 2}\n' and path.read_bytes() == b'{"a": 1}\n'
    with pytest.raises(views.UploadError, match="the limit is"):
        views.save_upload(ws, "big.csv", b"x" * 2048, max_bytes=1024)
    # the browser's uploader only offers these types; anything else is refused here too
    with pytest.raises(views.UploadError, match="unsupported file type .txt"):
        views.save_upload(ws, "notes.txt", b"hello")


def test_benchmark_offline_says_it_needs_the_hub(shared, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    at = render("target")
    at.segmented_control[0].set_value("Benchmark").run()
    assert len(at.dataframe[0].value) == 8
    assert "Offline mode is on" in texts(at.warning)
    by_label(at.button, "Load the train split").click().run()
    check(at)
    assert "need the Hugging Face Hub" in texts(at.error)


# --- relevance -------------------------------------------------------------------------------


def test_relevance_highlights_the_top_k_and_explains_it(shared):
    at = render("relevance")
    bars_nll, bars_acc, sweep = figures(at)
    bars = bars_acc.data[0]
    chosen = [x for x, c in zip(bars.x, bars.marker.color, strict=True) if c == views.COLORS["chosen"]]
    assert len(chosen) == 2
    target = views.default_target(shared)
    assert not any(name.split("-step")[0] == target for name in chosen), "the target's own adapters are left out"
    assert len(bars.x) == 16, "every checkpoint has a bar"
    assert any(shape.type == "line" for shape in bars_nll.layout.shapes), "the base model line"
    assert "Kendall" in sweep.data[0].name
    assert "ranks first" in texts(at.info)


def test_relevance_k_larger_than_the_library(shared):
    at = render("relevance")
    at.number_input(key="k").set_value(99).run()
    check(at)
    assert "use k <=" in texts(at.error)


# --- merge methods ---------------------------------------------------------------------------


def test_merge_heatmap_and_the_cell_behind_it(shared):
    at = render("merge")
    heatmap, cell = figures(at)
    assert list(heatmap.data[0].x) == ["k=1", "k=2"] and list(heatmap.data[0].y) == ["linear"]
    assert "min:" in json.dumps(heatmap.data[0].customdata), "per-target accuracy on hover"
    at.selectbox(key="cell_k").set_value(2).run()
    check(at)
    assert set(figures(at)[1].data[0].x) == {"min", "sort"}
    assert any("k=2" in c.value for c in at.caption)


# --- runs: failures, launch, convergence -----------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_and_failed_runs_show_a_clear_message(private):
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.store import create_run
    from mashup_core.training.loop import TrainConfig

    killed = create_run(private, RunSpec(target="min", train=TrainConfig(steps=10)))
    write_json_atomic(private.runs_dir / killed / "status.json",
                      {"state": "running", "pid": _dead_pid(), "created": 1.0})
    failed = create_run(private, RunSpec(target="sort", train=TrainConfig(steps=10)))
    write_json_atomic(private.runs_dir / failed / "status.json",
                      {"state": "failed", "pid": None, "created": 2.0,
                       "error": "ValueError: the loss became NaN"})
    at = render("launch")
    errors = texts(at.error)
    assert f"Run {killed} stopped without recording a result" in errors
    assert f"Run {failed} failed: ValueError: the loss became NaN" in errors

    at.switch_page("pages/convergence.py").run()
    check(at)
    by_label(at.multiselect, "Runs").set_value([]).run()
    check(at)
    assert "Pick at least one run" in texts(at.info)


def test_cancel_a_queued_run_then_resume_it(private):
    from mashup_core.jobs.runner import wait
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.store import create_run, get_run
    from mashup_core.training.loop import TrainConfig

    run_id = create_run(private, RunSpec(target="min", eval_every=1, eval_limit=4,
                                         train=TrainConfig(steps=2, batch_size=4)))
    at = render("launch")
    assert "queued, step 0/2" in progress_texts(at)
    at.button(key=f"cancel-{run_id}").click().run()
    check(at)
    assert get_run(private, run_id).state == "cancelled"
    assert f"Run {run_id} was cancelled" in texts(at.error)
    at.button(key=f"resume-{run_id}").click().run()
    check(at)
    assert wait(private, run_id, timeout=300).state == "done"
    at.run()
    assert "done, step 2/2" in progress_texts(at)


def test_launch_a_tiny_pair_and_see_it_on_convergence(private):
    from mashup_core.jobs.runner import wait
    from mashup_core.jobs.store import list_runs

    at = render("target")
    by_label(at.number_input, "Scoring examples n").set_value(16).run()
    at.switch_page("pages/launch.py").run()
    check(at)
    by_label(at.number_input, "Steps").set_value(10)
    by_label(at.number_input, "Batch size").set_value(8)
    by_label(at.number_input, "Evaluate every").set_value(5)
    by_label(at.number_input, "Validation examples per evaluation").set_value(16)
    by_label(at.button, "Launch").click().run()
    check(at)
    assert "Launched pair" in texts(at.success)
    runs = list_runs(private)
    assert sorted(r["kind"] for r in runs) == ["mashup", "scratch"]
    for r in runs:
        record = wait(private, r["id"], timeout=300)
        assert record.state == "done", (record.status, (record.dir / "log.txt").read_text()[-2000:])

    at.switch_page("pages/convergence.py").run()
    check(at)
    acc = figures(at)[0]
    lines = {trace.name.split(" · ")[0]: trace for trace in acc.data}
    assert {"mashup", "scratch"} <= set(lines)
    assert values(lines["mashup"].x) == [0, 5, 10] and values(lines["scratch"].x) == [0, 5, 10]
    table = at.dataframe[0].value
    assert len(table) == 1 and 0 <= table["parity %"].iloc[0] <= 100
    assert by_label(at.metric, "Training to parity").value.endswith("%")
    assert len(at.download_button) == 2


@pytest.mark.slow
def test_study_button_runs_a_study_in_the_background(private):
    import time

    at = render("merge")
    by_label(at.multiselect, "Targets").set_value(["min", "sort"])
    by_label(at.multiselect, "Merge methods").set_value(["linear"])
    by_label(at.multiselect, "k").set_value([1])
    by_label(at.number_input, "Scoring examples n").set_value(8)
    by_label(at.number_input, "Validation examples").set_value(8)
    by_label(at.button, "Run in the background").click().run()
    check(at)
    (study_dir,) = views.list_studies(private)
    deadline = time.monotonic() + 300
    while study_job(study_dir).get("state") == "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert study_job(study_dir)["state"] == "done", (study_dir / "job.log").read_text()
    at.run()
    check(at)
    assert list(figures(at)[0].data[0].x) == ["k=1"]
