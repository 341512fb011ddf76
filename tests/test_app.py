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
from links import link
from realistic import USER_MAPPING, user_rows  # tests/ is on sys.path (see conftest)

from mashup_core import access, views
from mashup_core.config import init_workspace, load_config
from mashup_core.data.targets import FieldMapping
from mashup_core.demo.story import world_story
from mashup_core.study.job import study_job
from mashup_core.workspace import Workspace, write_json_atomic

pytest.importorskip("streamlit.testing.v1")
from dashboard import app, check, render  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402
from streamlit.testing.v1.util import patch_config_options  # noqa: E402

PAGES = ["overview", "library", "target", "relevance", "relevance_map", "merge", "launch",
         "convergence", "report"]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def progress_texts(at: AppTest) -> str:
    return "\n".join(bar.text for bar in at.get("progress"))


def chosen_target(at: AppTest):
    """The target kept for the other pages (AppTest drops the sidebar after a page switch,
    so the choice is read from the session, where the sidebar reads it too)."""
    return at.session_state["target"] if "target" in at.session_state else None  # noqa: SIM401 (AppTest has .get only from streamlit 1.64)


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
def shared_world(copy_of_tiny_world) -> Workspace:
    """One copy of the tiny world for the read-only page tests (its score cache is shared),
    with a real, small leave-one-out study in it."""
    from mashup_core.study.grid import run_study
    from mashup_core.study.spec import StudySpec

    ws = copy_of_tiny_world("app")
    run_study(ws, StudySpec(tasks=("min", "sort"), methods=("linear",), ks=(1, 2), ns=(8,),
                            eval_limit=8), "loo-test", progress=False, engine="inline")
    return ws


@pytest.fixture
def shared(shared_world, open_in_dashboard) -> Workspace:
    return open_in_dashboard(shared_world)


@pytest.fixture
def private(world_copy, open_in_dashboard) -> Workspace:
    return open_in_dashboard(world_copy)


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
    assert [m.label for m in at.metric] == ["Checkpoints", "Targets", "Runs", "Studies"]
    assert at.metric[0].value == "16" and at.metric[1].value == "8"
    assert len(at.get("page_link")) == 8
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


def test_library_rejects_a_broken_folder_with_its_reason(private, tmp_path):
    broken = tmp_path / "extra" / "broken"
    shutil.copytree(private.library_dir / "sort", broken)
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
        assert at.title[0].value == "Set up this workspace"
        assert "mashup demo build" in texts(at.code)
        assert by_label(at.button, "Build the demo world")


def test_switching_the_workspace_in_the_sidebar(shared, tmp_path):
    at = render()
    assert at.title[0].value == "Mashup Explorer"
    at.text_input(key="workspace").set_value(str(tmp_path / "elsewhere")).run()
    check(at)
    assert at.title[0].value == "Set up this workspace"
    assert str(tmp_path / "elsewhere") in texts(at.markdown)


def test_half_built_workspace_names_the_problem(tiny_world, tmp_path, monkeypatch):
    shutil.copytree(tiny_world.tasks_dir, tmp_path / "ws" / "tasks")
    monkeypatch.setenv("MASHUP_WORKSPACE", str(tmp_path / "ws"))
    at = render("library")
    assert "half-written build" in texts(at.markdown)


# --- target ----------------------------------------------------------------------------------


def upload_page(at: AppTest, name: str, data: bytes, mime: str = "text/plain") -> AppTest:
    at.segmented_control[0].set_value("File").run()
    at.file_uploader[0].set_value((name, data, mime)).run()
    check(at)
    return at


