"""Bad input gets a clear, specific error and loses nothing: a table of 50 wrong invocations of
the `mashup` CLI, each with the error it must give (exit 2 and its words) on a workspace that
must be byte for byte what it was; then the faults of a lab's bad days, one test each (a full
disk or a read-only file system while merging, a listing that cannot write its index, a copied
adapter, a killed merge's leftovers, input that is allowed but likely not meant)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import sqlite3
import stat

import pytest

from mashup_core.cli import main

# name: (argv, what stderr must say); {tmp} is the test's own folder.
BAD = {
    # merge
    "merge unknown method": (["merge", "rev", "sort", "--method", "avg"], r"unknown"),
    "merge weights not numbers": (["merge", "rev", "sort", "--weights", "a,b"], r"--weights must be comma-separated numbers"),
    "merge weights count": (["merge", "rev", "sort", "--weights", "0.5"], r"got 1 weights for 2 inputs"),
    "merge weights inf": (["merge", "rev", "sort", "--weights", "inf,1"], r"finite"),
    "merge density too big": (["merge", "rev", "sort", "--method", "ties", "--density", "1.5"], r"density"),
    "merge density zero": (["merge", "rev", "sort", "--method", "ties", "--density", "0"], r"density"),
    "merge misspelt param": (["merge", "rev", "sort", "--method", "ties", "--param", "desnity=0.5"], r"did you mean 'density'"),
    "merge unused param": (["merge", "rev", "sort", "--method", "linear", "--param", "density=0.5"], r"does not use"),
    "merge seed on deterministic": (["merge", "rev", "sort", "--method", "linear", "--seed", "3"], r"draws no random numbers"),
    "merge no inputs": (["merge"], r"name the adapters"),
    "merge missing adapter": (["merge", "rev", "nosuch"], r"nosuch"),
    "merge base with lora": (["merge", "rev", "sort", "--base", "base"], r"--base applies to full checkpoints"),
    "merge rank zero": (["merge", "rev", "sort", "--method", "cat_svd", "--rank", "0"], r"rank"),
    "merge config missing": (["merge", "--config", "nosuch.yml"], r"nosuch.yml"),
    # score
    "score unknown target": (["score", "--target", "nosuch"], r"no target 'nosuch'"),
    "score unknown scorer": (["score", "--target", "rev", "--scorer", "f1"], r"f1"),
    "score n zero": (["score", "--target", "rev", "--n", "0"], r"n"),
    "score bad prompt format": (["score", "--target", "rev", "--prompt-format", "fancy"], r"fancy"),
    "score k too big for halving": (["score", "--target", "rev", "--selection", "halving", "--k", "0"], r"k"),
    # new-spec
    "new-spec lr zero": (["new-spec", "--target", "rev", "--lr", "0"], r"lr"),
    "new-spec lr negative": (["new-spec", "--target", "rev", "--lr=-1e-3"], r"lr"),
    "new-spec steps zero": (["new-spec", "--target", "rev", "--steps", "0"], r"steps"),
    "new-spec batch zero": (["new-spec", "--target", "rev", "--batch-size", "0"], r"batch"),
    "new-spec k zero": (["new-spec", "--target", "rev", "--k", "0"], r"k"),
    "new-spec unknown method": (["new-spec", "--target", "rev", "--method", "avg"], r"avg"),
    "new-spec unknown scorer": (["new-spec", "--target", "rev", "--scorer", "f1"], r"f1"),
    "new-spec unknown weights": (["new-spec", "--target", "rev", "--weights", "magic"], r"magic"),
    "new-spec unknown metric": (["new-spec", "--target", "rev", "--eval-metric", "bleu"], r"bleu"),
    "new-spec unknown tracker": (["new-spec", "--target", "rev", "--report-to", "wandb"], r"wandb"),
    "new-spec unknown init": (["new-spec", "--target", "rev", "--init", "warm"], r"warm"),
    "new-spec eval every zero": (["new-spec", "--target", "rev", "--eval-every", "0"], r"eval_every"),
    "new-spec unknown device": (["new-spec", "--target", "rev", "--device", "tpu"], r"tpu"),
    # study
    "study k zero": (["study", "--ks", "0"], r"k"),
    "study unknown method": (["study", "--methods", "avg"], r"avg"),
    "study lr zero": (["study", "--lrs", "0"], r"lr"),
    "study unknown task": (["study", "--tasks", "nosuch"], r"nosuch"),
    "study unknown preset": (["study", "--preset", "paperish"], r"paperish"),
    "study k above library": (["study", "--ks", "40"], r"k=40"),
    "study density": (["study", "--methods", "ties", "--density", "2"], r"density"),
    # targets / config / others
    "targets show unknown": (["targets", "--show", "nosuch"], r"nosuch"),
    "config add unknown target": (["config", "--add-target", "nosuch"], r"nosuch"),
    "predict unknown target": (["predict", "--target", "nosuch"], r"nosuch"),
    "jobs cancel unknown": (["jobs", "cancel", "run", "nosuch"], r"nosuch"),
    "show unknown run": (["show", "nosuch"], r"nosuch"),
    "recycle show unknown": (["recycle", "show", "nosuch"], r"nosuch"),
    "search weights budget zero": (["search-weights", "rev", "sort", "--target", "tail", "--budget", "0"], r"budget"),
    "search weights unknown strategy": (["search-weights", "rev", "sort", "--target", "tail", "--strategy", "magic"], r"magic"),
    "demo library zero": (["demo", "library", "0", "--out", "{tmp}/newlib"], r"at least 1"),
    "parity unknown runs": (["parity", "--scratch", "nosuch", "--mashup", "nosuch2"], r"nosuch"),
    "init base not a model": (["init", "--base", "{tmp}/notmodel", "--workspace", "{tmp}/other"], r"not a model folder"),
}


def snapshot(root) -> dict[str, str]:
    """Every file under `root` and its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bad_world(copy_of_tiny_world, tmp_path_factory):
    ws = copy_of_tiny_world("bad-inputs")
    tmp = tmp_path_factory.mktemp("bad-inputs-extra")
    (tmp / "notmodel").mkdir()
    (tmp / "notmodel" / "readme.txt").write_text("not weights")
    from mashup_core.config import workspace_library

    workspace_library(ws)  # the first scan writes the scan cache (a cache, not the work)
    return ws, tmp


