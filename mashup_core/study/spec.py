"""A study's spec, its grid of cells, and the folder that records them (resumable, append-only)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from mashup_core import defaults
from mashup_core.errors import MashupError
from mashup_core.workspace import Workspace, locked, read_json, write_json_atomic

# --- The leave-one-out study (the paper's Fig. 3, and its whole protocol) ---------------------

SPEC_FILE, CELLS_FILE, SUMMARY_FILE = "spec.json", "cells.jsonl", "summary.json"
# May grow on a resumed study (each adds cells); everything else is a setting.
GRID_FIELDS = ("tasks", "methods", "ks", "scorers", "weightings", "lrs", "seeds", "inits", "ns")
# Where a train cell starts: the merged LoRA trained further (the reference's mashup run), the
# merge folded into the base under a fresh LoRA, or the multi-target searched merge of the
# whole library (`merging.recycle`).
INITS = ("merged-continue", "merged-fold", "recycle")
RECYCLE = "recycle"  # a recycle cell's scorer, weighting and method: it selects no top k


# Fields added after studies were first written, with the value every older study ran with.
LATER_FIELDS = {"evals_per_epoch": 0, "eval_metric": "acc"}


class StudyError(MashupError, ValueError):
    """A study that cannot run as asked; the message names the setting and what is allowed."""


@dataclass(frozen=True)
class StudySpec:
    """For each target task, merge top-k of the OTHER tasks' final checkpoints, for every
    (method, k, scorer, weighting, n); optionally finetune from each merge (per init, lr and
    seed) and from scratch (per lr and seed)."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...] = defaults.STUDY_METHODS
    ks: tuple[int, ...] = defaults.STUDY_KS
    scorers: tuple[str, ...] = (defaults.SCORER,)
    weightings: tuple[str, ...] = (defaults.WEIGHT_STRATEGY,)  # strategies that need no search
    ns: tuple[int, ...] = (defaults.STUDY_N,)  # scoring samples: the first n of the target's train split
    lrs: tuple[float, ...] = ()  # () = the workspace's lr for `finetune`, fixed when it opens
    seeds: tuple[int, ...] = (0,)  # training seeds: LoRA init and batch order
    inits: tuple[str, ...] = ()  # () = 'merged-continue' for LoRA, 'merged-fold' for full
    seed: int = 0  # the validation sample and the merges' random drops (DARE): every cell's
    eval_split: str = "validation"
    eval_limit: int = 0  # 0 = the whole split
    density: float = defaults.DENSITY  # kept fraction, for the pruning merge methods
    train: bool = False
    train_steps: int = defaults.TRAIN_STEPS
    train_epochs: float | None = None  # set: steps = ceil(epochs × train rows / batch size)
    train_batch_size: int = defaults.BATCH_SIZE
    eval_every: int = defaults.EVAL_EVERY
    # Set: evaluate this many times per epoch instead of every `eval_every` steps (the
    # reference saves, and evaluates, 10 checkpoints per epoch of a LoRA run, 4 of a full one).
    evals_per_epoch: int = 0
    # What every cell is evaluated with (merges, curves, parity, the best lr): a scorer where
    # higher is better; every metric is recorded either way.
    eval_metric: str = defaults.EVAL_METRIC
    finetune: str = "lora"  # or 'full': a library of full checkpoints, merged and trained whole
    gradient_checkpointing: bool = False
    prompt_format: str = ""  # '' = the workspace's, fixed when the study opens
    recycle_budget: int = 60  # evaluations of the recycle search (init 'recycle')

    def __post_init__(self) -> None:
        for name in ("tasks", "methods", "scorers", "weightings", "inits"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        for name in ("ks", "ns", "seeds"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "lrs", tuple(float(v) for v in self.lrs))
        if not self.inits:
            object.__setattr__(self, "inits", ("merged-continue",) if self.finetune == "lora"
                               else ("merged-fold",))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> StudySpec:
        """A spec from JSON; a study written before the protocol grew (one `n`, `seed`,
        `train_lr`, merged-fold training, cloze prompts) reads as the grid it ran."""
        data = dict(data)
        if "ns" not in data:  # the old format
            data["ns"] = [data.get("n", 64)]
            data.setdefault("seeds", [data.get("seed", 0)])
            if data.get("train_lr") is not None:
                data.setdefault("lrs", [data["train_lr"]])
            data.setdefault("inits", ["merged-fold"])
            data.setdefault("prompt_format", "cloze")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def settings(self) -> dict:
        """What every cell's value depends on besides its grid position."""
        return {k: v for k, v in self.to_dict().items() if k not in GRID_FIELDS}

    def identity(self) -> str:
        """A hash of the spec. Fields added since studies were first written count only when
        they differ from their default, so an older study keeps its id (and its folder)."""
        data = {k: v for k, v in self.to_dict().items()
                if k not in LATER_FIELDS or v != LATER_FIELDS[k]}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]

    def train_steps_for(self, n_train: int) -> int:
        """Optimizer steps of every train cell: `train_steps`, or `train_epochs` epochs."""
        from mashup_core.training.loop import epoch_steps

        if self.train_epochs is None:
            return self.train_steps
        return epoch_steps(self.train_epochs, n_train, self.train_batch_size)

    def eval_steps_for(self, n_train: int) -> tuple[int, ...]:
        """With `evals_per_epoch`: the steps evaluated, that many evenly spaced per epoch (the
        last step of each among them); () when every `eval_every` steps is the rule."""
        if not self.evals_per_epoch:
            return ()
        from mashup_core.training.loop import epoch_steps

        per_epoch = epoch_steps(1.0, n_train, self.train_batch_size)
        total = self.train_steps_for(n_train)
        marks = {math.ceil(i * per_epoch / self.evals_per_epoch) + e * per_epoch
                 for e in range(math.ceil(total / per_epoch))
                 for i in range(1, self.evals_per_epoch + 1)}
        return tuple(sorted(m for m in marks if m <= total))

    def train_config(self, lr: float, seed: int, n_train: int):
        """Cosine with 10% warmup (TrainConfig's defaults), as the reference trains."""
        from mashup_core.training.settings import TrainConfig

        return TrainConfig(steps=self.train_steps_for(n_train), batch_size=self.train_batch_size,
                           lr=lr, seed=seed, gradient_checkpointing=self.gradient_checkpointing)

    def validate(self, library_size: int | None = None) -> None:
        from mashup_core.merging.full import FULL_MERGE_METHODS
        from mashup_core.merging.lora import MERGE_METHODS
        from mashup_core.merging.weights import WEIGHT_STRATEGIES
        from mashup_core.selection.scoring import EVAL_METRICS, SCORERS
        from mashup_core.training.settings import FINETUNE_MODES

        def choose(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
            if not values:
                raise StudyError(f"{name}: give at least one")
            if bad := [v for v in values if v not in allowed]:
                raise StudyError(f"{name}: {', '.join(bad)} unknown; choose from {', '.join(allowed)}")

        if self.finetune not in FINETUNE_MODES:
            raise StudyError(f"finetune: {self.finetune!r} unknown; choose from "
                             f"{', '.join(FINETUNE_MODES)}")
        full = self.finetune == "full"
        choose("methods", self.methods, list(FULL_MERGE_METHODS if full else MERGE_METHODS))
        choose("scorers", self.scorers, list(SCORERS))
        choose("eval_metric", [self.eval_metric], list(EVAL_METRICS))
        choose("weightings", self.weightings,
               [s.name for s in WEIGHT_STRATEGIES.values() if not s.needs_objective])
        choose("inits", self.inits, INITS)
        if full and (other := [i for i in self.inits if i != "merged-fold"]):
            raise StudyError(f"inits: {', '.join(other)} cannot be a full finetune (they train a "
                             "merged LoRA); a full study trains the merged checkpoint itself: "
                             "use inits merged-fold")
        if not self.tasks:
            raise StudyError("tasks: give at least one target task")
        if not self.ks or min(self.ks) < 1:
            raise StudyError(f"ks: every k must be at least 1 (got {list(self.ks)})")
        from mashup_core.merging import registry

        kind = "full" if full else "lora"
        for method in self.methods:  # slerp takes 1 input besides the base, nuslerp 2, ...
            for k in self.ks:
                try:
                    registry.check_inputs(registry.get(kind, method), k)
                except registry.MergeConfigError as exc:
                    raise StudyError(f"methods × ks: {exc}; drop k={k} or the method") from exc
        if library_size is not None and max(self.ks) > library_size:
            raise StudyError(f"ks: k={max(self.ks)} but each target's library holds only "
                             f"{library_size} checkpoints (the other tasks'); use k <= {library_size}")
        if not self.ns or min(self.ns) < 1:
            raise StudyError(f"ns: every n must be at least 1 (got {list(self.ns)})")
        if not self.seeds:
            raise StudyError("seeds: give at least one")
        if bad := [lr for lr in self.lrs if not lr > 0]:
            raise StudyError(f"lrs: every learning rate must be positive (got {bad[0]})")
        if self.evals_per_epoch < 0:
            raise StudyError(f"evals_per_epoch: must be 0 (use eval_every) or more (got "
                             f"{self.evals_per_epoch})")
        for name in ("train_steps", "train_batch_size", "eval_every", "recycle_budget"):
            if getattr(self, name) < 1:
                raise StudyError(f"{name}: must be at least 1 (got {getattr(self, name)})")
        if self.train_epochs is not None and not self.train_epochs > 0:
            raise StudyError(f"train_epochs: must be positive (got {self.train_epochs})")
        if not 0 < self.density <= 1:
            raise StudyError(f"density: must be in (0, 1] (got {self.density})")
        if self.eval_limit < 0:
            raise StudyError(f"eval_limit: must be 0 (all) or more (got {self.eval_limit})")


def cell_key(cell: Mapping) -> str:
    """One string per cell: its kind, target and grid position."""
    kind = cell["kind"]
    parts = [kind, cell["target"]]
    if kind in ("merge", "train"):
        parts += [cell["scorer"], cell["weighting"], cell["method"], f"k{cell['k']}",
                  f"n{cell['n']}"]
    if kind == "train":
        parts.append(cell["init"])
    if kind in ("scratch", "train"):
        parts += [f"lr{float(cell['lr'])!r}", f"seed{cell['seed']}"]
    return "/".join(parts)


def planned_cells(spec: StudySpec) -> list[dict]:
    """Every cell of the study, target by target: base, merges, scratch runs, train runs.

    A 'recycle' train cell selects no top k: its scorer, weighting and method read 'recycle'
    and its k is 0 (the whole library the target may draw on)."""
    if spec.train and not spec.lrs:
        raise StudyError("lrs: not fixed yet (a study fixes the workspace's lr when it opens)")
    cells = []
    for target in spec.tasks:
        cells.append({"kind": "base", "target": target})
        grid = [{"target": target, "scorer": s, "weighting": w, "method": m, "k": k, "n": n}
                for n in spec.ns for s in spec.scorers for w in spec.weightings
                for m in spec.methods for k in spec.ks]
        cells += [{"kind": "merge", **g} for g in grid]
        if not spec.train:
            continue
        runs = [{"lr": lr, "seed": seed} for lr in spec.lrs for seed in spec.seeds]
        cells += [{"kind": "scratch", "target": target, **r} for r in runs]
        for init in spec.inits:
            if init == RECYCLE:
                cells += [{"kind": "train", "target": target, "scorer": RECYCLE,
                           "weighting": RECYCLE, "method": RECYCLE, "k": 0, "n": n,
                           "init": init, **r} for n in spec.ns for r in runs]
            else:
                cells += [{"kind": "train", **g, "init": init, **r} for g in grid for r in runs]
    return cells


def legacy_cell_fields(spec_data: Mapping | None) -> dict[str, dict]:
    """Per cell kind, the fields an old-format study's records lack (their values then)."""
    if not spec_data or "ns" in spec_data:
        return {}
    old = StudySpec.from_dict(spec_data)
    run = {"lr": old.lrs[0] if old.lrs else None, "seed": old.seeds[0]}
    return {"merge": {"n": old.ns[0]}, "scratch": run,
            "train": {"n": old.ns[0], "init": "merged-fold", **run}}


def read_cells(study_dir: Path) -> dict[str, dict]:
    """Finished cells by key; a line cut short by a kill is skipped (and recomputed)."""
    done: dict[str, dict] = {}
    path = Path(study_dir) / CELLS_FILE
    if path.exists():
        legacy = legacy_cell_fields(read_json(Path(study_dir) / SPEC_FILE))
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError, AttributeError):
                record = json.loads(line)
                record = {**legacy.get(record["kind"], {}), **record}
                done[cell_key(record)] = record
    return done


