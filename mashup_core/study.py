"""Comparisons of a mashup run with training from scratch, and the leave-one-out study.

Training-to-parity (the paper's headline number): how far into the scratch run's step budget
the mashup run first matches the scratch run's final accuracy. The wall-clock ratio adds what
the method itself costs (scoring and merging); the library is paid once and not counted.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
import torch

from mashup_core.errors import MashupError
from mashup_core.evaluation import evaluate_mc
from mashup_core.training import TrainConfig
from mashup_core.workspace import Workspace, write_json_atomic

Curve = Sequence[tuple[float, float]]  # (step or seconds, accuracy), in any order


class ComparisonError(MashupError, ValueError):
    """Curves or timings that cannot be compared (empty, or a zero-length scratch run)."""


def _sorted(curve: Curve, what: str) -> list[tuple[float, float]]:
    points = sorted((float(x), float(y)) for x, y in curve)
    if not points:
        raise ComparisonError(f"the {what} curve has no evaluations; evaluate during training")
    return points


def first_reach(curve: Curve, target: float) -> float | None:
    """The x where `curve` first reaches `target`, linear between evaluations; None if never.

    Between evaluations the curve is unknown; a straight line is the least-assuming guess.
    """
    points = _sorted(curve, "mashup")
    prev = None
    for x, y in points:
        if y >= target:
            if prev is None:  # reached at the first evaluation: nothing to interpolate from
                return x
            return prev[0] + (target - prev[1]) / (y - prev[1]) * (x - prev[0])
        prev = (x, y)
    return None


def training_to_parity(
    scratch_curve: Curve, mashup_curve: Curve, mode: str = "normal"
) -> float | None:
    """Fraction of the scratch run's steps the mashup run needs to reach its final accuracy.

    Target = the scratch curve's final accuracy. The mashup curve should start with step 0
    (the merged model before training): reached there gives 0.0. Never reached gives 1.0
    (no saving) in 'normal' mode and None (the target is dropped from means) in 'strict'.
    """
    if mode not in ("normal", "strict"):
        raise ComparisonError(f"parity mode {mode!r}: use 'normal' or 'strict'")
    scratch = _sorted(scratch_curve, "scratch")
    total_steps, target = scratch[-1]
    if total_steps <= 0:
        raise ComparisonError("the scratch curve ends at step 0; it needs at least one trained step")
    reached = first_reach(mashup_curve, target)
    if reached is None:
        return 1.0 if mode == "normal" else None
    return reached / total_steps


def wallclock_ratio(
    scratch_seconds: float,
    mashup_train_seconds: float,
    parity_fraction: float | None,
    scoring_s: float = 0.0,
    merging_s: float = 0.0,
) -> float | None:
    """(scoring + merging + mashup training × parity) / scratch training time.

    Assumes the mashup run's time is spread evenly over its steps; `wallclock_ratio_timed`
    reads the time off the run instead. None when parity is None (strict, never reached).
    """
    if scratch_seconds <= 0:
        raise ComparisonError(f"scratch training time must be positive, got {scratch_seconds}")
    if parity_fraction is None:
        return None
    return (scoring_s + merging_s + mashup_train_seconds * parity_fraction) / scratch_seconds


def wallclock_ratio_timed(
    scratch_time_curve: Curve, mashup_time_curve: Curve, scoring_s: float = 0.0,
    merging_s: float = 0.0, mode: str = "normal",
) -> float | None:
    """Like `wallclock_ratio`, on (seconds since training started, accuracy) curves.

    The time to parity is read (interpolated) off the mashup run's own clock; never reached
    counts the whole mashup run in 'normal' mode and gives None in 'strict'.
    """
    scratch = _sorted(scratch_time_curve, "scratch")
    scratch_seconds, target = scratch[-1]
    reached = first_reach(mashup_time_curve, target)
    if reached is None:
        if mode == "strict":
            return None
        reached = _sorted(mashup_time_curve, "mashup")[-1][0]
    return wallclock_ratio(scratch_seconds, reached, 1.0, scoring_s, merging_s)


def mean_ranks(acc_by_target: Mapping[str, Mapping[Hashable, float]]) -> dict[Hashable, float]:
    """Mean rank of each cell across targets: rank 1 = best accuracy on a target, ties share
    the average of their ranks; a cell missing on a target is ranked on the others only."""
    frame = pd.DataFrame.from_dict({t: dict(cells) for t, cells in acc_by_target.items()}, orient="index")
    return dict(_mean_rank(frame).items())


def _mean_rank(wide: pd.DataFrame) -> pd.Series:
    """targets × cells accuracies -> each cell's mean rank (NaN = not run on that target)."""
    return wide.rank(axis=1, ascending=False, method="average").mean(axis=0)