def test_there_are_forty_or_more():
    assert len(BAD) >= 40


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_refused_and_changes_nothing(bad_world, name):
    ws, tmp = bad_world
    argv, says = BAD[name]
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    if "--workspace" not in argv:
        argv += ["--workspace", str(ws.root)]
    before = snapshot(ws.root), sorted(p.name for p in tmp.iterdir())
    code, _, err = run(argv)
    assert code == 2, (code, err[-500:])
    assert re.search(says, err), err[-500:]
    assert "Traceback" not in err
    assert (snapshot(ws.root), sorted(p.name for p in tmp.iterdir())) == before


# --- a lab's bad days ------------------------------------------------------------------------


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _read_only(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError(f"Error while serializing: IoError(Os {{ code: 30, kind: "
                          f"ReadOnlyFilesystem, message: \"{os.strerror(errno.EROFS)}\" }})")


@pytest.mark.parametrize("fault, says", [(_full_disk, "the disk is full"),
                                         (_read_only, "the file system is read-only")])
def test_a_merge_that_cannot_write_says_where_and_keeps_the_old_output(
        bad_world, tmp_path, monkeypatch, fault, says):
    import mashup_core.merging.lora as lora

    ws, _ = bad_world
    out = tmp_path / "merged"
    argv = ["merge", "rev", "sort", "--out", str(out), "--workspace", str(ws.root)]
    assert run(argv)[0] == 0
    kept = snapshot(out)
    monkeypatch.setattr(lora, "save_file", fault)
    code, _, err = run([*argv, "--overwrite", "--weights", "0.7,0.3"])
    assert code == 2 and f"cannot write {out}: {says}" in err and "Traceback" not in err
    assert snapshot(out) == kept  # the old merge, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no half-written sibling


def test_a_listing_lists_when_its_index_cannot_be_written(world_copy, monkeypatch):
    from mashup_core.config import resolve_config
    from mashup_core.jobs import store
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.workspace_spec import workspace_run_spec

    spec = workspace_run_spec(resolve_config(world_copy), {"kind": "demo", "name_or_path": "rev"},
                              steps=2)
    run_id = store.create_run(world_copy, RunSpec.from_dict(spec.to_dict()))
    (world_copy.runs_dir / "index.sqlite").unlink(missing_ok=True)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.sqlite3, "connect", full)
    assert [r["id"] for r in store.list_runs(world_copy)] == [run_id]
    code, out, err = run(["runs", "--workspace", str(world_copy.root)])
    assert code == 0 and run_id in out, err
    assert not (world_copy.runs_dir / "index.sqlite").exists()


