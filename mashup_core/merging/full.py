"""Merge full-model checkpoints of one base into a new checkpoint, streamed tensor by tensor.

The methods are mergekit's family (`merging.full_methods`, registered in `merging.registry`
as `FULL_MERGE_METHODS`): task vectors W_i − W_base (task_arithmetic, ties, dare_*,
breadcrumbs*, della*, sce) and averages or interpolations of the models (linear, slerp,
nuslerp, multislerp, karcher, model_stock, nearswap). Each is a pure function of one
tensor's inputs; this module only reads, checks, streams and writes.

Dtypes: every input tensor is computed in float32 (float64 stays float64), mixed dtypes
included (a bf16 checkpoint over an fp32 base), and written in the base's dtype. A mergekit
config (`merge_config`) gets mergekit's instead: its `dtype` as the compute dtype (else the
inputs' promoted dtype), its `out_dtype` (else the compute dtype).

Streaming: every input's headers (names, shapes, dtypes) and every parameter of every tensor
are checked before any value is read. The output's shards are planned from the base's
headers, so each shard's header is written first and every merged tensor goes to disk as soon
as it is computed. Each input file is opened for one tensor and closed again. Peak memory is
one tensor per input plus the base's and the merged tensor; the entry-wise step runs in row
blocks. Random methods draw from a generator seeded per tensor from (`seed`, tensor name), so
a merge is reproducible and does not depend on sharding. Pickled weights are never read. The
output folder is a normal checkpoint (`from_pretrained` loads it) with the base's config and
tokenizer files, `merge_record.json`, `mashup_meta.json`, the recipe as mergekit YAML
(`mergekit_config.yml`) and a model card (`README.md`).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import safe_open

from mashup_core.merging import elementwise, full_methods, recipe  # noqa: F401  (registers)
from mashup_core.merging.lora import _replace_dir_atomically
from mashup_core.merging.registry import (
    MergeConfigError,
    MethodSpec,
    check_inputs,
    check_weights,
    get,
    methods,
    resolve_params,
)
from mashup_core.models.library import (
    ADAPTER_CONFIG,
    META_FILE,
    MODEL_CONFIG,
    PICKLE_SUFFIXES,
    SHARD_INDEX,
    CheckpointFileError,
    TensorInfo,
    full_checkpoint_tensors,
)
from mashup_core.workspace import write_json_atomic

RECORD_FILE = "merge_record.json"
# Copied from the base beside the merged weights: what from_pretrained and the tokenizer read.
BASE_FILES = ("config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
              "added_tokens.json", "vocab.*", "merges.txt", "chat_template.*", "*.model")
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
FLOATS = ("F64", "F32", "F16", "BF16")
FULL_MERGE_METHODS: dict[str, MethodSpec] = methods("full")


class FullMergeError(MergeConfigError):
    """A full-checkpoint merge that cannot run as asked (inputs, parameters or output)."""


class CheckpointMismatchError(FullMergeError):
    """A checkpoint does not fit the base: tensor names, shapes or dtypes differ."""


def tensor_seed(seed: int, name: str) -> int:
    """A random method's seed for one tensor: a function of the merge's seed and its name."""
    return int.from_bytes(sha256(f"{seed}:{name}".encode()).digest()[:7], "little")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Input:
    path: Path
    tensors: dict[str, TensorInfo]
    config: dict[str, Any]


def _read_input(path: str | Path, role: str) -> _Input:
    path = Path(path).expanduser()
    if path.is_file():
        if path.name.endswith(PICKLE_SUFFIXES):
            raise CheckpointFileError(
                f"{role} {path} is a pickle; pickles can run code when loaded, so they are refused. "
                "Convert once in an environment you trust: "
                "`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`")
        raise FullMergeError(f"{role} {path} is a file; pass the checkpoint's folder")
    if not path.is_dir():
        raise FullMergeError(f"{role} {path}: no such folder (a full checkpoint is a local folder "
                             "with config.json and *.safetensors)")
    if (path / ADAPTER_CONFIG).exists():
        raise FullMergeError(f"{role} {path} is a LoRA adapter, not a full checkpoint; "
                             "LoRA adapters are merged with `mashup merge` on adapters alone")
    try:
        tensors, index_problems = full_checkpoint_tensors(path)
    except CheckpointFileError as exc:
        raise CheckpointFileError(f"{role} {path}: {exc}") from exc
    if index_problems:
        raise CheckpointFileError(f"{role} {path}: {SHARD_INDEX} does not match its shards: "
                                  + "; ".join(_few(index_problems)))
    config: dict[str, Any] = {}
    if (path / MODEL_CONFIG).exists():
        try:
            config = json.loads((path / MODEL_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise FullMergeError(f"{role} {path}: {MODEL_CONFIG} is not readable JSON ({exc})") from exc
    return _Input(path.resolve(), tensors, config if isinstance(config, dict) else {})


def _check_fits(base: _Input, ckpt: _Input) -> None:
    """Same tensor names and shapes as the base; float dtypes may differ (computed in fp32),
    other dtypes may not. The message names what differs."""
    where = f"checkpoint {ckpt.path} vs base {base.path}"
    tied_b, tied_c = _tied(base.config), _tied(ckpt.config)
    if ckpt.config and tied_b != tied_c:
        raise CheckpointMismatchError(
            f"{where}: tie_word_embeddings is {tied_c} in the checkpoint but {tied_b} in the base "
            "(one stores the output embedding separately, the other shares it with the input "
            "embedding); their tensors cannot be merged one to one")
    missing = [k for k in base.tensors if k not in ckpt.tensors]
    if missing:
        raise CheckpointMismatchError(f"{where}: the checkpoint lacks {len(missing)} tensor(s) of "
                                      f"the base: {', '.join(_few(missing))}")
    extra = [k for k in ckpt.tensors if k not in base.tensors]
    if extra:
        hint = (" (the base ties its output embedding to the input embedding, so it stores no "
                "separate one)" if tied_b and any("lm_head" in k for k in extra) else "")
        raise CheckpointMismatchError(f"{where}: the checkpoint has {len(extra)} tensor(s) the base "
                                      f"lacks: {', '.join(_few(extra))}{hint}")
    shapes = [f"tensor {k} has shape {list(ckpt.tensors[k].shape)} in the checkpoint but "
              f"{list(b.shape)} in the base" for k, b in base.tensors.items()
              if ckpt.tensors[k].shape != b.shape]
    if shapes:
        raise CheckpointMismatchError(f"{where} (another architecture or size?): "
                                      + "; ".join(_few(shapes, 3)))
    dtypes = [f"tensor {k} is {ckpt.tensors[k].dtype} in the checkpoint but {b.dtype} in the base"
              for k, b in base.tensors.items() if ckpt.tensors[k].dtype != b.dtype
              and not (ckpt.tensors[k].dtype in FLOATS and b.dtype in FLOATS)]
    if dtypes:
        raise CheckpointMismatchError(
            f"{where}: " + "; ".join(_few(dtypes, 3)) + "; only floating-point tensors may "
            "differ in dtype (they are merged in float32)")
    unsupported = sorted({i.dtype for i in [*base.tensors.values(), *ckpt.tensors.values()]
                          if i.dtype not in DTYPES})
    if unsupported:
        raise CheckpointMismatchError(f"{where}: tensors of dtype {', '.join(unsupported)} cannot "
                                      f"be merged; supported: {', '.join(DTYPES)}")


def _tied(config: dict[str, Any]) -> bool:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))


# --------------------------------------------------------------------------- output


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(shape) * DTYPES[dtype].itemsize


def plan_shards(tensors: dict[str, TensorInfo], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names per output shard, in order, each shard at most `max_shard_bytes` (a tensor
    larger than that gets a shard of its own)."""
    shards: list[list[str]] = []
    size = 0
    for name, info in tensors.items():
        nbytes = _nbytes(info.shape, info.dtype)
        if not shards or (shards[-1] and size + nbytes > max_shard_bytes):
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _shard_header(names: list[str], tensors: dict[str, TensorInfo]) -> bytes:
    """A safetensors header for `names` in this order (data offsets known from the shapes)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        end = offset + _nbytes(tensors[name].shape, tensors[name].dtype)
        header[name] = {"dtype": tensors[name].dtype, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # as safetensors pads: data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _write_tensor(f: BinaryIO, tensor: torch.Tensor) -> None:
    f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def _read_tensor(info: TensorInfo, name: str) -> torch.Tensor:
    """One tensor, its file opened and closed for it alone (no mapping stays resident)."""
    with safe_open(info.file, framework="pt") as f:
        return f.get_tensor(name)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _TensorPlan:
    """What one output tensor needs: its parameter values and dtypes, known before reading."""

    values: dict[str, Any]
    compute: torch.dtype | None  # None: not a float tensor, copied from the base as it is
    out: str  # safetensors dtype name of the output


def _dtype_of(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


def _plan(spec: MethodSpec, template: _Input, base: _Input | None, inputs: Sequence[_Input],
          values_for, compute_dtype: str | None, out_dtype: str | None) -> dict[str, _TensorPlan]:
    """Every tensor's values (checked) and dtypes. `compute_dtype`: None = float32 (float64
    stays), "inputs" = the inputs' promoted dtype (mergekit without `dtype`), or a name.
    `out_dtype`: None = the base's dtype, "compute" = the compute dtype, or a name."""
    plans = {}
    uses_base = base is not None and spec.base != "unused"
    for name, info in template.tensors.items():
        if info.dtype not in FLOATS:
            plans[name] = _TensorPlan({}, None, info.dtype)
            continue
        stored = [DTYPES[i.tensors[name].dtype] for i in inputs]
        if uses_base:
            stored.append(DTYPES[base.tensors[name].dtype])
        promoted = stored[0]
        for dtype in stored[1:]:
            promoted = torch.promote_types(promoted, dtype)
        if compute_dtype is None:
            compute = torch.promote_types(promoted, torch.float32)
        elif compute_dtype == "inputs":
            compute = promoted
        else:
            compute = _dtype_of(compute_dtype)
        if out_dtype is None:
            out = info.dtype  # ours: the base's
        elif out_dtype == "compute":
            out = NAMES[compute]  # mergekit's, without out_dtype
        else:
            out = NAMES[_dtype_of(out_dtype)]
        plans[name] = _TensorPlan(values_for(name), compute, out)
    return plans


