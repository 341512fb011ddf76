"""Batches for causal LMs that read the logits at the end of each row only.

Scoring reads the logits that predict the answer; training learns the answer tokens. Both
left-pad their rows so that every row ends in the last column: the positions that matter are
then the last few columns of every row, and `logits_to_keep` (every causal LM in transformers
5 takes it) sends only those through the output head. With a 262k-token vocabulary (Gemma 3)
the head over every position is most of the memory and a third of the FLOPs of a 1B model.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), left-padded: every row ends in the last column.

    Positions count from each row's first token, as if it were unpadded, so the model sees the
    same positions as for right padding (transformers infers them from the column otherwise).
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _forward_parameters(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    return inspect.signature(inner.forward).parameters


def _library_cache_name() -> str:
    """What this transformers calls the KV cache argument: `cache` from 5.2x (which deprecates
    `past_key_values` for removal in 5.40), `past_key_values` before."""
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def cache_argument(model, cache) -> dict:
    """The KV cache as the model's forward takes it: its own parameter's name, or (a forward of
    **kwargs, a wrapper) the installed transformers' name."""
    params = _forward_parameters(model)
    for name in ("cache", "past_key_values"):
        if name in params:
            return {name: cache}
    return {_library_cache_name(): cache}


def output_cache(output):
    """The KV cache a forward returned, under either name."""
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def keep_last_logits(model, n: int) -> dict[str, int]:
    """`logits_to_keep=n` for models whose forward takes it, so only the last n positions go
    through the output head; {} for any other model, whose callers read the same last n
    positions of the full logits (`logits[:, -n:]` is right either way)."""
    return {"logits_to_keep": n} if "logits_to_keep" in _forward_parameters(model) else {}
