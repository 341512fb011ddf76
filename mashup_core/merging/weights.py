"""How much each selected adapter counts in a merge.

Every strategy goes through `search_weights` and lives in one registry, `WEIGHT_STRATEGIES`:

- `equal`: 1/n each, the Mashup reference.
- `proportional`: proportional to relevance scores on a probability scale: an accuracy as
  is, a loss (NLL, lower is better) as exp(-NLL), the geometric-mean token probability. So
  weights are normalised, never a softmax over accuracies (which would flatten 0.9 vs 0.3).
- `cmaes`: CMA-ES (the `cma` package) over weights in [0, 1], from equal weights,
  maximising an objective such as held-out accuracy (Khalifa et al. 2024).
- `lorahub`: LoraHub's search: minimise loss + 0.05·mean|w| over weights in [-1.5, 1.5],
  from zero, gradient-free (CMA-ES standing in for nevergrad's NGOpt).

This module knows nothing about models: a search gets an objective, any
`Callable[[np.ndarray], float]`; `mashup_core.merging.objective.make_merge_objective` builds one that
merges the adapters and evaluates the result.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mashup_core.errors import MashupError

Objective = Callable[[np.ndarray], float]
Progress = Callable[[int, float, float], None]  # (evaluation index, value, best value so far)


class WeightSearchError(MashupError, ValueError):
    """A weight search that cannot run as asked (missing scores or objective, bad budget)."""


@dataclass
class WeightSearchResult:
    strategy: str
    weights: list[float]
    best_value: float | None  # the objective at `weights`; None when nothing was evaluated
    history: list[tuple[int, float, list[float]]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "weights": self.weights, "best_value": self.best_value,
            "seconds": self.seconds,
            "history": [{"eval": i, "value": v, "weights": w} for i, v, w in self.history],
        }


class Evaluations:
    """Calls the objective within the budget, keeps the history and the best point.

    Strategies minimise a cost: the objective (negated when maximising) plus an optional
    L1 penalty. History and `best_value` keep the objective's own value, penalty excluded.
    A non-finite value counts as the worst possible, so a diverged merge is never chosen.
    """

    def __init__(self, objective: Objective, budget: int, maximize: bool, l1: float = 0.0,
                 on_progress: Progress | None = None):
        self.objective, self.budget, self.maximize, self.l1 = objective, budget, maximize, l1
        self.on_progress = on_progress
        self.history: list[tuple[int, float, list[float]]] = []
        self.best_cost, self.best_value, self.best_weights = math.inf, None, None

    @property
    def left(self) -> int:
        return self.budget - len(self.history)

    def __call__(self, weights: np.ndarray) -> float:
        weights = np.asarray(weights, dtype=float)
        value = float(self.objective(weights))
        cost = (-value if self.maximize else value) + self.l1 * float(np.mean(np.abs(weights)))
        if not math.isfinite(cost):
            cost = 1e300
        self.history.append((len(self.history), value, weights.tolist()))
        if cost < self.best_cost:
            self.best_cost, self.best_value, self.best_weights = cost, value, weights.tolist()
        if self.on_progress is not None:
            self.on_progress(len(self.history) - 1, value, self.best_value)
        return cost


@dataclass(frozen=True)
class SearchRequest:
    n_items: int
    scores: np.ndarray | None
    evaluations: Evaluations | None
    seed: int
    higher_is_better: bool


@dataclass(frozen=True)
class WeightStrategy:
    name: str
    fn: Callable[[SearchRequest], np.ndarray]
    summary: str
    needs_scores: bool = False
    needs_objective: bool = False
    maximize: bool = True  # which way the objective points unless it says (`objective.maximize`)
    l1: float = 0.0


WEIGHT_STRATEGIES: dict[str, WeightStrategy] = {}


def weight_strategy(name: str, summary: str, **traits: Any):
    def register(fn: Callable[[SearchRequest], np.ndarray]):
        WEIGHT_STRATEGIES[name] = WeightStrategy(name, fn, summary, **traits)
        return fn

    return register


@weight_strategy("equal", "1/n each (the reference)")
def equal(req: SearchRequest) -> np.ndarray:
    return np.full(req.n_items, 1.0 / req.n_items)


@weight_strategy("proportional", "normalised relevance (accuracy, or exp(-NLL) for losses)",
                 needs_scores=True)
def proportional(req: SearchRequest) -> np.ndarray:
    scores = req.scores
    if req.higher_is_better:
        if (scores < 0).any():
            raise WeightSearchError(
                f"proportional weights need non-negative scores, got {scores.tolist()}; "
                "for losses pass higher_is_better=False"
            )
        relevance = scores
    else:
        relevance = np.exp(-(scores - scores.min()))  # exp(-NLL), shifted: same ratios, no underflow
    total = relevance.sum()
    return relevance / total if total > 0 else equal(req)


def _cma(req: SearchRequest, x0: np.ndarray, sigma0: float, bounds: tuple[float, float]) -> np.ndarray:
    with warnings.catch_warnings():  # cma warns at import when matplotlib is missing
        warnings.simplefilter("ignore")
        import cma

    evals = req.evaluations
    evals(x0)  # so the result is never worse than where the search started
    if req.n_items == 1:  # cma 4.5 fails in one dimension; a line is searched on a grid
        for x in np.linspace(*bounds, evals.left):
            evals(np.array([x]))
        return np.asarray(evals.best_weights)
    rng = np.random.default_rng(req.seed)  # cma would otherwise reseed numpy's global RNG
    es = cma.CMAEvolutionStrategy(x0, sigma0, {
        "bounds": list(bounds), "verbose": -9, "randn": lambda *shape: rng.standard_normal(shape),
        # Accuracy on a few examples is a step function: a plateau is not convergence.
        "tolfun": 0, "tolfunhist": 0, "tolflatfitness": evals.budget,
    })
    while evals.left > 0 and not es.stop():
        candidates = es.ask()
        costs = [evals(x) for x in candidates[: evals.left]]
        if len(costs) < len(candidates):
            break
        es.tell(candidates, costs)
    return np.asarray(evals.best_weights)


@weight_strategy("cmaes", "CMA-ES over [0, 1]^n from equal weights, maximising e.g. accuracy",
                 needs_objective=True, maximize=True)
def cmaes(req: SearchRequest) -> np.ndarray:
    return _cma(req, equal(req), sigma0=0.3, bounds=(0.0, 1.0))


@weight_strategy("lorahub", "LoraHub: minimise loss + 0.05·mean|w| over [-1.5, 1.5]^n from zero",
                 needs_objective=True, maximize=False, l1=0.05)
def lorahub(req: SearchRequest) -> np.ndarray:
    return _cma(req, np.zeros(req.n_items), sigma0=0.5, bounds=(-1.5, 1.5))


def search_weights(
    strategy: str,
    n_items: int,
    *,
    scores: Sequence[float] | None = None,
    objective: Objective | None = None,
    budget: int = 40,
    seed: int = 0,
    on_progress: Progress | None = None,
    maximize: bool | None = None,
    higher_is_better: bool = True,
) -> WeightSearchResult:
    """Weights for `n_items` adapters by `strategy`; deterministic given `seed`.

    `budget` caps objective calls. `maximize` defaults to `objective.maximize` if the
    objective has one, else to the strategy's own direction (cmaes up, lorahub down). The
    fixed strategies (equal, proportional) evaluate the objective once, when given one.
    `higher_is_better` tells `proportional` whether `scores` are accuracies or losses.
    """
    spec = WEIGHT_STRATEGIES.get(strategy)
    if spec is None:
        raise WeightSearchError(
            f"unknown weight strategy {strategy!r}; choose from {', '.join(WEIGHT_STRATEGIES)}"
        )
    if n_items < 1:
        raise WeightSearchError("no adapters to weigh")
    if spec.needs_objective and objective is None:
        raise WeightSearchError(f"strategy '{strategy}' searches: it needs an objective to evaluate")
    if spec.needs_objective and budget < 1:
        raise WeightSearchError(f"budget must be at least 1 evaluation, got {budget}")
    score_array = None
    if spec.needs_scores:
        if scores is None or len(scores) != n_items:
            got = "none" if scores is None else len(scores)
            raise WeightSearchError(
                f"strategy '{strategy}' needs one relevance score per adapter ({n_items}), got {got}"
            )
        score_array = np.asarray(scores, dtype=float)
        if not np.isfinite(score_array).all():
            raise WeightSearchError(f"scores must be finite numbers, got {list(scores)}")
    if maximize is None:
        maximize = getattr(objective, "maximize", spec.maximize)
    start = time.perf_counter()
    evals = None
    if objective is not None:
        evals = Evaluations(objective, budget if spec.needs_objective else 1, maximize, spec.l1,
                            on_progress)
    weights = spec.fn(SearchRequest(n_items, score_array, evals, seed, higher_is_better))
    if evals is not None and not spec.needs_objective:
        evals(weights)
    return WeightSearchResult(
        strategy=strategy, weights=[float(w) for w in weights],
        best_value=evals.best_value if evals is not None else None,
        history=evals.history if evals is not None else [], seconds=time.perf_counter() - start,
    )
