"""Shared fixtures: one tiny demo world per test session, built for real (about 15 s)."""

from __future__ import annotations

import os
import shutil
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

from mashup_core.workspace import Workspace  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Workspace:
    """A complete tiny demo world. Read-only for tests: copy it (`world_copy`) to modify."""
    from mashup_core.demo.world import build_world

    ws = Workspace(tmp_path_factory.mktemp("tiny-world"))
    build_world(ws, "tiny", seed=0, progress=False, log=lambda _msg: None)
    return ws


@pytest.fixture
def world_copy(tiny_world, tmp_path) -> Workspace:
    """A private, writable copy of the tiny world (runs, caches, damage)."""
    dst = tmp_path / "ws"
    shutil.copytree(tiny_world.root, dst)
    return Workspace(dst)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
