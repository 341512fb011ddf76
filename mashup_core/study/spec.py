"""A study's spec, its grid of cells, and the folder that records them (resumable, append-only)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mashup_core.errors import MashupError
from mashup_core.training.loop import TrainConfig
from mashup_core.workspace import Workspace, read_json, write_json_atomic

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
    train_lr: float | None = None  # None: the workspace's lr (mashup.toml), fixed when the study opens
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
        from mashup_core.merging.lora import MERGE_METHODS
        from mashup_core.merging.weights import WEIGHT_STRATEGIES
        from mashup_core.selection.scoring import SCORERS

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


def append_cell(study_dir: Path, record: dict) -> None:
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
    if spec.train_lr is None:  # fixed here, so a stored spec never differs from a resolved one
        from dataclasses import replace

        from mashup_core.config import resolve_config

        spec = replace(spec, train_lr=resolve_config(ws).learning_rate("lora"))
    study_dir = ws.studies_dir / study_id
    old = read_json(study_dir / SPEC_FILE)
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


def final_adapters(ws: Workspace) -> list:
    """The library of a leave-one-out study: the workspace's final LoRA adapters (no snapshots).

    Each target's own checkpoints (those that record it as their source task) are left out
    of its cells, as the paper's leave-one-out does."""
    from mashup_core.models.library import workspace_library

    return [c for c in workspace_library(ws, include_snapshots=False).checkpoints if c.kind == "lora"]


def study_target(ws: Workspace, name: str, split: str):
    """A study's target by name (`config.find_target`), its errors as the study's."""
    from mashup_core.config import find_target
    from mashup_core.data.targets import DatasetError

    try:
        return find_target(ws, name, split)
    except DatasetError as exc:
        raise StudyError(f"tasks: {exc}") from exc


def load_study_split(ws: Workspace, name: str, split: str, n: int | None = None,
                     seed: int | None = None) -> list:
    """n examples of a target's split, by the one sampler runs and scoring use too."""
    from mashup_core.data.targets import DatasetError, load_target, sample_examples

    try:
        return sample_examples(load_target(study_target(ws, name, split), ws), n, seed)
    except DatasetError as exc:
        raise StudyError(f"tasks: {name}: {exc}") from exc


def study_task_names(ws: Workspace) -> list[str]:
    """The targets a study runs over by default: the workspace config's."""
    from mashup_core.config import resolve_config

    return resolve_config(ws).target_names()