# --- Comparing two runs ----------------------------------------------------------------------

# timings.json keys (pipeline.MashupInit.timings) that are the method's own cost, paid
# before a mashup run trains.
METHOD_COST_KEYS = ("scoring_s", "weight_search_s", "merging_s")


def eval_curve(metrics: Sequence[Mapping], x: str = "step", metric: str = "acc") -> list[tuple[float, float]]:
    """(x, metric) of a run's evaluation records (metrics.jsonl rows with phase 'eval')."""
    return [(float(r[x]), float(r[metric])) for r in metrics
            if r.get("phase", "eval") == "eval" and r.get(x) is not None and r.get(metric) is not None]


def _training_seconds(metrics: Sequence[Mapping], timings: Mapping, key: str) -> float:
    """Training time from timings.json if recorded, else the last record's wall-clock column."""
    if timings.get(key):
        return float(timings[key])
    seconds = [float(r["seconds"]) for r in metrics if r.get("seconds") is not None]
    if not seconds:
        raise ComparisonError("no training time: neither timings nor a 'seconds' column in the metrics")
    return max(seconds)


def compare_runs(
    scratch_metrics: Sequence[Mapping], mashup_metrics: Sequence[Mapping], timings: Mapping,
    scratch_timings: Mapping | None = None,
) -> dict:
    """Parity (normal and strict), Δ final accuracy and wall-clock ratios of a mashup run
    against its from-scratch baseline.

    `timings` is the mashup run's timings.json (scoring, merging and weight-search seconds,
    training_s); the scratch run's training time comes from `scratch_timings` or its metrics.
    """
    scratch, mashup = eval_curve(scratch_metrics), eval_curve(mashup_metrics)
    scratch_s = _training_seconds(scratch_metrics, scratch_timings or {}, "training_s")
    mashup_s = _training_seconds(mashup_metrics, timings, "training_s")
    cost = {key: float(timings.get(key) or 0.0) for key in METHOD_COST_KEYS}
    overhead = sum(cost.values())
    parity = training_to_parity(scratch, mashup, "normal")
    strict = training_to_parity(scratch, mashup, "strict")
    target = _sorted(scratch, "scratch")[-1][1]
    reached_step = first_reach(mashup, target)
    timed = None
    scratch_t, mashup_t = eval_curve(scratch_metrics, "seconds"), eval_curve(mashup_metrics, "seconds")
    if scratch_t and mashup_t:
        timed = wallclock_ratio_timed(scratch_t, mashup_t, overhead, 0.0)
    return {
        "target_acc": target,
        "scratch_final_acc": target,
        "mashup_final_acc": _sorted(mashup, "mashup")[-1][1],
        "mashup_init_acc": _sorted(mashup, "mashup")[0][1],
        "delta_final_acc": _sorted(mashup, "mashup")[-1][1] - target,
        "parity": parity,
        "parity_strict": strict,
        "parity_step": reached_step,
        "wallclock_ratio": wallclock_ratio(scratch_s, mashup_s, parity, overhead, 0.0),
        "wallclock_ratio_strict": wallclock_ratio(scratch_s, mashup_s, strict, overhead, 0.0),
        "wallclock_ratio_timed": timed,
        "seconds": {"scratch_training_s": scratch_s, "mashup_training_s": mashup_s, **cost},
    }


# --- The leave-one-out study (the paper's Fig. 3) ----------------------------------------------