def test_target_demo_task_sets_the_target_for_other_pages(shared):
    at = render("target")
    at.segmented_control[0].set_value("Demo task").run()
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
    assert [a.strip() for a in preview["answer"]] == ["two", "a"]  # choices may carry lm-eval's space
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
    bars_nll, sweep = figures(at)  # the open tab's (loss, the paper's) and the n-sweep
    # lm-eval's acc and the reference's token accuracy: each drawn when its tab is open
    bars_acc = figures(render("relevance", params={"rank": "Accuracy (lm-eval)"}))[0]
    bars_token = figures(render("relevance", params={"rank": "Token accuracy (reference code)"}))[0]
    bars = bars_acc.data[0]
    chosen = [x for x, c in zip(bars.x, bars.marker.color, strict=True) if c == views.COLORS["chosen"]]
    assert len(chosen) == 2
    tokens = bars_token.data[0]
    assert sum(c == views.COLORS["chosen"] for c in tokens.marker.color) == 2
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
    while study_job(study_dir).get("state") in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
    assert study_job(study_dir)["state"] == "done", (study_dir / "job.log").read_text()
    at.run()
    check(at)
    assert list(figures(at)[0].data[0].x) == ["k=1"]


# --- a user's workspace: their base model, adapters and data file, no demo world ---------------

USER_ADAPTERS = {"qv-r4", "all-r8", "all-r16-rslora", "alpha-pattern"}


@pytest.fixture
def user_ws(user_world, tmp_path, monkeypatch) -> Workspace:
    """`mashup init` on tests/realistic.py's world: a Llama base with a BPE tokenizer, its four
    PEFT adapters, and data/user.jsonl read through USER_MAPPING. Nothing of the demo here."""
    ws = Workspace(tmp_path / "user-ws")
    init_workspace(ws, str(user_world["base"]), [str(user_world["adapters_dir"])],
                   [{"kind": "file", "name_or_path": str(user_world["jsonl"]), "mapping": USER_MAPPING}])
    monkeypatch.setenv("MASHUP_WORKSPACE", str(ws.root))
    return ws


def button_labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]  # form submit buttons included


@pytest.mark.parametrize("page", PAGES)
def test_user_workspace_every_page_renders(user_ws, page):
    at = render(page)
    assert at.title and at.title[0].value != "Set up this workspace"
    assert not at.error, texts(at.error)
    assert not user_ws.manifest_path.exists(), "no demo world was made on the way"


def test_user_library_lists_its_adapters_with_provenance(user_ws, user_world):
    at = render("library")
    frame = at.dataframe[0].value
    assert set(frame["name"]) == USER_ADAPTERS
    assert frame["status"].str.startswith("ok").all(), list(frame["status"])
    assert set(frame["source"]) == {str(user_world["adapters_dir"])}
    assert set(frame["trained on"]) == {str(user_world["base"])}
    assert set(frame["rank"]) == {4, 8, 16}
    assert not figures(at), "the transfer heatmap is the demo world's; there is none here"


def test_a_source_added_on_the_library_page_survives_a_reload(user_ws, user_world, tmp_path):
    more = tmp_path / "more"
    shutil.copytree(user_world["adapters"]["qv-r4"], more / "qv-r4-copy")
    at = render("library")
    by_label(at.text_input, "Folder or Hub id").set_value(str(more))
    by_label(at.button, "Validate and add").click().run()
    check(at)
    assert load_config(user_ws).sources == [str(user_world["adapters_dir"]), str(more)]

    reloaded = render("library")  # a new session: only what is on disk is left
    assert set(reloaded.dataframe[0].value["name"]) == USER_ADAPTERS | {"qv-r4-copy"}
    reloaded.button(key="remove-source-1").click().run()
    check(reloaded)
    assert load_config(user_ws).sources == [str(user_world["adapters_dir"])]
    assert set(reloaded.dataframe[0].value["name"]) == USER_ADAPTERS


