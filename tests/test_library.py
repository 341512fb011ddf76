"""The checkpoint library: discovery of the tiny world's adapters, one rejection per kind of
damage (each on a real adapter copied from the tiny world), full checkpoints, sources, CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup_core.cli import main
from mashup_core.demo.synthetic import TASKS
from mashup_core.models.library import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LibraryError,
    demo_library,
    scan_library,
)

SNAPSHOTS = {f"{t}-step40" for t in TASKS}  # the tiny profile saves one at half of 80 steps
Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture
def library(tiny_world, tmp_path) -> Path:
    """A writable copy of the tiny world's library, to damage."""
    return Path(shutil.copytree(tiny_world.library_dir, tmp_path / "library"))


def test_demo_library_finds_finals_and_snapshots(tiny_world):
    scan = demo_library(tiny_world)
    assert set(scan.names) == set(TASKS) | SNAPSHOTS and scan.rejected == []
    sort = scan.by_name("sort")
    assert (sort.kind, sort.source_task, sort.rank, sort.alpha) == ("lora", "sort", 8, 16)
    llama_linear = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
    assert sort.target_modules == llama_linear and sort.notes == ()  # "all-linear", resolved
    assert sort.base_model == str(tiny_world.base_dir.resolve())  # "../../base" resolved
    assert sort.size_bytes == (tiny_world.library_dir / "sort" / ADAPTER_WEIGHTS).stat().st_size
    assert not sort.is_snapshot and scan.by_name("sort-step40").is_snapshot
    assert len(sort.state_dict()) == 2 * 7 * 2  # 2 layers x 7 projections x (A, B)
    assert set(demo_library(tiny_world, include_snapshots=False).names) == set(TASKS)
    with pytest.raises(LibraryError, match="no checkpoint named 'sorted' in the library; known: "):
        scan.by_name("sorted")


def test_without_a_base_each_adapter_is_checked_against_the_base_it_records(world_copy, library):
    _wider_base(world_copy.library_dir / "rev")
    scan = scan_library([world_copy.library_dir])  # mashup_meta.json: base_model = ../../base
    assert len(scan) == 15 and all(c.notes == () for c in scan)
    assert [r.name for r in scan.rejected] == ["rev"] and "64->96 in the adapter" in scan.rejected[0].reason
    # a copy without the base beside it: kept, with a note that shapes went unchecked
    scan = scan_library([library])
    assert len(scan) == 16 and scan.rejected == []
    assert all(c.notes[0].startswith("layers and shapes not checked: cannot read the base model's config") for c in scan)


def _edit_tensors(path: Path, edit) -> None:
    tensors = load_file(path / ADAPTER_WEIGHTS)
    edit(tensors)
    save_file(tensors, path / ADAPTER_WEIGHTS, metadata={"format": "pt"})


def _edit_config(path: Path, edit) -> None:
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    edit(config)
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))


def _truncate(p: Path) -> None:
    weights = p / ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _nan(p: Path) -> None:
    _edit_tensors(p, lambda t: t[f"{Q0}.lora_B.weight"].view(-1).__setitem__(3, float("nan")))


def _wider_base(p: Path) -> None:  # as if trained on a base with 64-wide attention input
    _edit_tensors(p, lambda t: t.__setitem__(f"{Q0}.lora_A.weight", torch.zeros(8, 64)))


def _renamed_layer(p: Path) -> None:  # a deeper base: layer 5 does not exist here
    def edit(t):
        for part in ("lora_A", "lora_B"):
            t[f"{Q0.replace('layers.0', 'layers.5')}.{part}.weight"] = t.pop(f"{Q0}.{part}.weight")
    _edit_tensors(p, edit)