def test_a_copied_adapter_is_not_called_another_base(world_copy, tmp_path):
    """The demo's adapters record their base relative to their folder; copied out of the
    library that path leads nowhere: the merge goes on, and a truly different base is named
    by its shapes, not by a path."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "rev-copy"
    shutil.copytree(world_copy.library_dir / "rev", copy)
    argv = ["merge", str(copy), str(world_copy.library_dir / "sort"), "--out",
            str(tmp_path / "ok"), "--workspace", str(world_copy.root)]
    code, _, err = run(argv)
    assert code == 0, err
    tensors = load_file(copy / "adapter_model.safetensors")
    key = next(k for k in sorted(tensors) if "lora_A" in k)
    tensors[key] = tensors[key].new_zeros(tensors[key].shape[0], tensors[key].shape[1] + 3)
    save_file(tensors, copy / "adapter_model.safetensors")
    argv[-3] = str(tmp_path / "not")
    code, _, err = run(argv)
    assert code == 2 and "different base models" in err and "base (shape" not in err
    assert re.search(r"module \S+ is \d+×\d+ in rev-copy but \d+×\d+ in sort", err), err


def test_a_killed_merges_leftovers_go_at_the_next_merge(bad_world, tmp_path):
    ws, _ = bad_world
    dead = 2**22 + 12345  # above pid_max's default: no such process
    for leftover in (f".merged.tmp-{dead}", f".merged.old-{dead}"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "adapter_model.safetensors").write_bytes(b"half")
    live = tmp_path / f".other.tmp-{os.getppid()}"  # a writer still at work: kept
    live.mkdir()
    code, _, err = run(["merge", "rev", "sort", "--out", str(tmp_path / "merged"),
                        "--workspace", str(ws.root)])
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "merged"]
    mode = stat.S_IMODE((tmp_path / "merged" / "adapter_model.safetensors").stat().st_mode)
    assert mode == 0o666 & ~_umask(), oct(mode)  # not safetensors' 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("argv, says", [
    (["rev"], "warning: one input: 'linear' returns it"),
    (["rev", "rev"], r"warning: \S*rev is given twice"),
    (["rev", "sort", "--weights", "0.2,0.2"], "warning: the weights sum to 0.4, not 1"),
])
def test_allowed_but_likely_not_meant_is_said_before_the_merge(bad_world, tmp_path, argv, says):
    ws, _ = bad_world
    code, _, err = run(["merge", *argv, "--out", str(tmp_path / "m"), "--workspace", str(ws.root)])
    assert code == 0 and re.search(says, err), err


def test_k_above_the_library_is_refused_before_scoring(tiny_world, tmp_path):
    from mashup_core.data.targets import load_demo_task
    from mashup_core.models.loading import load_base_model, load_tokenizer
    from mashup_core.training.mashup_init import PipelineError, prepare_mashup_init

    base = load_base_model(tiny_world.base_dir, device="cpu")
    tok = load_tokenizer(tiny_world.base_dir)
    rows = load_demo_task(tiny_world, "rev", "train")[:8]
    with pytest.raises(PipelineError, match=r"k=40 but the library holds 14 usable LoRA "
                       r"checkpoints \(2 of 'rev' left out\); use k <= 14"):
        prepare_mashup_init(tiny_world, base, tok, None, rows, k=40, exclude_task="rev",
                            out_dir=tmp_path / "m")


def test_a_folder_that_is_not_a_model_is_named_as_such(tiny_world, tmp_path):
    from mashup_core.models.loading import ModelLoadError, load_base_model, load_tokenizer

    with pytest.raises(ModelLoadError, match="is a LoRA adapter, not a model folder"):
        load_base_model(tiny_world.library_dir / "rev", device="cpu")
    with pytest.raises(ModelLoadError, match="is not a model folder: it has no config.json .it is empty"):
        load_tokenizer(tmp_path)
