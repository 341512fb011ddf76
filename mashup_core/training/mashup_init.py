"""Mashup Learning's initialisation: score the library, keep the top k, weigh them, merge.

    score (scoring.score_library) -> select (ScoreTable.select_top_k, the target's own
    checkpoints excluded) -> weights (weights.search_weights) -> merge (merging.merge_adapters)

The result is a PEFT adapter folder that training starts from (`training.init_model`), and
the seconds each stage took, which count against the method in wall-clock comparisons.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mashup_core import defaults
from mashup_core.data.examples import MCExample
from mashup_core.errors import MashupError
from mashup_core.workspace import Workspace


class PipelineError(MashupError):
    """The library offers nothing to merge for this target; the message says why."""


@dataclass
class MashupInit:
    adapter_dir: Path
    selected: list[str]
    weights: list[float]
    scores: dict[str, Any]  # the ScoreTable, as `ScoreTable.to_dict`
    timings: dict[str, float]  # scoring_s, weight_search_s, merging_s
    scorer: str = defaults.SCORER
    selected_scores: list[float] = field(default_factory=list)
    weight_search: dict[str, Any] = field(default_factory=dict)  # WeightSearchResult.to_dict
    rejected: list[dict[str, str]] = field(default_factory=list)  # library entries left out
    exclude_task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adapter_dir": str(self.adapter_dir)}


def source_task_of(target) -> str:
    """The task name a library checkpoint records when it was trained on this target (a demo
    task, a benchmark, a file's stem): leave-one-out selection skips those checkpoints."""
    from mashup_core.config import target_name

    return target_name(target.to_dict())


def library_checkpoints(ws: Workspace | None, sources: Sequence | None, base_dir: str | None):
    """Checkpoints to score: given ones as they are, sources scanned, or the workspace's library."""
    from mashup_core.config import workspace_library
    from mashup_core.models.library import Checkpoint, scan_library

    if sources and all(isinstance(s, Checkpoint) for s in sources):
        return list(sources), []
    if sources:
        scan = scan_library([str(s) for s in sources], base_model_dir=base_dir)
    elif ws is not None:
        scan = workspace_library(ws, base=base_dir)
    else:
        raise PipelineError("no library: pass checkpoints, sources or a workspace with a library")
    return scan.checkpoints, [r.to_dict() for r in scan.rejected]


def prepare_mashup_init(
    ws: Workspace | None,
    base_model,
    tokenizer,
    library: Sequence | None,
    target_train_examples: Sequence[MCExample],
    *,
    scorer: str = defaults.SCORER,
    n: int = defaults.SCORING_N,
    k: int = defaults.TOP_K,
    method: str = defaults.MERGE_METHOD,
    weight_strategy: str = defaults.WEIGHT_STRATEGY,
    seed: int = 0,
    out_dir: str | Path,
    budget: int = 20,
    density: float | None = None,
    exclude_task: str | None = None,
    target_label: str | None = None,
    progress: bool = False,
) -> MashupInit:
    """Score → top-k → weights → merge into `out_dir`; `base_model` comes back unchanged.

    `library`: Checkpoint objects, source folders / Hub ids, or None for the workspace's demo
    library. Scoring uses the first `n` target train examples (as the reference code), and
    so do the searched weight strategies (CMA-ES maximises accuracy, LoraHub minimises loss
    plus its L1 term), so the validation split stays unseen until training evaluates it.
    """
    from mashup_core.data.examples import sample_examples
    from mashup_core.merging.lora import (
        MERGE_METHODS,
        load_lora_factors,
        merge_adapters,
        validate_params,
    )
    from mashup_core.merging.objective import make_merge_objective
    from mashup_core.merging.weights import WEIGHT_STRATEGIES, WeightSearchError, search_weights
    from mashup_core.selection.scoring import get_scorer, score_library

    if weight_strategy not in WEIGHT_STRATEGIES:
        raise WeightSearchError(f"unknown weight strategy {weight_strategy!r}; choose from "
                                f"{', '.join(WEIGHT_STRATEGIES)}")
    score_kind = get_scorer(scorer)
    # Everything that needs no model is checked before minutes of scoring.
    validate_params(method, k, [1 / k] * k, **_merge_options(method, density, seed))
    base_dir = getattr(base_model, "name_or_path", None) or (str(ws.base_dir) if ws else None)
    checkpoints, rejected = library_checkpoints(ws, library, base_dir)
    lora = [c for c in checkpoints if getattr(c, "kind", "lora") == "lora"]
    if not lora:
        why = "; ".join(f"{r['name']}: {r['reason']}" for r in rejected[:3])
        raise PipelineError("the library has no usable LoRA checkpoint to merge"
                            + (f" ({why})" if why else ""))
    eligible = [c for c in lora if exclude_task is None or getattr(c, "source_task", None) != exclude_task]
    if k > len(eligible):  # top-k would quietly merge fewer than asked
        left_out = f" ({len(lora) - len(eligible)} of {exclude_task!r} left out)" if exclude_task else ""
        raise PipelineError(f"k={k} but the library holds {len(eligible)} usable LoRA "
                            f"checkpoints{left_out}; use k <= {len(eligible)}")
    ranks = {getattr(c, "rank", None) for c in eligible} - {None}
    if MERGE_METHODS[method].equal_ranks and len(ranks) > 1:  # fail before minutes of scoring
        raise PipelineError(
            f"merge method '{method}' adds factors entry by entry and needs one rank, but the "
            f"library mixes ranks {', '.join(map(str, sorted(ranks)))}; use 'cat' or 'cat_svd' "
            "(exact for any ranks), or keep the library at one rank (`mashup library add-run` "
            "re-factors a run to its own rank unless --exact)")

    started = time.perf_counter()
    sample = sample_examples(list(target_train_examples), n)
    table = score_library(base_model, tokenizer, lora, sample, progress=progress, target=target_label)
    scoring_s = time.perf_counter() - started
    rejected += [{"name": name, "path": "", "reason": why} for name, why in table.skipped.items()]
    selected = table.select_top_k(score_kind.name, k, exclude_task=exclude_task)
    scores = [table.row(name).value(score_kind.name) for name in selected]
    paths = {c.name: c.path for c in lora}

    started = time.perf_counter()
    strategy = WEIGHT_STRATEGIES[weight_strategy]
    objective = None
    if strategy.needs_objective:
        objective = make_merge_objective(
            base_model, tokenizer, load_lora_factors([paths[s] for s in selected]), sample, method,
            metric="acc" if strategy.maximize else "nll", **_merge_options(method, density, seed),
        )
    try:
        search = search_weights(weight_strategy, len(selected), scores=scores, objective=objective,
                                budget=budget, seed=seed,
                                higher_is_better=score_kind.higher_is_better)
    finally:
        if objective is not None:
            objective.model.unload()  # the search's LoRA slot out again: the bare base back
    weight_search_s = time.perf_counter() - started

    started = time.perf_counter()
    merge_adapters([paths[s] for s in selected], search.weights, method, out_dir, overwrite=True,
                   extra={"selected": selected, "scorer": scorer, "scores": scores},
                   **_merge_options(method, density, seed))
    merging_s = time.perf_counter() - started
    return MashupInit(
        adapter_dir=Path(out_dir), selected=selected, weights=search.weights,
        scores=table.to_dict(), scorer=scorer, selected_scores=scores,
        timings={"scoring_s": scoring_s, "weight_search_s": weight_search_s, "merging_s": merging_s},
        weight_search=search.to_dict(), rejected=rejected, exclude_task=exclude_task,
    )


def _merge_options(method: str, density: float | None, seed: int) -> dict[str, Any]:
    from mashup_core.merging.lora import MERGE_METHODS

    uses_density = MERGE_METHODS[method].uses_density if method in MERGE_METHODS else False
    return {"density": density if uses_density else None, "seed": seed}
