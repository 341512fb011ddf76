"""`RunSpec`: everything needed to run (and re-run) one training run, validated field by field."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mashup_core import defaults
from mashup_core.errors import MashupError
from mashup_core.training.settings import FINETUNE_MODES, INIT_MODES, LoraSpec, TrainConfig
from mashup_core.workspace import Workspace


class SpecError(MashupError, ValueError):
    """A run spec that cannot run; the message names the field and what is allowed."""


KINDS = ("scratch", "mashup")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
SCHEDULES = ("cosine", "constant")


def _registry(module: str, attr: str) -> tuple[str, ...] | None:
    """Names in another module's registry; None while that module is absent (checked at run)."""
    try:
        return tuple(getattr(__import__(f"mashup_core.{module}", fromlist=[attr]), attr))
    except (ImportError, AttributeError):
        return None


# Fields a mashup run has and its scratch baseline ignores.
MASHUP_FIELDS = ("library", "scorer", "n", "k", "merge_method", "density", "weight_strategy",
                 "weight_budget")
# Fields that name or file a run without changing what it computes (every metric is recorded
# at each evaluation; `eval_metric` only says which one the comparison reads).
LABEL_FIELDS = ("name", "group", "checkpoint_every", "eval_metric", "report_to", "tracking_uri")


def default_init(kind: str, finetune: str = "lora") -> str:
    """Where a run starts unless its spec says: the base for scratch runs; for mashup runs the
    merged LoRA trained further (the reference pipeline), or for a full finetune the merge
    folded into the weights (a full model has no LoRA to continue)."""
    if kind == "scratch":
        return "scratch"
    return "merged-fold" if finetune == "full" else "merged-continue"


