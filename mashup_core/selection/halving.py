"""Successive halving: select the top k of a large library without scoring all of it on all n.

A selection strategy, not a scorer: the scorer (`scoring.SCORERS`: nll, acc, acc_norm) says
what "better" means; the strategy says how much scoring to spend. "full" scores every
checkpoint on all n examples (`score_library`); "halving" scores every checkpoint on the first
`min_n` examples of the sample, keeps the best 1/eta of them (never fewer than k), scores the
survivors on the next examples up to min_n x eta, ... until the survivors are scored on all n,
where the top k of them are picked as full scoring would. A cut never splits a tie, and a
checkpoint within `margin` (default 2) standard errors of the k-th best is kept too
(`survivors`): few examples cannot tell it from a top-k one yet. The sample is
`data.targets.sample_examples(examples, n, seed)`, whose prefixes are nested, so a round only
scores the rows the earlier rounds did not: a checkpoint kept to the end is scored exactly
once on each of the n examples, and its final row equals full scoring's.

Cost is counted in example-forwards (one row, base model or checkpoint, on one example, all
its choices): full scoring costs (candidates + 1) x n, the base row included. Halving scores
the base row on each example once as well (each round on its new examples), so it costs n in
both. However it cuts, halving costs at least the finalists' and the base's (k + 1) x n plus
every other candidate on min_n (`cost_floor`): 0.25x full scoring on 14 candidates, k 2, n 64,
min_n 4, 0.08x on 200; halving pays off on large libraries.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mashup_core import defaults
from mashup_core.data.examples import MCExample
from mashup_core.selection.scoring import (
    BASE_ROW,
    LibraryScorer,
    ScoreRow,
    ScoreTable,
    ScoringError,
    get_scorer,
    row_from_per_example,
)
from mashup_core.selection.store import base_in_slot, cached_inputs
from mashup_core.workspace import Workspace, write_json_atomic

if TYPE_CHECKING:
    from mashup_core.models.library import Checkpoint

HALVING_VERSION = 3  # 2: ties at a cut kept, margin, seconds per round; 3: token_acc

# Defaults of the CLI, the dashboard and the functions (benchmarks/bench_halving.py): eta 4
# and a first round of 4 examples keep halving's cost near 0.16x on 200 adapters; a margin of
# 2 standard errors is what keeps the top k right where the k-th place is a near-tie (the demo
# libraries: 65-96 % of samples agree without it, 98 % with it) and costs next to nothing on
# a large library, where few checkpoints are that close to the k-th.
DEFAULT_ETA = 4.0
DEFAULT_MIN_N = 4
DEFAULT_MARGIN = 2.0

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
    seconds: float = 0.0  # wall time of the round (adapter loads included)


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
    margin: float = 0.0  # standard errors of grace around the k-th best (`survivors`)
    from_cache: bool = False
    # Adapters read and copied into the scorer's bank over the rounds, and the seconds it took;
    # of those, the ones brought back after the bank dropped them for room (what a later round
    # pays; PEFT's path re-injects every survivor instead).
    loads: int = 0
    load_s: float = 0.0
    reloads: int = 0
    reload_s: float = 0.0

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
            "margin": self.margin,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HalvingResult:
        return cls(
            scorer=data["scorer"], k=data["k"], eta=data["eta"], min_n=data["min_n"], n=data["n"],
            selected=list(data["selected"]), rounds=[HalvingRound(**r) for r in data["rounds"]],
            table=ScoreTable.from_dict(data["table"]), cost=data["cost"],
            full_cost=data["full_cost"], excluded=list(data.get("excluded", [])),
            margin=data.get("margin", 0.0),
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


def cost_floor(candidates: int, k: int, n: int, min_n: int) -> float:
    """The least halving can cost, as a share of full scoring: the k finalists and the base
    on all n, every other candidate on the first round's examples only."""
    first = min(min_n, n)
    return ((k + 1) * n + (candidates - k) * first) / ((candidates + 1) * n)


def _table(per: dict[str, dict[str, list[float]]], meta: dict[str, tuple], names, n: int,
           seconds: dict[str, float], target: str | None) -> ScoreTable:
    """The rows of `names` (and the base) on the first n examples, from per-example values."""

    def row(name: str) -> ScoreRow:
        source_task, kind = meta[name]
        return row_from_per_example(name, source_task, kind, seconds[name], per[name], range(n))

    return ScoreTable(rows=[row(name) for name in names], base=row(BASE_ROW), target=target,
                      per_example={name: {s: v[:n] for s, v in per[name].items()}
                                   for name in [BASE_ROW, *names]})