def test_user_target_shows_the_file_through_its_mapping(user_ws):
    at = render("target")
    assert at.segmented_control[0].value == "Workspace targets"
    configured = at.dataframe[0].value
    assert list(configured["target"]) == ["user"] and "option_a" in configured["field mapping"][0]
    preview = at.dataframe[1].value
    train = [r for i, r in enumerate(user_rows()) if i % 5 != 4]  # one file: every 5th is held out
    assert list(preview["prompt"]) == [f"Question: {r['question']}\nAnswer:" for r in train[:8]]
    assert [a.strip() for a in preview["answer"]] == [r[f"option_{r['answer'].lower()}"] for r in train[:8]]
    assert chosen_target(at).label == "user.jsonl (file)"
    assert f"{len(train)} train examples" in texts(at.caption)


def test_target_page_adds_a_benchmark_with_local_data_and_a_file(user_ws, user_world, tmp_path):
    rows = [json.loads(line)["row"] for line in
            (Path(__file__).parent / "data" / "benchmark_rows.jsonl").read_text().splitlines()
            if json.loads(line)["benchmark"] == "arc_easy"]
    local = tmp_path / "arc" / "train.jsonl"  # the Hub's layout: <split>.jsonl in the Hub schema
    local.parent.mkdir()
    local.write_text("".join(json.dumps(r) + "\n" for r in rows))

    at = render("target")
    at.segmented_control[0].set_value("Benchmark").run()
    by_label(at.selectbox, "Benchmark").set_value("arc_easy").run()
    by_label(at.text_input, "Local data").set_value(str(local.parent)).run()
    by_label(at.button, "Load the train split").click().run()
    check(at)
    assert list(at.dataframe[1].value["prompt"]) == [f"Question: {r['question']}\nAnswer:" for r in rows]
    by_label(at.button, "Add to the workspace's targets").click().run()
    check(at)
    assert load_config(user_ws).targets[-1] == {"kind": "benchmark", "name_or_path": "arc_easy",
                                                "data": str(local.parent)}

    # the same rows as a CSV: its name ("user") is taken by the JSONL target, so it is refused
    # with the reason, and the JSONL target stays; under another name it is added
    at.segmented_control[0].set_value("File").run()

    def add_file(path) -> None:
        by_label(at.text_input, "or a file or folder").set_value(str(path)).run()
        by_label(at.text_input, "Prompt template").set_value("Question: {question}\\nAnswer:").run()
        check(at)
        assert chosen_target(at).label == f"{Path(path).name} (file)"
        by_label(at.button, "Add to the workspace's targets").click().run()
        check(at)

    add_file(user_world["csv"])
    assert "a target named 'user' already" in texts(at.error)
    add_file(shutil.copy(user_world["csv"], tmp_path / "user-2.csv"))
    assert not at.error
    targets = load_config(user_ws).targets
    assert [t["name_or_path"] for t in targets] == [str(user_world["jsonl"]), "arc_easy",
                                                    str(tmp_path / "user-2.csv")]
    assert FieldMapping.from_dict(targets[-1]["mapping"]) == FieldMapping(**USER_MAPPING)


