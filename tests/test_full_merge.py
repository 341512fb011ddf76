"""Streamed full-checkpoint merges: equal to an in-memory merge for every method, loadable,
sharded as asked, streamed (never a whole checkpoint in memory), and every bad input refused."""

from __future__ import annotations

import json
import re
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from peft.utils import merge_utils
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from mashup_core.cli import main
from mashup_core.merging import full
from mashup_core.merging.full import (
    FULL_MERGE_METHODS,
    CheckpointMismatchError,
    FullMergeError,
    merge_full_checkpoints,
    tensor_seed,
)
from mashup_core.merging.lora import MergeConfigError
from mashup_core.models.library import SHARD_INDEX, CheckpointFileError, scan_library

N_INPUTS = 3
DENSITY = {"ties": 0.5, "dare_linear": 0.6, "dare_ties": 0.4}


def _config(**overrides) -> LlamaConfig:
    settings = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    tie_word_embeddings=False)
    return LlamaConfig(**{**settings, **overrides})


def _save(model, path: Path, max_shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return path


def _base_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_config(**overrides)).eval()


def _finetuned(base, seed: int, scale: float = 0.02):
    """The base plus a random Δ on every tensor: a stand-in for a finetune."""
    model = _base_model(**{k: getattr(base.config, k) for k in ("tie_word_embeddings",)})
    model.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    """A base (one file) and three finetunes sharded three different ways."""
    root = tmp_path_factory.mktemp("full")
    base = _base_model()
    base_dir = _save(base, root / "base")
    (base_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    shards = [None, "20KB", "45KB"]
    ckpts = [_save(_finetuned(base, 10 + i), root / f"ft{i}", s) for i, s in enumerate(shards)]
    return {"root": root, "base": base_dir, "ckpts": ckpts}


def _state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def _in_memory(base: Path, ckpts: list[Path], weights: list[float], method: str,
               density: float | None, seed: int) -> dict[str, torch.Tensor]:
    """The straightforward merge: every state dict loaded, PEFT's functions on whole tensors."""
    base_sd, sds = _state(base), [_state(c) for c in ckpts]
    out = {}
    for name, original in base_sd.items():
        base_f = original.float()
        deltas = [sd[name].float() - base_f for sd in sds]
        if method == "linear":
            merged = merge_utils.task_arithmetic(deltas, torch.tensor([w / sum(weights) for w in weights]))
        elif method == "task_arithmetic":
            merged = merge_utils.task_arithmetic(deltas, torch.tensor(weights))
        elif method == "ties":
            merged = merge_utils.ties(deltas, torch.tensor(weights), density)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(tensor_seed(seed, name))
                fn = getattr(merge_utils, method)
                merged = fn(deltas, torch.tensor(weights), density)
        out[name] = (base_f + merged).to(original.dtype)
    return out


@pytest.mark.parametrize("method", list(FULL_MERGE_METHODS))
def test_every_method_equals_the_in_memory_merge_and_loads(family, tmp_path, method):
    weights = [0.5, 0.3, 0.7]
    out = merge_full_checkpoints(family["ckpts"], family["base"], weights, method, tmp_path / "m",
                                 density=DENSITY.get(method), seed=3, max_shard_bytes=30_000)
    expected = _in_memory(family["base"], family["ckpts"], weights, method, DENSITY.get(method), 3)
    merged = _state(out)
    assert merged.keys() == expected.keys()
    for name in expected:
        assert torch.equal(merged[name], expected[name]), name
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    record = json.loads((out / "merge_record.json").read_text())
    assert record["method"] == method and record["weights"] == weights
    assert (out / "tokenizer_config.json").read_text() == (family["base"] / "tokenizer_config.json").read_text()
    if method == "linear":  # the weighted average of the models themselves, up to rounding
        sds = [_state(c) for c in family["ckpts"]]
        for name, tensor in merged.items():
            average = sum(w / sum(weights) * sd[name] for w, sd in zip(weights, sds, strict=True))
            torch.testing.assert_close(tensor, average, atol=1e-6, rtol=1e-5)
    if method.startswith("dare"):  # another seed drops other entries
        other = merge_full_checkpoints(family["ckpts"], family["base"], weights, method,
                                       tmp_path / "m2", density=DENSITY[method], seed=4)
        assert not torch.equal(_state(other)["model.layers.0.mlp.up_proj.weight"],
                               merged["model.layers.0.mlp.up_proj.weight"])


def test_bf16_checkpoints_merge_in_float32_and_stay_bf16(tmp_path):
    base = _base_model().to(torch.bfloat16)
    base_dir = _save(base, tmp_path / "base")
    ckpts = [_save(_finetuned(base.float(), s).to(torch.bfloat16), tmp_path / f"ft{s}", "30KB")
             for s in (1, 2)]
    out = merge_full_checkpoints(ckpts, base_dir, [0.6, 0.4], "task_arithmetic", tmp_path / "m")
    merged, expected = _state(out), _in_memory(base_dir, ckpts, [0.6, 0.4], "task_arithmetic", None, 0)
    assert all(merged[k].dtype == torch.bfloat16 and torch.equal(merged[k], expected[k]) for k in expected)


def test_output_is_sharded_as_asked(family, tmp_path):
    limit = 25_000
    out = merge_full_checkpoints(family["ckpts"], family["base"], [1, 1, 1], "task_arithmetic",
                                 tmp_path / "m", max_shard_bytes=limit)
    index = json.loads((out / SHARD_INDEX).read_text())
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == [s.name for s in shards]
    base_sd = _state(family["base"])
    assert index["weight_map"].keys() == base_sd.keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in base_sd.values())
    for shard in shards:
        with safe_open(shard, framework="pt") as f:
            sizes = {k: f.get_tensor(k).numel() * 4 for k in f.keys()}  # noqa: SIM118
        assert sum(sizes.values()) <= limit or len(sizes) == 1  # a tensor over the limit stands alone
        assert all(index["weight_map"][k] == shard.name for k in sizes)
    # The library sees a valid sharded full checkpoint of the base.
    scan = scan_library([out.parent], base_model_dir=family["base"])
    assert scan.rejected == [] and [(c.kind, len(c.weight_files)) for c in scan] == [("full", len(shards))]


