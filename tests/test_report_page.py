"""The Report page (issue 9, item 2) on a real tiny study: 2 targets × 2 lrs, trained for a few
steps on the tiny world. The page's table rows, figures and downloads are the core's
(`views.report`, `study.export`); the study is in the link (?study=); teaching mode's note
carries the study's own numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from links import link

from mashup_core.compare.protocol import MEAN
from mashup_core.study.report import study_table
from mashup_core.views import report, teaching
from mashup_core.views.export import results_markdown
from mashup_core.workspace import Workspace

pytest.importorskip("streamlit.testing.v1")
from dashboard import check, render  # noqa: E402 (tests/ is on sys.path)
from streamlit.runtime.memory_media_file_storage import _calculate_file_id  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402
from test_app import figures, values  # noqa: E402

STUDY = "tiny-trained"
LRS = (1e-4, 1e-3)


@pytest.fixture(scope="module")
def trained_world(copy_of_tiny_world) -> Workspace:
    """A copy of the tiny world with a real trained study (2 targets, 2 lrs, 4 steps each) and
    a merge-only one."""
    from mashup_core.study.grid import run_study
    from mashup_core.study.spec import StudySpec

    ws = copy_of_tiny_world("report")
    run_study(ws, StudySpec(tasks=("min", "sort"), methods=("linear",), ks=(1,), ns=(16,),
                            eval_limit=16, lrs=LRS, train=True, train_steps=4, eval_every=2,
                            train_batch_size=8), STUDY, progress=False, engine="inline")
    run_study(ws, StudySpec(tasks=("min", "sort"), methods=("linear",), ks=(1, 2), ns=(8,),
                            eval_limit=8), "merge-only", progress=False, engine="inline")
    return ws


@pytest.fixture
def trained(trained_world, open_in_dashboard) -> Workspace:
    return open_in_dashboard(trained_world)


def open_report(study: str, teach: bool = False) -> AppTest:
    return render("report", params={"study": study, **({"teach": "1"} if teach else {})})


def download(at: AppTest, label: str):
    found = [b for b in at.get("download_button") if b.proto.label == label]
    assert found, [b.proto.label for b in at.get("download_button")]
    return found[0].proto


def holds(button, text: str, mime: str, file_name: str) -> bool:
    """Does this (eager) download button serve exactly `text` as `file_name`? Streamlit names
    a file by the hash of its bytes, type and name."""
    file_id = _calculate_file_id(text.encode("utf-8"), mime, file_name)
    return Path(button.url).stem == file_id


def notes(at: AppTest) -> str:
    return "\n".join(i.value for i in at.info if "What to notice" in i.value)


def test_the_report_shows_the_core_table_figures_and_exports(trained):
    at = open_report(STUDY)
    table = study_table(trained.studies_dir / STUDY)
    best = table.best_setting("train")
    results = report.results_frame(table, best)
    shown = at.dataframe[0].value
    assert list(shown["target"]) == ["min", "sort", MEAN] == list(results["target"])
    assert list(shown["mashup acc"]) == list(report.text_frame(results)["mashup acc"])

    drawn = [f for f in report.report_figures(table, best) if f.figure is not None]
    assert [f.name for f in drawn] == ["fig3_mean_rank_merged", "fig3_mean_rank_trained",
                                       "fig4_accuracy_vs_lr", "fig5_accuracy_vs_lr_per_target"]
    charts = figures(at)
    assert len(charts) == len(drawn)
    fig4 = charts[2]
    assert {t.name.split(" (")[0] for t in fig4.data} == {"from scratch", "mashup"}
    for trace in fig4.data:
        assert values(trace.x) == pytest.approx(list(LRS))
    assert "Not drawn: needs a study with several n" in "\n".join(c.value for c in at.caption)

    csv = download(at, "Table (CSV)")
    assert holds(csv, results.to_csv(index=False), "text/csv", f"{STUDY}-results.csv")
    assert holds(download(at, "Report (Markdown)"), results_markdown(table, STUDY),
                 "text/markdown", f"{STUDY}-results.md")
    html = [b for b in at.get("download_button") if b.proto.label == "HTML"]
    assert len(html) == len(drawn) and all(b.proto.deferred_file_id for b in html)
    assert link(at, "study") == STUDY


def test_a_merge_only_study_shows_the_best_merge_against_the_base(trained):
    at = open_report("merge-only")
    table = study_table(trained.studies_dir / "merge-only")
    merged = report.merge_frame(table)
    assert list(at.dataframe[0].value["target"]) == list(merged["target"])
    assert holds(download(at, "Table (CSV)"), merged.to_csv(index=False), "text/csv",
                 "merge-only-results.csv")
    captions = "\n".join(c.value for c in at.caption)
    assert "Not drawn: needs a study that trains" in captions


def test_the_study_in_the_link_round_trips(trained):
    at = open_report("merge-only")
    assert at.selectbox(key="report_study").value == "merge-only"
    at.selectbox(key="report_study").set_value(STUDY).run()
    check(at)
    assert link(at, "study") == STUDY
    at.switch_page("pages/merge.py").run()  # the study page shares the choice
    check(at)
    assert link(at, "study") == STUDY

    at = open_report("no-such-study")
    assert "no-such-study" in "\n".join(w.value for w in at.warning)
    assert link(at, "study") in (STUDY, "merge-only")


def test_teaching_mode_notes_carry_the_studys_numbers(trained):
    table = study_table(trained.studies_dir / STUDY)
    results = report.results_frame(table, table.best_setting("train"))
    expected = teaching.report_notes(results)
    rows = results[results["target"] != MEAN]
    wins = int((rows["mashup acc"] > rows["scratch acc"]).sum())
    delta = 100 * (rows["mashup acc"] - rows["scratch acc"]).mean()
    assert expected[0].startswith(f"Mashup beats scratch on {wins} of 2 target(s); mean Δ "
                                  f"{delta:+.1f} pp")

    at = open_report(STUDY, teach=True)
    assert expected[0] in notes(at)
    assert not any("Next step" in link.proto.label for link in at.get("page_link")), \
        "the Report is the walk's last page"

    at = open_report(STUDY)
    assert not notes(at)


def test_the_report_is_on_the_overview_and_in_the_walk(trained):
    at = render()
    assert "report" in [link.proto.page for link in at.get("page_link")]
    from pages import _ui

    assert _ui.WALK[-1][0] == "pages/report.py", "the walk ends on the Report"
    at = open_report(STUDY, teach=True)
    assert "That is the whole method" in "\n".join(s.value for s in at.success)


# --- first open and the study launcher: records of live background jobs ----------------------


@pytest.fixture
def sleeper():
    """A live process in its own group, standing in for a background job's pid."""
    import subprocess

    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_pages_say_what_the_demo_content_is_still_computing(world_copy, open_in_dashboard,
                                                            sleeper):
    from mashup_core.demo.content import content_status, study_counts, update_record
    from mashup_core.jobs.processes import process_start

    open_in_dashboard(world_copy)
    update_record(world_copy, state="running", pid=sleeper.pid, pid_start=process_start(sleeper.pid))
    update_record(world_copy, "world", state="done")
    update_record(world_copy, "study", state="running")
    status = content_status(world_copy)
    assert status["state"] == "running" and status["stages"]["study"]["state"] == "running"
    done, total = study_counts(world_copy)

    at = render()
    infos = "\n".join(i.value for i in at.info)
    assert status["message"] in infos and "Ready: the demo world" in infos
    captions = "\n".join(c.value for c in at.caption)
    assert f"the leave-one-out study: running ({done} of {total} cells)" in captions
    at.switch_page("pages/merge.py").run()
    check(at)
    infos = "\n".join(i.value for i in at.info)
    assert f"Computing the leave-one-out study in the background — {done} of {total} cells" in infos
    assert "No study in this workspace" not in infos

    sleeper.kill()  # the job gone before the study finished: it says so, and how to resume
    sleeper.wait()
    at = render()
    assert "resumes it" in "\n".join(w.value for w in at.warning)