SPEC_FILE, CELLS_FILE, SUMMARY_FILE = "spec.json", "cells.jsonl", "summary.json"
GRID_FIELDS = ("tasks", "methods", "ks", "scorers", "weightings")  # may grow on a resumed study


class StudyError(MashupError, ValueError):
    """A study that cannot run as asked; the message names the setting and what is allowed."""


@dataclass(frozen=True)
class StudySpec:
    """For each target task, merge top-k of the OTHER tasks' final adapters, for every
    (method, k, scorer, weighting); optionally finetune from each merge and from scratch."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...] = ("linear", "cat_svd", "ties")
    ks: tuple[int, ...] = (1, 2, 3)
    scorers: tuple[str, ...] = ("acc",)
    weightings: tuple[str, ...] = ("equal",)  # strategies that need no search
    n: int = 64  # scoring sample: the first n of the target's train split (the reference)
    seed: int = 0  # DARE's drops, LoRA init and batch order
    eval_split: str = "validation"
    eval_limit: int = 0  # 0 = the whole split
    density: float = 0.5  # for the pruning methods (ties, dare_*, magnitude_prune)
    train: bool = False
    train_steps: int = 100
    train_batch_size: int = 32
    train_lr: float = 3e-3
    eval_every: int = 10

    def __post_init__(self) -> None:
        for name in ("tasks", "methods", "scorers", "weightings"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> StudySpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def settings(self) -> dict:
        """What every cell's value depends on besides its grid position."""
        return {k: v for k, v in self.to_dict().items() if k not in GRID_FIELDS}

    def identity(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.train_steps, batch_size=self.train_batch_size,
                           lr=self.train_lr, seed=self.seed)

    def validate(self, library_size: int | None = None) -> None:
        from mashup_core.merging import MERGE_METHODS
        from mashup_core.scoring import SCORERS
        from mashup_core.weights import WEIGHT_STRATEGIES

        def choose(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
            if not values:
                raise StudyError(f"{name}: give at least one")
            if bad := [v for v in values if v not in allowed]:
                raise StudyError(f"{name}: {', '.join(bad)} unknown; choose from {', '.join(allowed)}")

        choose("methods", self.methods, list(MERGE_METHODS))
        choose("scorers", self.scorers, list(SCORERS))
        choose("weightings", self.weightings,
               [s.name for s in WEIGHT_STRATEGIES.values() if not s.needs_objective])
        if not self.tasks:
            raise StudyError("tasks: give at least one target task")
        if not self.ks or min(self.ks) < 1:
            raise StudyError(f"ks: every k must be at least 1 (got {list(self.ks)})")
        if library_size is not None and max(self.ks) > library_size:
            raise StudyError(f"ks: k={max(self.ks)} but each target's library holds only "
                             f"{library_size} adapters (the other tasks'); use k <= {library_size}")
        for name in ("n", "train_steps", "train_batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise StudyError(f"{name}: must be at least 1 (got {getattr(self, name)})")
        if not 0 < self.density <= 1:
            raise StudyError(f"density: must be in (0, 1] (got {self.density})")


def cell_key(cell: Mapping) -> str:
    """One string per cell: its kind, target and (for merges) grid position."""
    parts = [cell["kind"], cell["target"]]
    if cell["kind"] in ("merge", "train"):
        parts += [cell["scorer"], cell["weighting"], cell["method"], f"k{cell['k']}"]
    return "/".join(parts)


def planned_cells(spec: StudySpec) -> list[dict]:
    """Every cell of the study, in the order they run (target by target)."""
    cells = []
    for target in spec.tasks:
        cells.append({"kind": "base", "target": target})
        grid = [{"target": target, "scorer": s, "weighting": w, "method": m, "k": k}
                for s in spec.scorers for w in spec.weightings for m in spec.methods for k in spec.ks]
        cells += [{"kind": "merge", **g} for g in grid]
        if spec.train:
            cells.append({"kind": "scratch", "target": target})
            cells += [{"kind": "train", **g} for g in grid]
    return cells


def read_cells(study_dir: Path) -> dict[str, dict]:
    """Finished cells by key; a line cut short by a kill is skipped (and recomputed)."""
    done: dict[str, dict] = {}
    path = Path(study_dir) / CELLS_FILE
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                record = json.loads(line)
                done[cell_key(record)] = record
    return done


def _append_cell(study_dir: Path, record: dict) -> None:
    # Workers share one file: a lock keeps lines whole whatever their length.
    with open(study_dir / CELLS_FILE, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0, 2)
            if fh.tell():  # a line cut short by a kill must not swallow this one
                fh.seek(-1, 2)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write((json.dumps(record) + "\n").encode())
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_study(ws: Workspace, spec: StudySpec, study_id: str | None = None) -> Path:
    """The study folder, created or resumed. A resumed study may add grid values, but its
    settings (n, seed, training, ...) must match, or finished cells would mix two setups."""
    study_id = study_id or f"loo-{spec.identity()}"
    if not study_id or "/" in study_id or study_id.startswith("."):
        raise StudyError(f"study id {study_id!r}: use a plain folder name")
    study_dir = ws.studies_dir / study_id
    old = _read_json(study_dir / SPEC_FILE)
    if old is not None:
        before = StudySpec.from_dict(old).settings()
        if changed := sorted(k for k, v in spec.settings().items() if before.get(k) != v):
            raise StudyError(
                f"study {study_id} was run with other settings ({', '.join(changed)} differ: "
                f"{', '.join(f'{k}={before.get(k)!r}' for k in changed)}); use another --id")
        merged = {f: list(dict.fromkeys([*old[f], *getattr(spec, f)])) for f in GRID_FIELDS}
        spec = StudySpec.from_dict({**spec.to_dict(), **merged})
    ws.ensure_writable()
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(study_dir / SPEC_FILE, spec.to_dict())
    return study_dir


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def final_adapters(ws: Workspace) -> list:
    """The library of a leave-one-out study: the final LoRA adapter of each task (no snapshots)."""
    from mashup_core.library import demo_library

    return [c for c in demo_library(ws, include_snapshots=False) if c.kind == "lora"]


class _TargetRunner:
    """Runs one target's missing cells; the base model is loaded once per process."""

    def __init__(self, ws: Workspace, spec: StudySpec, study_dir: Path, library=None,
                 device: str = "cpu"):
        from mashup_core.modeling import load_base_model, load_tokenizer

        self.ws, self.spec, self.study_dir = ws, spec, study_dir
        self.tokenizer = load_tokenizer(ws.base_dir)
        self.base = load_base_model(ws.base_dir, device=device, dtype=torch.float32)
        self.library = library if library is not None else final_adapters(ws)
        self._factors = None  # every adapter's LoRA factors, read on first use

    def factors(self, name: str):
        from mashup_core.merging import load_lora_factors

        if self._factors is None:
            loaded = load_lora_factors([c.path for c in self.library])
            self._factors = {c.name: a for c, a in zip(self.library, loaded, strict=True)}
        return self._factors[name]

    def library_for(self, target: str):
        return [c for c in self.library if c.source_task != target]

    def run(self, target: str, todo: Sequence[dict], on_cell=None) -> None:
        with warnings.catch_warnings():  # PEFT wrapping calls a deprecated transformers property
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            self._run(target, todo, on_cell)

    def _run(self, target: str, todo: Sequence[dict], on_cell=None) -> None:
        from mashup_core.merging import (
            MERGE_METHODS,
            add_merge_slot,
            load_into_peft,
            merge_factors,
        )
        from mashup_core.scoring import get_scorer, sample_for_scoring, score_library
        from mashup_core.weights import search_weights
        from mashup_core.world import load_split

        spec = self.spec

        def finish(cell: dict, **values) -> None:
            record = {**cell, **values}
            _append_cell(self.study_dir, record)
            if on_cell is not None:
                on_cell(record)

        validation = load_split(self.ws, target, spec.eval_split)
        if spec.eval_limit:
            validation = validation[: spec.eval_limit]
        started = time.perf_counter()
        table = None
        if any(c["kind"] in ("merge", "train") for c in todo):
            library = self.library_for(target)
            # The first n train examples, as the reference code and `pipeline` do.
            sample = sample_for_scoring(load_split(self.ws, target, "train"), spec.n)
            table = score_library(self.base, self.tokenizer, library, sample, progress=False,
                                  target=target)
        scoring_s = time.perf_counter() - started

        for cell in (c for c in todo if c["kind"] == "base"):
            t0 = time.perf_counter()
            finish(cell, **evaluate_mc(self.base, self.tokenizer, validation).as_dict(),
                   seconds=time.perf_counter() - t0)

        model, slots, merges = self.base, {}, {}
        try:
            for cell in (c for c in todo if c["kind"] in ("merge", "train")):
                t0 = time.perf_counter()
                scorer = get_scorer(cell["scorer"])
                chosen = table.select_top_k(scorer.name, cell["k"])
                scores = [table.row(name).value(scorer.name) for name in chosen]
                weights = search_weights(cell["weighting"], len(chosen), scores=scores,
                                         higher_is_better=scorer.higher_is_better).weights
                density = spec.density if MERGE_METHODS[cell["method"]].uses_density else None
                merged = merge_factors([self.factors(n) for n in chosen], weights,
                                       cell["method"], density=density, seed=spec.seed)
                merge_s = time.perf_counter() - t0
                about = {"selected": chosen, "scores": scores, "weights": weights,
                         "scoring_s": scoring_s, "merging_s": merge_s}
                if cell["kind"] == "merge":
                    # One LoRA slot per merged rank (cat merges have rank Σr); reused across cells.
                    slot = slots.setdefault(merged.rank, f"study_r{merged.rank}")
                    model = add_merge_slot(model, merged, self.factors(chosen[0]).config, slot)
                    load_into_peft(model, merged, slot)
                    result = evaluate_mc(model, self.tokenizer, validation)
                    finish(cell, **result.as_dict(), **about, seconds=time.perf_counter() - t0)
                else:
                    merges[cell_key(cell)] = (merged, self.factors(chosen[0]).config, about)
        finally:
            if model is not self.base:
                model.unload()  # the bare base again, for training and the next target

        train_cells = [c for c in todo if c["kind"] in ("scratch", "train")]
        for cell in train_cells:
            merged, template, about = merges.get(cell_key(cell), (None, None, {}))
            curve, seconds = self._train(target, merged, template)
            finish(cell, acc=curve[-1][1], init_acc=curve[0][1], curve=curve, train_s=seconds,
                   **about)

    def _train(self, target: str, merged, template) -> tuple[list[list[float]], float]:
        """Finetune a fresh LoRA from the base, or from the merge folded into the base."""
        from mashup_core.merging import add_merge_slot, load_into_peft
        from mashup_core.training import FitSchedule, add_lora, as_pairs, fit
        from mashup_core.world import load_split

        spec = self.spec
        model = copy.deepcopy(self.base)
        if merged is not None:  # the pipeline's 'merged-fold' init, without a trip to disk
            model = add_merge_slot(model, merged, template, "study_init")
            load_into_peft(model, merged, "study_init")
            model = model.merge_and_unload()
        torch.manual_seed(spec.seed)
        model = add_lora(model)
        validation = load_split(self.ws, target, spec.eval_split)
        if spec.eval_limit:
            validation = validation[: spec.eval_limit]
        outcome = fit(model, self.tokenizer, as_pairs(load_split(self.ws, target, "train")),
                      validation, spec.train_config(), FitSchedule(eval_every=spec.eval_every))
        curve = [[e["step"], e["acc"], e["seconds"]] for e in outcome.evals]
        return curve, outcome.state.elapsed


def _worker(ws_root: str, spec_dict: dict, study_dir: str, targets: list[str], todo: list[dict]) -> int:
    """One process of `--parallel`: its own base model, one thread (workers share the cores)."""
    torch.set_num_threads(1)
    runner = _TargetRunner(Workspace(Path(ws_root)), StudySpec.from_dict(spec_dict), Path(study_dir))
    for target in targets:
        runner.run(target, [c for c in todo if c["target"] == target])
    return len(todo)


def run_study(
    ws: Workspace, spec: StudySpec, study_id: str | None = None, *, parallel: int = 1,
    progress: bool = True, on_cell: Callable[[dict], None] | None = None,
) -> Path:
    """Run (or finish) a leave-one-out study; returns its folder. Finished cells are kept."""
    from tqdm.auto import tqdm

    if not ws.base_dir.is_dir():
        raise StudyError(f"no base model in {ws.root}; build the demo world with `mashup demo build`")
    missing = [t for t in spec.tasks if not ws.task_split_path(t, spec.eval_split).exists()]
    if missing:
        known = sorted(p.name for p in ws.tasks_dir.iterdir()) if ws.tasks_dir.is_dir() else []
        raise StudyError(f"tasks: no {spec.eval_split} split for {', '.join(missing)} in "
                         f"{ws.tasks_dir}; known: {', '.join(known) or 'none'}")
    library = final_adapters(ws)
    spec.validate(min(sum(c.source_task != t for c in library) for t in spec.tasks))
    study_dir = open_study(ws, spec, study_id)
    spec = StudySpec.from_dict(_read_json(study_dir / SPEC_FILE))  # the grid may have grown
    started = time.perf_counter()
    done = read_cells(study_dir)
    todo = [c for c in planned_cells(spec) if cell_key(c) not in done]
    targets = list(dict.fromkeys(c["target"] for c in todo))
    with tqdm(total=len(done) + len(todo), initial=len(done), desc="study cells",
              disable=not progress) as bar:
        def tick(record: dict) -> None:
            bar.update(1)
            if on_cell is not None:
                on_cell(record)

        if todo and parallel <= 1:
            runner = _TargetRunner(ws, spec, study_dir, library)
            for target in targets:
                runner.run(target, [c for c in todo if c["target"] == target], tick)
        elif todo:
            _run_parallel(ws, spec, study_dir, targets, todo, parallel, bar)
    summary = study_table(study_dir).to_dict()
    summary["seconds_this_call"] = time.perf_counter() - started
    summary["cells_computed_this_call"] = len(todo)
    write_json_atomic(study_dir / SUMMARY_FILE, summary)
    return study_dir


def _run_parallel(ws, spec, study_dir, targets, todo, parallel, bar) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    shares = [targets[i::parallel] for i in range(parallel)]
    with ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn")) as pool:
        pending = {pool.submit(_worker, str(ws.root), spec.to_dict(), str(study_dir), share,
                               [c for c in todo if c["target"] in share]) for share in shares if share}
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()  # a worker's error surfaces here
            bar.n = len(read_cells(study_dir))  # workers report through the cells file
            bar.refresh()


# --- Reading a study ---------------------------------------------------------------------------


@dataclass
class StudyTable:
    """A study's results, shaped for the Fig. 3 heatmap: rows = merge setting, columns = k."""

    spec: StudySpec
    cells: pd.DataFrame  # one row per finished merge/train cell (long form)
    base: dict[str, float]  # the base model's accuracy per target
    scratch: dict[str, float]  # accuracy after training from scratch per target (train studies)
    mean_rank: pd.DataFrame  # merged zero-shot: label × k, mean rank across targets (1 = best)
    trained_mean_rank: pd.DataFrame | None  # the same after finetuning from each merge
    planned: int
    finished: int

    @property
    def complete(self) -> bool:
        return self.finished >= self.planned

    def accuracies(self, label: str, k: int, kind: str = "merge") -> dict[str, float]:
        """Per-target accuracy of one heatmap cell (what a click on it shows)."""
        rows = self.cells[(self.cells["kind"] == kind) & (self.cells["label"] == label)
                          & (self.cells["k"] == k)]
        return dict(zip(rows["target"], rows["acc"], strict=True))

    def hover(self, kind: str = "merge") -> pd.DataFrame:
        """label × k: the per-target accuracies as text, for the heatmap's hover."""
        rows = self.cells[self.cells["kind"] == kind]
        text = rows.groupby(["label", "k"]).apply(
            lambda g: "<br>".join(f"{t}: {a:.2f}" for t, a in zip(g["target"], g["acc"], strict=True)),
            include_groups=False)
        if not len(text):
            return pd.DataFrame()
        order = self.mean_rank if kind == "merge" else self.trained_mean_rank
        return text.unstack("k").reindex(index=order.index, columns=order.columns)

    def to_dict(self) -> dict:
        def matrix(frame: pd.DataFrame | None) -> dict | None:
            if frame is None or frame.empty:
                return None
            return {"rows": [str(i) for i in frame.index], "columns": [int(c) for c in frame.columns],
                    "values": [[None if pd.isna(v) else float(v) for v in row] for row in frame.to_numpy()]}

        per_target = {}
        for kind in ("merge", "train"):
            rows = self.cells[self.cells["kind"] == kind]
            per_target[kind] = {f"{label}/k{k}": dict(zip(g["target"], g["acc"], strict=True))
                                for (label, k), g in rows.groupby(["label", "k"])}
        out = {"spec": self.spec.to_dict(), "planned": self.planned, "finished": self.finished,
               "complete": self.complete, "base": self.base, "scratch": self.scratch,
               "mean_rank": matrix(self.mean_rank), "trained_mean_rank": matrix(self.trained_mean_rank),
               "accuracy": per_target["merge"], "trained_accuracy": per_target["train"]}
        if "parity" in self.cells:
            trained = self.cells[self.cells["kind"] == "train"]
            out["parity"] = {f"{label}/k{k}": {
                "mean": _mean(g["parity"]), "mean_strict": _mean(g["parity_strict"]),
                "per_target": {t: None if pd.isna(p) else float(p)
                               for t, p in zip(g["target"], g["parity"], strict=True)}}
                for (label, k), g in trained.groupby(["label", "k"])}
        return out


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None and not pd.isna(v)]
    return sum(kept) / len(kept) if kept else None


def _label(spec: StudySpec, cell: Mapping) -> str:
    """The heatmap row: the merge method, plus scorer and weighting when the study varies them."""
    parts = [cell["method"]]
    if len(spec.scorers) > 1:
        parts.append(cell["scorer"])
    if len(spec.weightings) > 1:
        parts.append(cell["weighting"])
    return " · ".join(parts)


def _rank_matrix(cells: pd.DataFrame, kind: str, spec: StudySpec) -> pd.DataFrame:
    rows = cells[cells["kind"] == kind]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index="target", columns=["label", "k"], values="acc")
    frame = _mean_rank(wide).unstack("k")
    labels = list(dict.fromkeys(_label(spec, {"method": m, "scorer": s, "weighting": w})
                                for s in spec.scorers for w in spec.weightings for m in spec.methods))
    return frame.reindex(index=[lab for lab in labels if lab in frame.index],
                         columns=sorted(frame.columns))


