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
from mashup_core.merging.recipe import CARD_FILE, RECIPE_FILE
from mashup_core.merging.registry import resolve_params
from mashup_core.models.library import SHARD_INDEX, CheckpointFileError, scan_library

N_INPUTS = 3
DENSITY = {"ties": 0.5, "dare_linear": 0.6, "dare_ties": 0.4, "breadcrumbs": 0.6,
           "breadcrumbs_ties": 0.6, "della": 0.5, "della_linear": 0.5}
PARAMS = {"slerp": {"t": 0.4}, "nearswap": {"t": 0.01}, "task_arithmetic": {"lambda": 0.7},
          "sce": {"select_topk": 0.5}, "breadcrumbs": {"gamma": 0.05}}
PEFT_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")  # as before: PEFT's maths


def _inputs(method: str) -> int:
    spec = FULL_MERGE_METHODS[method]
    return spec.max_inputs or N_INPUTS


def _weights(method: str) -> list[float] | None:
    return None if FULL_MERGE_METHODS[method].weights is None else [0.5, 0.3, 0.7][:_inputs(method)]


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


def _in_memory(base: Path, ckpts: list[Path], weights: list[float] | None, method: str,
               density: float | None, seed: int, params: dict | None = None) -> dict[str, torch.Tensor]:
    """The straightforward merge: every state dict loaded whole. PEFT's functions for the
    methods this project had (their conventions are the defaults), the model average itself
    for linear, the registry's function on whole tensors for the rest (the streaming check)."""
    base_sd, sds = _state(base), [_state(c) for c in ckpts]
    spec = FULL_MERGE_METHODS[method]
    values = resolve_params(spec, {**(params or {}), "density": density}, len(ckpts), weights=weights)
    out = {}
    for name, original in base_sd.items():
        base_f = original.float()
        gen = torch.Generator().manual_seed(tensor_seed(seed, name)) if spec.random else None
        if method in PEFT_METHODS:
            deltas = [sd[name].float() - base_f for sd in sds]
            w = torch.tensor(weights)
            if method == "task_arithmetic":
                merged = values["lambda"] * merge_utils.task_arithmetic(deltas, w)
            elif method == "ties":
                merged = merge_utils.ties(deltas, w, density)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(tensor_seed(seed, name))  # PEFT draws from the global RNG
                    merged = getattr(merge_utils, method)(deltas, w, density)
            result = base_f + merged
        elif method == "linear":
            result = sum(w * sd[name].float() for w, sd in zip(weights, sds, strict=True)) / sum(weights)
        else:
            result = spec.fn([sd[name].float() for sd in sds], base_f, values, gen)
        out[name] = result.to(original.dtype)
    return out


@pytest.mark.parametrize("method", list(FULL_MERGE_METHODS))
def test_every_method_equals_the_in_memory_merge_and_loads(family, tmp_path, method):
    weights, ckpts = _weights(method), family["ckpts"][:_inputs(method)]
    out = merge_full_checkpoints(ckpts, family["base"], weights, method, tmp_path / "m",
                                 density=DENSITY.get(method), params=PARAMS.get(method), seed=3,
                                 max_shard_bytes=30_000)
    expected = _in_memory(family["base"], ckpts, weights, method, DENSITY.get(method), 3,
                          PARAMS.get(method))
    merged = _state(out)
    assert merged.keys() == expected.keys()
    for name in expected:
        if method == "linear":  # Σ w·W / Σ w in mergekit's order of operations: rounding only
            torch.testing.assert_close(merged[name], expected[name], atol=1e-6, rtol=1e-5)
        else:
            assert torch.equal(merged[name], expected[name]), name
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, merged[name]), name
    record = json.loads((out / "merge_record.json").read_text())
    assert record["method"] == method and record["weights"] == weights
    assert (out / "tokenizer_config.json").read_text() == (family["base"] / "tokenizer_config.json").read_text()
    assert (out / RECIPE_FILE).exists() and f"`{method}`" in (out / CARD_FILE).read_text()
    if FULL_MERGE_METHODS[method].random:  # another seed drops other entries
        other = merge_full_checkpoints(ckpts, family["base"], weights, method, tmp_path / "m2",
                                       density=DENSITY[method], seed=4)
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


def test_mixed_dtypes_are_merged_in_float32_and_written_in_the_bases_dtype(family, tmp_path):
    """A bf16 finetune over an fp32 base (refused before): its values enter in float32,
    exactly as an fp32 copy of it would, and the output is fp32 like the base."""
    bf16 = _save(_finetuned(_base_model(), 5).to(torch.bfloat16), tmp_path / "bf16")
    as_fp32 = _save(AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.float32), tmp_path / "fp32")
    ckpts = [family["ckpts"][0], bf16]
    out = merge_full_checkpoints(ckpts, family["base"], None, "ties", tmp_path / "m", density=0.5)
    same = merge_full_checkpoints([family["ckpts"][0], as_fp32], family["base"], None, "ties",
                                  tmp_path / "m2", density=0.5)
    merged = _state(out)
    assert {t.dtype for t in merged.values()} == {torch.float32}
    assert all(torch.equal(merged[k], t) for k, t in _state(same).items())