def test_user_launch_shows_the_study_and_runs_a_tiny_pair(user_ws, user_world):
    from mashup_core.jobs.runner import wait
    from mashup_core.jobs.store import list_runs

    at = render("launch")
    assert by_label(at.text_input, "Base model").value == str(user_world["base"])
    assert by_label(at.multiselect, "Library sources").value == [str(user_world["adapters_dir"])]
    assert by_label(at.selectbox, "Target").value == "user.jsonl (file)"
    assert "Question: {question}" in texts(at.caption), "the target's field mapping is shown"
    finetune = by_label(at.radio, "Finetune")
    assert finetune.value == "lora"
    assert by_label(at.number_input, "Learning rate").value == pytest.approx(2.7e-4)
    finetune.set_value("full").run()
    assert by_label(at.number_input, "Learning rate").value == pytest.approx(2.7e-5)
    by_label(at.radio, "Finetune").set_value("lora").run()

    for label, value in (("Steps", 4), ("Batch size", 4), ("Evaluate every", 2),
                         ("Train examples", 16), ("Validation examples per evaluation", 8)):
        by_label(at.number_input, label).set_value(value)
    # the adapters differ in target modules and rank: the page starts on a merge that takes any
    # two of them ('linear' adds factors entry by entry and would refuse most pairs)
    assert by_label(at.selectbox, "Merge method").value == "cat"
    by_label(at.button, "Launch").click().run()
    check(at)
    assert "Launched pair" in texts(at.success)
    records = {r["kind"]: wait(user_ws, r["id"], timeout=300) for r in list_runs(user_ws)}
    assert set(records) == {"mashup", "scratch"}
    for record in records.values():
        assert record.state == "done", (record.status, (record.dir / "log.txt").read_text()[-2000:])
        assert [e["step"] for e in record.evals] == [0, 2, 4]
    spec = records["mashup"].spec
    assert spec.base_model == str(user_world["base"])
    assert spec.library == [str(user_world["adapters_dir"])]
    assert (spec.finetune, spec.train.lr, spec.train_limit) == ("lora", pytest.approx(2.7e-4), 16)
    assert FieldMapping.from_dict(spec.target["mapping"]) == FieldMapping(**USER_MAPPING)
    assert set(records["mashup"].selection["selected"]) <= USER_ADAPTERS

    at.switch_page("pages/convergence.py").run()
    check(at)
    lines = {trace.name.split(" · ")[0]: trace for trace in figures(at)[0].data}
    assert values(lines["mashup"].x) == [0, 2, 4] and values(lines["scratch"].x) == [0, 2, 4]
    assert len(at.dataframe[0].value) == 1, "the pair's parity row"


def test_user_merge_page_shows_a_study_over_its_own_targets(user_ws):
    from mashup_core.study.grid import run_study
    from mashup_core.study.spec import StudySpec

    run_study(user_ws, StudySpec(tasks=("user",), methods=("cat",), ks=(1, 2), ns=(8,),
                                 eval_limit=8), "user-study", progress=False, engine="inline")
    at = render("merge")
    heatmap, cell = figures(at)
    assert list(heatmap.data[0].x) == ["k=1", "k=2"] and list(heatmap.data[0].y) == ["cat"]
    assert list(cell.data[1].x) == ["user"]
    assert by_label(at.multiselect, "Targets").value == ["user"], "a new study: its own targets"


def test_first_screen_sets_up_a_workspace(user_world, tmp_path, monkeypatch):
    root = tmp_path / "new"
    monkeypatch.setenv("MASHUP_WORKSPACE", str(root))
    at = render()
    assert at.title[0].value == "Set up this workspace"
    by_label(at.text_input, "Base model").set_value(str(tmp_path / "no-such-model"))
    by_label(at.text_area, "Checkpoint sources").set_value(str(user_world["adapters_dir"]))
    by_label(at.button, "Create the workspace").click().run()
    check(at)
    assert "no such folder" in texts(at.error) and not (root / "mashup.toml").exists()

    by_label(at.text_input, "Base model").set_value(str(user_world["base"]))
    by_label(at.text_input, "Your data").set_value(str(user_world["csv"])).run()
    check(at)  # the CSV's columns are guessed: four option columns, a letter answer
    assert by_label(at.multiselect, "Choices").value == ["option_a", "option_b", "option_c", "option_d"]
    assert (by_label(at.selectbox, "Gold label").value, by_label(at.selectbox, "Gold format").value) \
        == ("answer", "letter")
    by_label(at.text_input, "Prompt template").set_value("Question: {question}\\nAnswer:")
    by_label(at.button, "Create the workspace").click().run()
    check(at)
    config = load_config(Workspace(root))
    assert config.base_model == str(user_world["base"])
    assert config.sources == [str(user_world["adapters_dir"])]
    (target,) = config.targets
    assert target["name_or_path"] == str(user_world["csv"])
    assert FieldMapping.from_dict(target["mapping"]) == FieldMapping(**USER_MAPPING)
    assert at.title[0].value == "Mashup Explorer", "the study opens right away"