def study_table(study_dir: Path) -> StudyTable:
    """Per-target accuracies of every finished cell and the mean-rank matrices."""
    study_dir = Path(study_dir)
    data = _read_json(study_dir / SPEC_FILE)
    if data is None:
        raise StudyError(f"{study_dir} is not a study folder (no {SPEC_FILE}); run `mashup study`")
    spec = StudySpec.from_dict(data)
    wanted = {cell_key(c) for c in planned_cells(spec)}
    done = {key: c for key, c in read_cells(study_dir).items() if key in wanted}
    base = {c["target"]: c["acc"] for c in done.values() if c["kind"] == "base"}
    scratch = {c["target"]: c for c in done.values() if c["kind"] == "scratch"}
    rows = []
    for c in done.values():
        if c["kind"] not in ("merge", "train"):
            continue
        row = {key: c.get(key) for key in ("kind", "target", "scorer", "weighting", "method", "k",
                                           "acc", "acc_norm", "nll", "selected", "weights")}
        row["label"] = _label(spec, c)
        if c["kind"] == "train" and c["target"] in scratch:
            ref = [(s, a) for s, a, *_ in scratch[c["target"]]["curve"]]
            mine = [(s, a) for s, a, *_ in c["curve"]]
            row["parity"] = training_to_parity(ref, mine, "normal")
            row["parity_strict"] = training_to_parity(ref, mine, "strict")
        rows.append(row)
    columns = ["kind", "target", "scorer", "weighting", "method", "k", "label", "acc", "acc_norm",
               "nll", "selected", "weights"]
    cells = pd.DataFrame(rows, columns=columns + (["parity", "parity_strict"] if spec.train else []))
    return StudyTable(
        spec=spec, cells=cells, base=base,
        scratch={t: c["acc"] for t, c in scratch.items()},
        mean_rank=_rank_matrix(cells, "merge", spec),
        trained_mean_rank=_rank_matrix(cells, "train", spec) if spec.train else None,
        planned=len(wanted), finished=len(done),
    )