@dataclass
class RunSpec:
    """Everything needed to run (and re-run) one training run."""

    target: str | dict  # a demo task, benchmark or file path, or a TargetSpec dict
    kind: str = "scratch"  # 'scratch': from the base model; 'mashup': from the merged top-k
    name: str = ""
    group: str = ""  # links a mashup run and its scratch baseline
    base_model: str = ""  # '' = the workspace's demo base model
    library: list[str] = field(default_factory=list)  # checkpoint sources; [] = the demo library
    scorer: str = defaults.SCORER  # 'token_acc': the reference code's; 'nll': the paper's text
    n: int = defaults.SCORING_N  # target train examples used for scoring
    k: int = defaults.TOP_K
    merge_method: str = defaults.MERGE_METHOD
    density: float = defaults.DENSITY  # kept fraction, for the pruning merge methods
    weight_strategy: str = defaults.WEIGHT_STRATEGY
    weight_budget: int = 20  # evaluations for the searched weight strategies
    # '' = by kind and finetune: 'scratch'; for a mashup run 'merged-continue' (LoRA: the merged
    # adapter itself trains, as the reference does) or 'merged-fold' (full finetune)
    init: str = ""
    finetune: str = "lora"  # or 'full': every parameter trains
    lora: LoraSpec = field(default_factory=LoraSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_every: int = defaults.EVAL_EVERY
    # What the curve, parity and the comparison read: any scorer where higher is better
    # (acc, acc_norm, token_acc, exact_match); every metric is recorded at each evaluation.
    eval_metric: str = defaults.EVAL_METRIC
    checkpoint_every: int = defaults.CHECKPOINT_EVERY
    train_limit: int = 0  # 0 = the whole train split
    eval_limit: int = 0  # 0 = the whole validation split
    seed: int = 0  # LoRA init, train/eval subsets, weight search (batch order: train.seed)
    device: str = "auto"  # auto = CUDA (bf16) when present, else CPU
    # Where the curves are mirrored as they are written (`training.trackers`): tensorboard,
    # mlflow; `tracking_uri` the MLflow store ('' = a file store in the workspace's mlruns/).
    report_to: list[str] = field(default_factory=list)
    tracking_uri: str = ""

    def __post_init__(self) -> None:
        if hasattr(self.target, "to_dict"):  # a TargetSpec
            self.target = self.target.to_dict()
        if not self.init:
            self.init = default_init(self.kind, self.finetune)
        if isinstance(self.lora.target_modules, list | tuple):
            self.lora = replace(self.lora, target_modules=tuple(self.lora.target_modules))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        targets = self.lora.target_modules
        data["lora"]["target_modules"] = targets if isinstance(targets, str) else list(targets)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "spec", *, merge_methods: bool = True) -> RunSpec:
        """A validated spec; every problem is a `SpecError` naming `where` and the field.
        `merge_methods=False` leaves out the merge method's name (see `validate`)."""
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected a JSON object, got {type(data).__name__}")
        values = _typed(cls, data, where)
        values["lora"] = LoraSpec(**_typed(LoraSpec, data.get("lora", {}), f"{where}: lora"))
        values["train"] = TrainConfig(**_typed(TrainConfig, data.get("train", {}), f"{where}: train"))
        spec = cls(**values)
        spec.validate(where, merge_methods=merge_methods)
        return spec

    @classmethod
    def load(cls, path: str | Path, *, merge_methods: bool = True) -> RunSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError(f"{path}: no such spec file (make one with `mashup new-spec`)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{path}: cannot read ({exc})") from exc
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        return cls.from_dict(data, str(path), merge_methods=merge_methods)

    def validate(self, where: str = "spec", *, merge_methods: bool = True) -> None:
        """Every field in range and every name known. `merge_methods=False`: not the merge
        method's name, whose registry is torch code (seconds to import): a stored spec read for
        a listing was checked when it was written, and a run checks it again when it starts."""
        def bad(name: str, problem: str) -> SpecError:
            return SpecError(f"{where}: field '{name}': {problem}")

        def choose(name: str, value: str, allowed: tuple[str, ...] | None) -> None:
            if allowed is not None and value not in allowed:
                raise bad(name, f"{value!r} is not one of {', '.join(allowed)}")

        for name, value in [("n", self.n), ("k", self.k), ("weight_budget", self.weight_budget),
                            ("eval_every", self.eval_every), ("checkpoint_every", self.checkpoint_every),
                            ("train.steps", self.train.steps), ("train.batch_size", self.train.batch_size),
                            ("lora.r", self.lora.r), ("lora.alpha", self.lora.alpha)]:
            if value < 1:
                raise bad(name, f"must be at least 1 (got {value})")
        for name, value in [("train_limit", self.train_limit), ("eval_limit", self.eval_limit)]:
            if value < 0:
                raise bad(name, f"must be 0 (all) or more (got {value})")
        if not self.train.lr > 0:
            raise bad("train.lr", f"must be positive (got {self.train.lr})")
        for name, value in [("train.warmup_ratio", self.train.warmup_ratio),
                            ("lora.dropout", self.lora.dropout)]:
            if not 0 <= value < 1:
                raise bad(name, f"must be in [0, 1) (got {value})")
        if not 0 < self.density <= 1:
            raise bad("density", f"must be in (0, 1] (got {self.density})")
        if self.train.weight_decay < 0 or self.train.grad_clip < 0:
            raise bad("train.weight_decay/grad_clip", "must not be negative")
        if not self.lora.target_modules:
            raise bad("lora.target_modules", "name at least one module")
        choose("kind", self.kind, KINDS)
        choose("init", self.init, INIT_MODES)
        choose("finetune", self.finetune, FINETUNE_MODES)
        choose("train.schedule", self.train.schedule, SCHEDULES)
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise bad("device", f"{self.device!r} is not auto, cpu, mps, cuda or cuda:N")
        if (self.kind == "scratch") != (self.init == "scratch"):
            raise bad("init", f"a {self.kind} run cannot start from {self.init!r}; use "
                      + ("'scratch'" if self.kind == "scratch" else "'merged-fold' or 'merged-continue'"))
        if self.init == "merged-continue" and self.finetune == "full":
            raise bad("finetune", "'full' needs init 'merged-fold' ('merged-continue' trains the LoRA)")
        if self.kind == "mashup":
            choose("scorer", self.scorer, _registry("selection.scorers", "SCORERS"))
            if merge_methods:
                choose("merge_method", self.merge_method, _registry("merging.lora", "MERGE_METHODS"))
            choose("weight_strategy", self.weight_strategy, _registry("merging.weights", "WEIGHT_STRATEGIES"))
        choose("eval_metric", self.eval_metric, _registry("selection.scorers", "EVAL_METRICS"))
        for tracker in self.report_to:
            choose("report_to", tracker, _registry("training.trackers", "TRACKERS"))
        self.target_spec(where)

    def target_spec(self, where: str = "spec", ws: Workspace | None = None):
        """The target as a `TargetSpec` (a name or path is resolved against `ws`)."""
        from mashup_core.data.examples import DatasetError
        from mashup_core.data.targets import TargetSpec, resolve_target

        try:
            if isinstance(self.target, dict):
                return TargetSpec.from_dict(self.target)
            if not self.target.strip():
                raise DatasetError("name a demo task, a benchmark or a file")
            return resolve_target(self.target, ws) if ws is not None else None
        except DatasetError as exc:
            raise SpecError(f"{where}: field 'target': {exc}") from exc

    @property
    def target_label(self) -> str:
        if isinstance(self.target, dict):
            return Path(str(self.target.get("name_or_path", "custom"))).name
        return Path(self.target).name

    def scratch_baseline(self) -> RunSpec:
        """The from-scratch run this mashup run is compared with: same target, training, seed."""
        defaults = RunSpec(target=self.target)
        return replace(self, kind="scratch", init="scratch",
                       name=f"{self.name or self.target_label} (scratch)",
                       **{f: getattr(defaults, f) for f in MASHUP_FIELDS})

    def identity(self) -> str:
        """A hash of what the run computes: equal for runs that would produce the same curve."""
        data = {k: v for k, v in self.to_dict().items() if k not in LABEL_FIELDS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _typed(cls, data: Any, where: str) -> dict[str, Any]:
    """`data`'s keys checked against `cls`'s fields and their default values' types."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
            raise SpecError(f"{where}: unknown field '{key}'{hint}")
    out = {}
    probe = cls(target="") if cls is RunSpec else cls()
    for key, value in data.items():
        if key in ("lora", "train") and cls is RunSpec:
            continue
        default = getattr(probe, key)
        if key == "target":
            ok = isinstance(value, str | dict)
        elif key == "target_modules":  # "all-linear" or a list of module names
            ok = isinstance(value, str) or (isinstance(value, list | tuple)
                                            and all(isinstance(v, str) for v in value))
            default = []
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:  # lists and tuples of names
            ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        if not ok:
            expected = "a list of strings" if isinstance(default, list | tuple) else type(default).__name__
            raise SpecError(f"{where}: field '{key}': expected {expected}, got {value!r}")
        out[key] = float(value) if isinstance(default, float) else value
    return out
