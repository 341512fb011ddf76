"""The dashboard in a real browser: `streamlit run app.py` on a copy of the tiny world, driven
by Debian's Chromium through Playwright. Walks every page, launches a tiny pair of runs and
waits for its curve; saves a screenshot of each page under test-artifacts/screenshots/."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from realistic import USER_MAPPING, user_rows  # tests/ is on sys.path (see conftest)

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # an install without the test extras
    sync_playwright = expect = None

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
PAGES = {  # screenshot name -> (sidebar link, the page's heading)
    "overview": ("Overview", "Mashup Explorer"), "library": ("Library", "Checkpoint library"),
    "target": ("Target", "Target task"), "relevance": ("Relevance", "Relevance"),
    "relevance_map": ("Relevance map", "Relevance map"),
    "merge": ("Merge methods", "Merge methods"), "launch": ("Launch", "Launch a run"),
    "convergence": ("Convergence", "Convergence"), "report": ("Report", "Report"),
}
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"


def _need(what: str, ok: bool) -> None:
    """Skip without `what`, except on CI, where a missing browser is a broken setup."""
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} is missing on CI")
        pytest.skip(f"{what} is missing")


@contextmanager
def _serve(root: Path, tmp_path: Path) -> Iterator[str]:
    """A Streamlit server on `root` at a free loopback port; always terminated."""
    _need("Playwright", sync_playwright is not None)
    _need(f"Chromium at {CHROMIUM}", CHROMIUM.exists())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below, after the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "MASHUP_WORKSPACE": str(root)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not become healthy in 90 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def server(world_copy, tmp_path):
    """The app on a copy of the tiny demo world."""
    with _serve(world_copy.root, tmp_path) as url:
        yield url, world_copy


@pytest.fixture
def user_server(user_world, tmp_path):
    """The app on a user's workspace made by `mashup init`: tests/realistic.py's Llama base
    with a BPE tokenizer, its four PEFT adapters and data/user.jsonl through its field
    mapping. No demo world anywhere in it."""
    from mashup_core.config import init_workspace
    from mashup_core.workspace import Workspace

    ws = Workspace(tmp_path / "user-ws")
    init_workspace(ws, str(user_world["base"]), [str(user_world["adapters_dir"])],
                   [{"kind": "file", "name_or_path": str(user_world["jsonl"]),
                     "mapping": USER_MAPPING}])
    with _serve(ws.root, tmp_path) as url:
        yield url, ws, user_world


@contextmanager
def _browser() -> Iterator:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 2000})
        finally:
            browser.close()


def grid_rows(page, index: int = 0) -> list[list[str]]:
    """The cells of the index-th st.dataframe, as the grid's accessible table has them."""
    table = page.get_by_test_id("stDataFrame").nth(index).locator("table")
    # the grid draws on a canvas and keeps this table (visually hidden) for screen readers
    table.locator("tbody tr td").first.wait_for(state="attached", timeout=30_000)
    return [row.locator("td").all_text_contents() for row in table.locator("tbody tr").all()]


def settle(page, timeout: float = 180_000) -> None:
    """Wait until the script run is over (fragments may start again later)."""
    page.wait_for_selector(IDLE, timeout=timeout)
    page.wait_for_timeout(500)


def open_page(page, name: str) -> None:
    """Follow the sidebar link (one browser session, so the session state is kept)."""
    link, heading = PAGES[name]
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=link, exact=True).click()
    page.get_by_role("heading", name=heading, level=1).wait_for(timeout=180_000)
    settle(page)
    assert page.get_by_test_id("stException").count() == 0, f"{name}: an exception is shown"


def test_walk_every_page_launch_and_watch_the_curve(server):
    from mashup_core.jobs.runner import wait
    from mashup_core.jobs.store import list_runs


    url, ws = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with _browser() as page:
        page.goto(url)
        page.get_by_role("heading", name="Mashup Explorer", level=1).wait_for(timeout=120_000)
        settle(page)
        for name in PAGES:
            open_page(page, name)
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

        # a tiny pair: 10 steps, evaluated every 5, watched live on the Launch page
        open_page(page, "launch")
        for label, value in (("Steps", "10"), ("Batch size", "8"), ("Evaluate every (steps)", "5"),
                             ("Validation examples per evaluation (0 = all)", "16")):
            page.get_by_role("spinbutton", name=label, exact=True).fill(value)
        page.get_by_role("button", name="Launch mashup + scratch").click()
        page.get_by_text("Launched pair").wait_for(timeout=60_000)
        for run in list_runs(ws):
            record = wait(ws, run["id"], timeout=400)
            assert record.state == "done", (record.dir / "log.txt").read_text()[-2000:]
        expect(page.get_by_text("done, step 10/10")).to_have_count(2, timeout=30_000)
        page.get_by_test_id("stPlotlyChart").first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "launch-done.png"), full_page=True)

        open_page(page, "convergence")
        page.get_by_role("heading", name="Training to parity").wait_for(timeout=60_000)
        assert page.get_by_test_id("stPlotlyChart").count() >= 1
        assert page.get_by_text("Training to parity").count() >= 1
        page.screenshot(path=str(SHOTS / "convergence-done.png"), full_page=True)