def test_the_merge_streams_one_tensor_per_input(family, tmp_path, monkeypatch):
    """At no point more than n_inputs + 1 read tensors are alive, every tensor is read once per
    input, and all reads of one tensor name happen together (fails if checkpoints are loaded whole)."""
    reads: list[str] = []
    live = {"now": 0, "max": 0}
    real = full._read_tensor

    def spy(info, name):
        tensor = real(info, name)
        reads.append(name)
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        weakref.finalize(tensor, lambda: live.__setitem__("now", live["now"] - 1))
        return tensor

    def whole(*_a, **_k):
        raise AssertionError("a whole checkpoint was loaded")

    monkeypatch.setattr(full, "_read_tensor", spy)
    monkeypatch.setattr("safetensors.torch.load_file", whole)
    for method in ("task_arithmetic", "ties"):
        reads.clear()
        merge_full_checkpoints(family["ckpts"], family["base"], [1, 1, 1], method,
                               tmp_path / method, density=DENSITY.get(method))
        names = list(dict.fromkeys(reads))
        assert reads == [n for n in names for _ in range(N_INPUTS + 1)]
        assert live["max"] <= N_INPUTS + 1, live


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _lying_index(path: Path) -> Path:
    """The shard index maps model.norm.weight to a shard that does not hold it."""
    index = json.loads((path / SHARD_INDEX).read_text())
    weight_map = index["weight_map"]
    weight_map["model.norm.weight"] = next(s for s in sorted(set(weight_map.values()))
                                           if s != weight_map["model.norm.weight"])
    (path / SHARD_INDEX).write_text(json.dumps(index))
    return path


