"""weights -> a merged adapter's metric on target examples: what the searched weight strategies optimise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mashup_core import defaults
from mashup_core.merging.lora import (
    SEARCH_SLOT,
    LoraAdapter,
    MergeConfigError,
    add_merge_slot,
    load_into_peft,
    merge_factors,
)


class MergeObjective:
    """weights → metric of the merged adapter on `examples`, for `weights.search_weights`.

    The base model and the adapters are loaded once; each call merges in memory, copies the
    factors into a spare LoRA slot and evaluates. `maximize` tells the search which way is up.
    """

    def __init__(self, model, tokenizer, adapters: Sequence[LoraAdapter], examples, method: str = defaults.MERGE_METHOD,
                 *, metric: str = "acc", l1: float = 0.0, batch_size: int = defaults.EVAL_BATCH_SIZE,
                 adapter_name: str = SEARCH_SLOT, **merge_options: Any):
        if metric not in ("acc", "nll"):
            raise MergeConfigError(f"metric must be 'acc' or 'nll', got {metric!r}")
        if not examples:
            raise MergeConfigError("no examples to evaluate merges on")
        self.adapters, self.examples, self.tokenizer = list(adapters), list(examples), tokenizer
        self.method, self.metric, self.l1, self.batch_size = method, metric, l1, batch_size
        self.merge_options, self.adapter_name = merge_options, adapter_name
        self.maximize = metric == "acc"
        probe = merge_factors(self.adapters, [1 / len(self.adapters)] * len(self.adapters), method,
                              **merge_options)  # validates once, and fixes the slot's shape
        self.model = add_merge_slot(model, probe, self.adapters[0].config, adapter_name)

    def evaluate(self, weights: Sequence[float] | np.ndarray, examples=None):
        """The merge at `weights` loaded into the slot, evaluated on `examples` (default: the
        objective's own): the full `MCResult`, with each example's correctness."""
        from mashup_core.selection.loglik import evaluate_mc

        merged = merge_factors(self.adapters, [float(w) for w in weights], self.method,
                               **self.merge_options)
        load_into_peft(self.model, merged, self.adapter_name)
        return evaluate_mc(self.model, self.tokenizer,
                           self.examples if examples is None else examples, self.batch_size)

    def __call__(self, weights: Sequence[float] | np.ndarray) -> float:
        weights = [float(w) for w in weights]
        result = self.evaluate(weights)
        penalty = self.l1 * float(np.mean(np.abs(weights)))
        return result.acc - penalty if self.maximize else result.nll + penalty


def make_merge_objective(model, tokenizer, factors: Sequence[LoraAdapter], examples, method: str = defaults.MERGE_METHOD,
                         metric: str = "acc", l1: float = 0.0, **merge_options: Any) -> MergeObjective:
    """See `MergeObjective`; `factors` come from `load_lora_factors`."""
    return MergeObjective(model, tokenizer, factors, examples, method, metric=metric, l1=l1, **merge_options)
