"""Merge full-model checkpoints of one base into a new checkpoint, streamed tensor by tensor.

Every checkpoint i is a finetune of the base, so each tensor has a task vector
Δ_i = W_i − W_base (computed in float32, written back in the base's dtype). Methods:

- `linear`: the weighted average of the models, W = W_base + Σ (w_i / Σw) Δ_i = Σ (w_i/Σw) W_i.
  The weights are normalised to sum 1, so they say each model's share, not a strength.
- `task_arithmetic`: W = W_base + Σ w_i Δ_i with the weights as given: scales (λ of task
  arithmetic), so 0.5, 0.5 is the average of two models but 1, 1 adds both task vectors whole.
- `ties`, `dare_linear`, `dare_ties`: PEFT's methods (`peft.utils.merge_utils`) on the same Δ_i,
  weights as scales, as `task_arithmetic`: TIES magnitude-prunes each Δ_i to `density` and
  averages the entries that agree with the elected sign; DARE drops entries of each Δ_i at random
  (keeping `density`, rescaled by 1/density), then sums (`dare_linear`) or elects signs
  (`dare_ties`). DARE's drops are seeded per tensor from (`seed`, tensor name), so a merge is
  reproducible and does not depend on how the files are sharded.

Streaming: every input's headers (names, shapes, dtypes) are checked before any value is read.
The output's shards are planned from the base's headers, so each shard's header is written
first and every merged tensor goes to disk as soon as it is computed. Each input file is opened
for one tensor and closed again (its memory map never holds a whole checkpoint resident). Peak
memory is one tensor per input (its Δ) plus the base's and the merged tensor; each method is a
pure function of tensors, run in row blocks so its stacked temporaries stay small. Pickled
weights are never read. The output folder is a normal checkpoint (`from_pretrained` loads it)
with the base's config and tokenizer files, `merge_record.json` and `mashup_meta.json`.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, BinaryIO

import torch
from peft.utils import merge_utils
from safetensors import safe_open

from mashup_core.merging.lora import (
    MergeConfigError,
    MergeParams,
    _replace_dir_atomically,
    _row_blocks,
    _task_arithmetic,
    _ties,
    validate_params,
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


class FullMergeError(MergeConfigError):
    """A full-checkpoint merge that cannot run as asked (inputs, parameters or output)."""


class CheckpointMismatchError(FullMergeError):
    """A checkpoint does not fit the base: tensor names, shapes or dtypes differ."""


# --------------------------------------------------------------------------- methods

Prepare = Callable[[torch.Tensor, MergeParams], torch.Tensor]  # one Δ_i, whole tensor
Combine = Callable[[list[torch.Tensor], torch.Tensor, MergeParams], torch.Tensor]  # entry-wise


@dataclass(frozen=True)
class FullMergeMethod:
    """A merge of task vectors: `prepare` each whole Δ_i (pruning needs the whole tensor), then
    `combine` the prepared Δs entry by entry (so it may run on row blocks)."""

    name: str
    summary: str
    combine: Combine
    prepare: Prepare | None = None
    normalise: bool = False  # weights divided by their sum
    random: bool = False  # draws from the RNG (seeded per tensor)


def _magnitude(delta: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return merge_utils.prune(delta, params.density, method="magnitude")


def _random(delta: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return merge_utils.prune(delta, params.density, method="random", rescale=True)


FULL_MERGE_METHODS: dict[str, FullMergeMethod] = {m.name: m for m in (
    FullMergeMethod("linear", "weighted average of the models: W_base + Σ (w/Σw)·Δ_i",
                    _task_arithmetic, normalise=True),
    FullMergeMethod("task_arithmetic", "W_base + Σ w·Δ_i, weights as scales", _task_arithmetic),
    FullMergeMethod("ties", "TIES: magnitude-prune each Δ_i, elect signs, average the agreeing",
                    _ties, _magnitude),
    FullMergeMethod("dare_linear", "DARE: random drops rescaled by 1/density, then Σ w·Δ_i",
                    _task_arithmetic, _random, random=True),
    FullMergeMethod("dare_ties", "DARE drops, then TIES sign election", _ties, _random, random=True),
)}


def merge_tensor(deltas: list[torch.Tensor], weights: torch.Tensor, method: FullMergeMethod,
                 params: MergeParams, seed: int | None = None) -> torch.Tensor:
    """The merged Δ of one tensor. `deltas` (float, whole tensors) are consumed: pruned in turn,
    then the list is emptied and the first one's memory holds the result, so nothing but one Δ
    per input is alive at once. `seed` seeds the global RNG DARE's drops draw from (PEFT's
    `random_pruning` takes no generator), inside `fork_rng`: the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The density .* no pruning will be performed")
        if seed is not None:
            torch.manual_seed(seed)
        if method.prepare is not None:
            for i in range(len(deltas)):
                deltas[i] = method.prepare(deltas[i], params)
    shape = deltas[0].shape
    tasks = [d.reshape(shape[0], -1) if d.dim() else d.reshape(1, 1) for d in deltas]
    deltas.clear()
    merged = tasks[0]  # each row block is combined into a new tensor first: safe to overwrite
    for rows in _row_blocks(merged.shape[0], merged.shape[1], len(tasks)):
        merged[rows] = method.combine([t[rows] for t in tasks], weights, params)
    return merged.reshape(shape)