def append_cell(study_dir: Path, record: dict) -> None:
    # Workers share one file: a lock keeps lines whole whatever their length.
    path = study_dir / CELLS_FILE
    with locked(path), open(path, "a+b") as fh:
        fh.seek(0, 2)
        if fh.tell():  # a line cut short by a kill must not swallow this one
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(record) + "\n").encode())
        fh.flush()


def _migrate_cells(study_dir: Path) -> None:
    """An old-format study's records with the fields they lacked, before its spec is rewritten
    in the new format (which no longer says what they were)."""
    path = study_dir / CELLS_FILE
    if not path.exists():
        return
    records = read_cells(study_dir).values()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def open_study(ws: Workspace, spec: StudySpec, study_id: str | None = None) -> Path:
    """The study folder, created or resumed. A resumed study may add grid values, but its
    settings (n, seed, training, ...) must match, or finished cells would mix two setups.

    What a spec leaves open is fixed here, so a stored spec never differs from a resolved one:
    `lrs` (the study's own when resumed, else the workspace's lr for the finetune mode) and
    `prompt_format` (likewise, else the workspace's)."""
    from mashup_core.config import resolve_config

    study_id = study_id or f"loo-{spec.identity()}"
    if not study_id or "/" in study_id or study_id.startswith("."):
        raise StudyError(f"study id {study_id!r}: use a plain folder name")
    study_dir = ws.studies_dir / study_id
    old = read_json(study_dir / SPEC_FILE)
    before = StudySpec.from_dict(old) if old is not None else None
    fixed = {}
    if not spec.lrs:
        fixed["lrs"] = (before.lrs if before is not None and before.lrs
                        else (resolve_config(ws).learning_rate(spec.finetune),))
    if not spec.prompt_format:
        defaults = resolve_config(ws).defaults
        fixed["prompt_format"] = (before.prompt_format if before is not None
                                  else getattr(defaults, "prompt_format", None) or "cloze")
    spec = replace(spec, **fixed)
    if before is not None:
        settings = before.settings()
        if changed := sorted(k for k, v in spec.settings().items() if settings.get(k) != v):
            raise StudyError(
                f"study {study_id} was run with other settings ({', '.join(changed)} differ: "
                f"{', '.join(f'{k}={settings.get(k)!r}' for k in changed)}); use another --id")
        spec = replace(spec, **{f: tuple(dict.fromkeys([*getattr(before, f), *getattr(spec, f)]))
                                for f in GRID_FIELDS})
    ws.ensure_writable()
    study_dir.mkdir(parents=True, exist_ok=True)
    if old is not None and "ns" not in old:
        _migrate_cells(study_dir)
    write_json_atomic(study_dir / SPEC_FILE, spec.to_dict())
    return study_dir