def paired_se(a: Sequence[float], b: Sequence[float]) -> float:
    """Standard error of mean(a) - mean(b) over the same examples (0 on fewer than two)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return 0.0
    mean = math.fsum(d) / len(d)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))


def survivors(table: ScoreTable, scorer: str, k: int, eta: float, margin: float = 0.0) -> list[str]:
    """Who goes on from a round that is not the last: `table`'s rows on the examples so far.

    The best max(k, ceil(m/eta)) of the m rows (successive halving's budget), and besides:
    every row tied with the last of them on the ranking's key (a cut inside a tie would be
    decided by the names); and, with `margin` > 0, every row whose gap to the k-th best is
    at most `margin` paired standard errors: on these examples it is not yet distinguishable
    from a top-k checkpoint, so dropping it would be a guess. Best first.
    """
    s = get_scorer(scorer)
    ranked = table.rank(s.name)
    keep = max(k, math.ceil(len(ranked) / eta))
    if keep >= len(ranked):
        return ranked
    rows = {r.name: r for r in table.rows}
    cut, kth = rows[ranked[keep - 1]], rows[ranked[k - 1]]

    def still_in(name: str) -> bool:
        row = rows[name]
        if (row.value(s.name), row.nll) == (cut.value(s.name), cut.nll):
            return True
        gap = s.sort_key(row.value(s.name)) - s.sort_key(kth.value(s.name))
        return margin > 0 and gap <= margin * paired_se(table.per_example[name][s.name],
                                                        table.per_example[kth.name][s.name])

    return ranked[:keep] + [name for name in ranked[keep:] if still_in(name)]


# Scores `names` on examples [lo, hi) of the sample: a table with their rows (those that could
# be scored), the base's row and per-example values, and why any were skipped.
ScorePart = Callable[[list[str], int, int], ScoreTable]


def _halve(score_part: ScorePart, candidates: list[str], n: int, *, scorer: str, k: int,
           eta: float, min_n: int, margin: float, target: str | None,
           ) -> tuple[list[HalvingRound], ScoreTable, int]:
    """The rounds, the finalists' table on all n, and the cost, whatever does the scoring."""
    s = get_scorer(scorer)
    per: dict[str, dict[str, list[float]]] = {}
    meta: dict[str, tuple] = {BASE_ROW: (None, "base")}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    alive, rounds, done, cost = list(candidates), [], 0, 0
    for size in halving_schedule(n, min_n, eta):
        started = time.perf_counter()
        part = score_part(alive, done, size)
        # The base row too is scored on the new examples only: n forwards in all, as in full
        # scoring, however many rounds.
        spent = (len(part.rows) + 1) * (size - done)
        cost += spent
        for r in [part.base, *part.rows]:
            for sc, values in part.per_example[r.name].items():
                per.setdefault(r.name, {}).setdefault(sc, []).extend(values)
            meta[r.name] = (r.source_task, r.kind)
            seconds[r.name] = seconds.get(r.name, 0.0) + r.seconds
        skipped.update(part.skipped)
        done = size
        scored = [a for a in alive if a not in part.skipped]
        if len(scored) < k:
            raise ScoringError(f"only {len(scored)} checkpoints could be scored, fewer than k={k}: "
                               + "; ".join(f"{name}: {why}" for name, why in skipped.items()))
        table = _table(per, meta, scored, size, seconds, target)
        ranked = table.rank(s.name)
        # The last round is full scoring's decision on the finalists: the plain top k.
        kept = ranked[:k] if size == n else survivors(table, s.name, k, eta, margin)
        rounds.append(HalvingRound(size, ranked, kept, [a for a in ranked if a not in kept],
                                   spent, round(time.perf_counter() - started, 4)))
        alive = kept
    table = _table(per, meta, alive, n, seconds, target)
    table.skipped = skipped
    return rounds, table, cost


def _candidates(names: Sequence[str], source_tasks: Sequence[str | None], k: int,
                exclude_task: str | None, exclude_names: Iterable[str]) -> list[str]:
    excluded = set(exclude_names)
    candidates = [name for name, task in zip(names, source_tasks, strict=True)
                  if name not in excluded and (exclude_task is None or task != exclude_task)]
    if k < 1:
        raise ScoringError(f"k must be at least 1 (got {k})")
    if k > len(candidates):
        raise ScoringError(f"asked for the top {k} checkpoints but only {len(candidates)} of "
                           f"{len(names)} are eligible; use k <= {len(candidates)}")
    return candidates


def successive_halving(
    base_model, tokenizer, checkpoints: Sequence[Checkpoint], examples: Sequence[MCExample], *,
    scorer: str = defaults.SCORER, k: int = defaults.TOP_K, eta: float = DEFAULT_ETA, min_n: int = DEFAULT_MIN_N,
    margin: float = DEFAULT_MARGIN, exclude_task: str | None = None,
    exclude_names: Iterable[str] = (), batch_size: int = defaults.EVAL_BATCH_SIZE, progress: bool = False,
    target: str | None = None, use_bank: bool = True,
) -> HalvingResult:
    """Successive halving over `checkpoints` on `examples` (already sampled; prefixes nested).

    Checkpoints trained on `exclude_task` or named in `exclude_names` are never scored. One
    that cannot be loaded is dropped in the round it fails, its reason in `table.skipped`.
    """
    s = get_scorer(scorer)
    examples = list(examples)
    if not examples:
        raise ScoringError("no target examples to score on")
    candidates = _candidates([c.name for c in checkpoints],
                             [getattr(c, "source_task", None) for c in checkpoints], k,
                             exclude_task, exclude_names)
    by_name = {c.name: c for c in checkpoints}
    # One scorer for every round: survivors stay in its adapter bank, so a round loads only
    # what the bank dropped for room (`LibraryScorer.loads` counts them).
    with LibraryScorer(base_model, tokenizer, batch_size=batch_size, use_bank=use_bank) as scorer_:

        def score_part(alive: list[str], lo: int, hi: int) -> ScoreTable:
            return scorer_.score([by_name[a] for a in alive], examples[lo:hi], progress=progress)

        rounds, table, cost = _halve(score_part, candidates, len(examples), scorer=s.name, k=k,
                                     eta=eta, min_n=min_n, margin=margin, target=target)
    return HalvingResult(s.name, k, eta, min_n, len(examples), table.rank(s.name), rounds, table,
                         cost, (len(candidates) + 1) * len(examples),
                         [c.name for c in checkpoints if c.name not in candidates], margin=margin,
                         loads=scorer_.loads, load_s=round(scorer_.load_s, 4),
                         reloads=scorer_.reloads, reload_s=round(scorer_.reload_s, 4))


