"""A finished run joins the library (`jobs.promote`): a valid checkpoint, honest provenance,
the run's own accuracy back, and leave-one-out selection never offering it to its own target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mashup_core.jobs.promote import PromoteError, add_run_to_library
from mashup_core.jobs.runner import execute_run
from mashup_core.jobs.spec import RunSpec
from mashup_core.jobs.store import create_run, get_run, update_status
from mashup_core.training.loop import TrainConfig
from mashup_core.workspace import Workspace, read_json

# Each way a run can start, and what the library can hold of it (see jobs/promote.py).
RUNS = {
    "scratch": {},
    # merge + trained LoRA, stacked exactly
    "fold": {"kind": "mashup", "n": 16, "k": 2, "init": "merged-fold"},
    "continue": {"kind": "mashup", "n": 16, "k": 2, "init": "merged-continue"},
    "full": {"kind": "mashup", "n": 16, "k": 2, "finetune": "full"},
}


def tiny_spec(**changes) -> RunSpec:
    return RunSpec(**{"target": "min", "train": TrainConfig(steps=8, batch_size=16, lr=5e-3),
                      "eval_every": 4, "checkpoint_every": 50, "eval_limit": 32, "device": "cpu",
                      **changes})


@pytest.fixture(scope="module")
def promoted(tiny_world, tmp_path_factory):
    """One copy of the tiny world with a finished run of each kind, each added to the library.

    Module-scoped (a `world_copy` per test would train every run again); the tests below only
    read it, except for runs and names they create themselves.
    """
    ws = Workspace(tmp_path_factory.mktemp("promote") / "ws")
    shutil.copytree(tiny_world.root, ws.root)
    out = {}
    for label, changes in RUNS.items():
        record = execute_run(ws, create_run(ws, tiny_spec(**changes)), progress=False, echo=False)
        assert record.state == "done", record.status
        out[label] = (record, add_run_to_library(ws, record.id))
    return ws, out


def _validation(ws: Workspace, spec: RunSpec):
    """The validation examples the run evaluated on, sampled the way `runner._train` does."""
    from mashup_core.config import load_target
    from mashup_core.data.examples import sample_examples

    examples = load_target(spec.target_spec(ws=ws).with_split("validation"), ws)
    return sample_examples(examples, spec.eval_limit or None, spec.seed)


@pytest.mark.parametrize("label", list(RUNS))
def test_added_checkpoint_reproduces_the_runs_final_accuracy(promoted, label):
    from peft import PeftModel

    from mashup_core.models.library import demo_library
    from mashup_core.models.loading import load_base_model, load_tokenizer
    from mashup_core.selection.loglik import evaluate_mc

    ws, runs = promoted
    record, path = runs[label]
    ckpt = demo_library(ws).by_name(path.name)  # the library scan takes it as a valid checkpoint
    assert ckpt.kind == ("full" if label == "full" else "lora") and ckpt.source_task == "min"
    if label == "fold":  # the merge's rank plus the trained LoRA's: the exact sum
        assert ckpt.rank == 16

    final = record.status["final"]
    assert final["acc"] != final["init_acc"]  # training moved it: the weights must be the trained ones
    torch.manual_seed(0)
    if ckpt.kind == "full":
        model = load_base_model(ckpt.path, device="cpu", dtype=torch.float32)
    else:
        base = load_base_model(ws.base_dir, device="cpu", dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(ckpt.path))
    validation = _validation(ws, record.spec)
    acc = evaluate_mc(model, load_tokenizer(ws.base_dir), validation).acc
    # Bit-identical for scratch/continue/full; the fold sums ΔW in another order: within one.
    assert abs(acc - final["acc"]) <= 1 / len(validation) + 1e-9, (label, acc, final)


def test_provenance_names_the_run_and_its_target(promoted):
    ws, runs = promoted
    for record, path in runs.values():
        meta = read_json(path / "mashup_meta.json")
        spec = record.spec
        assert path.parent == ws.library_dir
        assert path.name == f"min-{spec.kind}-{record.id.rsplit('-', 1)[-1]}"
        assert (meta["source_task"], meta["target"], meta["run_id"]) == ("min", "min", record.id)
        assert (meta["init"], meta["finetune"], meta["steps"], meta["lr"], meta["seed"]) == (
            spec.init, spec.finetune, 8, 5e-3, 0)
        assert meta["validation_accuracy"] == meta["final_accuracy"] == record.status["final"]["acc"]
        assert meta["final"] is True and meta["created"] >= record.status["finished"]
        assert (path / meta["base_model"]).resolve() == ws.base_dir.resolve()  # '../../base'
        if spec.kind == "mashup":
            assert meta["merged_from"] == record.selection["selected"]
        else:
            assert meta["merged_from"] is None
    assert "stacked exactly" in read_json(runs["fold"][1] / "mashup_meta.json")["weights"]


def test_leave_one_out_selection_skips_a_runs_own_checkpoint(promoted):
    from mashup_core.config import load_target
    from mashup_core.data.examples import sample_examples
    from mashup_core.models.library import demo_library
    from mashup_core.models.loading import load_base_model, load_tokenizer
    from mashup_core.selection.scoring import score_library

    ws, runs = promoted
    scan = demo_library(ws, include_snapshots=False)
    ours = [p.name for label, (_, p) in runs.items() if label != "full"]  # full ones are not merged
    others = [scan.by_name(n) for n in ("tail", "sort")]
    base = load_base_model(ws.base_dir, device="cpu", dtype=torch.float32)
    sample = sample_examples(load_target(runs["scratch"][0].spec.target_spec(ws=ws), ws), 8, 0)
    table = score_library(base, load_tokenizer(ws.base_dir), [scan.by_name(n) for n in ours] + others,
                          sample, progress=False, target="min")
    assert set(ours) <= set(table.rank("acc"))  # scored and eligible for other targets
    assert set(table.rank("acc", exclude_task="min")) == {"tail", "sort"}
    assert set(table.select_top_k("acc", 2, exclude_task="min")) == {"tail", "sort"}


def test_a_study_keeps_to_the_worlds_own_adapters(promoted):
    from mashup_core.study.grid import study_library

    ws, runs = promoted
    names = {c.name for c in study_library(ws)}
    assert names == {"count", "dmax", "dsort", "min", "rev", "shift", "sort", "tail"}


def test_refusals_say_why(promoted, monkeypatch):
    from mashup_core.access import ReadOnlyError

    ws, runs = promoted
    record, path = runs["scratch"]
    with monkeypatch.context() as env:  # a write action: refused by a read-only dashboard
        env.setenv("MASHUP_READ_ONLY", "1")
        with pytest.raises(ReadOnlyError, match="adding a run to the library is disabled"):
            add_run_to_library(ws, record.id, name="other")
    with pytest.raises(PromoteError, match=f"already has '{path.name}'.*choose another name"):
        add_run_to_library(ws, record.id)
    with pytest.raises(PromoteError, match="invalid checkpoint name '../elsewhere'"):
        add_run_to_library(ws, record.id, name="../elsewhere")
    with pytest.raises(PromoteError, match="a rank only applies to LoRA runs with init 'merged-fold'"):
        add_run_to_library(ws, record.id, name="other", rank=4)

    queued = create_run(ws, tiny_spec())
    with pytest.raises(PromoteError, match=f"run {queued} is queued; only a finished run"):
        add_run_to_library(ws, queued)
    update_status(ws.runs_dir / queued, state="cancelled")
    with pytest.raises(PromoteError, match=f"is cancelled; .*mashup resume {queued}"):
        add_run_to_library(ws, queued)
    update_status(ws.runs_dir / queued, state="done", final={"step": 8, "acc": 0.5})
    with pytest.raises(PromoteError, match=f"run {queued} has no trained weights"):
        add_run_to_library(ws, queued)
    fold, _ = runs["fold"]
    merged = fold.dir / "merged_adapter"
    merged.rename(fold.dir / "merged_adapter.away")
    try:
        with pytest.raises(PromoteError, match="merged_adapter is gone; without it"):
            add_run_to_library(ws, fold.id, name="orphan")
    finally:
        (fold.dir / "merged_adapter.away").rename(merged)
    assert not (ws.library_dir / "orphan").exists()
    assert not list(ws.library_dir.glob(".*"))  # no half-built folder left behind
    assert get_run(ws, queued).state == "done"


def test_a_fold_run_truncated_to_a_rank(promoted):
    """With `rank`, the fold's checkpoint fits libraries merged with 'linear' (equal ranks)."""
    from mashup_core.models.library import demo_library

    ws, runs = promoted
    record, _ = runs["fold"]
    path = add_run_to_library(ws, record.id, name="min-fold-r8", rank=8)
    ckpt = demo_library(ws).by_name("min-fold-r8")
    assert (ckpt.rank, ckpt.source_task) == (8, "min") and path == ckpt.path
    assert "truncated to rank 8" in ckpt.meta["weights"]


def test_cli_add_run_keeps_the_library_at_one_rank_unless_exact(promoted, capsys):
    """`mashup library add-run`: a merged-fold run re-factored to its own LoRA rank by default,
    so 'linear' (equal ranks) still merges the library; --exact keeps the stacked sum."""
    from mashup_core.cli import main

    ws, runs = promoted
    fold = runs["fold"][0]
    argv = ["library", "add-run", fold.id, "--workspace", str(ws.root), "--json"]
    assert main([*argv, "--name", "fold-cli"]) == 0
    out = json.loads(capsys.readouterr().out)
    config = json.loads((Path(out["path"]) / "adapter_config.json").read_text())
    assert out["source_task"] == "min" and config["r"] == fold.spec.lora.r
    assert main([*argv, "--name", "fold-cli-exact", "--exact"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert json.loads((Path(out["path"]) / "adapter_config.json").read_text())["r"] > fold.spec.lora.r
    assert main([*argv, "--name", "fold-cli"]) == 2  # the name is taken: a clear error
    assert "already has 'fold-cli'" in capsys.readouterr().err