def test_weights_default_to_one_each_for_task_vectors_and_to_shares_for_averages(family, tmp_path):
    """Without weights, task arithmetic adds every task vector whole (mergekit's and the
    paper's weight 1), which is not the average; linear averages."""
    ta = _state(merge_full_checkpoints(family["ckpts"], family["base"], None, "task_arithmetic",
                                       tmp_path / "ta"))
    ones = _state(merge_full_checkpoints(family["ckpts"], family["base"], [1, 1, 1],
                                         "task_arithmetic", tmp_path / "ones"))
    mean = _state(merge_full_checkpoints(family["ckpts"], family["base"], None, "linear", tmp_path / "l"))
    assert all(torch.equal(ta[k], ones[k]) for k in ta)
    assert not torch.allclose(ta["model.norm.weight"], mean["model.norm.weight"])
    record = json.loads((tmp_path / "ta" / "merge_record.json").read_text())
    assert record["weights"] == [1.0, 1.0, 1.0]
    assert json.loads((tmp_path / "l" / "merge_record.json").read_text())["effective_weights"] == \
        pytest.approx([1 / 3] * 3)


def test_the_written_recipe_merges_the_same_again(family, tmp_path):
    """mergekit_config.yml holds every parameter (ours where they differ), so `--config` on it
    gives the same tensors; the card names the inputs, the method and its paper."""
    out = merge_full_checkpoints(family["ckpts"], family["base"], [0.5, 0.3, 0.7], "ties",
                                 tmp_path / "m", density=0.4, params={"lambda": 0.9})
    text = (out / RECIPE_FILE).read_text()
    assert "normalize: count" in text and "mashup's conventions" in text
    again, unused = full.merge_config(out / RECIPE_FILE, tmp_path / "again")
    assert unused == []
    first, second = _state(out), _state(again)
    assert all(torch.equal(first[k], second[k]) for k in first)
    card = (out / CARD_FILE).read_text()
    assert "arXiv 2306.01708" in card and all(str(c.resolve()) in card for c in family["ckpts"])


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
    elif kind == "base input":
        ckpts[2] = family["base"]
    elif kind == "unused":
        args |= {"method": "ties", "density": 0.5, "params": {"gamma": 0.1}}
    elif kind == "unknown param":
        args |= {"method": "ties", "density": 0.5, "params": {"desnity": 0.1}}
    elif kind == "della epsilon":
        args |= {"method": "della", "density": 0.1}
    elif kind == "random density":
        args |= {"method": "dare_linear", "density": 0.01}
    elif kind == "karcher weights":
        args |= {"method": "karcher", "weights": [0.2, 0.3, 0.5]}
    elif kind == "slerp inputs":
        args |= {"method": "slerp", "weights": None, "params": {"t": 0.5}}
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
    "base input": (FullMergeError, r"is the base and also an input: as an input its task vector is "
                   r"zero.*mergekit treats a base listed among the models as the base only"),
    "unused": (MergeConfigError, r"method 'ties' does not use gamma: they would be ignored"),
    "unknown param": (MergeConfigError, r"unknown parameter 'desnity' \(did you mean 'density'\?\)"),
    "della epsilon": (MergeConfigError, r"density ± epsilon must lie in \(0, 1\); density 0.1 with "
                      r"epsilon 0.15"),
    "random density": (MergeConfigError, r"density 0.01 keeps on average 0.32 of the 32 entries of "
                       r"tensor \S+norm\S*: random drops would erase it; use density ≥ 0.0312"),
    "karcher weights": (MergeConfigError, r"'karcher' weighs its inputs itself and takes no weights"),
    "slerp inputs": (MergeConfigError, r"'slerp' takes at most 1 input\(s\), got 3"),
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
    "weights": (MergeConfigError, r"got 2 weights for 3 inputs"),
    "method": (MergeConfigError, r"unknown merge method 'cat_svd' for full checkpoints; choose from "
               r"task_arithmetic, ties, .* \('cat_svd' is a method for LoRA adapters\)"),
    "density": (MergeConfigError, r"method 'ties' needs a density in \(0, 1\], e.g. 0.5"),
    "linear zero": (MergeConfigError, r"sum to 0; use 'task_arithmetic'"),
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