# --- shared safely: read-only and token ---------------------------------------------------------

WRITE_BUTTONS = ("Launch", "Cancel", "Resume", "Remove", "Validate and add", "Add to",
                 "Build", "Run in the background", "Create the workspace")


def _no_write_widgets(at: AppTest, where: str) -> None:
    check(at)
    assert not [b for b in button_labels(at) if b.startswith(WRITE_BUTTONS)], (where, button_labels(at))
    # no path to type: neither the workspace nor a source, a data file or local data
    assert not at.text_input and not at.text_area, (where, [w.label for w in at.text_input])
    assert not at.get("file_uploader"), where


def test_read_only_shows_no_write_widget_and_the_core_refuses(private, tmp_path, monkeypatch):
    from mashup_core.config import add_source, resolve_config
    from mashup_core.jobs.runner import cancel, launch_pair
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.store import create_run, list_runs
    from mashup_core.jobs.workspace_spec import workspace_run_spec
    from mashup_core.training.loop import TrainConfig

    queued = create_run(private, RunSpec(target="min", train=TrainConfig(steps=2)))  # a Cancel button
    failed = create_run(private, RunSpec(target="sort", train=TrainConfig(steps=2)))  # a Resume one
    write_json_atomic(private.runs_dir / failed / "status.json",
                      {"state": "failed", "pid": None, "created": 2.0, "error": "boom"})
    monkeypatch.setenv("MASHUP_READ_ONLY", "1")

    at = render()  # AppTest keeps the sidebar only for the first page it runs
    assert "Read-only" in texts(at.sidebar.caption)
    _no_write_widgets(at, "overview")
    for page in PAGES[1:]:
        at.switch_page(f"pages/{page}.py").run()
        _no_write_widgets(at, page)
        if page == "target":
            for source in ("Benchmark", "File"):
                at.segmented_control[0].set_value(source).run()
                _no_write_widgets(at, f"target: {source}")
        if page == "launch":
            assert "Launching is disabled" in texts(at.info)
            assert "queued, step 0/2" in progress_texts(at), "the runs are still shown"

    spec = workspace_run_spec(resolve_config(private), {"kind": "demo", "name_or_path": "min"},
                              kind="mashup", steps=2)
    message = ("this dashboard is read-only: launching a run is disabled "
               "(started with --read-only)")
    with pytest.raises(access.ReadOnlyError) as refused:
        launch_pair(private, spec)
    assert str(refused.value) == message
    with pytest.raises(access.ReadOnlyError, match="cancelling a run is disabled"):
        cancel(private, queued)
    with pytest.raises(access.ReadOnlyError, match="changing the workspace config"):
        add_source(private, str(tmp_path))
    assert len(list_runs(private)) == 2 and str(tmp_path) not in load_config(private).sources

    monkeypatch.setenv("MASHUP_WORKSPACE", str(tmp_path / "empty"))  # nothing to set up from here
    at = render()
    assert at.title[0].value == "Set up this workspace"
    _no_write_widgets(at, "first screen")


def test_a_token_unlocks_write_actions(private, tmp_path, monkeypatch):
    """AppTest runs app.py (the sidebar) only on its first run; later runs run the page alone
    (Streamlit 1.67, with st.navigation). So the sidebar is checked on first runs, and what
    the token field did is read from the session and the page."""
    from mashup_core.config import add_source

    token = "correct-horse-battery"
    monkeypatch.setenv("MASHUP_TOKEN", token)
    at = render()
    assert not [w for w in at.text_input if w.key == "workspace"], "locked: the workspace is fixed"
    assert "enter the access token" in texts(at.sidebar.caption)
    with pytest.raises(access.TokenRequiredError, match="needs it"):
        add_source(private, str(tmp_path))  # the core refuses a call without the token

    at.text_input(key="access_token_input").set_value("a-wrong-guess").run()
    check(at)
    assert "access_token" not in at.session_state
    at.switch_page("pages/launch.py").run()
    assert "Launch mashup + scratch" not in button_labels(at) and "locked" in texts(at.info)

    at = render()
    at.text_input(key="access_token_input").set_value(token).run()
    check(at)
    assert at.session_state["access_token"] == token
    at.switch_page("pages/launch.py").run()
    check(at)
    assert "Launch mashup + scratch" in button_labels(at)

    unlocked = app(session={"access_token": token})
    unlocked.run()
    assert [w for w in unlocked.text_input if w.key == "workspace"], "unlocked: the input is back"
    with access.granted(token):  # what the page does around a write action
        add_source(private, str(tmp_path))
    assert str(tmp_path) in load_config(private).sources