def format_rank_table(table: StudyTable) -> str:
    """The mean-rank matrix as text (the CLI's output)."""
    lines = []
    for title, frame in (("merged zero-shot", table.mean_rank),
                         ("after finetuning", table.trained_mean_rank)):
        if frame is None or frame.empty:
            continue
        width = max(len(str(i)) for i in frame.index) + 2
        lines.append(f"mean rank, {title} accuracy (1 = best; {len(set(table.cells['target']))} targets)")
        lines.append(" " * width + "".join(f"{'k=' + str(k):>8}" for k in frame.columns))
        for label, row in frame.iterrows():
            lines.append(f"{label:<{width}}" + "".join(
                f"{'-' if pd.isna(v) else f'{v:.2f}':>8}" for v in row))
        lines.append("")
    status = "complete" if table.complete else f"{table.finished}/{table.planned} cells"
    lines.append(f"{status}; base accuracy: " + ", ".join(f"{t} {a:.2f}" for t, a in table.base.items()))
    return "\n".join(lines)


# --- the study as a background job (the dashboard's "run / extend" button) --------------------

STUDY_JOB = "job.json"  # beside a study's spec.json: the background job that fills it


def launch_study(ws: Workspace, spec: StudySpec, study_id: str | None = None) -> Path:
    """Run or extend a study as a detached `mashup study --job ID` (it outlives the page)."""
    from mashup_core.runs import process_alive, spawn_detached

    study_dir = open_study(ws, spec, study_id)
    job = study_job(study_dir)
    if job.get("state") == "running" and process_alive(job.get("pid")):
        raise StudyError(f"study {study_dir.name} is already running (pid {job['pid']}); wait for "
                         "it to finish before extending it")
    pid = spawn_detached(["study", "--job", study_dir.name, "--workspace", str(ws.root),
                          "--no-progress"], study_dir / "job.log", mode="w")
    _write_job(study_dir, state="running", pid=pid, started=time.time())
    return study_dir