DAMAGES = {
    "truncated safetensors": (_truncate, r"adapter_model\.safetensors is corrupted or truncated .*(incomplete metadata|MetadataIncompleteBuffer)"),
    "non-finite values": (_nan, rf"tensor {Q0}\.lora_B\.weight has 1 non-finite values \(NaN or inf\)"),
    "pickle weights": (lambda p: (p / ADAPTER_WEIGHTS).rename(p / "adapter_model.bin"),
                       r"only pickle weights \(adapter_model\.bin\); pickles can run code.*"
                       r"PeftModel\.from_pretrained\(base, DIR\)\.save_pretrained\(DIR, safe_serialization=True\)"),
    "missing lora_B": (lambda p: _edit_tensors(p, lambda t: t.pop(f"{Q0}.lora_B.weight")),
                       r"incomplete LoRA pairs: model\.layers\.0\.self_attn\.q_proj has no lora_B"),
    "rank differs from config": (lambda p: _edit_config(p, lambda c: c.__setitem__("r", 16)),
                                 r"adapter_config\.json says r=16 but model\.layers\.0\.mlp\.down_proj has rank 8; .*and \d+ more"),
    "pair ranks differ": (lambda p: _edit_tensors(p, lambda t: t.__setitem__(f"{Q0}.lora_B.weight", torch.zeros(96, 4))),
                          r"q_proj: lora_A has rank 8 but lora_B has rank 4"),
    "shape of another base": (_wider_base, r"does not fit the base model .*base \(trained on another base\?\): "
                              r"model\.layers\.0\.self_attn\.q_proj is 64->96 in the adapter but 96->96 in the base"),
    "layer the base lacks": (_renamed_layer, r"tensors for model\.layers\.5\.self_attn\.q_proj, a layer the base does not have"),
    "unknown target module": (lambda p: _edit_config(p, lambda c: c["target_modules"].append("c_attn")),
                              r"target module 'c_attn' matches no layer of the base"),
    "target regex matching nothing": (lambda p: _edit_config(p, lambda c: c.__setitem__("target_modules", r".*\.c_proj")),
                                      r"target_modules regex '\.\*\\\\\.c_proj' matches no layer"),
    "unreadable config": (lambda p: (p / ADAPTER_CONFIG).write_text('{"r": 8, "lora_alpha": }'),
                          r"adapter_config\.json is not valid JSON \(line 1, column \d+: Expecting value\)"),
    "not a LoRA": (lambda p: _edit_config(p, lambda c: c.__setitem__("peft_type", "IA3")),
                   r"peft_type is IA3; only LoRA adapters can be merged"),
    "unreadable meta": (lambda p: (p / "mashup_meta.json").write_text("{"), r"mashup_meta\.json is not valid JSON"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_damaged_adapter_is_rejected_and_the_rest_load(tiny_world, library, damage):
    apply, reason = DAMAGES[damage]
    apply(library / "sort")
    scan = scan_library([library], base_model_dir=tiny_world.base_dir)
    assert [r.name for r in scan.rejected] == ["sort"]
    assert scan.rejected[0].path == library / "sort"
    assert re.search(reason, scan.rejected[0].reason), scan.rejected[0].reason
    assert len(scan) == 15 and "sort" not in scan.names


def _copy_base_as_full(tiny_world, dst: Path, shards: int = 1) -> Path:
    dst.mkdir(parents=True)
    shutil.copy(tiny_world.base_dir / "config.json", dst)
    tensors = load_file(tiny_world.base_dir / "model.safetensors")
    if shards == 1:
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
        return dst
    keys, weight_map = sorted(tensors), {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::shards]}
        save_file(part, dst / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_full_checkpoints_single_and_sharded(tiny_world, tmp_path):
    single = _copy_base_as_full(tiny_world, tmp_path / "lib" / "full-single")
    _copy_base_as_full(tiny_world, tmp_path / "lib" / "nested" / "full-sharded", shards=2)
    scan = scan_library([tmp_path / "lib"], base_model_dir=tiny_world.base_dir)
    assert scan.rejected == [] and scan.names == ["full-single", "nested/full-sharded"]
    sharded = scan.by_name("nested/full-sharded")
    assert (sharded.kind, sharded.rank, len(sharded.weight_files)) == ("full", None, 2)
    assert sharded.state_dict().keys() == scan.by_name("full-single").state_dict().keys()
    assert sharded.size_bytes > 0.9 * (single / "model.safetensors").stat().st_size


@pytest.mark.parametrize("damage, reason", [
    ("missing shard", r"model\.safetensors\.index\.json lists shards that are missing: model-00002-of-00002"),
    ("pickle only", r"only pickle weights \(pytorch_model\.bin\).*AutoModelForCausalLM\.from_pretrained\(DIR\)"
                    r"\.save_pretrained\(DIR, safe_serialization=True\)"),
    ("other architecture", r"does not fit the base model .*shape mismatch model\.embed_tokens\.weight \[50, 32\] vs \[50, 96\]"),
    ("loose weights", r"weights without adapter_config\.json or config\.json: cannot tell which model"),
])
def test_damaged_full_checkpoints_are_rejected(tiny_world, tmp_path, damage, reason):
    path = _copy_base_as_full(tiny_world, tmp_path / "lib" / "full", shards=2)
    if damage == "missing shard":
        (path / "model-00002-of-00002.safetensors").unlink()
    elif damage == "pickle only":
        for f in [*path.glob("*.safetensors"), path / "model.safetensors.index.json"]:
            f.unlink()
        (path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    elif damage == "other architecture":
        save_file({"model.embed_tokens.weight": torch.zeros(50, 32)}, path / "model-00002-of-00002.safetensors")
    else:
        (path / "config.json").unlink()
        (path / "model.safetensors.index.json").unlink()
    scan = scan_library([tmp_path / "lib"], base_model_dir=tiny_world.base_dir)
    assert len(scan) == 0 and len(scan.rejected) == 1
    assert re.search(reason, scan.rejected[0].reason), scan.rejected[0].reason


def test_sources_that_cannot_be_used(tiny_world, library, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    other = tmp_path / "other"
    shutil.copytree(library / "min", other / "sort")  # a second checkpoint named "sort"
    scan = scan_library([library, library, tmp_path / "missing", a_file, "someone/lora-adapters", other],
                        base_model_dir=tiny_world.base_dir, include_snapshots=False)
    assert len(scan) == 8  # the same folder twice counts once
    reasons = {r.name: r.reason for r in scan.rejected}
    assert reasons[str(tmp_path / "missing")].startswith(f"no folder {tmp_path / 'missing'}")
    assert reasons[str(a_file)].endswith("is a file; a library source is a folder of checkpoints or a Hub id")
    assert reasons["someone/lora-adapters"].startswith(
        "no folder 'someone/lora-adapters' here, and fetching it from the Hugging Face Hub failed (HF_HUB_OFFLINE is set")
    assert reasons["sort"] == f"another checkpoint is already named 'sort' ({library / 'sort'}); rename one of the folders"


def test_an_unreadable_base_fails_before_any_work(library, tmp_path):
    (tmp_path / "base").mkdir()
    with pytest.raises(LibraryError, match=r"cannot read the base model's config from .*base"):
        scan_library([library], base_model_dir=tmp_path / "base")


def test_cli_library_and_targets(tiny_world, library, capsys):
    ws = ["--workspace", str(tiny_world.root)]
    assert main(["library", *ws, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["checkpoints"]) == 16 and out["rejected"] == []

    (library / "dmax" / ADAPTER_WEIGHTS).rename(library / "dmax" / "adapter_model.bin")
    assert main(["library", *ws, "--source", str(library), "--base", str(tiny_world.base_dir), "--no-snapshots"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"name +kind +task +rank +size +status\ncount +lora +count +8 +\d+\.\d KiB +ok\n", table)
    assert re.search(r"\ndmax +- +- +- +- +rejected: only pickle weights \(adapter_model\.bin\)", table)
    assert "7 checkpoints, 1 rejected" in table

    assert main(["library", "--workspace", str(library), "--no-progress"]) == 2  # no config there
    assert "has no mashup.toml: create one with `mashup init --base BASE --source DIR`" in capsys.readouterr().err

    assert main(["targets", *ws]) == 0
    listing = capsys.readouterr().out
    assert "dsort    sort the digits" in listing and "winogrande      WinoGrande     allenai/winogrande winogrande_xl" in listing
    assert main(["targets", *ws, "--show", "min", "--split", "test", "--n", "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["count"] == 64 and len(shown["examples"]) == 2 and shown["target"]["kind"] == "demo"
    assert main(["targets", *ws, "--show", "hellaswag"]) == 2
    assert "cannot load HellaSwag (train): benchmarks need the Hugging Face Hub once" in capsys.readouterr().err