# --- shareable views: the query string -------------------------------------------------------


@pytest.fixture(scope="module")
def story_world(copy_of_tiny_world) -> Workspace:
    """A copy of the tiny world with a finished two-target study written in the study's own
    file shapes (tests/scale_world.py), for the link and teaching tests."""
    import random

    from scale_world import write_study

    ws = copy_of_tiny_world("story")
    write_study(ws, "loo-test", ("min", "sort"), ("linear", "ties"), (1, 2), random.Random(0))
    return ws


@pytest.fixture
def story(story_world, open_in_dashboard) -> Workspace:
    return open_in_dashboard(story_world)


def test_a_link_opens_its_target_and_a_change_writes_the_link(story):
    at = render(params={"target": "sort", "n": "16"})
    assert (chosen_target(at).label, chosen_target(at).n) == ("sort (demo task)", 16)
    assert any(c.value == "**Target:** sort (demo task) · n = 16" for c in at.sidebar.caption)
    at.switch_page("pages/relevance.py").run()
    check(at)
    assert "**16**" in at.markdown[0].value and "sort" in at.markdown[0].value

    at.switch_page("pages/target.py").run()
    check(at)
    by_label(at.selectbox, "Target").set_value("min (demo task)").run()
    check(at)
    assert chosen_target(at).label == "min (demo task)"
    assert (link(at, "target"), link(at, "n")) == ("min", "16")


def test_an_unknown_target_in_the_link_is_a_notice(story):
    at = render(params={"target": "no-such-task"})
    assert "The link names target **no-such-task**" in texts(at.warning)
    default = world_story(story).default_target
    assert chosen_target(at) is None or chosen_target(at).label == f"{default} (demo task)"
    assert link(at, "target") == default, "the link now names the target on screen"


def test_the_study_and_the_view_live_in_the_link(story):
    at = render()
    at.query_params["study"] = "loo-test"
    at.switch_page("pages/merge.py").run()
    check(at)
    assert by_label(at.selectbox, "Study").value == "loo-test"
    assert link(at, "study") == "loo-test"

    at = render()
    at.query_params["study"] = "gone-study"
    at.switch_page("pages/merge.py").run()
    check(at)
    assert "**gone-study** is not in this workspace" in texts(at.warning)
    assert link(at, "study") == "loo-test"


# --- teaching mode ---------------------------------------------------------------------------


def notes(at: AppTest) -> str:
    return "\n".join(i.value for i in at.info if "What to notice" in i.value)