def test_a_user_workspace_shows_no_content_line(trained):
    at = render()
    assert not [i for i in at.info if "Computing" in i.value or "demo's" in i.value]


def test_the_launcher_shows_engine_progress_and_cancels(trained, monkeypatch, sleeper):
    from mashup_core.study.engine import PROGRESS_FILE
    from mashup_core.study.job import STUDY_JOB, study_job
    from mashup_core.workspace import write_json_atomic

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    study_dir = trained.studies_dir / STUDY
    write_json_atomic(study_dir / STUDY_JOB, {"state": "running", "pid": sleeper.pid,
                                              "engine": "ray", "address": "ray://head:10001"})
    write_json_atomic(study_dir / PROGRESS_FILE, {
        "state": "running", "cells_total": 12, "cells_done": 5,
        "tasks": {"done": 3, "running": 2, "failed": 1, "pending": 4},
        "nodes": {"10.0.0.2": {"running": 1, "done": 2}}})
    at = render("merge", params={"study": STUDY})
    text = "\n".join(bar.text for bar in at.get("progress"))
    assert "ray://head:10001: 5/12 cells" in text and "failed 1" in text
    [nodes] = [c.value for c in at.caption if c.value.startswith("Per node:")]
    assert "10.0.0.2: " in nodes and "running 1" in nodes and "done 2" in nodes
    address = [t for t in at.text_input if t.label == "Ray cluster address"]
    assert address and address[0].value == "ray://head:10001", "RAY_ADDRESS is the default"

    [cancel] = [b for b in at.button if b.label == "Cancel the study"]
    cancel.click().run()
    check(at)
    assert sleeper.wait(timeout=10) != 0, "the job got SIGTERM"
    assert study_job(study_dir)["state"] == "cancelled"
    assert "cancelled" in "\n".join(w.value for w in at.warning)