def test_a_user_workspace_without_a_demo_world(user_server):
    """The pages read mashup.toml: the Library lists the user's four adapters with their
    source, the Target page shows their file's rows through its field mapping."""
    url, ws, user_world = user_server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with _browser() as page:
        page.goto(url)
        page.get_by_role("heading", name="Mashup Explorer", level=1).wait_for(timeout=120_000)
        settle(page)
        assert page.get_by_test_id("stMetricValue").first.inner_text() == "4"
        page.screenshot(path=str(SHOTS / "user-overview.png"), full_page=True)

        open_page(page, "library")
        rows = grid_rows(page)
        assert sorted(r[0] for r in rows) == ["all-r16-rslora", "all-r8", "alpha-pattern", "qv-r4"]
        assert all(r[2] == "ok" for r in rows), rows  # name, stage, status, ...
        assert page.get_by_text("4 usable checkpoints").count() == 1
        assert page.get_by_role("heading", name="Transfer: which adapter helps which task?").count() == 0
        page.screenshot(path=str(SHOTS / "user-library.png"), full_page=True)

        open_page(page, "target")
        configured = grid_rows(page, 0)
        assert configured[0][:2] == ["user", "file"] and "option_a" in configured[0][3]
        preview = grid_rows(page, 1)
        train = [r for i, r in enumerate(user_rows()) if i % 5 != 4]  # every 5th is held out
        # the mapped prompt, "Question: {question}\nAnswer:" (the grid shows the newline as a space)
        assert [" ".join(r[0].split()) for r in preview] == [f"Question: {r['question']} Answer:"
                                                             for r in train[:8]]
        assert [r[2].strip() for r in preview] == [r[f"option_{r['answer'].lower()}"] for r in train[:8]]
        page.screenshot(path=str(SHOTS / "user-target.png"), full_page=True)

        open_page(page, "relevance")
        page.get_by_test_id("stPlotlyChart").first.wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "user-relevance.png"), full_page=True)
        open_page(page, "launch")
        expect(page.get_by_role("textbox", name="Base model")).to_have_value(str(user_world["base"]))
        assert page.get_by_role("button", name="Launch mashup + scratch").count() == 1
        page.screenshot(path=str(SHOTS / "user-launch.png"), full_page=True)


@pytest.fixture
def scale_server(tiny_world, tmp_path):
    """The app on a workspace at a lab's size (tests/scale_world.py: 200 adapters, 50 finished
    runs, 3 studies, scores cached)."""
    from scale_world import make_scale_workspace

    ws = make_scale_workspace(tiny_world, tmp_path / "scale-ws")
    with _serve(ws.root, tmp_path) as url:
        yield url, ws


def _picked_runs(page) -> list[str]:
    """The run ids in the address bar that the Runs box shows as picked (its chips carry them)."""
    from urllib.parse import parse_qs, urlparse

    shown = page.get_by_test_id("stMultiSelect").filter(has_text="Runs").inner_text()
    return [r for r in parse_qs(urlparse(page.url).query).get("runs", []) if r in shown]


def test_a_shared_link_opens_the_same_target_and_runs(scale_server):
    """One visitor picks a target and runs; the address bar, opened by a colleague in another
    browser context (no shared session), shows the same target and runs."""
    url, ws = scale_server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(f"{url}/target")
            page.get_by_role("heading", name="Target task", level=1).wait_for(timeout=120_000)
            settle(page)
            page.get_by_test_id("stSelectbox").filter(has_text="Target").click()
            page.get_by_role("option", name="min (demo task)", exact=True).click()
            settle(page)
            open_page(page, "convergence")
            expect(page).to_have_url(re.compile(r"target=min.*runs=|runs=.*target=min"))
            runs = _picked_runs(page)
            assert runs, "the page picked the latest pair"
            shared = page.url

            colleague = browser.new_context(viewport={"width": 1400, "height": 2000}).new_page()
            colleague.goto(shared)
            colleague.get_by_role("heading", name="Convergence", level=1).wait_for(timeout=120_000)
            settle(colleague)
            expect(colleague.get_by_test_id("stSidebar")).to_contain_text(
                "Target: min (demo task)")
            assert _picked_runs(colleague) == runs
            colleague.get_by_test_id("stPlotlyChart").first.wait_for(timeout=30_000)
            colleague.screenshot(path=str(SHOTS / "shared-link.png"), full_page=True)
        finally:
            browser.close()


