"""Scoring a library too large for one device, fanned out over Ray workers.

The library is cut into the bank's groups (`slots` adapters each, in library order), and each
worker scores a contiguous run of groups with one `LibraryScorer`: one base load per worker
process, each worker a share of the bank. A group is scored by the same forwards whichever
worker holds it (the base's rows ride with the first group, as on one worker), so the
merged table equals one worker's, float for float, for every adapter the bank holds (PEFT's
fallback groups may be cut differently: equal within float noise).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mashup_core import defaults
from mashup_core.data.examples import MCExample
from mashup_core.jobs.devices import ray_address, start_ray
from mashup_core.selection.scoring import ScoreTable, ScoringError

DEFAULT_SLOTS = 16  # a fanned-out library's group: the same on every worker, for equal tables

# (base path, trust) -> (model, tokenizer): one base load per worker process, reused.
_WORKER_BASES: dict[tuple[str, bool], tuple[Any, Any]] = {}


def _worker_base(base: str, trust_remote_code: bool):
    from mashup_core.models.loading import load_base_model, load_tokenizer

    key = (base, trust_remote_code)
    if key not in _WORKER_BASES:
        _WORKER_BASES.clear()  # one base per worker: the memory of one model
        _WORKER_BASES[key] = (load_base_model(base, device="cpu", trust_remote_code=trust_remote_code),
                              load_tokenizer(base, trust_remote_code=trust_remote_code))
    return _WORKER_BASES[key]


def score_share(base: str, checkpoints: list[dict], examples: list[dict], *, slots: int,
                with_base: bool, batch_size: int, trust_remote_code: bool = False) -> dict:
    """One worker's share (plain data in and out, so it runs anywhere Ray sends it)."""
    import torch

    from mashup_core.models.library import Checkpoint
    from mashup_core.selection.scoring import LibraryScorer

    torch.set_num_threads(max(1, int(os.environ.get("MASHUP_WORKER_THREADS", "1"))))
    model, tokenizer = _worker_base(base, trust_remote_code)
    with LibraryScorer(model, tokenizer, batch_size=batch_size, slots=slots) as scorer:
        table = scorer.score([Checkpoint.from_dict(c) for c in checkpoints],
                             [MCExample(**e) for e in examples], progress=False,
                             with_base=with_base)
    return table.to_dict()


def shares(n: int, slots: int, workers: int) -> list[range]:
    """Contiguous runs of whole groups of `slots`, one per worker (fewer if there are fewer
    groups): the cut every worker's groups line up with one worker's."""
    groups = [range(lo, min(n, lo + slots)) for lo in range(0, n, slots)]
    per = -(-len(groups) // max(1, workers)) if groups else 0
    return [range(g[0].start, g[-1].stop) for g in
            (groups[i:i + per] for i in range(0, len(groups), per))] if per else []


def score_library_ray(
    base: str, checkpoints: Sequence, examples: Sequence[MCExample], *, workers: int = 2,
    slots: int = DEFAULT_SLOTS, batch_size: int = defaults.EVAL_BATCH_SIZE, address: str | None = None,
    target: str | None = None, trust_remote_code: bool = False,
) -> ScoreTable:
    """`score_library` of `checkpoints` on `examples`, split over `workers` Ray tasks (a local
    instance, or the cluster at `address` / RAY_ADDRESS)."""
    import ray

    if not checkpoints:
        raise ScoringError("no checkpoints to score")
    if any(getattr(c, "kind", "lora") == "full" for c in checkpoints):
        raise ScoringError("full-model checkpoints are scored one model at a time; fan out "
                           "LoRA libraries only")
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(ray_address(address), workers)
    try:
        remote = ray.remote(num_cpus=1)(score_share)
        rows = [{k: v for k, v in ex.to_json().items() if k != "meta"} | {"meta": ex.meta}
                for ex in examples]
        plan = shares(len(checkpoints), slots, workers)
        refs = [remote.remote(str(base), [checkpoints[i].to_dict() for i in part], rows,
                              slots=slots, with_base=k == 0, batch_size=batch_size,
                              trust_remote_code=trust_remote_code)
                for k, part in enumerate(plan)]
        parts = [ScoreTable.from_dict(data) for data in ray.get(refs)]
    finally:
        if started_here:
            ray.shutdown()
    table = ScoreTable(rows=[r for p in parts for r in p.rows], base=parts[0].base, target=target)
    for part in parts:
        table.per_example.update(part.per_example)
        table.skipped.update(part.skipped)
        table.provenance.update(part.provenance)
    return table
