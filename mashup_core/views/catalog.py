"""What the pages offer as choices, and the errors they catch, gathered from the core.

The pages import only `views` (see tests/test_layers.py), so the registries a select box lists
(scorers, merge methods, weight strategies, presets, benchmarks) and the error types a page
turns into a message are named here, once, rather than reached for wing by wing. Each stays
defined where it belongs; this module only says which ones the dashboard uses.
"""

from __future__ import annotations

from typing import Any

from mashup_core.compare.payoff import PredictionError
from mashup_core.config import FINETUNE_MODES, target_name
from mashup_core.data.targets import BENCHMARKS, GOLD_FORMATS, list_demo_tasks
from mashup_core.merging.weights import WEIGHT_STRATEGIES
from mashup_core.selection.scorers import EVAL_METRICS, SCORERS, get_scorer
from mashup_core.selection.store import NotCachedError
from mashup_core.study.presets import PRESETS
from mashup_core.views._format import on_first_use

__all__ = ["BENCHMARKS", "EVAL_METRICS", "FINETUNE_MODES", "GOLD_FORMATS", "MERGE_METHODS",  # noqa: F822 (on first use)
           "PRESETS", "SCORERS", "WEIGHT_STRATEGIES", "NotCachedError", "PredictionError",
           "get_scorer", "list_demo_tasks", "method_families", "target_name"]


# The LoRA merges import torch and PEFT: the pages that list no merge method (the Overview a
# room opens first) do not wait for them.
__getattr__ = on_first_use(__name__, {"MERGE_METHODS": "mashup_core.merging.lora"})


def method_families(kind: str) -> dict[str, list[dict[str, Any]]]:
    """Every registered merge method of `kind` ('lora' or 'full'), by family: name, summary,
    parameters with their defaults (mergekit's where they differ), needs, citation."""
    from mashup_core.merging import full, lora  # noqa: F401  (both register their methods)
    from mashup_core.merging.registry import Listing

    return Listing.of(kind).families
