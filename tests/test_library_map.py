"""The library map: update similarity exact in rank space, laid out, and read by the page."""

from __future__ import annotations

import numpy as np
import plotly.io as pio
import pytest

from mashup_core.config import workspace_library
from mashup_core.models.library import scan_library
from mashup_core.selection.bank import read_bank_adapter
from mashup_core.selection.similarity import (
    layer_inner_products,
    nearest,
    similarity_vs_relevance,
    update_similarity,
)
from mashup_core.views import library_map as lmap


def _dense(adapter):
    """Every layer's ΔW = scale·B A as a dense matrix (what the map must never build)."""
    return {name: (b.double() @ a.double()) for name, (a, b) in adapter.factors.items()}


def _cosine(x, y) -> float:
    inner = sum(float((x[k] * y[k]).sum()) for k in set(x) & set(y))
    norm = (sum(float((v * v).sum()) for v in x.values()) * sum(float((v * v).sum()) for v in y.values())) ** 0.5
    return inner / norm


def test_rank_space_cosines_equal_dense_ones(user_world):
    """Ranks 4, 8 and 16, q/v-only beside all-linear, rsLoRA and an alpha pattern."""
    scan = scan_library([str(user_world["adapters_dir"])], base_model_dir=str(user_world["base"]))
    adapters = [read_bank_adapter(c.path, c.name) for c in scan.checkpoints]
    sim = update_similarity(adapters, block=3)  # blocks that split the library
    dense = [_dense(a) for a in adapters]
    for i in range(len(adapters)):
        for j in range(len(adapters)):
            assert sim.cosine[i, j] == pytest.approx(_cosine(dense[i], dense[j]), abs=1e-9)
    layer = next(iter(adapters[0].factors))
    inner = layer_inner_products(adapters, layer)
    for i, a in enumerate(adapters):
        for j, b in enumerate(adapters):
            both = layer in a.factors and layer in b.factors
            expected = float((dense[i][layer] * dense[j][layer]).sum()) if both else 0.0
            assert inner[i, j] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert nearest(sim, adapters[0].name, 2)[0][1] == max(sim.cosine[0, 1:])


def test_spearman_of_similarity_and_relevance():
    names = ["a", "b", "c", "d"]
    cosine = np.array([[1, .9, .1, .0], [.9, 1, .2, .1], [.1, .2, 1, .8], [.0, .1, .8, 1]])
    alike = {"a": [1, 2, 3], "b": [1, 2, 3.5], "c": [3, 1, 2], "d": [3, 1, 2.5]}
    assert similarity_vs_relevance(names, cosine, alike)["spearman"] > 0.5
    assert similarity_vs_relevance(names, cosine, {})["spearman"] is None


def test_the_map_is_computed_once_and_read_by_a_read_only_page(world_copy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    scan = workspace_library(world_copy)
    with pytest.raises(lmap.MapNotComputed):
        lmap.read_library_map(world_copy, scan)
    found = lmap.compute_library_map(world_copy, scan)
    assert found.names == [c.name for c in scan.checkpoints] and found.points.shape == (16, 2)
    again = lmap.read_library_map(world_copy, scan)
    assert np.allclose(again.cosine, found.cosine, atol=1e-6) and again.names == found.names
    # an adapter and its own snapshot are each other's nearest neighbours more often than not
    own = sum(again.neighbours(n, 1)["checkpoint"].iloc[0].split("-step")[0] == n.split("-step")[0]
              for n in again.names)
    assert own >= len(again.names) // 2
    monkeypatch.setenv("MASHUP_WORKSPACE", str(world_copy.root))
    monkeypatch.setenv("MASHUP_READ_ONLY", "1")
    at = AppTest.from_file("../app.py", default_timeout=120)
    at.run()
    at.switch_page("pages/relevance_map.py").run()
    assert not at.exception, [e.message for e in at.exception]
    points = [t for c in at.get("plotly_chart") for t in pio.from_json(c.proto.spec).data
              if t.type == "scatter"]
    assert sum(len(t.x) for t in points) == 16
    assert "Spearman" in "\n".join(str(c.value) for c in at.caption)
    with pytest.raises(Exception, match="read-only"):
        lmap.compute_library_map(world_copy, scan)
