"""Rows that do not fit the base model are refused before any forward, with where they are.

A row longer than the model's context cannot be scored or trained on as written (the model
would read positions it never learned, or fail deep in attention), and one huge row can take
all of a machine's memory before anything says why. Each row's prompt and choices are measured
against the context: first by characters (a token is at least one character, so a field longer
than `MAX_CHARS_PER_TOKEN` × context characters is refused without tokenising it), then in
tokens. The message names the row (file:line when it came from a file), the field and both
lengths; `cut=True` truncates the prompt from the left instead, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from mashup_core.data.examples import DatasetError, MCExample

# Characters per token above which a field cannot possibly fit (no tokenizer packs more).
MAX_CHARS_PER_TOKEN = 64


class TooLongError(DatasetError):
    """A row longer than the base model's context."""


def context_length(model) -> int | None:
    """The positions the model was built for (config.max_position_embeddings and kin)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _name(ex: MCExample, index: int) -> str:
    return ex.where or f"row {index + 1}"


def check_lengths(examples: Sequence[MCExample], limit: int | None) -> None:
    """Refuse (before tokenising) any field so long in characters it cannot fit `limit` tokens."""
    if limit is None:
        return
    cap = limit * MAX_CHARS_PER_TOKEN
    for i, ex in enumerate(examples):
        for field, text in [("prompt", ex.prompt), *((f"choice {j + 1}", c) for j, c in enumerate(ex.choices))]:
            if len(text) > cap:
                raise TooLongError(
                    f"{_name(ex, i)}: field '{field}' is {len(text):,} characters, far more than "
                    f"the base model's context of {limit} tokens can hold; shorten or drop the row")


def check_tokens(ex: MCExample, index: int, tokens: int, limit: int | None, field: str = "prompt") -> None:
    if limit is not None and tokens > limit:
        raise TooLongError(f"{_name(ex, index)}: field '{field}' with its answer is {tokens} tokens, "
                           f"more than the base model's context of {limit}; shorten the row (or cut "
                           "long prompts from the left with cut=True)")


def cut_warning(ex: MCExample, index: int, tokens: int, limit: int) -> None:
    warnings.warn(f"{_name(ex, index)}: {tokens} tokens cut to the model's context of {limit} "
                  "from the left of the prompt", stacklevel=3)