def _edit_single(path: Path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _bad(kind: str, family: dict, tmp: Path) -> dict:
    """Arguments of a merge that must fail, built from the family."""
    ckpts, args = list(family["ckpts"]), {"weights": [1.0, 1.0, 1.0], "method": "task_arithmetic"}
    if kind == "shape":
        ckpts[1] = _save(_base_model(intermediate_size=48), tmp / "other")
    elif kind == "dtype":
        ckpts[2] = _save(_finetuned(_base_model(), 5).to(torch.bfloat16), tmp / "bf16")
    elif kind == "missing":
        ckpts[0] = _copy(ckpts[0], tmp / "cut")
        _edit_single(ckpts[0], lambda t: t.pop("model.norm.weight"))
    elif kind == "extra":
        ckpts[0] = _copy(ckpts[0], tmp / "more")
        _edit_single(ckpts[0], lambda t: t.__setitem__("model.extra.weight", torch.zeros(2)))
    elif kind == "tied":
        ckpts[0] = _save(_base_model(tie_word_embeddings=True), tmp / "tied")
    elif kind == "pickle":
        ckpts[0] = tmp / "pickled"
        ckpts[0].mkdir()
        shutil.copy(family["base"] / "config.json", ckpts[0])
        (ckpts[0] / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    elif kind == "pickle file":
        ckpts[0] = tmp / "model.pt"
        ckpts[0].write_bytes(b"\x80\x04")
    elif kind == "lora":
        ckpts[0] = tmp / "adapter"
        ckpts[0].mkdir()
        (ckpts[0] / "adapter_config.json").write_text("{}")
    elif kind == "bad index":
        ckpts[1] = _lying_index(_copy(ckpts[1], tmp / "index"))
    elif kind == "weights":
        args["weights"] = [0.5, 0.5]
    elif kind == "method":
        args["method"] = "cat_svd"
    elif kind == "density":
        args["method"] = "ties"
    elif kind == "linear zero":
        args |= {"method": "linear", "weights": [1.0, -1.0, 0.0]}
    elif kind == "nan":
        ckpts[0] = _copy(ckpts[0], tmp / "nan")
        _edit_single(ckpts[0], lambda t: t["model.norm.weight"].__setitem__(0, float("nan")))
    elif kind == "out exists":
        (tmp / "m").mkdir()
        (tmp / "m" / "keep.txt").write_text("x")
    return {"checkpoints": ckpts, **args}


BAD = {
    "shape": (CheckpointMismatchError, r"/other vs base \S+ \(another architecture or size\?\): tensor "
              r"model\.layers\.0\.mlp\.down_proj\.weight has shape \[32, 48\] in the checkpoint but "
              r"\[32, 64\] in the base; tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape "
              r"\[48, 32\] in the checkpoint but \[64, 32\] in the base; .*; and 3 more"),
    "dtype": (CheckpointMismatchError, r"tensor \S+ is BF16 in the checkpoint but F32 in the base"),
    "missing": (CheckpointMismatchError, r"checkpoint \S+/cut vs base \S+: the checkpoint lacks 1 "
                r"tensor\(s\) of the base: model\.norm\.weight"),
    "extra": (CheckpointMismatchError, r"\S+/more .*has 1 tensor\(s\) the base lacks: model\.extra\.weight"),
    "tied": (CheckpointMismatchError, r"tie_word_embeddings is True in the checkpoint but False in the base"),
    "pickle": (CheckpointFileError, r"pickled: only pickle weights \(pytorch_model\.bin\); pickles can "
               r"run code"),
    "pickle file": (CheckpointFileError, r"model\.pt is a pickle; pickles can run code"),
    "lora": (FullMergeError, r"is a LoRA adapter, not a full checkpoint"),
    "bad index": (CheckpointFileError, r"does not match its shards: model\.norm\.weight is mapped to "
                  r"\S+, which does not hold it"),
    "weights": (FullMergeError, r"got 2 weights for 3 checkpoints"),
    "method": (FullMergeError, r"unknown merge method 'cat_svd' for full checkpoints; choose from "
               r"linear, task_arithmetic, ties, dare_linear, dare_ties"),
    "density": (MergeConfigError, r"method 'ties' needs a density"),
    "linear zero": (FullMergeError, r"sum to 0; use 'task_arithmetic'"),
    "nan": (FullMergeError, r"/nan: tensor model\.norm\.weight holds NaN"),
    "out exists": (FullMergeError, r"already exists"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_inputs_are_refused_with_their_reason(family, tmp_path, monkeypatch, kind):
    error, message = BAD[kind]
    case = _bad(kind, family, tmp_path)
    reads = []
    real = full._read_tensor
    monkeypatch.setattr(full, "_read_tensor", lambda info, name: reads.append(name) or real(info, name))
    with pytest.raises(error, match=message):
        merge_full_checkpoints(base=family["base"], out_dir=tmp_path / "m", **case)
    if kind != "nan":  # everything but values is checked before any tensor is read
        assert reads == []
    if kind != "out exists":  # nothing half-written is left behind
        assert not (tmp_path / "m").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]


def test_library_rejects_a_sharded_checkpoint_whose_index_lies(family, tmp_path):
    lib = tmp_path / "lib"
    _copy(family["ckpts"][1], lib / "good")
    _lying_index(_copy(family["ckpts"][1], lib / "bad"))
    shards = set(json.loads((lib / "good" / SHARD_INDEX).read_text())["weight_map"].values())
    scan = scan_library([lib], base_model_dir=family["base"])
    assert scan.names == ["good"] and len(scan.by_name("good").weight_files) == len(shards) > 1
    assert re.search(r"does not match its shards: model\.norm\.weight is mapped to", scan.rejected[0].reason)


def test_cli_merges_full_checkpoints_and_refuses_a_mix(family, tmp_path, capsys):
    ws = ["--workspace", str(tmp_path / "ws")]
    out = tmp_path / "m"
    code = main(["merge", *map(str, family["ckpts"][:2]), "--base", str(family["base"]), *ws,
                 "--method", "ties", "--density", "0.5", "--weights", "0.5,0.5", "--out", str(out),
                 "--max-shard-size", "30KB", "--json"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "ties" and record["out_dir"] == str(out) and record["shards"] > 1
    expected = _in_memory(family["base"], family["ckpts"][:2], [0.5, 0.5], "ties", 0.5, 0)
    assert all(torch.equal(t, expected[k]) for k, t in _state(out).items())
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    code = main(["merge", str(family["ckpts"][0]), str(adapter), "--base", str(family["base"]), *ws,
                 "--out", str(tmp_path / "mix")])
    assert code == 2
    assert re.search(r"both LoRA adapters \(adapter\) and full checkpoints \(ft0\)", capsys.readouterr().err)
    code = main(["merge", *map(str, family["ckpts"][:2]), "--base", str(family["base"]), *ws,
                 "--rank", "4", "--out", str(tmp_path / "r")])
    assert code == 2 and "--rank applies to LoRA merges" in capsys.readouterr().err
