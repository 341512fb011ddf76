"""Shared fixtures: one tiny demo world per test run, built for real (about 15 s), and copies
of it to write in.

The suite runs on two pytest-xdist workers (`-n 2` in pyproject's addopts; `-n 0` runs it in
one process), each with one torch thread. The world is built once for both: the first
worker to take the lock builds it in the run's folder (above each worker's own), the other
waits and reuses it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

# No test may reach the network: models and data come from the tiny world or local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A shell that shares a dashboard may carry these; the core would then refuse every test's writes.
os.environ.pop("MASHUP_TOKEN", None)
os.environ.pop("MASHUP_READ_ONLY", None)
# Tests start background jobs and a Streamlit server beside the pytest process. With two
# OpenMP threads each on a 2-core machine they spin against each other (small ops ran ~100x
# slower when measured), so this process and every child it starts use one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MASHUP_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Real-shaped fixtures (sub-word tokenizer, 8 architectures, mixed PEFT adapters), built once.
from realistic import arch_worlds, user_world  # noqa: E402, F401

from mashup_core.workspace import Workspace, locked  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# How the two xdist workers share the suite (`--dist loadgroup`): a test file goes to one
# worker whole, so that its module fixtures are built once and its tests keep their order;
# the tests that start Ray (a local instance or a simulated cluster) go to one worker too,
# one after the other, because two Ray instances on two cores starve each other. Their ids
# hold "ray" as a word: test_study_ray.py, an engine parameter [ray], ..._ray_engine_...
RAY_TEST = re.compile(r"(^|[/_\[.-])ray([_\].-]|$)")


def _run_folder(tmp_path_factory, config) -> Path:
    """The folder of this test run that every xdist worker sees (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, pytestconfig) -> Workspace:
    """A complete tiny demo world. Read-only for tests: copy it (`world_copy`) to modify."""
    from mashup_core.demo.world import build_world

    shared = _run_folder(tmp_path_factory, pytestconfig)
    ws = Workspace(shared / "tiny-world")
    with locked(shared / "tiny-world.lock"):  # the second worker finds it built: reused
        build_world(ws, "tiny", seed=0, progress=False, log=lambda _msg: None)
    return ws


@pytest.fixture(scope="session")
def copy_of_tiny_world(tiny_world, tmp_path_factory) -> Callable[..., Workspace]:
    """`copy_of_tiny_world(name)`: a new private, writable copy of the tiny world in a folder
    of its own (for a module's fixture that sets one up once); `into=DIR` puts it in DIR/ws."""
    def copy(name: str = "world", into: Path | None = None) -> Workspace:
        ws = Workspace((into or tmp_path_factory.mktemp(name)) / "ws")
        shutil.copytree(tiny_world.root, ws.root)
        return ws

    return copy


@pytest.fixture
def world_copy(copy_of_tiny_world, tmp_path) -> Workspace:
    """A private, writable copy of the tiny world (runs, caches, damage), in tmp_path/ws."""
    return copy_of_tiny_world(into=tmp_path)


@pytest.fixture
def open_in_dashboard(monkeypatch) -> Callable[[Workspace], Workspace]:
    """`open_in_dashboard(ws)`: the dashboard under test ($MASHUP_WORKSPACE) opens `ws`."""
    def point(ws: Workspace) -> Workspace:
        monkeypatch.setenv("MASHUP_WORKSPACE", str(ws.root))
        return ws

    return point


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = "ray" if RAY_TEST.search(item.nodeid) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    its matrices are tiny, and on a busy machine a second thread only adds waiting (100x)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_shared_reads():
    """A read-only session's shared reads of a workspace last SHARED_FOR_S (pages/_ui.py): a
    test that changes a workspace and then reads it read-only must not see the last test's."""
    ui = sys.modules.get("pages._ui")
    if ui is not None:
        ui._shared_read.clear()
    yield
