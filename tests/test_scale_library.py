"""A library of a thousand adapters: written in a second, scanned once, filtered on the page."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mashup_core.config import init_workspace
from mashup_core.demo.library_gen import write_synthetic_library
from mashup_core.models.library import scan_library
from mashup_core.workspace import Workspace

N = 1000
TASKS = 40


@pytest.fixture(scope="module")
def big_library(tiny_world, tmp_path_factory):
    """1,000 synthetic adapters of the tiny world's base (mixed ranks and modules, model cards
    with 40 source tasks), in a user workspace of their own."""
    root = tmp_path_factory.mktemp("thousand")
    folders = write_synthetic_library(tiny_world.base_dir, root / "lib", N, tasks=TASKS)
    ws = Workspace(root / "ws")
    init_workspace(ws, str(tiny_world.base_dir), [str(root / "lib")],
                   [{"kind": "demo", "name_or_path": "rev"}])
    return ws, root / "lib", folders


def test_the_library_is_mixed_and_its_cards_are_read(big_library, tiny_world):
    _, lib, folders = big_library
    assert len(folders) == N
    scan = scan_library([lib], base_model_dir=tiny_world.base_dir)
    assert len(scan) == N and not scan.rejected
    assert {c.rank for c in scan.checkpoints} == {4, 8, 16}
    assert len({c.target_modules for c in scan.checkpoints}) == 3
    third = scan.checkpoints[2]  # ranks cycle 4, 8, 16
    assert third.card["datasets"] == ["task-0002"] and "rank-16" in third.card["tags"]
    assert third.source_task == "task-0002" and third.rank == 16


def test_the_cli_writes_a_library_the_workspace_then_scans(big_library, tmp_path, capsys):
    """`mashup demo library N --out DIR` writes for the workspace's own base, named after its
    folder (beside another synthetic library); a folder that is not empty is refused and left
    as it was."""
    from mashup_core.cli import main

    ws, _, _ = big_library
    out = tmp_path / "more"
    assert main(["demo", "library", "6", "--out", str(out), "--ranks", "2,4",
                 "--workspace", str(ws.root)]) == 0
    assert "6 adapters in" in capsys.readouterr().out
    assert main(["config", "--add-source", str(out), "--workspace", str(ws.root)]) == 0
    from mashup_core.config import workspace_library

    added = [c for c in workspace_library(ws).checkpoints
             if Path(c.path).resolve().parent == out.resolve()]
    assert len(added) == 6 and {c.rank for c in added} == {2, 4}
    assert sorted(c.name for c in added)[0] == "more-0000"
    before = sorted(p.name for p in out.iterdir())
    assert main(["demo", "library", "3", "--out", str(out), "--workspace", str(ws.root)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_second_scan_reads_no_weights(big_library, tiny_world, tmp_path, monkeypatch):
    _, lib, _ = big_library
    cache = tmp_path / "scan.json"
    first = scan_library([lib], base_model_dir=tiny_world.base_dir, cache=cache)
    import mashup_core.models.library as library

    def no_reading(*args, **kwargs):
        raise AssertionError("a cached scan read a weight file")

    monkeypatch.setattr(library, "_read_tensors", no_reading)
    again = scan_library([lib], base_model_dir=tiny_world.base_dir, cache=cache)
    assert [c.to_dict() for c in again.checkpoints] == [c.to_dict() for c in first.checkpoints]
    rewritten = lib / "adapter-0003" / "adapter_model.safetensors"
    rewritten.touch()
    with pytest.raises(AssertionError, match="read a weight file"):
        scan_library([lib], base_model_dir=tiny_world.base_dir, cache=cache)


def test_the_library_page_filters_by_source_task(big_library, monkeypatch):
    from streamlit.testing.v1 import AppTest

    ws, _, _ = big_library
    monkeypatch.setenv("MASHUP_WORKSPACE", str(ws.root))
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.query_params["task"] = "task-0007"
    at.run()
    at.switch_page("pages/library.py").run()
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[0].value
    assert len(table) == N // TASKS and set(table["source task"]) == {"task-0007"}
    at.selectbox(key="library-filter-rank").set_value("8").run()
    table = at.dataframe[0].value
    assert set(table["rank"]) == {8} and 0 < len(table) < N // TASKS


@pytest.mark.browser
def test_the_filtered_library_in_a_browser(big_library, tmp_path):
    """A link straight to the Library page of a fresh server (its first session runs the page
    alone, then hands it to app.py) keeps its query string: the grid is filtered by it."""
    from test_browser import IDLE, _browser, _serve

    ws, _, _ = big_library
    with _serve(ws.root, tmp_path) as url, _browser() as page:
        page.goto(f"{url}/library?task=task-0011", timeout=120_000)
        page.wait_for_selector(IDLE, timeout=120_000)
        grid = page.locator("[data-testid=stDataFrame]").first
        grid.wait_for(timeout=60_000)
        cells = page.locator("[data-testid=stDataFrame] table [role=gridcell]")
        deadline = time.monotonic() + 90  # the grid fills its cells, then the filter applies
        while not ("task-0011" in (text := " ".join(cells.all_inner_texts()))
                   and "task-0000" not in text):
            assert time.monotonic() < deadline, f"the grid is not filtered: {text[:300]!r}"
            page.wait_for_timeout(500)
        assert "task-0012" not in text and text.count("task-0011") >= 5


def test_a_hub_owner_read_from_the_local_cache(tiny_world, tmp_path, monkeypatch):
    """`hf://OWNER` with the Hub offline: every repo of OWNER the Hugging Face cache holds
    (models--OWNER--NAME/snapshots/REV, REV from refs/main), named and scored by repo id with
    its revision kept."""
    import shutil

    import torch

    from mashup_core.config import add_source, init_workspace
    from mashup_core.models.loading import load_base_model, load_tokenizer
    from mashup_core.selection.scoring import score_library

    cache = tmp_path / "hf-cache"
    made = write_synthetic_library(tiny_world.base_dir, tmp_path / "made", 3)
    for i, folder in enumerate(made):
        repo = cache / f"models--lots--task{i:03d}_lora"
        revision = f"{i:02d}" + "a" * 38
        shutil.copytree(folder, repo / "snapshots" / revision)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(revision)
    (cache / "models--someone-else--x" / "snapshots").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scan = scan_library(["hf://lots"], base_model_dir=tiny_world.base_dir)
    assert [c.name for c in scan.checkpoints] == [f"lots/task{i:03d}_lora" for i in range(3)]
    assert [c.revision for c in scan.checkpoints] == [f"{i:02d}" + "a" * 38 for i in range(3)]
    assert [c.hub_id for c in scan_library(["lots/*"], base_model_dir=tiny_world.base_dir)
            .checkpoints] == [c.name for c in scan.checkpoints]
    missing = scan_library(["hf://nobody"], base_model_dir=tiny_world.base_dir)
    assert "no repos of 'nobody' in the Hugging Face cache" in missing.rejected[0].reason
    ws = Workspace(tmp_path / "ws")
    init_workspace(ws, str(tiny_world.base_dir), [], [])
    assert "hf://lots" in add_source(ws, "hf://lots").sources
    model = load_base_model(tiny_world.base_dir, device="cpu", dtype=torch.float32)
    from mashup_core.data.targets import load_demo_task

    table = score_library(model, load_tokenizer(tiny_world.base_dir), scan.checkpoints,
                          load_demo_task(tiny_world, "rev", "train")[:4], progress=False)
    assert table.provenance["lots/task001_lora"]["revision"] == "01" + "a" * 38
    assert table.provenance["lots/task001_lora"]["hub_id"] == "lots/task001_lora"
