"""A merge's recipe in mergekit's YAML schema: read one (`mashup merge --config`), and write
one beside every merge, with a model card saying what was merged, how, and from what.

Reading follows mergekit 0.1.5's `MergeConfiguration` for the `models:` form: `merge_method`,
`base_model`, `models` (each with `parameters`), global `parameters`, `dtype` (the compute
dtype), `out_dtype`. A parameter may be a scalar, a gradient (a list interpolated over the
layers: t = layer / (layers − 1), 0 for tensors outside the layers) or a list of
`{filter, value}` conditions (the first whose filter is a substring of the tensor's name);
a model's own parameters win over the global ones. `slices`/`modules` (layer surgery), LoRA
references (`model+lora`), and tokenizer merging are mergekit's own and refused with the
reason. As in mergekit, a `base_model` of a method that takes no base joins the inputs, and a
base listed among the models of a method that needs one is the base only.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mashup_core.merging.registry import REQUIRED, SAME, MergeConfigError, MethodSpec

RECIPE_FILE = "mergekit_config.yml"
CARD_FILE = "README.md"
TOP_LEVEL = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
             "tokenizer_source", "tokenizer", "chat_template", "slices", "modules")
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32",
               "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
               "fp16": "float16", "half": "float16", "float64": "float64", "double": "float64"}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


class RecipeError(MergeConfigError):
    """A mergekit config that cannot be merged here; the message says what to change."""


# --------------------------------------------------------------------------- parameter settings


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """mergekit's value of one parameter setting for one tensor (None: no condition matched)."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if not isinstance(setting, list):
        raise RecipeError(f"a parameter setting must be a value, a list (gradient) or "
                          f"{{filter, value}} conditions, got {setting!r}")
    if not setting:
        return None
    if all(isinstance(e, (bool, int, float, str)) for e in setting):
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * float(setting[i0]) + frac * float(setting[i1])
    for condition in setting:
        if not isinstance(condition, Mapping) or "value" not in condition:
            raise RecipeError(f"a list of conditions holds {{filter, value}} items, got {condition!r}")
        where = condition.get("filter")
        if where is None or where == "*" or (tensor_name and where in tensor_name):
            return evaluate_setting(condition["value"], tensor_name, t)
    return None


def layer_position(name: str, num_layers: int | None) -> float:
    """mergekit's t of a tensor: its layer over the last layer; 0 outside the layers."""
    match = _LAYER.search(name)
    if match is None or not num_layers:
        return 0.0
    return int(match.group(1)) / (num_layers - 1) if num_layers > 1 else 1.0


def num_hidden_layers(config: Mapping[str, Any]) -> int | None:
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        for source in (config, text):
            if isinstance(source.get(key), int):
                return source[key]
    return None


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Recipe:
    """A mergekit config, resolved to local folders: what `merging.full` merges.

    `shared` and each of `per_input` map parameter names to settings (scalars, gradients or
    conditions), evaluated per tensor by `values_for`."""

    method: str
    base: Path | None
    inputs: list[Path]
    shared: dict[str, Any] = field(default_factory=dict)
    per_input: list[dict[str, Any]] = field(default_factory=list)
    dtype: str | None = None
    out_dtype: str | None = None
    text: str = ""  # the YAML as given
    source: Path | None = None

    def values_for(self, spec: MethodSpec, tensor_name: str, t: float) -> tuple[dict, list | None]:
        """(shared values, weights) given for one tensor: what `resolve_params` then checks and
        completes with mergekit's defaults. Per-input values are lists, None where absent."""
        given: dict[str, Any] = {}
        for p in spec.params:
            if p.per_input:
                per = [self._value(p.name, tensor_name, t, i) for i in range(len(self.inputs))]
                if any(v is not None for v in per):
                    if any(v is None for v in per):
                        missing = [self.inputs[i].name for i, v in enumerate(per) if v is None]
                        if p.default_for("mergekit") is REQUIRED:
                            raise RecipeError(f"{self._where()}: no {p.name} for {', '.join(missing)} "
                                              f"at {tensor_name}")
                        per = [p.default_for("mergekit") if v is None else v for v in per]
                    given[p.name] = per
            else:
                value = self._value(p.name, tensor_name, t, None)
                if value is not None:
                    given[p.name] = value
        weights = None
        if spec.weights is not None:
            per = [self._value("weight", tensor_name, t, i) for i in range(len(self.inputs))]
            missing = [self.inputs[i].name for i, v in enumerate(per) if v is None]
            if missing:
                raise RecipeError(f"{self._where()}: mergekit's '{spec.name}' needs a weight for "
                                  f"every model, and {', '.join(missing)} has none at "
                                  f"{tensor_name}; add `parameters: {{weight: 1.0}}` to it")
            weights = [float(v) for v in per]
        return given, weights

    def _value(self, name: str, tensor_name: str, t: float, index: int | None) -> Any:
        scopes = ([self.per_input[index]] if index is not None else []) + [self.shared]
        for scope in scopes:
            if name in scope:
                value = evaluate_setting(scope[name], tensor_name, t)
                if value is not None:
                    return value
        return None

    def unused(self, spec: MethodSpec) -> list[str]:
        """Parameter names the config sets that this method does not use (mergekit ignores
        them silently; we name them)."""
        used = set(spec.param_names) | ({"weight"} if spec.weights is not None else set())
        names = set(self.shared).union(*self.per_input) if self.per_input else set(self.shared)
        return sorted(names - used)

    def _where(self) -> str:
        return str(self.source) if self.source else "the mergekit config"


