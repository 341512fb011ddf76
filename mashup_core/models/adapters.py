"""LoRA adapters on disk: a PEFT adapter folder read into its factors, safely.

`read_lora_adapter` reads adapter_config.json and adapter_model.safetensors (never a pickle),
checks every tensor is finite and every module has its A and B, and gives each module's
factors with its scale (`lora_alpha / r`, or / √r for rsLoRA, alpha patterns applied). What
a LoRA merge cannot carry (DoRA, lora_bias, trainable tokens, LoRA on parameters) is refused
with the reason and what would work. Merging (`merging.lora`), the adapter bank and the
library map (`selection`) read adapters here.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError
from safetensors.torch import load_file

from mashup_core.errors import MashupError
from mashup_core.models.library import META_FILE, PICKLE_SUFFIXES
from mashup_core.workspace import sha256_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # saved keys = this + the module's name in the base model
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class AdapterFileError(MashupError, ValueError):
    """An adapter folder that cannot be read: the message names the file and what to do."""


@dataclass(frozen=True)
class LoraFactors:
    """One target module of one adapter: ΔW = scale · B @ A."""

    A: torch.Tensor  # r × in
    B: torch.Tensor  # out × r
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.B.shape[0], self.A.shape[1]

    def delta(self, rows: slice = slice(None)) -> torch.Tensor:
        return (self.scale * self.B[rows]) @ self.A



@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read into memory."""

    path: Path
    config: dict[str, Any]  # adapter_config.json as written
    modules: dict[str, LoraFactors]  # saved key prefix of each target module → its factors
    dtype: torch.dtype
    sha256: str
    base_model: str | None  # what it was trained on, when the folder says
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # modules_to_save, whole

    @property
    def name(self) -> str:
        return self.path.name


def read_lora_adapter(path: str | os.PathLike) -> LoraAdapter:
    path = Path(path)
    if not path.is_dir():
        raise AdapterFileError(
            f"{path}: not a folder; pass a PEFT adapter folder "
            f"({CONFIG_FILE} + {WEIGHTS_FILE})"
        )
    config = _read_config(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.exists():
        pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise AdapterFileError(
                f"{path} holds pickle weights ({', '.join(pickles)}) and no {WEIGHTS_FILE}; pickles "
                "can run code when loaded, so they are refused. Convert once in a trusted "
                "environment: `from safetensors.torch import save_file; "
                f"save_file(torch.load('{pickles[0]}', weights_only=True), '{WEIGHTS_FILE}')`"
            )
        raise AdapterFileError(f"{path}: no {WEIGHTS_FILE}; is this a PEFT adapter folder?")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(
            f"{weights_path}: not a readable safetensors file ({exc}); the file is damaged or "
            "truncated: save or copy the adapter again"
        ) from exc
    parts: dict[str, dict[str, torch.Tensor]] = {}
    saved: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterFileError(
                f"{weights_path}: tensor {key!r} holds NaN or infinite values (diverged "
                "training?); retrain the adapter or leave it out of the merge"
            )
        match = _KEY.match(key)
        if match is not None:
            parts.setdefault(match["module"], {})[match["part"]] = tensor
        elif _saved_module(key, config):
            saved[key] = tensor.float()
        else:
            raise AdapterFileError(f"{weights_path}: tensor {key!r} {_unmergeable(key)}")
    if not parts:
        raise AdapterFileError(f"{weights_path}: no LoRA tensors in the file")
    modules = {name: _factors(weights_path, name, ab, config) for name, ab in sorted(parts.items())}
    return LoraAdapter(
        path=path, config=config, modules=modules, dtype=next(iter(tensors.values())).dtype,
        sha256=sha256_file(weights_path), base_model=_base_model(path, config), saved=saved,
    )


FOLD_HINT = ("fold each adapter into its base (`PeftModel.merge_and_unload()`, then "
         "`save_pretrained`) and merge the full checkpoints with `mashup merge ... --base BASE`")


def _unmergeable(key: str) -> str:
    """Why a tensor that is not a LoRA factor cannot be merged, and what would work."""
    if ".lora_B.bias" in key:
        return ("is lora_B's bias (lora_bias: true), which no merge method combines; retrain "
                "without lora_bias, or " + FOLD_HINT)
    if "lora_embedding_" in key:
        return "is LoRA on an embedding layer, which the merge methods do not handle; " + FOLD_HINT
    if "trainable_tokens" in key or "token_adapter" in key:
        return "holds trainable tokens (trainable_token_indices), which no merge combines; " + FOLD_HINT
    if "lora_magnitude_vector" in key:
        return "is DoRA's magnitude vector; DoRA is not merged here: " + FOLD_HINT
    return ("is not a LoRA A/B factor nor a module the config saves whole (modules_to_save); "
            "adapters with other PEFT tensors cannot be merged: " + FOLD_HINT)


def _saved_module(key: str, config: Mapping[str, Any]) -> bool:
    """Whether `key` is a whole module the adapter saves (`modules_to_save`)."""
    module = key.removeprefix(PEFT_PREFIX).rsplit(".", 1)[0]
    return any(module == m or module.endswith("." + m) for m in config.get("modules_to_save") or ())


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        raise AdapterFileError(f"{path}: no {CONFIG_FILE}; is this a PEFT adapter folder?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"{config_path}: not valid JSON ({exc})") from exc
    if config.get("peft_type") != "LORA":
        raise AdapterFileError(
            f"{config_path}: peft_type is {config.get('peft_type')!r}; only LORA adapters merge"
        )
    refusals = {
        "use_dora": "DoRA adapters (use_dora: true) rescale each weight by a learned magnitude "
                    "that no LoRA merge carries",
        "lora_bias": "lora_bias: true adds a bias to lora_B that no merge method combines",
        "trainable_token_indices": "trainable tokens (trainable_token_indices) are not merged",
        "target_parameters": "LoRA on parameters (target_parameters) is not merged",
        "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not merged",
    }
    for key, why in refusals.items():
        if config.get(key):
            raise AdapterFileError(f"{config_path}: {why}; {FOLD_HINT}")
    return config


def _factors(file: Path, name: str, ab: dict[str, torch.Tensor], config: dict[str, Any]) -> LoraFactors:
    if set(ab) != {"A", "B"}:
        raise AdapterFileError(f"{file}: module {name} has lora_{''.join(ab)} but not both A and B")
    A, B = ab["A"].float(), ab["B"].float()
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise AdapterFileError(
            f"{file}: module {name} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}; "
            "expected (r, in) and (out, r)"
        )
    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), name), config.get("lora_alpha", 8))
    r = A.shape[0]
    scale = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    if not math.isfinite(scale) or scale <= 0:
        raise AdapterFileError(f"{file.parent / CONFIG_FILE}: lora_alpha must be positive, got {alpha}")
    return LoraFactors(A, B, scale)


def _base_model(path: Path, config: dict[str, Any]) -> str | None:
    try:  # the demo library records its base as a path relative to the adapter
        base = json.loads((path / META_FILE).read_text()).get("base_model")
    except (OSError, ValueError, AttributeError):
        base = None
    if base and base.startswith("."):
        # Relative to the adapter's own folder (a moved workspace keeps working). Copied out of
        # that layout it points nowhere: then the base is unknown, not "a different base" (the
        # module shapes still tell a truly different one).
        local = (path / base).resolve()
        return str(local) if local.is_dir() else None
    return base or config.get("base_model_name_or_path")


