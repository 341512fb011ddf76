"""Study presets: a published pipeline's settings, set all at once.

`reference` is the reference pipeline (github 2son1a/mashup-learning) as its configs set it:
configs/pipeline/leave_one_out_lora.yaml with configs/train/lora_default.yaml (LoRA), or
leave_one_out_fullft.yaml with fullft_default.yaml (full finetuning), and configs/eval/
relevance.yaml and default.yaml for scoring and evaluation. What a study here fixes for every
cell anyway (LoRA r 8, alpha 16, dropout 0 on every linear projection; AdamW, fused on CUDA;
cosine schedule with 10 % warm-up; no weight decay; gradient clipping at 1) is the same as
there and listed in `FIXED`.

A workspace can override a preset's value where it says something of its own: its
`[defaults] lr` (the demo world's tiny model needs 3e-3, not 5e-5 … 5e-4), and a base without a
chat template keeps the workspace's prompt format (the reference renders chat turns). Flags
given on the command line override both. `resolve_preset` returns the values and one line per
value saying where it came from, printed before the study starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mashup_core.defaults import LR_SWEEP
from mashup_core.study.spec import StudyError, StudySpec


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    sources: Mapping[str, str]  # finetune mode -> the configs the values come from
    values: Mapping[str, Mapping[str, Any]]  # finetune mode -> StudySpec fields


_REFERENCE_COMMON = {
    "methods": ("linear",),  # lora_A and lora_B averaged separately; full: mergekit's linear
    "ks": (2,), "weightings": ("equal",), "scorers": ("token_acc",), "ns": (256,),
    "seeds": (42, 43, 44),  # scripts/run_all_experiments.sh (there each seed reruns everything)
    "train": True, "train_epochs": 1.0, "train_batch_size": 32, "eval_metric": "token_acc",
    "eval_split": "validation", "eval_limit": 0, "gradient_checkpointing": True,
    "prompt_format": "reference",
}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "reference",
        "the reference pipeline's leave-one-out study (2son1a/mashup-learning)",
        {"lora": "configs/pipeline/leave_one_out_lora.yaml, configs/train/lora_default.yaml",
         "full": "configs/pipeline/leave_one_out_fullft.yaml, configs/train/fullft_default.yaml"},
        {"lora": {**_REFERENCE_COMMON, "finetune": "lora", "lrs": LR_SWEEP["lora"],
                  "inits": ("merged-continue",), "evals_per_epoch": 10},
         "full": {**_REFERENCE_COMMON, "finetune": "full", "lrs": LR_SWEEP["full"],
                  "inits": ("merged-fold",), "evals_per_epoch": 4}},
    ),
)}

# Set in every study here, as the reference sets them (not choices of a preset).
FIXED = ("LoRA r 8, alpha 16, dropout 0, every linear projection (q, k, v, o, gate, up, down); "
         "AdamW (fused on CUDA), cosine schedule with 10 % warm-up, no weight decay, gradient "
         "norm clipped at 1")


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise StudyError(f"preset {name!r} is unknown; choose from {', '.join(PRESETS)}") from None


@dataclass
class ResolvedPreset:
    values: dict[str, Any]  # StudySpec fields
    lines: list[str]  # one per value: what it is and where it came from


def resolve_preset(name: str, finetune: str, *, workspace: Mapping[str, tuple[Any, str]] = (),
                   flags: Mapping[str, Any] = ()) -> ResolvedPreset:
    """The preset's values for `finetune`, then the `workspace`'s overrides (field ->
    (value, why)), then `flags` (field -> value, given on the command line)."""
    preset = get_preset(name)
    if finetune not in preset.values:
        raise StudyError(f"preset {name!r} has no {finetune!r} variant (it has "
                         f"{', '.join(preset.values)})")
    known = {f.name for f in fields(StudySpec)}
    values = dict(preset.values[finetune])
    lines = [f"preset {name} ({finetune}): {preset.sources[finetune]}"]
    overrides = {**{k: (v, why) for k, (v, why) in dict(workspace).items()},
                 **{k: (v, "given on the command line") for k, v in dict(flags).items()}}
    if unknown := sorted(set(overrides) - known):
        raise StudyError(f"preset {name}: {', '.join(unknown)} are not study settings")
    for key in sorted(set(values) | set(overrides)):
        if key in overrides and overrides[key][0] != values.get(key):
            value, why = overrides[key]
            was = f" (the preset's: {_show(values[key])})" if key in values else ""
            lines.append(f"  {key:<22} {_show(value)}  <- {why}{was}")
            values[key] = value
        else:
            lines.append(f"  {key:<22} {_show(values[key])}")
    lines.append(f"  fixed in every study: {FIXED}")
    return ResolvedPreset(values, lines)


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def workspace_overrides(ws, config) -> dict:
    """What this workspace says of its own over a preset: its `[defaults] lr`, and, for a base
    whose tokenizer has no chat template, its own prompt format instead of chat turns."""
    from mashup_core.config import base_tokenizer
    from mashup_core.data.prompts import has_chat_template

    out = {}
    if config.defaults.lr is not None:
        out["lrs"] = ((config.defaults.lr,), "the workspace's [defaults] lr")
    if not has_chat_template(base_tokenizer(ws)):
        out["prompt_format"] = (config.defaults.prompt_format,
                                "the workspace's: the base model has no chat template for "
                                "'reference' (give one with [base] chat_template)")
    return out
