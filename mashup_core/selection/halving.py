"""Successive halving: select the top k of a large library without scoring all of it on all n.

A selection strategy, not a scorer: the scorer (`scoring.SCORERS`: nll, acc, acc_norm) says
what "better" means; the strategy says how much scoring to spend. "full" scores every
checkpoint on all n examples (`score_library`); "halving" scores every checkpoint on the first
`min_n` examples of the sample, keeps the best 1/eta of them (never fewer than k), scores the
survivors on the next examples up to min_n x eta, ... until the survivors are scored on all n.
The sample is `data.targets.sample_examples(examples, n, seed)`, whose prefixes are nested, so a
round only scores the rows the earlier rounds did not: a checkpoint kept to the end is scored
exactly once on each of the n examples, and its final row equals full scoring's.

Cost is counted in example-forwards (one row, base model or checkpoint, on one example, all
its choices): full scoring costs (checkpoints + 1) x n.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mashup_core.data.targets import MCExample
from mashup_core.selection.scoring import (
    BASE_ROW,
    SCORERS,
    ScoreRow,
    ScoreTable,
    ScoringError,
    base_in_slot,
    cached_inputs,
    get_scorer,
    score_library,
)
from mashup_core.workspace import Workspace, write_json_atomic

if TYPE_CHECKING:
    from mashup_core.models.library import Checkpoint

HALVING_VERSION = 1

# Selection strategies: how the scoring budget is spent (the scorer is chosen apart).
SELECTIONS: dict[str, str] = {
    "full": "score every checkpoint on all n examples",
    "halving": "successive halving: all checkpoints on a few examples, the better part on more, "
               "... up to n",
}


@dataclass
class HalvingRound:
    n: int  # examples each alive checkpoint has been scored on after this round
    alive: list[str]  # scored in this round, best first (by the scorer on the first n)
    kept: list[str]  # go on to the next round (the final top k in the last round)
    dropped: list[str]  # stop here
    cost: int  # example-forwards spent in this round (base row included)


@dataclass
class HalvingResult:
    scorer: str
    k: int
    eta: float
    min_n: int
    n: int
    selected: list[str]  # the top k, best first
    rounds: list[HalvingRound]
    table: ScoreTable  # the finalists (and the base) scored on all n examples
    cost: int  # example-forwards, all rounds
    full_cost: int  # what scoring every candidate on all n costs: (candidates + 1) x n
    excluded: list[str] = field(default_factory=list)  # never scored (own task, by name)
    from_cache: bool = False

    @property
    def cost_ratio(self) -> float:
        return self.cost / self.full_cost

    def dropped_at(self) -> dict[str, int]:
        """Checkpoint -> the n at which it was dropped (finalists are absent)."""
        return {name: r.n for r in self.rounds for name in r.dropped}

    def to_dict(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer, "k": self.k, "eta": self.eta, "min_n": self.min_n, "n": self.n,
            "selected": self.selected, "rounds": [asdict(r) for r in self.rounds],
            "table": self.table.to_dict(), "cost": self.cost, "full_cost": self.full_cost,
            "cost_ratio": round(self.cost_ratio, 4), "excluded": self.excluded,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HalvingResult:
        return cls(
            scorer=data["scorer"], k=data["k"], eta=data["eta"], min_n=data["min_n"], n=data["n"],
            selected=list(data["selected"]), rounds=[HalvingRound(**r) for r in data["rounds"]],
            table=ScoreTable.from_dict(data["table"]), cost=data["cost"],
            full_cost=data["full_cost"], excluded=list(data.get("excluded", [])),
        )


def halving_schedule(n: int, min_n: int, eta: float) -> list[int]:
    """The n of each round: min_n, min_n x eta, ... (rounded up), the last one n."""
    if eta <= 1:
        raise ScoringError(f"eta must be above 1 (got {eta}): each round keeps 1/eta of the checkpoints")
    if min_n < 1 or n < 1:
        raise ScoringError(f"min_n and n must be positive (got min_n={min_n}, n={n})")
    ns, size = [], min(min_n, n)
    while size < n:
        ns.append(size)
        size = max(size + 1, math.ceil(size * eta))
    return [*ns, n]


def _table(per: dict[str, dict[str, list[float]]], meta: dict[str, tuple], names, n: int,
           seconds: dict[str, float], target: str | None) -> ScoreTable:
    """The rows of `names` (and the base) on the first n examples, from per-example values."""

    def row(name: str) -> ScoreRow:
        values = {s: math.fsum(per[name][s][:n]) / n for s in SCORERS}
        source_task, kind = meta[name]
        return ScoreRow(name, source_task, values["acc"], values["acc_norm"], values["nll"], n,
                        seconds[name], kind)

    return ScoreTable(rows=[row(name) for name in names], base=row(BASE_ROW), target=target,
                      per_example={name: {s: v[:n] for s, v in per[name].items()}
                                   for name in [BASE_ROW, *names]})


def successive_halving(
    base_model, tokenizer, checkpoints: Sequence[Checkpoint], examples: Sequence[MCExample], *,
    scorer: str = "nll", k: int = 2, eta: float = 2.0, min_n: int = 8,
    exclude_task: str | None = None, exclude_names: Iterable[str] = (), batch_size: int = 32,
    progress: bool = False, target: str | None = None,
) -> HalvingResult:
    """Successive halving over `checkpoints` on `examples` (already sampled; prefixes nested).

    Checkpoints trained on `exclude_task` or named in `exclude_names` are never scored. One
    that cannot be loaded is dropped in the round it fails, its reason in `table.skipped`.
    """
    s = get_scorer(scorer)
    examples = list(examples)
    n = len(examples)
    if not examples:
        raise ScoringError("no target examples to score on")
    excluded_names = set(exclude_names)
    candidates = [c for c in checkpoints if c.name not in excluded_names
                  and (exclude_task is None or getattr(c, "source_task", None) != exclude_task)]
    excluded = [c.name for c in checkpoints if c not in candidates]
    if k < 1:
        raise ScoringError(f"k must be at least 1 (got {k})")
    if k > len(candidates):
        raise ScoringError(f"asked for the top {k} checkpoints but only {len(candidates)} of "
                           f"{len(checkpoints)} are eligible; use k <= {len(candidates)}")
    by_name = {c.name: c for c in candidates}
    per: dict[str, dict[str, list[float]]] = {}
    meta: dict[str, tuple] = {BASE_ROW: (None, "base")}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    alive, rounds, done, cost = [c.name for c in candidates], [], 0, 0
    for size in halving_schedule(n, min_n, eta):
        part = score_library(base_model, tokenizer, [by_name[a] for a in alive],
                             examples[done:size], batch_size=batch_size, progress=progress)
        cost += (len(part.rows) + 1) * (size - done)
        for r in [part.base, *part.rows]:
            for sc, values in part.per_example[r.name].items():
                per.setdefault(r.name, {}).setdefault(sc, []).extend(values)
            meta[r.name] = (r.source_task, r.kind)
            seconds[r.name] = seconds.get(r.name, 0.0) + r.seconds
        skipped.update(part.skipped)
        done = size
        scored = [a for a in alive if a not in part.skipped]
        ranked = _table(per, meta, scored, size, seconds, target).rank(s.name)
        last = size == n
        keep = k if last else max(k, math.ceil(len(ranked) / eta))
        if len(ranked) < k:
            raise ScoringError(f"only {len(ranked)} checkpoints could be scored, fewer than k={k}: "
                               + "; ".join(f"{name}: {why}" for name, why in skipped.items()))
        rounds.append(HalvingRound(size, ranked, ranked[:keep], ranked[keep:],
                                   cost - sum(r.cost for r in rounds)))
        alive = ranked[:keep]
    table = _table(per, meta, alive, n, seconds, target)
    table.skipped = skipped
    return HalvingResult(s.name, k, eta, min_n, n, list(alive), rounds, table, cost,
                         (len(candidates) + 1) * n, excluded)


def successive_halving_cached(
    ws: Workspace, checkpoints: Sequence[Checkpoint], examples: Sequence[MCExample], *,
    n: int = 64, seed: int | None = None, base_path: str | Path | None = None,
    target: str | None = None, scorer: str = "nll", k: int = 2, eta: float = 2.0,
    min_n: int = 8, exclude_task: str | None = None, batch_size: int = 32,
    progress: bool = True, device: str | None = None, refresh: bool = False,
) -> HalvingResult:
    """`successive_halving` on `sample_examples(examples, n, seed)`, remembered in the workspace
    (keyed like `score_library_cached`, plus the halving settings)."""
    inputs = cached_inputs(ws, checkpoints, examples, n=n, seed=seed, base_path=base_path,
                           device=device)
    settings = {"key": inputs.key, "scorer": scorer, "k": k, "eta": eta, "min_n": min_n,
                "exclude_task": exclude_task, "version": HALVING_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    path = ws.cache_dir / "halving" / f"{digest[:32]}.json"
    if not refresh:
        try:
            result = HalvingResult.from_dict(json.loads(path.read_text())["result"])
            result.from_cache = True
            result.table.target = target
            return result
        except (OSError, KeyError, TypeError, ValueError, AttributeError):
            pass  # missing or damaged: run again and overwrite
    with base_in_slot(ws, inputs, holder=target or "score") as (model, tokenizer):
        result = successive_halving(model, tokenizer, checkpoints, inputs.sample, scorer=scorer, k=k,
                                    eta=eta, min_n=min_n, exclude_task=exclude_task,
                                    batch_size=batch_size, progress=progress, target=target)
    write_json_atomic(path, {"kind": "mashup-halving", "version": HALVING_VERSION,
                             "settings": settings, "result": result.to_dict()})
    return result


def halving_for_target(ws: Workspace, target: dict[str, Any], n: int, **settings: Any) -> HalvingResult:
    """`successive_halving_cached` on a target of the dashboard (the library of the config, the
    target's train split), as `views.relevance_table` scores it in full."""
    from mashup_core.config import resolve_config, target_name
    from mashup_core.data.targets import TargetSpec, load_target
    from mashup_core.views.library import library_scan

    config = resolve_config(ws)
    scan = library_scan(ws)
    if not scan.checkpoints:
        raise ScoringError("the library has no usable checkpoint to score")
    spec = TargetSpec.from_dict({"split": "train", **target})
    examples = load_target(spec.with_split("train"), ws)
    return successive_halving_cached(ws, scan.checkpoints, examples, n=n,
                                     base_path=config.base_model, target=target_name(target),
                                     progress=False, **settings)


def agreement(halving: HalvingResult, full: ScoreTable, *, exclude_task: str | None = None) -> bool:
    """Whether halving picked the same top-k set as full scoring with the same scorer."""
    top = full.select_top_k(halving.scorer, halving.k, exclude_task=exclude_task,
                            exclude_names=halving.excluded)
    return set(top) == set(halving.selected)