def test_cli_merges_a_mergekit_config_and_names_what_its_method_does_not_use(family, tmp_path, capsys):
    config = tmp_path / "merge.yml"
    config.write_text(
        f"merge_method: slerp\nbase_model: {family['base']}\n"
        f"models:\n  - model: {family['base']}\n  - model: {family['ckpts'][0]}\n"
        "    parameters: {weight: 0.3}\nparameters:\n  t: [0.0, 1.0]\ndtype: float32\n")
    code = main(["merge", "--config", str(config), "--out", str(tmp_path / "m"),
                 "--workspace", str(tmp_path / "ws"), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "slerp" and report["inputs"] == [str(family["ckpts"][0].resolve())]
    assert report["notes"] == ["note: merge.yml sets weight, which this method does not use "
                               "(mergekit ignores them too)"]
    merged, base, other = _state(tmp_path / "m"), _state(family["base"]), _state(family["ckpts"][0])
    # t = 0 at layer 0 and outside the layers (the base), 1 at the last layer (the other model)
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    torch.testing.assert_close(merged["model.layers.1.mlp.up_proj.weight"],
                               other["model.layers.1.mlp.up_proj.weight"], rtol=0, atol=1e-6)
    assert (tmp_path / "m" / "mergekit_config.yml").read_text() == config.read_text()
    code = main(["merge", "--config", str(config), str(family["ckpts"][1]), "--out", str(tmp_path / "x"),
                 "--workspace", str(tmp_path / "ws")])
    assert code == 2 and "--config describes the whole merge; drop inputs" in capsys.readouterr().err


@pytest.mark.parametrize(("body", "message"), [
    ("slices:\n  - sources: []\n", r"`slices:` \(layer slices \(frankenmerges\)\) is mergekit's layer surgery"),
    ("merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {ft}+some/lora\n",
     r"applies a LoRA to a model \(mergekit's `model\+lora`\)"),
    ("merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {ft}\n", r"'ties' needs a weight for "
     r"every model, and ft0 has none at"),
    ("merge_method: ties\nmodels:\n  - model: {ft}\n", r"'ties' merges task vectors against a base"),
    ("merge_method: tie\nmodels: []\n", r"unknown merge method 'tie' .*did you mean 'ties'"),
    ("merge_methd: ties\n", r"unknown key 'merge_methd' \(did you mean 'merge_method'\?\)"),
    ("merge_method: linear\nmodels:\n  - model: nobody/remote-model\n", r"is not a local folder"),
    ("merge_method: ties\nbase_model: {base}\ntokenizer_source: union\nmodels:\n  - model: {ft}\n",
     r"tokenizer merging"),
    ("merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {ft}\n    parameters: {{weight: 1, "
     "density: 1.5}}\n", r"ties: density must be in \(0, 1\], got 1.5"),
])
def test_a_mergekit_config_that_cannot_merge_here_says_why_before_reading(family, tmp_path, monkeypatch,
                                                                        body, message):
    config = tmp_path / "bad.yml"
    config.write_text(body.format(base=family["base"], ft=family["ckpts"][0]))
    reads = []
    monkeypatch.setattr(full, "_read_tensor", lambda info, name: reads.append(name))
    with pytest.raises(MergeConfigError, match=message):
        full.merge_config(config, tmp_path / "m")
    assert reads == [] and not (tmp_path / "m").exists()


def test_cli_names_a_seed_that_a_deterministic_method_would_ignore(family, tmp_path, capsys):
    args = ["merge", *map(str, family["ckpts"]), "--base", str(family["base"]),
            "--workspace", str(tmp_path / "ws"), "--out", str(tmp_path / "m")]
    assert main([*args, "--method", "ties", "--density", "0.5", "--seed", "3"]) == 2
    assert "method 'ties' draws no random numbers: --seed would have no effect" in capsys.readouterr().err
    assert main([*args, "--method", "dare_ties", "--density", "0.5", "--seed", "3",
                 "--param", "rescale=true", "--param", "normalize=false"]) == 0
    record = json.loads((tmp_path / "m" / "merge_record.json").read_text())
    assert record["params"] | {"seed": 3} == record["params"]
    assert (record["params"]["rescale"], record["params"]["normalize"]) == (True, False)


def test_cli_lists_every_method_by_family_with_its_parameters(capsys, tmp_path):
    assert main(["merge", "--list-methods", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    full_names = {m["name"] for family in listing["full"].values() for m in family}
    assert full_names == set(FULL_MERGE_METHODS)
    ties = next(m for family in listing["full"].values() for m in family if m["name"] == "ties")
    density = next(p for p in ties["params"] if p["name"] == "density")
    assert (density["default"], density["range"], density["mergekit_default"]) == ("required", "in (0, 1]", 1.0)
    assert "arXiv 2306.01708" in ties["citation"] and ties["needs"] == ["a base"]
    assert main(["merge", "--list-methods", "--workspace", str(tmp_path / "ws")]) == 0
    text = capsys.readouterr().out
    assert "[core space (Panariello et al. 2025)]" in text and "model_stock" in text