def test_teaching_mode_notes_are_this_workspaces_numbers(story):
    from mashup_core.study.report import study_table

    at = render(params={"teach": "1"})
    assert at.toggle(key="teach").value is True
    summary = views.workspace_summary(story, load_config(story) or _demo_config(story), 16)
    assert f"This study has {summary.checkpoints} checkpoint(s)" in notes(at)
    assert f"and {summary.targets} target(s)" in notes(at)
    assert "Next step: Library" in " ".join(link.proto.label for link in at.get("page_link"))

    target = chosen_target(at).spec["name_or_path"] if chosen_target(at) else \
        world_story(story).default_target
    best = world_story(story).best[target]
    at.switch_page("pages/library.py").run()
    check(at)
    assert (f"{target}'s best donor is {best.donor} (acc {best.donor_acc:.2f} vs base "
            f"{best.base_acc:.2f})") in notes(at)
    assert link(at, "teach") == "1", "teaching mode stays in the link"

    table = study_table(story.studies_dir / "loo-test")
    ranks = table.mean_rank.stack().dropna()
    (label, k), rank = ranks.idxmin(), ranks.min()
    at.switch_page("pages/merge.py").run()
    check(at)
    assert f"{label}, k={k} ranks best here (mean rank {rank:.2f} over 2 target(s))" in notes(at)
    accs = table.accuracies(label, int(k))
    assert f"It averages {np.mean(list(accs.values())):.2f} accuracy" in notes(at)
    assert "Next step: Launch" in " ".join(link.proto.label for link in at.get("page_link"))


def test_teaching_mode_is_off_by_default(story):
    at = render()
    assert at.toggle(key="teach").value is False
    for page in ("library", "target", "merge"):
        at.switch_page(f"pages/{page}.py").run()
        check(at)
        assert not notes(at), page
        assert not any("Next step" in link.proto.label for link in at.get("page_link")), page
    assert "teach" not in at.query_params


def _demo_config(ws):
    from mashup_core.config import demo_config

    return demo_config(ws)


# --- the relevance map -----------------------------------------------------------------------

MAP_N = 8  # a small n keeps scoring quick; the link's ?n= sets it
MAP_TARGETS = ("min", "sort", "count")


def test_relevance_map_cells_are_the_cached_scores(story):
    from mashup_core.views import relevance_map as rmap

    specs = rmap.map_targets(load_config(story) or _demo_config(story))
    tables = {t: views.relevance_table(story, specs[t], MAP_N) for t in MAP_TARGETS}
    at = render("relevance_map", params={"target": "min", "n": str(MAP_N), "values": "raw",
                                         "order": "name"})
    (heatmap,) = figures(at)
    cells = heatmap.data[0]
    assert set(cells.x) == set(MAP_TARGETS) and len(cells.y) == 16
    for i, name in enumerate(cells.y):
        for j, target in enumerate(cells.x):
            assert cells.z[i][j] == pytest.approx(tables[target].row(name).acc, abs=1e-12)
    missing = [t for t in specs if t not in MAP_TARGETS]
    assert all(t in texts(at.info) for t in missing), "what is not scored yet is named"
    assert by_label(at.button, f"Score {len(missing)} target(s)")

    at.segmented_control(key="map_values").set_value("gain").run()
    check(at)
    cells = figures(at)[0].data[0]
    for i, name in enumerate(cells.y):
        for j, target in enumerate(cells.x):
            gain = tables[target].row(name).acc - tables[target].base.acc
            assert cells.z[i][j] == pytest.approx(gain, abs=1e-12)
    assert link(at, "values") == "gain" or "values" not in at.query_params


def test_relevance_map_read_only_shows_the_cache_and_writes_nothing(story, monkeypatch):
    def written() -> list:
        return sorted((p, p.stat().st_mtime_ns) for p in story.cache_dir.rglob("*") if p.is_file())

    monkeypatch.setenv("MASHUP_READ_ONLY", "1")
    before = written()
    at = render("relevance_map", params={"target": "min", "n": "5"})  # an n nothing was scored at
    assert "only shows scores already computed" in texts(at.info)
    assert not [b for b in button_labels(at) if b.startswith("Score")]
    assert written() == before


def test_relevance_map_scores_the_missing_targets_on_request(private):
    at = render("relevance_map", params={"target": "min", "n": "4"}, timeout=300)
    assert not figures(at), "nothing scored yet: no map, no waiting"
    by_label(at.button, "Score 8 target(s)").click().run()
    check(at)
    (heatmap,) = figures(at)
    assert len(set(heatmap.data[0].x)) == 8 and len(heatmap.data[0].y) == 16
