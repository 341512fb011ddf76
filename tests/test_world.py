"""The embedded demo world: tokenizer, base model, task suite, library, workspace reuse."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from world_checks import check_measured_story

from mashup_core.cli import main
from mashup_core.demo import synthetic
from mashup_core.demo.tiny_model import (
    CHARSET,
    TinyModelSpec,
    build_char_tokenizer,
    build_tiny_llama,
)
from mashup_core.demo.world import META_FILE, build_world, load_split, world_status
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.loglik import evaluate_mc
from mashup_core.workspace import Workspace, WorkspaceError


def test_tokenizer_round_trip(tmp_path):
    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "rev:" + CHARSET + "=" + CHARSET[::-1]
    ids = loaded(text)["input_ids"]
    assert ids[0] == loaded.bos_token_id and len(ids) == len(text) + 1  # one token per char
    assert ids == tok(text)["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == text


def test_model_save_reload_is_bit_identical(tmp_path):
    model = build_tiny_llama(len(build_char_tokenizer()), TinyModelSpec(hidden_size=32), seed=3)
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    reloaded = load_base_model(tmp_path, device="cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_task_generator_is_deterministic_and_well_formed(task):
    sizes = {"train": 150, "validation": 40, "test": 40}
    first = synthetic.generate_splits(task, sizes, seed=7)
    assert first == synthetic.generate_splits(task, sizes, seed=7)
    assert first != synthetic.generate_splits(task, sizes, seed=8)
    operands = {split: {ex.meta["operand"] for ex in exs} for split, exs in first.items()}
    assert not operands["train"] & operands["validation"]
    assert not operands["train"] & operands["test"]
    golds = []
    for examples in first.values():
        for ex in examples:
            assert len(ex.choices) == synthetic.N_CHOICES
            assert len(set(ex.choices)) == len(ex.choices), ex
            assert 0 <= ex.gold < len(ex.choices)
            golds.append(ex.gold)
    assert len(set(golds)) == synthetic.N_CHOICES  # the gold position is not a giveaway


def test_gold_answers_are_right():
    check = {
        "rev": lambda w: w[::-1], "tail": lambda w: w[-1] + w[-2], "sort": lambda w: "".join(sorted(w)),
        "min": min, "dsort": lambda w: "".join(sorted(w)), "dmax": max,
        "shift": lambda w: "".join(synthetic.LETTERS[synthetic.LETTERS.index(c) + 1] for c in w),
        "count": lambda w: str(w.count(w[0])),
    }
    for task, solve in check.items():
        for ex in synthetic.generate_splits(task, {"train": 30}, seed=0)["train"]:
            assert ex.answer == solve(ex.meta["operand"]), (task, ex)


def test_tiny_world_layout_and_adapters_beat_base(tiny_world):
    assert world_status(tiny_world, check_hashes=True) == (True, "ok")
    manifest = tiny_world.manifest()
    report = manifest["report"]
    for task in synthetic.TASKS:
        adapter = tiny_world.library_dir / task
        assert (adapter / "adapter_config.json").exists()
        assert (adapter / "adapter_model.safetensors").exists()
        meta = json.loads((adapter / META_FILE).read_text())
        assert meta["source_task"] == task and meta["final"]
        assert (tiny_world.library_dir / f"{task}-step40").exists()  # an intermediate snapshot
        for split in ("train", "validation", "test"):
            assert tiny_world.task_split_path(task, split).exists()
    gains = {t: report["adapter_accuracy"][t] - report["base_accuracy"][t] for t in synthetic.TASKS}
    assert sum(g > 0.2 for g in gains.values()) >= 4, gains


def test_adapter_accuracy_reproduces_from_disk(tiny_world):
    """The library's recorded accuracy is what a fresh PEFT load of its files gives."""
    tok = load_tokenizer(tiny_world.base_dir)
    base = load_base_model(tiny_world.base_dir, device="cpu")
    validation = load_split(tiny_world, "sort", "validation")
    base_acc = evaluate_mc(base, tok, validation).acc
    model = PeftModel.from_pretrained(base, tiny_world.library_dir / "sort")
    acc = evaluate_mc(model, tok, validation).acc
    report = tiny_world.manifest()["report"]
    assert acc == pytest.approx(report["adapter_accuracy"]["sort"])
    assert base_acc == pytest.approx(report["base_accuracy"]["sort"])
    assert acc > base_acc + 0.2


def test_second_build_reuses_the_world(world_copy, monkeypatch):
    from mashup_core.demo import world

    def fail(*_args, **_kwargs):
        raise AssertionError("a complete world must not be rebuilt")

    monkeypatch.setattr(world, "_build", fail)
    report = build_world(world_copy, "tiny", seed=0, progress=False)
    assert report.reused and report.adapter_accuracy


