"""One registry of merge methods, described: what each takes, needs and computes, and its paper.

Every method — LoRA → LoRA (`merging.lora`) or full checkpoints (`merging.full_methods`) —
registers one `MethodSpec` here, with its parameters kept beside its code as mergekit keeps
them: name, default, range, and mergekit's default where ours differs. `resolve_params`
checks what a caller gives against that spec before any tensor is read, the way mergekit
validates a config: unknown names are named with the closest known one, a parameter the
method does not use is named as unused, a value out of range says the range.

Our defaults differ from mergekit's in a few documented places (`Param.mergekit_default`):
a pruning method needs a density (mergekit's default 1.0 prunes nothing), `ties`/`dare_ties`
divide by the count of agreeing entries (PEFT and the TIES paper; mergekit: by their weights,
or not at all), DARE rescales by 1/density (the DARE paper and PEFT; mergekit keeps each
tensor's L1 norm). `resolve_params(..., defaults="mergekit")` — what a mergekit YAML gets —
takes mergekit's. Weights default to 1 each for methods whose weights scale task vectors, and
to 1/k for the ones whose weights are shares of an average (`MethodSpec.weights`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mashup_core.errors import MashupError


class MergeConfigError(MashupError, ValueError):
    """A merge that cannot run as asked: bad method parameters or inputs that do not fit."""


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()  # a parameter without a default: the caller must give it
SAME: Any = object()  # mergekit's default is ours
KINDS = ("lora", "full")
# Accepted by every method: random ones draw from it, the others ignore it (a study passes one
# seed to every cell). The CLI names an explicit --seed a deterministic method ignores.
TOLERATED = ("seed",)


@dataclass(frozen=True)
class Param:
    """One parameter of a method, validated before any work.

    `choices` lists the allowed values (bools and strings); otherwise `low`/`high` bound a
    number, open at that end when `low_open`/`high_open`. `per_input` parameters take one
    value per input (mergekit's per-model parameters) or one for all."""

    name: str
    default: Any
    help: str
    type: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    per_input: bool = False
    mergekit_default: Any = SAME
    example: Any = None  # shown when a required value is missing

    def __post_init__(self) -> None:
        mk = self.mergekit_default
        if mk is not SAME and type(mk) is type(self.default) and mk == self.default:
            object.__setattr__(self, "mergekit_default", SAME)

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        lo = "-∞" if self.low is None else _show(self.low)
        hi = "∞" if self.high is None else _show(self.high)
        if self.low is not None and self.high is None:
            return f"{'>' if self.low_open else '≥'} {lo}"
        if self.high is not None and self.low is None:
            return f"{'<' if self.high_open else '≤'} {hi}"
        if self.low is None and self.high is None:
            return "any number"
        return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"

    def check(self, value: Any, method: str) -> Any:
        """`value` coerced to this parameter's type, or an error that says the range."""
        where = f"{method}: {self.name}"
        if self.choices:
            text = value.strip().lower() if isinstance(value, str) else value
            text = {"true": True, "false": False}.get(text, text) if isinstance(text, str) else text
            for choice in self.choices:
                if text == choice and type(text) is type(choice):
                    return choice
            raise MergeConfigError(f"{where} must be {self.range_text()}, got {_show(value)}")
        if self.type is bool:
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            if not isinstance(value, bool):
                raise MergeConfigError(f"{where} must be true or false, got {_show(value)}")
            return value
        try:
            if isinstance(value, bool):
                raise TypeError
            number = self.type(value)
            if self.type is int and number != float(value):
                raise ValueError
        except (TypeError, ValueError):
            kind = "an integer" if self.type is int else "a number"
            raise MergeConfigError(f"{where} must be {kind} {self.range_text()}, "
                                   f"got {_show(value)}") from None
        if not math.isfinite(number) or (
                self.low is not None and (number < self.low or self.low_open and number == self.low)
        ) or (self.high is not None and (number > self.high or self.high_open and number == self.high)):
            raise MergeConfigError(f"{where} must be {self.range_text()}, got {_show(value)}")
        return number

    def default_for(self, defaults: str) -> Any:
        if defaults == "mergekit" and self.mergekit_default is not SAME:
            return self.mergekit_default
        return self.default


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class MethodSpec:
    """A merge method as the registry describes it.

    `weights`: "scale" (each weight scales its input's task vector; default 1 each), "share"
    (shares of an average; default 1/k), or None (the method weighs its inputs itself).
    `base`: "required", "optional" or "unused" (full checkpoints; a LoRA's base is implicit).
    `fn` is the pure function: for LoRA `fn(factors, weights, params) -> LoraFactors` per
    module; for full checkpoints `fn(tensors, base, values, rng) -> tensor` per tensor."""

    name: str
    kind: str
    family: str
    summary: str
    citation: str
    fn: Callable[..., Any]
    params: tuple[Param, ...] = ()
    weights: str | None = "scale"
    base: str = "unused"
    min_inputs: int = 1
    max_inputs: int | None = None
    equal_ranks: bool = False  # adds factors entry by entry: same modules, equal ranks
    random: bool = False
    notes: str = ""  # what the computation equals, where our defaults differ from mergekit's
    validate: Callable[[dict[str, Any]], None] | None = None  # checks across parameters

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    # The LoRA driver's older trait names, kept for the code that reads them.
    @property
    def uses_density(self) -> bool:
        return "density" in self.param_names

    @property
    def uses_sign(self) -> bool:
        return "majority_sign_method" in self.param_names

    @property
    def truncates(self) -> bool:
        return "rank" in self.param_names

    def needs(self) -> list[str]:
        needs = []
        if self.base == "required":
            needs.append("a base")
        if self.equal_ranks:
            needs.append("equal ranks and target modules")
        if self.min_inputs > 1 or self.max_inputs is not None:
            if self.max_inputs == self.min_inputs:
                needs.append(f"exactly {self.min_inputs} input{'s' if self.min_inputs > 1 else ''}"
                             + (" besides the base" if self.base == "required" else ""))
            else:
                needs.append(f"≥ {self.min_inputs} inputs" + (f", ≤ {self.max_inputs}"
                                                              if self.max_inputs else ""))
        return needs

    def default_weights(self, n: int) -> list[float]:
        return [1.0 / n] * n if self.weights == "share" else [1.0] * n

    def describe(self) -> dict[str, Any]:
        """Everything `--list-methods` and the Merge methods page show, as plain data."""
        return {
            "name": self.name, "kind": self.kind, "family": self.family, "summary": self.summary,
            "citation": self.citation, "weights": self.weights, "base": self.base,
            "needs": self.needs(), "random": self.random, "notes": self.notes,
            "params": [{"name": p.name, "default": _plain(p.default), "range": p.range_text(),
                        "per_input": p.per_input, "help": p.help,
                        **({} if p.mergekit_default is SAME else
                           {"mergekit_default": _plain(p.mergekit_default)})}
                       for p in self.params],
        }


def _plain(value: Any) -> Any:
    return "required" if value is REQUIRED else value


_REGISTRY: dict[str, dict[str, MethodSpec]] = {kind: {} for kind in KINDS}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {spec.kind!r}")
    if spec.name in _REGISTRY[spec.kind]:
        raise ValueError(f"{spec.kind} merge method {spec.name!r} is registered twice")
    _REGISTRY[spec.kind][spec.name] = spec
    return spec


def methods(kind: str) -> dict[str, MethodSpec]:
    """The live registry of one kind (the dict itself: `MERGE_METHODS`, `FULL_MERGE_METHODS`)."""
    return _REGISTRY[kind]


def get(kind: str, name: str) -> MethodSpec:
    known = _REGISTRY[kind]
    if name not in known:
        what = "LoRA adapters" if kind == "lora" else "full checkpoints"
        other = "full" if kind == "lora" else "lora"
        hint = (f" ('{name}' is a method for {'full checkpoints' if kind == 'lora' else 'LoRA adapters'})"
                if name in _REGISTRY[other] else _closest(name, known))
        raise MergeConfigError(f"unknown merge method {name!r} for {what}; choose from "
                               f"{', '.join(known)}{hint}")
    return known[name]


def by_family(kind: str) -> dict[str, list[MethodSpec]]:
    grouped: dict[str, list[MethodSpec]] = {}
    for spec in _REGISTRY[kind].values():
        grouped.setdefault(spec.family, []).append(spec)
    return grouped


def _closest(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def resolve_params(spec: MethodSpec, given: Mapping[str, Any], n_inputs: int, *,
                   defaults: str = "mashup", weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Every parameter of `spec` with its value: `given` checked, the rest defaulted, and
    `weights` (already checked) as "weight", for the method's own cross-checks.

    Given `None` counts as not given. Per-input parameters become a list of `n_inputs`.
    Raises, naming the parameter, for an unknown name (with the closest known), a parameter
    this method does not use (with the ones it does), a missing required one, a bad value."""
    given = {k: v for k, v in given.items() if v is not None and k not in TOLERATED}
    extra = [k for k in given if k not in spec.param_names]
    if extra:
        every = {p.name for kind in KINDS for s in _REGISTRY[kind].values() for p in s.params}
        unknown = [k for k in extra if k not in every]
        if unknown:
            raise MergeConfigError(f"unknown parameter {unknown[0]!r}{_closest(unknown[0], sorted(every))}"
                                   f"; {_takes(spec)}")
        raise MergeConfigError(f"method '{spec.name}' does not use {', '.join(extra)}: they would "
                               f"be ignored, so drop them ({_takes(spec)})")
    values: dict[str, Any] = {}
    for p in spec.params:
        value = given.get(p.name, p.default_for(defaults))
        if value is None:  # a default of None means "decided by the method" (e.g. rank)
            values[p.name] = None
            continue
        if value is REQUIRED:
            example = "" if p.example is None else f", e.g. {_show(p.example)}"
            raise MergeConfigError(f"method '{spec.name}' needs a {p.name} {p.range_text()}"
                                   f"{example}: {p.help}")
        if p.per_input and isinstance(value, (list, tuple)):
            if len(value) != n_inputs:
                raise MergeConfigError(f"{spec.name}: {p.name} has {len(value)} values for "
                                       f"{n_inputs} inputs; give one per input or one for all")
            values[p.name] = [p.check(v, spec.name) for v in value]
        else:
            checked = p.check(value, spec.name)
            values[p.name] = [checked] * n_inputs if p.per_input else checked
    if weights is not None:
        values["weight"] = list(weights)
    if spec.validate is not None:
        spec.validate(values)
    return values


def _takes(spec: MethodSpec) -> str:
    names = ", ".join(spec.param_names)
    return f"'{spec.name}' takes {names}" if names else f"'{spec.name}' takes no parameters"


def check_inputs(spec: MethodSpec, n_inputs: int) -> None:
    if n_inputs < max(spec.min_inputs, 1):
        raise MergeConfigError(f"method '{spec.name}' needs at least {max(spec.min_inputs, 1)} "
                               f"input(s), got {n_inputs}")
    if spec.max_inputs is not None and n_inputs > spec.max_inputs:
        raise MergeConfigError(f"method '{spec.name}' takes at most {spec.max_inputs} input(s), "
                               f"got {n_inputs}")


def check_weights(spec: MethodSpec, weights: Sequence[float] | None, n_inputs: int) -> list[float]:
    """The weights to use: `weights` checked, or the method's default when None.

    A method that weighs its inputs itself accepts only equal weights (what a study's 'equal'
    weighting passes); unequal ones would be ignored, so they are refused."""
    if weights is None:
        return spec.default_weights(n_inputs)
    weights = [float(w) for w in weights]
    if len(weights) != n_inputs:
        raise MergeConfigError(f"got {len(weights)} weights for {n_inputs} inputs; give one weight "
                               "per input")
    if not all(math.isfinite(w) for w in weights):
        raise MergeConfigError(f"weights must be finite numbers, got {weights}")
    if spec.weights is None and len(set(weights)) > 1:
        raise MergeConfigError(f"method '{spec.name}' weighs its inputs itself and takes no "
                               f"weights, got {weights}; drop them")
    return weights


def input_warnings(spec: MethodSpec, weights: Sequence[float], n_inputs: int, *,
                   inputs: Sequence[str | Path] = (), library_size: int | None = None) -> list[str]:
    """What is allowed but likely not what was meant, said before any work."""
    warnings, seen = [], {}
    for given in inputs:  # the same checkpoint twice doubles its weight without saying so
        real = Path(given).resolve()
        if real in seen:
            warnings.append(f"{given} is given twice (also as {seen[real]}): it counts twice; "
                            "give it once with a larger weight if that is what you mean")
        seen[real] = str(given)
    if n_inputs == 1:
        warnings.append(f"one input: '{spec.name}' returns it"
                        + (" scaled by its weight" if spec.weights else "")
                        + "; give two or more checkpoints to merge")
    total = math.fsum(weights)
    if spec.weights == "share" and n_inputs > 1 and abs(total - 1) > 1e-6:
        warnings.append(f"the weights sum to {total:g}, not 1: '{spec.name}' averages with them, "
                        f"so the merged update is scaled by {total:g}")
    if library_size is not None and n_inputs > library_size:
        warnings.append(f"k={n_inputs} but the library holds {library_size} checkpoints")
    return warnings


@dataclass(frozen=True)
class Listing:
    """What `mashup merge --list-methods` prints, one kind at a time, by family."""

    kind: str
    families: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, kind: str) -> Listing:
        return cls(kind, {family: [s.describe() for s in specs]
                          for family, specs in by_family(kind).items()})

    def text(self) -> str:
        title = "LoRA adapters → one PEFT adapter" if self.kind == "lora" else \
            "full checkpoints of one base → one checkpoint (streamed)"
        lines = [f"{title}:"]
        for family, rows in self.families.items():
            lines.append(f"  [{family}]")
            for row in rows:
                lines.append(f"    {row['name']:<20} {row['summary']}")
                needs = ", ".join(row["needs"]) or "nothing more"
                weights = {"scale": "weights scale task vectors (default 1 each)",
                           "share": "weights are shares (default 1/k)",
                           None: "no weights"}[row["weights"]]
                lines.append(f"    {'':<20} needs {needs}; {weights}; {row['citation']}")
                for p in row["params"]:
                    mk = (f", mergekit: {_show(p['mergekit_default'])}"
                          if "mergekit_default" in p else "")
                    per = ", per input" if p["per_input"] else ""
                    default = p["default"] if p["default"] == "required" else _show(p["default"])
                    lines.append(f"    {'':<22}{p['name']} = {default} ({p['range']}{per}{mk}): "
                                 f"{p['help']}")
        return "\n".join(lines)
