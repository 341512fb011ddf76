"""Recycle: merge weights for several targets at once, and the trade-off front between them.

After Khalifa et al. 2024, "If You Can't Use Them, Recycle Them" (arXiv 2412.04144): CMA-ES
searches one weight per checkpoint of the library so that the merge does well on several
targets at once, without training. Here every evaluation merges in the low-rank space
(`merging.objective.MergeObjective`: one loaded base, never rewritten; the merge is copied
into one LoRA slot) and scores each target on its own rows, in one batched pass.

- `recycle_weights`: one scalarised search (mean, min or a weighted mean of the targets'
  accuracies) through `weights.search_weights("cmaes")`, whose first evaluation is the
  equal-weight merge, so the searched merge is never worse than it on the objective.
- `recycle_front`: the main search, `front_k` more searches along a sweep of preference
  weights over the targets (all sharing one budget), and the reference points (the base,
  every single checkpoint, the equal-weight merge); the non-dominated merges (`pareto_front`)
  get their held-out accuracy. `run_recycle` does it on a workspace and saves it under
  `ws.recycle_dir` (`recycle/<id>.json`), `write_recycled_adapter` turns a chosen merge into a
  library checkpoint (a PEFT adapter folder with provenance).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mashup_core import defaults
from mashup_core.errors import MashupError
from mashup_core.jobs.background import get_job, mark_running, start_job, update_job
from mashup_core.jobs.record import JobError
from mashup_core.merging.weights import WeightSearchError, search_weights
from mashup_core.workspace import Workspace, read_json, write_json_atomic

DEFAULT_METHOD = "cat"  # exact Σ w_i ΔW_i: a linear merge of the full checkpoints' deltas
RECYCLE_DIR = "recycle"
RECYCLE_KIND = "recycle"  # mashup_meta.json's `kind` of a written merge
REFERENCE_KINDS = ("base", "single", "equal")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
Progress = Callable[[int, float, float], None]  # (evaluation index, value, best so far)


class RecycleError(MashupError, ValueError):
    """A recycle search that cannot run as asked; the message names the input to fix."""


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Scalarisation:
    """Per-target accuracies → one number to maximise."""

    text: str  # as given: "mean", "min", "weighted:0.5,0.3,0.2"
    kind: str  # mean | min | weighted
    preference: tuple[float, ...] = ()  # weighted: normalised to sum 1

    def __call__(self, accuracies: Sequence[float]) -> float:
        acc = np.asarray(accuracies, dtype=float)
        if self.kind == "min":
            return float(acc.min())
        if self.kind == "weighted":
            return float(np.dot(self.preference, acc))
        return float(acc.mean())


def parse_objective(text: str, n_targets: int) -> Scalarisation:
    """'mean' | 'min' | 'weighted:w1,...,wT' (one non-negative weight per target, not all 0)."""
    text = str(text).strip()
    if text in ("mean", "min"):
        return Scalarisation(text, text)
    if not text.startswith("weighted:"):
        raise RecycleError(f"objective must be mean, min or weighted:w1,...,w{n_targets} "
                           f"(one weight per target), got {text!r}")
    try:
        values = [float(x) for x in text.removeprefix("weighted:").split(",") if x.strip()]
    except ValueError:
        raise RecycleError(f"weighted: needs comma-separated numbers, got {text!r}") from None
    if len(values) != n_targets:
        raise RecycleError(f"weighted: gives {len(values)} weights for {n_targets} targets; give "
                           "one per target, in the order of --targets")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise RecycleError(f"weighted: weights must be non-negative numbers, got {values}")
    total = sum(values)
    if total <= 0:
        raise RecycleError("weighted: weights are all 0; give at least one a positive weight")
    return Scalarisation(text, "weighted", tuple(v / total for v in values))


def preference_sweep(n_targets: int, k: int, seed: int = 0) -> list[tuple[float, ...]]:
    """`k` preference vectors on the simplex, spread over the trade-offs between targets.

    Two targets: evenly spaced along the segment, ends excluded ((1/3, 2/3), (2/3, 1/3) for
    k = 2). Three or more: each target in turn leaning (half its weight on it, the rest
    equal), then seeded Dirichlet(1) draws.
    """
    if k < 1:
        return []
    if n_targets == 1:
        return [(1.0,)] * k
    if n_targets == 2:
        return [(t, 1 - t) for t in (i / (k + 1) for i in range(1, k + 1))]
    lean = [tuple(0.5 * (i == j) + 0.5 / n_targets for j in range(n_targets))
            for i in range(n_targets)]
    rng = np.random.default_rng(seed)
    while len(lean) < k:
        lean.append(tuple(float(x) for x in rng.dirichlet(np.ones(n_targets))))
    return lean[:k]


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (every coordinate higher is better), in input order.

    A point is dominated when another is ≥ on every coordinate and > on one; of identical
    points the first is kept.
    """
    arr = [tuple(float(v) for v in p) for p in points]
    keep = []
    for i, p in enumerate(arr):
        dominated = False
        for j, q in enumerate(arr):
            if j == i:
                continue
            if all(b >= a for a, b in zip(p, q, strict=True)) and (q != p or j < i):
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return keep


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (scipy); None when either side is constant or too short."""
    from scipy.stats import spearmanr

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    value = float(spearmanr(x, y).statistic)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- evaluating merges


class MultiTargetObjective:
    """weights → each target's accuracy of the merge, every target on its own rows.

    One `MergeObjective` over all targets' rows (one merge and one batched pass per
    evaluation), split back by target. Results are cached by weights, so a point evaluated
    twice (the equal merge by two searches) costs nothing and reads the same.
    """

    def __init__(self, model, tokenizer, factors, targets: Mapping[str, Sequence], *,
                 method: str = DEFAULT_METHOD, batch_size: int = defaults.EVAL_BATCH_SIZE, **merge_options: Any):
        from mashup_core.merging.lora import SEARCH_SLOT
        from mashup_core.merging.objective import MergeObjective

        self.names = list(targets)
        self.sizes = [len(targets[t]) for t in self.names]
        rows = [ex for t in self.names for ex in targets[t]]
        # A slot of its own per merge shape: a model searched before with other checkpoints
        # (another rank) keeps working.
        shape = hashlib.sha256(repr(sorted((a.name, a.sha256) for a in factors)).encode())
        self.merge = MergeObjective(model, tokenizer, factors, rows, method, batch_size=batch_size,
                                    adapter_name=f"{SEARCH_SLOT}_recycle_{shape.hexdigest()[:8]}",
                                    **merge_options)
        self.cache: dict[tuple[float, ...], dict[str, float]] = {}
        self.calls = 0  # merges actually evaluated (cache misses)

    @property
    def model(self):
        return self.merge.model

    def per_target(self, weights: Sequence[float] | np.ndarray) -> dict[str, float]:
        key = tuple(float(w) for w in weights)
        if key not in self.cache:
            self.calls += 1
            correct = self.merge.evaluate(key).correct
            out, start = {}, 0
            for name, size in zip(self.names, self.sizes, strict=True):
                out[name] = sum(correct[start : start + size]) / size
                start += size
            self.cache[key] = out
        return dict(self.cache[key])

    def accuracy(self, weights: Sequence[float] | np.ndarray, examples: Sequence) -> float:
        """The merge's accuracy on other rows (a held-out target)."""
        return self.merge.evaluate([float(w) for w in weights], list(examples)).acc