def read_recipe(path: str | Path) -> Recipe:
    """A mergekit YAML file, validated before any tensor is read."""
    import yaml

    path = Path(path).expanduser()
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the mergekit config ({exc})") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from exc
    return parse_recipe(data, text=text, source=path)


def parse_recipe(data: Any, *, text: str = "", source: Path | None = None) -> Recipe:
    from mashup_core.merging import full_methods  # noqa: F401  (registers the methods)
    from mashup_core.merging.registry import get

    where = str(source) if source else "the mergekit config"
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: a mergekit config is a mapping with merge_method and models")
    unknown = [k for k in data if k not in TOP_LEVEL]
    if unknown:
        close = difflib.get_close_matches(unknown[0], TOP_LEVEL, n=1)
        raise RecipeError(f"{where}: unknown key {unknown[0]!r}"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; mergekit's keys: {', '.join(TOP_LEVEL)}")
    for key, why in (("slices", "layer slices (frankenmerges)"), ("modules", "per-module slices")):
        if data.get(key):
            raise RecipeError(f"{where}: `{key}:` ({why}) is mergekit's layer surgery, which "
                              "this merge does not do; run mergekit itself for it, or use "
                              "`models:`")
    if data.get("tokenizer") or data.get("tokenizer_source") not in (None, "base"):
        raise RecipeError(f"{where}: tokenizer merging (tokenizer_source: "
                          f"{data.get('tokenizer_source')!r}) is not done here; the merge keeps "
                          "the base's tokenizer: drop the key or set `tokenizer_source: base`")
    if data.get("chat_template"):
        raise RecipeError(f"{where}: chat_template is not set here; edit the merged "
                          "tokenizer_config.json instead")
    method = data.get("merge_method")
    if not isinstance(method, str):
        raise RecipeError(f"{where}: merge_method is missing")
    spec = get("full", method)
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise RecipeError(f"{where}: `models:` lists the models to merge, each `- model: PATH`")
    root = source.parent if source else Path.cwd()
    base = _model_path(data["base_model"], root, where) if data.get("base_model") else None
    inputs, per_input = [], []
    for entry in models:
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise RecipeError(f"{where}: each item of models is `- model: PATH` (with optional "
                              f"parameters), got {entry!r}")
        extra = [k for k in entry if k not in ("model", "parameters")]
        if extra:
            raise RecipeError(f"{where}: unknown key {extra[0]!r} in a model entry")
        params = entry.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise RecipeError(f"{where}: parameters of {entry['model']} must be a mapping")
        model = _model_path(entry["model"], root, where)
        if base is not None and model == base and spec.base != "unused":
            continue  # mergekit: a listed base is the base, not a task vector
        inputs.append(model)
        per_input.append(dict(params))
    if base is not None and spec.base == "unused" and base not in inputs:
        inputs.append(base)  # mergekit adds a base_model to the inputs of a base-less method
        per_input.append({})
    if spec.base == "required" and base is None:
        raise RecipeError(f"{where}: '{method}' merges task vectors against a base: set base_model")
    shared = data.get("parameters") or {}
    if not isinstance(shared, Mapping):
        raise RecipeError(f"{where}: parameters must be a mapping of names to values")
    return Recipe(method, base, inputs, dict(shared), per_input, _dtype(data.get("dtype"), where),
                  _dtype(data.get("out_dtype"), where), text, source)


def _dtype(name: Any, where: str) -> str | None:
    if name is None:
        return None
    if str(name).lower() not in DTYPE_NAMES:
        raise RecipeError(f"{where}: dtype {name!r} unknown; one of {', '.join(sorted(set(DTYPE_NAMES.values())))}")
    return DTYPE_NAMES[str(name).lower()]


def _model_path(ref: Any, root: Path, where: str) -> Path:
    ref = str(ref)
    if "+" in ref:
        raise RecipeError(f"{where}: {ref!r} applies a LoRA to a model (mergekit's `model+lora`); "
                          "fold the adapter into its model first (`merge_and_unload`), or merge "
                          "LoRA adapters with `mashup merge` on the adapters")
    for candidate in (Path(ref).expanduser(), root / ref):
        if candidate.is_dir():
            return candidate.resolve()
    raise RecipeError(f"{where}: model {ref!r} is not a local folder (Hub ids are not downloaded "
                      "by a merge: fetch it first, e.g. `huggingface-cli download`)")


# --------------------------------------------------------------------------- writing


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def recipe_yaml(spec: MethodSpec, inputs: Sequence[str | Path], weights: Sequence[float] | None,
                values: Mapping[str, Any], *, base: str | Path | None = None,
                dtype: str | None = None, out_dtype: str | None = None,
                given_text: str | None = None) -> str:
    """The merge as a mergekit config, every parameter written out (so that reading it back
    merges the same, whatever the defaults). A value mergekit does not know is said in a
    comment; for a LoRA method, that mergekit cannot run it."""
    import yaml

    if given_text is not None:  # a merge from a config records that config as given
        return given_text if given_text.endswith("\n") else given_text + "\n"
    per_input = {p.name for p in spec.params if p.per_input}
    models = []
    for i, path in enumerate(inputs):
        params = {name: values[name][i] for name in sorted(per_input) if name in values}
        if weights is not None:
            params = {"weight": float(weights[i]), **params}
        models.append({"model": str(path), **({"parameters": params} if params else {})})
    shared = {p.name: values[p.name] for p in spec.params if not p.per_input and p.name in values
              and values[p.name] is not None}
    data: dict[str, Any] = {"merge_method": spec.name}
    if base is not None:
        data["base_model"] = str(base)
    data["models"] = models
    if shared:
        data["parameters"] = shared
    if dtype:
        data["dtype"] = dtype
    if out_dtype:
        data["out_dtype"] = out_dtype
    notes = ["Written by mashup (mashup_core.merging): this merge's recipe in mergekit's schema."]
    if spec.kind == "lora":
        notes.append(f"'{spec.name}' merges LoRA adapters into a LoRA adapter: mergekit has no "
                     "such method; `mashup merge --config` does not read LoRA recipes either.")
    foreign = [f"{k}: {v}" for k, v in shared.items() if isinstance(v, str) and k in
               ("normalize", "rescale")]
    if foreign and spec.kind == "full":
        notes.append(f"{', '.join(foreign)}: mashup's conventions (PEFT's); mergekit takes "
                     "true/false there.")
    header = "".join(f"# {line}\n" for line in notes)
    return header + yaml.safe_dump(_plain(data), sort_keys=False)


def model_card(spec: MethodSpec, *, name: str, inputs: Sequence[Mapping[str, Any]],
               weights: Sequence[float] | None, values: Mapping[str, Any],
               base: str | None, recipe: str, seconds: float,
               extra: Mapping[str, Any] | None = None) -> str:
    """README.md for a merged checkpoint or adapter: inputs, method, parameters, provenance."""
    import torch

    rows = []
    for i, item in enumerate(inputs):
        weight = "" if weights is None else f"{weights[i]:g}"
        rows.append(f"| {item['path']} | {weight} | {item.get('sha256', '')[:12]} |")
    params = []
    for p in spec.params:
        if p.name in values:
            mk = "" if p.mergekit_default is SAME else str(_plain(p.mergekit_default))
            params.append(f"| {p.name} | {_plain(values[p.name])} | {_plain(p.default)} | {mk} |")
    front = {"tags": ["merge", "mashup", spec.name], **({"base_model": base} if base else {})}
    lines = [
        "---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---",
        f"# {name}", "",
        f"Merged with mashup's `{spec.name}` ({spec.family}): {spec.summary}.", "",
        f"Method: {spec.citation}." + (f" {spec.notes}." if spec.notes else ""), "",
        "## Inputs", "", "| input | weight | sha256 |", "|---|---|---|", *rows, "",
        "## Parameters", "", "| parameter | value | default | mergekit's default (where other) |",
        "|---|---|---|---|", *(params or ["| (none) | | | |"]), "",
        "## Provenance", "",
        f"- merged {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} "
        f"in {seconds:.2f} s, torch {torch.__version__}",
        *(f"- {k}: {json.dumps(_plain(v), default=str)}" for k, v in (extra or {}).items()),
        f"- base: {base}" if base else "- base: implicit (the adapters' base model)", "",
        f"## Recipe ({RECIPE_FILE})", "", "```yaml", recipe.rstrip(), "```", "",
    ]
    return "\n".join(lines)