# --------------------------------------------------------------------------- the merge


def merge_full_checkpoints(
    checkpoints: Sequence[str | Path],
    base: str | Path | None,
    weights: Sequence[float] | None,
    method: str,
    out_dir: str | Path,
    *,
    density: float | Sequence[float] | None = None,
    seed: int = 0,
    max_shard_bytes: int = 2 * 1024**3,
    majority_sign_method: str | None = None,
    params: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    compute_dtype: str | None = None,
    out_dtype: str | None = None,
    config: recipe.Recipe | None = None,
) -> Path:
    """Merge full checkpoints of `base` into a new sharded safetensors checkpoint `out_dir`.

    `params` holds the method's parameters by their (mergekit) names; `density` and
    `majority_sign_method` are two of them, kept as arguments for older callers. `weights`
    None takes the method's default. `config` (from `read_recipe`) gives per-tensor
    parameters (filters, gradients) with mergekit's defaults instead. Everything but the
    values is checked first; the folder appears whole or not at all."""
    start = time.perf_counter()
    spec = get("full", method)
    if not checkpoints:
        raise FullMergeError("no checkpoints to merge")
    check_inputs(spec, len(checkpoints))
    n = len(checkpoints)
    given = {**(params or {}), "density": density, "majority_sign_method": majority_sign_method}
    constant = None
    if config is None:  # one set of values for every tensor, checked before anything is read
        checked_weights = check_weights(spec, weights, n)
        constant = resolve_params(spec, given, n,
                                  weights=checked_weights if spec.weights is not None else None)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FullMergeError(f"seed must be an integer, got {seed!r}")
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise FullMergeError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}")
    if spec.base == "required" and base is None:
        raise FullMergeError(f"method '{method}' merges against a base: give the base checkpoint")
    base_in = _read_input(base, "base") if base is not None else None
    inputs = [_read_input(c, "checkpoint") for c in checkpoints]
    template = base_in or inputs[0]
    if not (template.path / MODEL_CONFIG).exists():
        raise FullMergeError(f"{template.path} has no {MODEL_CONFIG} to give the merged model")
    for ckpt in inputs:
        _check_fits(template, ckpt)
    if base_in is not None and spec.base != "unused" and base_in.path in {i.path for i in inputs}:
        raise FullMergeError(f"{base_in.path} is the base and also an input: as an input its "
                             "task vector is zero, which changes the merge without adding "
                             "anything; drop it from the inputs (mergekit treats a base listed "
                             "among the models as the base only)")
    layers = recipe.num_hidden_layers(template.config)

    def values_for(name: str) -> dict[str, Any]:
        if config is None:
            return constant
        given_here, w = config.values_for(spec, name, recipe.layer_position(name, layers))
        return resolve_params(spec, given_here, n, defaults="mergekit", weights=w)

    plans = _plan(spec, template, base_in, inputs, values_for, compute_dtype, out_dtype)
    if spec.random:
        for name, plan in plans.items():
            if plan.compute is not None and "density" in plan.values:
                elementwise.check_density({name: template.tensors[name].shape},
                                          plan.values["density"], "tensor")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir in {template.path, *(i.path for i in inputs)}:
        raise FullMergeError(f"{out_dir} is an input of the merge; choose another output folder")
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite):
        raise FullMergeError(f"{out_dir} already exists; choose another output folder or overwrite it")
    checked = time.perf_counter()
    out_tensors = {name: TensorInfo(info.file, info.shape, plans[name].out)
                   for name, info in template.tensors.items()}
    shards = plan_shards(out_tensors, max_shard_bytes)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    first = next(iter(plans.values())).values if plans else {}
    shown = constant if constant is not None else first
    weights_out = shown.get("weight")
    record = {
        "kind": "mashup-full-merge", "version": 2, "method": method,
        "weights": weights_out, "effective_weights": _effective(spec, weights_out),
        "params": {k: v for k, v in shown.items() if k != "weight"} | (
            {"seed": seed} if spec.random else {}),
        "per_tensor_params": config is not None,
        "inputs": [str(i.path) for i in inputs],
        "base_model": str(base_in.path) if base_in is not None else None,
        "out_dir": str(out_dir), "shards": len(shards), "max_shard_bytes": max_shard_bytes,
        "compute_dtype": compute_dtype or "float32", "out_dtype": out_dtype or "the base's",
    }

    def write(tmp: Path) -> None:
        weight_map: dict[str, str] = {}
        for names, file in zip(shards, files, strict=True):
            with open(tmp / file, "wb") as f:
                f.write(_shard_header(names, out_tensors))
                for name in names:
                    _write_tensor(f, _merged(name, template, base_in, inputs, spec, plans[name],
                                             seed))
                    weight_map[name] = file
        total = sum(_nbytes(i.shape, i.dtype) for i in out_tensors.values())
        write_json_atomic(tmp / SHARD_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
        for pattern in BASE_FILES:
            for src in sorted(template.path.glob(pattern)):
                if src.is_file() and src.name not in (RECORD_FILE, META_FILE):
                    shutil.copy2(src, tmp / src.name)
        write_json_atomic(tmp / META_FILE, {"base_model": str(template.path),
                                            "merged_from": record["inputs"], "method": method})
        record["timings"] = {"check": checked - start, "merge": time.perf_counter() - checked}
        record["seconds"] = time.perf_counter() - start
        write_json_atomic(tmp / RECORD_FILE, record)
        text = recipe.recipe_yaml(
            spec, record["inputs"], weights_out, {k: v for k, v in shown.items() if k != "weight"},
            base=record["base_model"], dtype=_one_dtype(p.compute for p in plans.values()),
            out_dtype=None if out_dtype == "compute" else
            _one_dtype(DTYPES[i.dtype] for i in out_tensors.values()),
            given_text=config.text if config else None)
        (tmp / recipe.RECIPE_FILE).write_text(text)
        (tmp / recipe.CARD_FILE).write_text(recipe.model_card(
            spec, name=out_dir.name, inputs=[{"path": p} for p in record["inputs"]],
            weights=weights_out, values=shown, base=record["base_model"], recipe=text,
            seconds=record["seconds"], extra={"shards": len(shards), "seed": seed}
            if spec.random else {"shards": len(shards)}))

    _replace_dir_atomically(out_dir, write)
    return out_dir


def _one_dtype(dtypes) -> str | None:
    """The name of the one floating dtype among `dtypes` (None if none or several)."""
    floats = {d for d in dtypes if d is not None and d.is_floating_point}
    return str(floats.pop()).removeprefix("torch.") if len(floats) == 1 else None


def _effective(spec: MethodSpec, weights: Sequence[float] | None) -> list[float] | None:
    """The weights as the method applies them: shares divided by their sum."""
    if weights is None:
        return None
    if spec.weights == "share" and abs(math.fsum(weights)) > 1e-12:
        return [w / math.fsum(weights) for w in weights]
    return list(weights)


def merge_config(config_path: str | Path, out_dir: str | Path, *, max_shard_bytes: int = 2 * 1024**3,
                 seed: int = 0, overwrite: bool = False) -> tuple[Path, list[str]]:
    """Merge as a mergekit YAML says (mergekit's defaults and dtypes). Returns the output and
    the parameter names the config sets that its method does not use (mergekit ignores them)."""
    config = recipe.read_recipe(config_path)
    spec = get("full", config.method)
    out = merge_full_checkpoints(
        config.inputs, config.base, None, config.method, out_dir, seed=seed,
        max_shard_bytes=max_shard_bytes, overwrite=overwrite, config=config,
        compute_dtype=config.dtype or "inputs", out_dtype=config.out_dtype or "compute")
    return out, config.unused(spec)


def _merged(name: str, template: _Input, base: _Input | None, inputs: Sequence[_Input],
            spec: MethodSpec, plan: _TensorPlan, seed: int) -> torch.Tensor:
    """One output tensor: read the base's (if the method uses it) and each input's, in the
    compute dtype, and merge. Alive at the peak: one tensor per input and the base's."""
    if plan.compute is None:  # integer buffers: the base's, as they are
        return _read_tensor(template.tensors[name], name)
    base_t = None
    if base is not None and spec.base != "unused":
        base_t = _read_tensor(base.tensors[name], name).to(plan.compute)
        _finite(base_t, name, base.path)
    tensors = []
    for ckpt in inputs:
        tensor = _read_tensor(ckpt.tensors[name], name).to(plan.compute)
        _finite(tensor, name, ckpt.path)
        tensors.append(tensor)
        del tensor
    rng = torch.Generator().manual_seed(tensor_seed(seed, name)) if spec.random else None
    return spec.fn(tensors, base_t, plan.values, rng).to(DTYPES[plan.out])


def _finite(tensor: torch.Tensor, name: str, path: Path) -> None:
    if not torch.isfinite(tensor).all():
        raise FullMergeError(f"{path}: tensor {name} holds NaN or infinite values (a diverged "
                             "or corrupted training run); leave that checkpoint out of the merge")


def _few(items: list[str], limit: int = 5) -> list[str]:
    return items[:limit] + [f"and {len(items) - limit} more"] if len(items) > limit else items
