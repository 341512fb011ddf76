"""Loading base models and tokenizers by folder or Hub id: safetensors only, `trust_remote_code` off unless asked."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
)

from mashup_core.errors import MashupError
from mashup_core.models import model_folder_problem


class ModelLoadError(MashupError):
    """A base model or tokenizer could not be loaded; the message says what to do."""


def check_model_folder(path: Path) -> None:
    if problem := model_folder_problem(path):
        raise ModelLoadError(problem)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False,
                   chat_template: str | Path | None = None):
    """The tokenizer of a folder or Hub id; `chat_template`: a Jinja file that replaces its chat
    template (a base model often ships without one)."""
    if Path(name_or_path).is_dir() and not any((Path(name_or_path) / f).exists() for f in (
            "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        check_model_folder(Path(name_or_path))  # an adapter folder or an empty one: say which
        raise ModelLoadError(f"{name_or_path} has no tokenizer files (tokenizer.json, "
                             "tokenizer_config.json, ...): save the tokenizer beside the model "
                             "(`tokenizer.save_pretrained(dir)`)")
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {name_or_path}: {exc}") from exc
    if chat_template is not None:
        try:
            tok.chat_template = Path(chat_template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"cannot read the chat template {chat_template}: {exc}") from exc
    if tok.pad_token is None:  # many causal LMs ship without one; batching needs one
        if tok.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer of {name_or_path} has no pad token and no eos token to pad with; "
                "give it one and save it (`tok.pad_token = ...; tok.save_pretrained(dir)`)")
        # Padded positions are masked out, so which token fills them does not change a score.
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(
    name_or_path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM from a local folder or a Hub id, safetensors only, in eval mode."""
    device = torch.device(device) if device is not None else default_device()
    local = Path(name_or_path)
    if local.is_dir():
        check_model_folder(local)
        pickles = sorted(p.name for p in local.glob("*.bin")) + sorted(p.name for p in local.glob("*.pt"))
        if pickles and not any(local.glob("*.safetensors")):
            raise ModelLoadError(
                f"{local} holds only pickle weights ({', '.join(pickles)}); pickles can run code "
                "when loaded, so they are refused. Convert once in a trusted environment: "
                "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"
            )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path),
            dtype=dtype or default_dtype(device),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        hint = " (offline? set HF_HUB_OFFLINE=0 and check the name)" if not local.exists() else ""
        raise ModelLoadError(f"cannot load a model from {name_or_path}: {exc}{hint}") from exc
    return model.to(device).eval()
