"""The demo's tiny base: a character tokenizer and a small Llama built from its config, offline."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# Every character a demo prompt or answer can contain. Fixed, so token ids never depend on data.
CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789 :=>?|,.-+"


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


def set_threads_for_determinism() -> None:
    """Bit-identical builds need the same reduction order, so fix the thread count."""
    torch.set_num_threads(int(os.environ.get("MASHUP_THREADS", "2")))