def final_adapters(ws: Workspace, kind: str = "lora") -> list:
    """The library of a leave-one-out study: the workspace's final checkpoints of `kind`
    ('lora' adapters, or 'full' models for a full-finetuning study; no snapshots).

    Each target's own checkpoints (those that record it as their source task) are left out
    of its cells, as the paper's leave-one-out does."""
    from mashup_core.config import workspace_library

    return [c for c in workspace_library(ws, include_snapshots=False).checkpoints if c.kind == kind]


def study_library(ws: Workspace, finetune: str = "lora") -> list:
    """The study's library: each task's final checkpoint (LoRA adapters, or full models for a
    full-finetuning study), not checkpoints that runs added later.

    A run added to the library (`jobs.promote`) is a second adapter of its target's task, at
    another rank for merged-fold runs; cells computed before and after it was added would
    silently draw on different libraries, so a study keeps to the world's own checkpoints.
    """
    kind = "full" if finetune == "full" else "lora"
    return [c for c in final_adapters(ws, kind) if not c.meta.get("run_id")]


def study_target(ws: Workspace, name: str, split: str, prompt_format: str | None = None):
    """A study's target by name (`config.find_target`), its errors as the study's; in the
    study's `prompt_format` when given (else the workspace config's)."""
    from mashup_core.config import find_target
    from mashup_core.data.examples import DatasetError

    try:
        return find_target(ws, name, split, prompt_format=prompt_format or None)
    except DatasetError as exc:
        raise StudyError(f"tasks: {exc}") from exc


def load_study_split(ws: Workspace, name: str, split: str, n: int | None = None,
                     seed: int | None = None, prompt_format: str | None = None) -> list:
    """n examples of a target's split, by the one sampler runs and scoring use too, in the
    study's prompt format."""
    from mashup_core.config import load_target
    from mashup_core.data.examples import DatasetError, sample_examples

    try:
        return sample_examples(load_target(study_target(ws, name, split, prompt_format), ws), n, seed)
    except DatasetError as exc:
        raise StudyError(f"tasks: {name}: {exc}") from exc


def study_task_names(ws: Workspace) -> list[str]:
    """The targets a study runs over by default: the workspace config's."""
    from mashup_core.config import resolve_config

    return resolve_config(ws).target_names()
