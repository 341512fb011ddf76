"""World-dependent assertions, shared by the fast tests (seed 0) and the slow seed sweep.

A tiny world trained on another CPU is another world: these checks compare what scoring
finds with what the build itself measured (its transfer matrix), and assert with margins only
what training reliably does, so they hold on any machine.
"""

from __future__ import annotations

import pytest

from mashup_core.demo.story import STORY_MARGIN, world_story
from mashup_core.demo.world import load_split
from mashup_core.models.library import demo_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.scoring import score_library
from mashup_core.workspace import Workspace


def check_measured_story(ws: Workspace) -> None:
    report = ws.manifest()["report"]
    story = world_story(ws)
    # What training reliably does, with margin: most adapters beat the base on their own task.
    wins = [t for t, acc in report["adapter_accuracy"].items()
            if acc >= report["base_accuracy"][t] + STORY_MARGIN]
    assert len(wins) >= 4, report["adapter_accuracy"]
    for transfer in story.transfers:
        assert transfer.donor != transfer.target and transfer.gain >= STORY_MARGIN
        assert transfer.donor_acc == report["cross_accuracy"][transfer.donor][transfer.target]
    assert all(t.donor_acc < t.base_acc for t in story.harmful.values())

    # Scored on the very examples the build measured (the whole validation split), each final
    # adapter's accuracy IS its transfer-matrix entry, and the ranking names the measured donor.
    target = story.default_target or max(story.best.values(), key=lambda t: t.gain).target
    model, tok = load_base_model(ws.base_dir, device="cpu"), load_tokenizer(ws.base_dir)
    finals = [c for c in demo_library(ws, include_snapshots=False).checkpoints if c.kind == "lora"]
    validation = load_split(ws, target, "validation")
    table = score_library(model, tok, finals, validation, target=target, progress=False)
    # Other batch shapes may move a log-likelihood in its last bit: at most one near-tie flips.
    one = 1 / len(validation) + 1e-9
    for row in table.rows:
        assert row.acc == pytest.approx(report["cross_accuracy"][row.name][target], abs=one)
    assert table.base.acc == pytest.approx(report["base_accuracy"][target], abs=one)
    first = table.rank("acc", exclude_task=target)[0]
    assert table.row(first).acc == pytest.approx(story.best[target].donor_acc, abs=one)
    if story.transfers:  # the default target is a real story: its donor beats the base
        assert table.row(first).acc >= table.base.acc + STORY_MARGIN - one
    top2 = table.select_top_k("acc", 2, exclude_task=target)
    assert target not in {table.row(n).source_task for n in top2}
