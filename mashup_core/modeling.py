"""Base models and tokenizers: the demo's tiny ones, built offline, and real ones by name.

Loading is safetensors-only and `trust_remote_code` stays off unless the caller asks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from mashup_core.errors import MashupError

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# Every character a demo prompt or answer can contain. Fixed, so token ids never depend on data.
CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789 :=>?|,.-+"


class ModelLoadError(MashupError):
    """A base model or tokenizer could not be loaded; the message says what to do."""


def build_char_tokenizer(charset: str = CHARSET) -> PreTrainedTokenizerFast:
    """One token per character, plus BOS prepended: exact, tiny, and fully offline."""
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *dict.fromkeys(charset)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>", padding_side="right",
    )


@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 352
    max_positions: int = 64


def build_tiny_llama(vocab_size: int, spec: TinyModelSpec, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama from a config: the real architecture at toy size."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False):
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {name_or_path}: {exc}") from exc
    if tok.pad_token is None:  # many causal LMs ship without one; batching needs it
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


def set_threads_for_determinism() -> None:
    """Bit-identical builds need the same reduction order, so fix the thread count."""
    torch.set_num_threads(int(os.environ.get("MASHUP_THREADS", "2")))