# --------------------------------------------------------------------------- one search


@dataclass
class RecycleResult:
    checkpoints: list[str]
    weights: list[float]  # one per checkpoint
    per_target: dict[str, float]  # each target's accuracy at `weights`
    value: float  # the objective at `weights`
    objective: str
    held_out: float | None  # accuracy on the held-out rows, when given
    history: list[tuple[int, float]]  # (evaluation, best value so far)
    evaluations: int
    seconds: float = 0.0
    points: list[dict[str, Any]] = field(default_factory=list)  # every evaluated merge

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [list(h) for h in self.history]
        return data


def check_budget(budget: int, n_weights: int, runs: int = 1) -> int:
    """Evaluations per search run; CMA-ES needs at least one per weight in each run."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise RecycleError(f"budget must be a positive number of evaluations, got {budget!r}")
    share = budget // runs
    if share < n_weights:
        split = f" split over {runs} searches gives each {share}" if runs > 1 else ""
        raise RecycleError(
            f"budget {budget}{split}: fewer evaluations than the {n_weights} weights CMA-ES "
            f"searches; give a budget of at least {n_weights * runs}"
            + (" or fewer front points (--front)" if runs > 1 else "")
            + " or fewer checkpoints (--checkpoints)")
    return share


def check_targets(targets: Sequence[str], held_out: str | None = None) -> None:
    """Names only: every bad combination is refused before any model work."""
    if not targets:
        raise RecycleError("no targets to search for; name at least one (--targets A,B)")
    seen = set()
    for name in targets:
        if name in seen:
            raise RecycleError(f"target {name!r} is given twice; name each target once")
        seen.add(name)
    if held_out is not None and held_out in seen:
        raise RecycleError(f"the held-out target {held_out!r} is also searched; a held-out "
                           "target must be left out of --targets")


def recycle_weights(base_model, tokenizer, factors: Sequence, targets: Mapping[str, Sequence], *,
                    objective: str | Scalarisation = "mean", budget: int = 60, seed: int = 0,
                    held_out: Sequence | None = None, method: str = DEFAULT_METHOD,
                    batch_size: int = defaults.EVAL_BATCH_SIZE, on_progress: Progress | None = None,
                    evaluator: MultiTargetObjective | None = None,
                    **merge_options: Any) -> RecycleResult:
    """One weight per adapter of `factors` (`lora.load_lora_factors`), by CMA-ES over [0, 1]
    from equal weights, maximising `objective` of the targets' accuracies.

    `targets` maps each target's name to its rows; `held_out` rows are scored once, at the
    result, and never seen by the search. `budget` counts merges evaluated. The base model is
    wrapped once with a LoRA slot (its own weights are never changed); pass `evaluator` to
    share one across searches.
    """
    start = time.perf_counter()
    factors = list(factors)
    check_targets(list(targets))
    for name, rows in targets.items():
        if not rows:
            raise RecycleError(f"target {name!r} has no rows to evaluate merges on")
    if not factors:
        raise RecycleError("no checkpoints to weigh")
    scalar = objective if isinstance(objective, Scalarisation) else parse_objective(objective, len(targets))
    check_budget(budget, len(factors))
    if evaluator is None:
        evaluator = MultiTargetObjective(base_model, tokenizer, factors, targets, method=method,
                                         batch_size=batch_size, **merge_options)
    points: list[dict[str, Any]] = []

    def value_of(weights: np.ndarray) -> float:
        accs = evaluator.per_target(weights)
        value = scalar([accs[t] for t in evaluator.names])
        points.append({"weights": [float(w) for w in weights], "per_target": accs, "value": value})
        return value

    value_of.maximize = True  # type: ignore[attr-defined]
    try:
        found = search_weights("cmaes", len(factors), objective=value_of, budget=budget, seed=seed,
                               on_progress=on_progress)
    except WeightSearchError as exc:
        raise RecycleError(str(exc)) from exc
    best_so_far, history = -math.inf, []
    for i, value, _ in found.history:
        best_so_far = max(best_so_far, value)
        history.append((i, best_so_far))
    per_target = evaluator.per_target(found.weights)
    held = evaluator.accuracy(found.weights, held_out) if held_out else None
    return RecycleResult(
        checkpoints=[a.name for a in factors], weights=found.weights, per_target=per_target,
        value=float(found.best_value), objective=scalar.text, held_out=held, history=history,
        evaluations=len(found.history), seconds=time.perf_counter() - start, points=points,
    )


# --------------------------------------------------------------------------- the front


def recycle_front(base_model, tokenizer, factors: Sequence, targets: Mapping[str, Sequence], *,
                  objective: str = "mean", budget: int = 60, front_k: int = 0, seed: int = 0,
                  held_out: Sequence | None = None, method: str = DEFAULT_METHOD,
                  batch_size: int = defaults.EVAL_BATCH_SIZE, on_progress: Progress | None = None,
                  **merge_options: Any) -> dict[str, Any]:
    """The main search, `front_k` preference-weighted searches (sharing `budget`: each gets
    budget // (front_k + 1), the main one the rest), the reference points, and the front.

    Returns a JSON-ready dict: `points` (each with kind base | single | equal | searched,
    weights, per-target accuracies, `front`, and held-out accuracy for the references and the
    front), `runs` (one per search, with its history) and `result` (the main search).
    """
    factors = list(factors)
    names = list(targets)
    check_targets(names)
    scalar = parse_objective(objective, len(names))
    if isinstance(front_k, bool) or not isinstance(front_k, int) or front_k < 0:
        raise RecycleError(f"front must be 0 or more preference points, got {front_k!r}")
    share = check_budget(budget, len(factors), front_k + 1)
    start = time.perf_counter()
    evaluator = MultiTargetObjective(base_model, tokenizer, factors, targets, method=method,
                                     batch_size=batch_size, **merge_options)
    scalars = [scalar] + [Scalarisation("weighted:" + ",".join(f"{p:.3g}" for p in pref), "weighted", pref)
                          for pref in preference_sweep(len(names), front_k, seed)]
    budgets = [budget - share * front_k] + [share] * front_k
    runs, results = [], []
    done = 0
    for i, (scal, run_budget) in enumerate(zip(scalars, budgets, strict=True)):
        def progress(index: int, value: float, best: float, offset: int = done) -> None:
            if on_progress is not None:
                on_progress(offset + index, value, best)

        result = recycle_weights(None, tokenizer, factors, targets, objective=scal,
                                 budget=run_budget, seed=seed + i, evaluator=evaluator,
                                 on_progress=progress)
        done += result.evaluations
        results.append(result)
        runs.append({"objective": scal.text, "preference": list(scal.preference),
                     "budget": run_budget, "evaluations": result.evaluations,
                     "weights": result.weights, "value": result.value,
                     "history": [list(h) for h in result.history]})
    n = len(factors)
    references = [("base", "base model", [0.0] * n), ("equal", "equal weights", [1.0 / n] * n)]
    references += [("single", a.name, [float(i == j) for j in range(n)]) for i, a in enumerate(factors)]
    points: list[dict[str, Any]] = []
    for kind, label, weights in references:
        points.append({"kind": kind, "label": label, "weights": weights,
                       "per_target": evaluator.per_target(weights)})
    seen = {tuple(p["weights"]) for p in points}
    for r, result in enumerate(results):
        for k, p in enumerate(result.points):
            if tuple(p["weights"]) in seen:
                continue
            seen.add(tuple(p["weights"]))
            label = f"{scalars[0].text} search #{k}" if r == 0 else f"preference {r} #{k}"
            points.append({"kind": "searched", "label": label, "weights": p["weights"],
                           "per_target": p["per_target"], "run": r})
    best_keys: dict[tuple[float, ...], int] = {}
    for i, r in enumerate(results):  # a point best in several searches names the first
        best_keys.setdefault(tuple(r.weights), i)
    for i, p in enumerate(points):
        p["id"] = f"p{i}"
        p["objective"] = scalar([p["per_target"][t] for t in names])
        p["mean"] = float(np.mean([p["per_target"][t] for t in names]))
        p["best_of_run"] = best_keys.get(tuple(p["weights"]))
    front = set(pareto_front([[p["per_target"][t] for t in names] for p in points]))
    for i, p in enumerate(points):
        p["front"] = i in front
        wanted = p["front"] or p["kind"] != "searched" or p["best_of_run"] is not None
        p["held_out"] = (evaluator.accuracy(p["weights"], held_out)
                         if held_out and wanted else None)
    main = results[0]
    main.held_out = next((p["held_out"] for p in points if tuple(p["weights"]) == tuple(main.weights)),
                         None)
    result = main.to_dict()
    result.pop("points")
    return {
        "targets": names, "objective": scalar.text, "method": method, "budget": budget,
        "front_k": front_k, "seed": seed, "checkpoints": [a.name for a in factors],
        "evaluations": sum(r.evaluations for r in results), "merges_evaluated": evaluator.calls,
        "seconds": time.perf_counter() - start, "points": points, "runs": runs, "result": result,
    }


def weight_vs_own_score(front: dict[str, Any], point_id: str | None = None) -> dict[str, Any]:
    """Each checkpoint's weight in a merge (default: the main search's) against its own score on
    the targets (its single-checkpoint objective), with their Spearman correlation."""
    points = front["points"]
    chosen = (next(p for p in points if p["id"] == point_id) if point_id is not None else
              next(p for p in points if p.get("best_of_run") == 0))
    own = {p["label"]: p["objective"] for p in points if p["kind"] == "single"}
    names = front["checkpoints"]
    weights = chosen["weights"]
    scores = [own[n] for n in names]
    return {"checkpoints": names, "weights": weights, "own_score": scores,
            "spearman": spearman(weights, scores), "point": chosen["id"]}


def summary(front: dict[str, Any]) -> dict[str, Any]:
    """The note's numbers: the searched merge against equal weights and the best single
    checkpoint (on the objective), checkpoints with weight > 0.05, the Spearman correlation."""
    points = front["points"]
    searched = next(p for p in points if p.get("best_of_run") == 0)
    equal = next(p for p in points if p["kind"] == "equal")
    singles = [p for p in points if p["kind"] == "single"]
    best_single = max(singles, key=lambda p: p["objective"]) if singles else None
    base = next(p for p in points if p["kind"] == "base")

    def row(p):
        return None if p is None else {"label": p["label"], "objective": p["objective"],
                                       "mean": p["mean"], "per_target": p["per_target"],
                                       "held_out": p.get("held_out")}

    corr = weight_vs_own_score(front)
    return {"searched": row(searched), "equal": row(equal), "best_single": row(best_single),
            "base": row(base), "weights_above_0.05": sum(w > 0.05 for w in searched["weights"]),
            "n_checkpoints": len(searched["weights"]), "spearman_weight_own_score": corr["spearman"],
            "front": [row(p) for p in points if p["front"]]}


# --------------------------------------------------------------------------- on a workspace


def recycle_dir(ws: Workspace) -> Path:
    return ws.root / RECYCLE_DIR


@dataclass(frozen=True)
class RecycleRequest:
    """A workspace search, checked by `validate` before any model work."""

    targets: tuple[str, ...]
    held_out: str | None = None
    objective: str = "mean"
    checkpoints: tuple[str, ...] = ()  # () = every LoRA checkpoint of the library
    budget: int = 60
    front_k: int = 0
    n: int = defaults.STUDY_N  # rows per target (train split, seeded sample)
    seed: int = 0
    method: str = DEFAULT_METHOD
    batch_size: int = defaults.EVAL_BATCH_SIZE

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def library_choice(ws: Workspace, wanted: Sequence[str] = ()) -> list:
    """The checkpoints to weigh: `wanted` by name (each must be a LoRA checkpoint of the
    library), else every LoRA checkpoint except merges this module wrote."""
    from mashup_core.config import workspace_library

    scan = workspace_library(ws)
    loras = [c for c in scan.checkpoints if c.kind == "lora"]
    if not wanted:
        chosen = [c for c in loras if c.meta.get("kind") != RECYCLE_KIND]
        if not chosen:
            raise RecycleError(f"the library of {ws.root} has no LoRA checkpoints to weigh")
        return chosen
    known = {c.name: c for c in scan.checkpoints}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise RecycleError(f"not in the library: {', '.join(missing)}; known: "
                           f"{', '.join(known) or 'none'}")
    twice = sorted({n for n in wanted if list(wanted).count(n) > 1})
    if twice:
        raise RecycleError(f"checkpoint {twice[0]!r} is given twice; name each once")
    full = [n for n in wanted if known[n].kind != "lora"]
    if full:
        raise RecycleError(f"{', '.join(full)}: full checkpoints cannot be merged in the low-rank "
                           "space; choose LoRA checkpoints")
    return [known[n] for n in wanted]


def validate_request(ws: Workspace, req: RecycleRequest) -> list:
    """Every check that needs no model: names, objective, budget, checkpoints. Returns them."""
    from mashup_core.merging.lora import MERGE_METHODS

    check_targets(req.targets, req.held_out)
    parse_objective(req.objective, len(req.targets))
    if req.method not in MERGE_METHODS:
        raise RecycleError(f"unknown merge method {req.method!r}; choose from {', '.join(MERGE_METHODS)}")
    if req.n < 1:
        raise RecycleError(f"n must be at least 1 row per target, got {req.n}")
    if req.front_k < 0:
        raise RecycleError(f"front must be 0 or more preference points, got {req.front_k}")
    chosen = library_choice(ws, req.checkpoints)
    check_budget(req.budget, len(chosen), req.front_k + 1)
    return chosen


def target_rows(ws: Workspace, name: str, n: int, seed: int) -> list:
    from mashup_core.config import find_target, load_target
    from mashup_core.data.examples import sample_examples

    return sample_examples(load_target(find_target(ws, name, "train"), ws), n, seed)


def run_recycle(ws: Workspace, req: RecycleRequest, *, on_progress: Progress | None = None,
                front_id: str | None = None) -> dict[str, Any]:
    """Validate, load the base once, search, save `recycle/<id>.json`; returns the saved dict."""
    from mashup_core.config import resolve_config
    from mashup_core.merging.lora import load_lora_factors
    from mashup_core.models.loading import default_device, load_base_model, load_tokenizer

    chosen = validate_request(ws, req)
    factors = load_lora_factors([c.path for c in chosen])
    targets = {t: target_rows(ws, t, req.n, req.seed) for t in req.targets}
    held = target_rows(ws, req.held_out, req.n, req.seed) if req.held_out else None
    config = resolve_config(ws)
    trust = config.base.trust_remote_code
    model = load_base_model(config.base_model, device=default_device(), trust_remote_code=trust)
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=trust)
    front = recycle_front(model, tokenizer, factors, targets, objective=req.objective,
                          budget=req.budget, front_k=req.front_k, seed=req.seed, held_out=held,
                          method=req.method, batch_size=req.batch_size, on_progress=on_progress)
    front_id = front_id or new_front_id(req)
    front.update({"id": front_id, "created": time.time(), "held_out_target": req.held_out,
                  "request": req.to_dict(), "checkpoint_paths": [str(c.path) for c in chosen],
                  "base_model": str(config.base_model), "n": req.n, "base_loads": 1})
    write_json_atomic(recycle_dir(ws) / f"{front_id}.json", front)
    return front


def new_front_id(req: RecycleRequest) -> str:
    label = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(req.targets)).strip("-")[:40] or "recycle"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"


def list_fronts(ws: Workspace) -> list[str]:
    """Saved searches, newest first."""
    folder = recycle_dir(ws)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.json") if not p.name.startswith(".")]
    return [p.stem for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


def load_front(ws: Workspace, front_id: str) -> dict[str, Any]:
    if not _ID.match(front_id or ""):
        raise RecycleError(f"invalid recycle search id {front_id!r}")
    data = read_json(recycle_dir(ws) / f"{front_id}.json")
    if not isinstance(data, dict) or "points" not in data:
        raise RecycleError(f"no saved recycle search {front_id!r} in {recycle_dir(ws)}; known: "
                           f"{', '.join(list_fronts(ws)) or 'none'}")
    return data


def write_recycled_adapter(ws: Workspace, front_id: str, point_id: str,
                           name: str | None = None) -> Path:
    """A merge of a saved search as a library checkpoint: a PEFT adapter folder (the same
    merge method the search evaluated, so it reproduces the reported accuracies) with
    mashup_meta.json saying where it came from. Returns the folder."""
    from mashup_core.access import require_write
    from mashup_core.config import ensure_source
    from mashup_core.merging.lora import merge_adapters

    require_write("writing a recycled merge as an adapter")
    front = load_front(ws, front_id)
    point = next((p for p in front["points"] if p["id"] == point_id), None)
    if point is None:
        raise RecycleError(f"search {front_id} has no merge {point_id!r}")
    name = name or f"recycle-{front_id}-{point_id}"
    if not _ID.match(name):
        raise RecycleError(f"invalid checkpoint name {name!r}: use letters, digits, '.', '_' and "
                           "'-', starting with a letter or digit")
    dest = ws.library_dir / name
    if dest.exists():
        raise RecycleError(f"the library already has {name!r} ({dest}); choose another name")
    paths = front["checkpoint_paths"]
    missing = [p for p in paths if not Path(p).is_dir()]
    if missing:
        raise RecycleError(f"the search's checkpoints are gone: {', '.join(missing)}")
    provenance = {k: front.get(k) for k in ("id", "targets", "held_out_target", "objective", "method")}
    merge_adapters(paths, point["weights"], front["method"], dest,
                   extra={"recycle": {**provenance, "point": point_id}})
    base = front.get("base_model")
    recorded = (os.path.relpath(Path(base).resolve(), dest.resolve())
                if base and Path(base).is_dir() and Path(base).resolve().is_relative_to(ws.root.resolve())
                else base)
    write_json_atomic(dest / "mashup_meta.json", {
        "kind": RECYCLE_KIND, "source_task": None, "base_model": recorded, "final": True,
        "merged_from": front["checkpoints"], "merge_weights": point["weights"],
        "merge_method": front["method"], "recycle_search": front_id, "point": point_id,
        "targets": front["targets"], "held_out": front.get("held_out_target"),
        "per_target_accuracy": point["per_target"], "held_out_accuracy": point.get("held_out"),
        "n": front.get("n"), "created": time.time(),
    })
    ensure_source(ws, dest.parent)
    return dest


# --------------------------------------------------------------------------- as a background job


def job_dir(ws: Workspace) -> Path:
    return recycle_dir(ws) / "jobs"


def launch_recycle(ws: Workspace, req: RecycleRequest) -> str:
    """Run the search in the background (the job layer's kind "recycle": it outlives the
    page); returns the id its result will be saved under. Bad inputs fail here, before
    anything starts."""
    from mashup_core.access import require_write

    require_write("launching a recycle search")
    validate_request(ws, req)
    front_id = new_front_id(req)
    # The job's record: what it searches is read from here.
    write_json_atomic(job_dir(ws) / f"{front_id}.json",
                      {"state": "queued", "created": time.time(), "request": req.to_dict()})
    start_job(ws, "recycle", front_id, error=RecycleError)
    return front_id


def recycle_job(ws: Workspace, front_id: str) -> dict[str, Any]:
    """A launched search's record: state queued | running | done (its result is saved) |
    failed | cancelled | killed, with its progress and error; {} if none has that id."""
    try:
        job = get_job(ws, "recycle", front_id)
    except JobError:
        return {}
    return {**job.fields, **job.to_dict()}


def run_recycle_job(ws: Workspace, front_id: str) -> dict[str, Any]:
    """The job itself: the recorded request's search, its progress in the record as it goes."""
    stored = read_json(job_dir(ws) / f"{front_id}.json", {}).get("request") or {}
    req = RecycleRequest(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
    mark_running(ws, "recycle", front_id, os.getpid())
    written = [0.0]

    def progress(index: int, _value: float, _best: float) -> None:
        if time.monotonic() - written[0] >= 1.0 or index + 1 >= req.budget:
            update_job(ws, "recycle", front_id, progress={
                "done": index + 1, "total": req.budget, "unit": "evaluations"})
            written[0] = time.monotonic()

    try:
        front = run_recycle(ws, req, on_progress=progress, front_id=front_id)
    except BaseException as exc:
        update_job(ws, "recycle", front_id, state="failed", finished=time.time(),
                   error=f"{type(exc).__name__}: {exc}")
        raise
    update_job(ws, "recycle", front_id, state="done", finished=time.time(),
               result=str(recycle_dir(ws) / f"{front_id}.json"))
    return front