# --- first open: `mashup demo start` on a fresh folder, the server up from the start ----------

CONTENT_TIMEOUT = 300  # the tiny content alone takes well under a minute on 2 cores


def _chart_data(page, index: int = 0) -> list[dict]:
    """The index-th Plotly chart's traces as the browser holds them (type, name, x, z)."""
    return page.evaluate(
        """i => Array.from(document.querySelectorAll('.js-plotly-plot')[i].data).map(t => ({
               type: t.type || 'scatter', name: t.name || '', x: Array.from(t.x || []),
               z: t.z ? Array.from(t.z).map(r => Array.from(r)) : null}))""", index)


def test_first_open_fills_every_page_while_the_server_runs(tmp_path):
    """`mashup demo start --profile tiny` in an empty folder, the dashboard served from the
    start: while the world builds, the first page says which stage runs, "adapter i of N",
    the time elapsed and an estimate; then (content done) each page shows its key content in
    the DOM: the study's heatmap cells, the pair's curves, the report's table rows."""
    import signal

    from waiting import poll

    from mashup_core.demo.content import content_status, read_record
    from mashup_core.study.report import study_table
    from mashup_core.workspace import Workspace, read_json

    _need("Playwright", sync_playwright is not None)
    _need(f"Chromium at {CHROMIUM}", CHROMIUM.exists())
    ws = Workspace(tmp_path / "fresh-ws")
    ws.root.mkdir()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with _serve(ws.root, tmp_path) as url, _browser() as page:
        started = subprocess.run(
            [sys.executable, "-m", "mashup_core.cli", "demo", "start", "--profile", "tiny",
             "--workspace", str(ws.root), "--no-progress"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-2000:]
        job = read_record(ws)["pid"]  # leads the process group of the build and its workers

        def training_adapters():
            """the world build to train its adapters"""
            marker = read_json(ws.building_marker)
            return isinstance(marker, dict) and marker.get("stage") == "library"

        poll(training_adapters, timeout=CONTENT_TIMEOUT, every=0.05)
        os.killpg(job, signal.SIGSTOP)  # held in that stage while the page is read
        try:
            page.goto(url)
            expect(page.get_by_role("heading", level=1).first).to_have_text(
                "Building the demo world", timeout=120_000)
            told = page.get_by_text(re.compile(r"adapter \d+ of 8"))
            expect(told).to_be_visible(timeout=60_000)
            assert re.search(r"\d+ s elapsed · about .+ left", told.inner_text()), told.inner_text()
            page.screenshot(path=str(SHOTS / "first-open-computing.png"), full_page=True)
        finally:
            os.killpg(job, signal.SIGCONT)

        def content_done():
            """the demo's content job to finish"""
            status = content_status(ws)
            assert status["state"] != "failed", status["message"]
            return status if status["state"] == "done" else None

        status = poll(content_done, timeout=CONTENT_TIMEOUT, every=1)
        table = study_table(ws.studies_dir / status["stages"]["study"]["study_id"])
        page.goto(url)
        page.get_by_role("heading", name="Mashup Explorer", level=1).wait_for(timeout=120_000)
        settle(page)
        assert page.get_by_text("Computing").count() == 0, "done: nothing extra on the page"
        expect(page.get_by_test_id("stMetric").filter(has_text="Studies")).to_contain_text("1")
        expect(page.get_by_test_id("stMetric").filter(has_text="Runs")).to_contain_text("2")
        page.screenshot(path=str(SHOTS / "first-open-overview.png"), full_page=True)

        open_page(page, "merge")
        heatmap = next(t for t in _chart_data(page) if t["type"] == "heatmap")
        ranks = table.mean_rank
        assert len(heatmap["z"]) == len(ranks.index)
        assert heatmap["x"] == [f"k={k}" for k in ranks.columns]
        page.screenshot(path=str(SHOTS / "first-open-merge.png"), full_page=True)

        open_page(page, "convergence")
        names = {t["name"].split(" · ")[0] for t in _chart_data(page)}
        assert {"mashup", "scratch"} <= names, names
        page.screenshot(path=str(SHOTS / "first-open-convergence.png"), full_page=True)

        open_page(page, "report")
        rows = grid_rows(page)
        targets = [r[0] for r in rows if r]
        assert targets == [*table.spec.tasks, "mean"], targets
        page.screenshot(path=str(SHOTS / "first-open-report.png"), full_page=True)