def tensor_seed(seed: int, name: str) -> int:
    """DARE's seed for one tensor: a function of the merge's seed and the tensor's name only."""
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
    """Same tensor names, shapes and dtypes as the base; the message names what differs."""
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
              for k, b in base.tensors.items() if ckpt.tensors[k].dtype != b.dtype]
    if dtypes:
        raise CheckpointMismatchError(
            f"{where}: " + "; ".join(_few(dtypes, 3)) + "; save both in one dtype "
            "(e.g. `model.to(torch.bfloat16).save_pretrained(DIR)`)")
    unsupported = sorted({i.dtype for i in base.tensors.values() if i.dtype not in DTYPES})
    if unsupported:
        raise CheckpointMismatchError(f"base {base.path}: tensors of dtype {', '.join(unsupported)} "
                                      f"cannot be merged; supported: {', '.join(DTYPES)}")


def _tied(config: dict[str, Any]) -> bool:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))


# --------------------------------------------------------------------------- output


def _nbytes(info: TensorInfo) -> int:
    return math.prod(info.shape) * DTYPES[info.dtype].itemsize


def plan_shards(tensors: dict[str, TensorInfo], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names per output shard, in order, each shard at most `max_shard_bytes` (a tensor
    larger than that gets a shard of its own)."""
    shards: list[list[str]] = []
    size = 0
    for name, info in tensors.items():
        nbytes = _nbytes(info)
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
        end = offset + _nbytes(tensors[name])
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


# --------------------------------------------------------------------------- the merge


def merge_full_checkpoints(
    checkpoints: Sequence[str | Path],
    base: str | Path,
    weights: Sequence[float],
    method: str,
    out_dir: str | Path,
    *,
    density: float | None = None,
    seed: int = 0,
    max_shard_bytes: int = 2 * 1024**3,
    majority_sign_method: str = "total",
    overwrite: bool = False,
) -> Path:
    """Merge full checkpoints of `base` into a new sharded safetensors checkpoint `out_dir`.

    Everything but the values is checked first (parameters, output folder, every input's file
    headers against the base's). The folder appears whole or not at all.
    """
    start = time.perf_counter()
    spec = FULL_MERGE_METHODS.get(method)
    if spec is None:
        raise FullMergeError(f"unknown merge method {method!r} for full checkpoints; choose from "
                             f"{', '.join(FULL_MERGE_METHODS)}")
    if not checkpoints:
        raise FullMergeError("no checkpoints to merge")
    if len(weights) != len(checkpoints):
        raise FullMergeError(f"got {len(weights)} weights for {len(checkpoints)} checkpoints; "
                             "give one weight per checkpoint")
    _, params = validate_params(method, len(checkpoints), weights, density=density, seed=seed,
                                majority_sign_method=majority_sign_method)
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise FullMergeError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}")
    effective = [float(w) for w in weights]
    if spec.normalise:
        total = math.fsum(effective)
        if abs(total) < 1e-12:
            raise FullMergeError(f"method 'linear' averages the models with weights divided by "
                                 f"their sum, but {effective} sum to 0; use 'task_arithmetic' "
                                 "for weights that are scales")
        effective = [w / total for w in effective]
    base_in = _read_input(base, "base")
    if not (base_in.path / MODEL_CONFIG).exists():
        raise FullMergeError(f"base {base_in.path} has no {MODEL_CONFIG} to give the merged model")
    inputs = [_read_input(c, "checkpoint") for c in checkpoints]
    for ckpt in inputs:
        _check_fits(base_in, ckpt)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir in {base_in.path, *(i.path for i in inputs)}:
        raise FullMergeError(f"{out_dir} is an input of the merge; choose another output folder")
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite):
        raise FullMergeError(f"{out_dir} already exists; choose another output folder or overwrite it")
    checked = time.perf_counter()
    w = torch.tensor(effective, dtype=torch.float32)
    shards = plan_shards(base_in.tensors, max_shard_bytes)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    record = {
        "kind": "mashup-full-merge", "version": 1, "method": method,
        "weights": [float(x) for x in weights], "effective_weights": effective,
        "params": {"density": density, "seed": seed, "majority_sign_method": majority_sign_method},
        "inputs": [str(i.path) for i in inputs], "base_model": str(base_in.path),
        "out_dir": str(out_dir), "shards": len(shards), "max_shard_bytes": max_shard_bytes,
    }

    def write(tmp: Path) -> None:
        weight_map: dict[str, str] = {}
        for names, file in zip(shards, files, strict=True):
            with open(tmp / file, "wb") as f:
                f.write(_shard_header(names, base_in.tensors))
                for name in names:
                    _write_tensor(f, _merged(name, base_in, inputs, w, spec, params))
                    weight_map[name] = file
        total = sum(_nbytes(i) for i in base_in.tensors.values())
        write_json_atomic(tmp / SHARD_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
        for pattern in BASE_FILES:
            for src in sorted(base_in.path.glob(pattern)):
                if src.is_file() and src.name not in (RECORD_FILE, META_FILE):
                    shutil.copy2(src, tmp / src.name)
        write_json_atomic(tmp / META_FILE, {"base_model": str(base_in.path), "merged_from": record["inputs"],
                                            "method": method})
        record["timings"] = {"check": checked - start, "merge": time.perf_counter() - checked}
        record["seconds"] = time.perf_counter() - start
        write_json_atomic(tmp / RECORD_FILE, record)

    _replace_dir_atomically(out_dir, write)
    return out_dir


def _merged(name: str, base: _Input, inputs: Sequence[_Input], weights: torch.Tensor,
            spec: FullMergeMethod, params: MergeParams) -> torch.Tensor:
    """One output tensor: read the base's and each input's, merge their Δs. Alive at the peak:
    the base's tensor and one Δ per input (all else is freed or written in place)."""
    original = _read_tensor(base.tensors[name], name)
    if not original.is_floating_point():  # integer buffers: the base's, as they are
        return original
    dtype = original.dtype
    base_f = original.to(torch.promote_types(dtype, torch.float32))
    del original
    _finite(base_f, name, base.path)
    deltas = []
    for ckpt in inputs:
        delta = _read_tensor(ckpt.tensors[name], name).to(base_f.dtype)
        delta.sub_(base_f)  # in place: the read tensor becomes its Δ, no second copy
        _finite(delta, name, ckpt.path)
        deltas.append(delta)
        del delta
    seed = tensor_seed(params.seed, name) if spec.random else None
    merged = merge_tensor(deltas, weights.to(base_f.dtype), spec, params, seed)
    return base_f.add_(merged).to(dtype)


def _finite(tensor: torch.Tensor, name: str, path: Path) -> None:
    if not torch.isfinite(tensor).all():
        raise FullMergeError(f"{path}: tensor {name} holds NaN or infinite values (a diverged "
                             "or corrupted training run); leave that checkpoint out of the merge")


def _few(items: list[str], limit: int = 5) -> list[str]:
    return items[:limit] + [f"and {len(items) - limit} more"] if len(items) > limit else items

