"""A room on one server: what every session shares, and what a page's first run leaves out.

The figures behind these choices are in benchmarks/bench_visitors.py (30 visitors on one core);
here, the behaviour they rest on: a session that cannot write reads the workspace once for all
such sessions, a figure is drawn once for every session asking for it, a session that may write
reads afresh, and the first page imports neither torch, transformers nor PEFT.
"""

from __future__ import annotations

import functools
import gc
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

pytest.importorskip("streamlit.testing.v1")
from dashboard import render  # noqa: E402

from mashup_core import views  # noqa: E402
from pages import _ui  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def counted(monkeypatch):
    """Calls of each shared read, and of the Overview's figure, from now on (caches emptied)."""
    calls: dict[str, int] = {}

    def counting(name, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return call

    for name, fn in list(_ui._READS.items()):
        monkeypatch.setitem(_ui._READS, name, counting(name, fn))
    monkeypatch.setattr(views, "method_diagram", counting("method_diagram", views.method_diagram))
    _ui._shared_read.clear()
    _ui._derived.clear()
    return calls


def test_a_read_only_room_reads_the_workspace_once_for_all_its_sessions(world_copy, open_in_dashboard,
                                                                       monkeypatch, counted):
    open_in_dashboard(world_copy)
    monkeypatch.setenv("MASHUP_READ_ONLY", "1")
    monkeypatch.setattr(_ui, "SHARED_FOR_S", 3600.0)  # the renders below fall in one period
    first = render()
    assert first.metric[0].value == "16", "the Overview shows the library"
    once = dict(counted)
    assert once["state"] >= 1 and once["content"] >= 1 and once["library_stamp"] >= 1, once
    for _ in range(3):  # three more visitors, within SHARED_FOR_S
        assert render().metric[0].value == "16"
    assert counted == once, "the other sessions read nothing of their own, drew no figure"
    assert counted["method_diagram"] == 1


def test_a_session_that_may_write_reads_afresh_and_sees_its_own_change(world_copy, open_in_dashboard,
                                                                      counted):
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.store import create_run
    from mashup_core.training.settings import TrainConfig

    open_in_dashboard(world_copy)
    before = render()
    reads = counted["state"]
    assert [m.value for m in before.metric][2] == "0", "no runs yet"
    create_run(world_copy, RunSpec(target="min", train=TrainConfig(steps=2)))
    after = render()  # at once: no shared read stands between the change and the page
    assert counted["state"] >= 2 * reads, "a writable session reads on every run"
    assert [m.value for m in after.metric][2] == "1"


def test_a_figure_is_drawn_once_for_the_same_inputs_and_again_for_new_ones(counted):
    import streamlit as st  # noqa: F401  (the caches need the runtime's stand-in)

    one = _ui.derived(views.method_diagram, 8, k=2)
    assert _ui.derived(views.method_diagram, 8, k=2) is one, "the same figure, shared"
    assert counted["method_diagram"] == 1
    other = _ui.derived(views.method_diagram, 9, k=2)
    assert other is not one and counted["method_diagram"] == 2
    # named inputs stand for the arguments: the same inputs, the figure already drawn
    assert _ui.derived(views.method_diagram, 10, k=2, inputs=("state", 1)) is \
        _ui.derived(views.method_diagram, 11, k=2, inputs=("state", 1))


def test_the_imports_are_frozen_once_per_new_module(monkeypatch):
    freezes = []
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(len(sys.modules)))
    monkeypatch.setattr(_ui, "_frozen_modules", 0)
    _ui.keep_imports_out_of_gc()
    assert len(freezes) == 1, "what the imports made goes out of the collector's sight"
    _ui.keep_imports_out_of_gc()
    assert len(freezes) == 1, "no new module: nothing frozen again"
    monkeypatch.setitem(sys.modules, "_room_test_module", types.ModuleType("_room_test_module"))
    _ui.keep_imports_out_of_gc()
    assert len(freezes) == 2 and freezes[1] == freezes[0] + 1


def test_the_first_page_imports_neither_torch_nor_transformers_nor_peft(world_copy):
    """A fresh process renders the Overview of a read-only room (its library scanned before,
    as a room's is) and reports what the run imported; the warm-up after it is held off."""
    views.library_scan(world_copy)  # the scan cache a room's server finds
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT / "tests")!r}); sys.path.insert(0, {str(ROOT)!r})
        os.environ.update(MASHUP_WORKSPACE={str(world_copy.root)!r}, MASHUP_READ_ONLY="1")
        from pages import _ui
        _ui._warming.set()  # the background warm-up would import them after the page
        from dashboard import render
        at = render()
        print(json.dumps({{"metrics": [m.value for m in at.metric],
                           "heavy": [m for m in ("torch", "transformers", "peft") if m in sys.modules]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["metrics"][0] == "16", result
    assert result["heavy"] == [], f"the Overview's first run imported {result['heavy']}"