def test_force_and_other_seed_rebuild(world_copy, monkeypatch):
    from mashup_core.demo import world

    calls = []
    monkeypatch.setattr(world, "_build", lambda ws, prof, seed, *_: calls.append(seed))
    build_world(world_copy, "tiny", seed=0, force=True, progress=False)
    build_world(world_copy, "tiny", seed=1, progress=False, log=lambda _m: None)
    assert calls == [0, 1]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda ws: ws.building_marker.write_text("{}"), "interrupted build"),
        (lambda ws: ws.manifest_path.unlink(), "half-written build"),
        (lambda ws: (ws.library_dir / "rev" / "adapter_model.safetensors").unlink(), "is missing"),
        (lambda ws: (ws.base_dir / "model.safetensors").write_bytes(b"x"), "changed size"),
    ],
)
def test_damaged_world_is_detected(world_copy, damage, reason):
    damage(world_copy)
    usable, why = world_status(world_copy)
    assert not usable and reason in why


def test_interrupted_build_is_rebuilt_identically(tiny_world, world_copy):
    """An interrupted build is never reused: it is rebuilt, and the same seed gives the same
    bytes, every file of them, whether one process trained the adapters or several side by
    side (the session's world was built the other way)."""
    shutil.rmtree(world_copy.library_dir / "tail")
    world_copy.building_marker.write_text("{}")
    messages = []
    other_way = 1 if tiny_world.manifest()["build_workers"] > 1 else 2
    report = build_world(world_copy, "tiny", seed=0, progress=False, log=messages.append,
                         workers=other_way)
    assert not report.reused
    assert any("interrupted build" in m for m in messages)
    rebuilt, original = world_copy.manifest(), tiny_world.manifest()
    assert {rebuilt["build_workers"], original["build_workers"]} == {1, 2}
    weights = [f for f in original["files"] if f.endswith(".safetensors")]
    assert len(weights) == 1 + 16  # base + 8 final adapters + 8 snapshots
    assert rebuilt["files"] == original["files"]  # sizes and hashes of every file
    assert rebuilt["report"]["cross_accuracy"] == original["report"]["cross_accuracy"]
    torch.testing.assert_close(
        load_file(world_copy.library_dir / "tail" / "adapter_model.safetensors"),
        load_file(tiny_world.library_dir / "tail" / "adapter_model.safetensors"),
        rtol=0, atol=0,
    )


def test_a_build_in_progress_reads_building_with_its_stage(world_copy, capsys):
    """While a build runs, `mashup demo status` and `world_status` say so, with the stage,
    "adapter i of N", the time elapsed and an estimate, not "interrupted"; a second build
    into the same folder is refused."""
    import subprocess
    import sys
    import time

    from mashup_core.demo.progress import build_progress
    from mashup_core.demo.world import WorldBusy
    from mashup_core.jobs.processes import process_start

    builder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = time.time()
        world_copy.building_marker.write_text(json.dumps({
            "pid": builder.pid, "pid_start": process_start(builder.pid), "profile": "tiny",
            "workers": 2, "started": now - 20, "stage": "library", "stage_started": now - 10,
            "done": 2, "total": 8, "unit": "adapters", "finished_stages": {"pretrain": 6.0}}))
        progress = build_progress(world_copy)
        assert progress["stage"] == "library" and 19 < progress["elapsed"] < 30
        assert 25 < progress["left"] < 40  # 10 s for 2 adapters: about 30 s for the other 6
        usable, reason = world_status(world_copy)
        assert not usable and "being built now" in reason and "adapter 3 of 8" in reason
        assert main(["demo", "status", "--workspace", str(world_copy.root)]) == 1
        out = capsys.readouterr().out
        assert "building: training the LoRA library: adapter 3 of 8" in out and "left" in out
        assert "interrupted" not in out
        with pytest.raises(WorldBusy, match="being built now by pid"):
            build_world(world_copy, "tiny", seed=0, progress=False)
    finally:
        builder.kill()
        builder.wait()
    assert build_progress(world_copy) is None  # the builder is gone: an interrupted build
    assert "interrupted build" in world_status(world_copy)[1]


def test_unwritable_workspace_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkspaceError, match="is not writable"):
        build_world(Workspace(blocker / "ws"), "tiny", progress=False)


def test_cli_help_and_status(tiny_world, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
    assert main(["demo", "status", "--workspace", str(tiny_world.root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["usable"] and status["workspace"] == str(tiny_world.root)


def test_cli_reports_bad_profile(tmp_path, capsys):
    assert main(["demo", "build", "--workspace", str(tmp_path / "w"), "--profile", "huge"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_the_world_dependent_checks_hold_for_other_seeds(tmp_path, seed):
    # Another seed is as different a world as another CPU: the checks must hold for each
    # (seed 0 is the session's tiny world, checked in test_scoring.py).
    ws = Workspace(tmp_path / f"seed{seed}")
    build_world(ws, "tiny", seed=seed, progress=False, log=lambda _msg: None)
    check_measured_story(ws)