def study_job(study_dir: Path) -> dict:
    """The background job of a study: state running | done | failed | killed, or {} if none."""
    from mashup_core.runs import process_alive

    try:
        job = json.loads((Path(study_dir) / STUDY_JOB).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if job.get("state") == "running" and not process_alive(job.get("pid")):
        job = {**job, "state": "killed", "error": f"the job (pid {job.get('pid')}) ended without "
               "recording a result; run the study again to finish the missing cells"}
    return job


def _write_job(study_dir: Path, **fields) -> None:
    write_json_atomic(Path(study_dir) / STUDY_JOB, fields)


def run_study_job(ws: Workspace, study_id: str) -> Path:
    """The detached job: run the stored spec's missing cells, then record how it ended."""
    import os

    study_dir = ws.studies_dir / study_id
    try:
        spec = StudySpec.from_dict(json.loads((study_dir / "spec.json").read_text()))
    except FileNotFoundError:
        raise StudyError(f"no study {study_id!r} in {ws.studies_dir}") from None
    started = time.time()
    try:
        run_study(ws, spec, study_id, progress=False)
    except BaseException as exc:
        _write_job(study_dir, state="failed", pid=os.getpid(), started=started,
                   finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        raise
    _write_job(study_dir, state="done", pid=os.getpid(), started=started, finished=time.time())
    return study_dir