def halving_from_table(
    full: ScoreTable, *, scorer: str = defaults.SCORER, k: int = defaults.TOP_K, eta: float = DEFAULT_ETA,
    min_n: int = DEFAULT_MIN_N, margin: float = DEFAULT_MARGIN, exclude_task: str | None = None,
    exclude_names: Iterable[str] = (),
) -> HalvingResult:
    """What `successive_halving` picks on the sample `full` was scored on, replayed from its
    per-example values (each round reads the examples it would have scored): the same rounds,
    cost and finalists for no forward, so benchmarks can try settings and tests can build
    tables. A row's values are the same whichever checkpoints share its batches, up to float
    rounding (~1e-6 in nll), so a live run can differ from the replay only on such near-ties."""
    s = get_scorer(scorer)
    if not full.per_example:
        raise ScoringError("the table has no per-example values to replay halving on")
    candidates = _candidates([r.name for r in full.rows], [r.source_task for r in full.rows], k,
                             exclude_task, exclude_names)

    def score_part(alive: list[str], lo: int, hi: int) -> ScoreTable:
        part = full.subsample(range(lo, hi))
        part.rows = [part.row(a) for a in alive]
        return part

    rounds, table, cost = _halve(score_part, candidates, full.n, scorer=s.name, k=k, eta=eta,
                                 min_n=min_n, margin=margin, target=full.target)
    return HalvingResult(s.name, k, eta, min_n, full.n, table.rank(s.name), rounds, table, cost,
                         (len(candidates) + 1) * full.n,
                         [r.name for r in full.rows if r.name not in candidates], margin=margin)


def successive_halving_cached(
    ws: Workspace, checkpoints: Sequence[Checkpoint], examples: Sequence[MCExample], *,
    n: int = defaults.STUDY_N, seed: int | None = None, base_path: str | Path | None = None,
    target: str | None = None, scorer: str = defaults.SCORER, k: int = defaults.TOP_K, eta: float = DEFAULT_ETA,
    min_n: int = DEFAULT_MIN_N, margin: float = DEFAULT_MARGIN, exclude_task: str | None = None,
    batch_size: int = defaults.EVAL_BATCH_SIZE, progress: bool = True, device: str | None = None,
    refresh: bool = False,
) -> HalvingResult:
    """`successive_halving` on `sample_examples(examples, n, seed)`, remembered in the workspace
    (keyed like `score_library_cached`, plus the halving settings)."""
    inputs = cached_inputs(ws, checkpoints, examples, n=n, seed=seed, base_path=base_path,
                           device=device)
    settings = {"key": inputs.key, "scorer": scorer, "k": k, "eta": eta, "min_n": min_n,
                "margin": margin, "exclude_task": exclude_task, "version": HALVING_VERSION}
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
                                    eta=eta, min_n=min_n, margin=margin,
                                    exclude_task=exclude_task,
                                    batch_size=batch_size, progress=progress, target=target)
    write_json_atomic(path, {"kind": "mashup-halving", "version": HALVING_VERSION,
                             "settings": settings, "result": result.to_dict()})
    return result


def agreement(halving: HalvingResult, full: ScoreTable, *, exclude_task: str | None = None,
              ties: bool = False) -> bool:
    """Whether halving picked full scoring's top-k set (same sample, same scorer).

    Strict (`ties` False): the same names as `full.select_top_k`. With `ties`: the same
    scores, read from `full` for both sets: where full scoring's k-th and (k+1)-th are exactly
    tied on the ranking's key, `select_top_k` breaks the tie by name, and either set is full
    scoring's top k.
    """
    s = get_scorer(halving.scorer)
    top = full.select_top_k(s.name, halving.k, exclude_task=exclude_task,
                            exclude_names=halving.excluded)
    if not ties:
        return set(top) == set(halving.selected)

    def keys(names: Iterable[str]) -> list[tuple[float, float]]:
        return sorted((s.sort_key(full.row(a).value(s.name)), full.row(a).nll) for a in names)

    return keys(top) == keys(halving.selected)
