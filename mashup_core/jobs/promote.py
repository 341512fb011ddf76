"""A finished run joins the library: its trained weights become a checkpoint for later targets.

Mashup Learning's premise is that every finetune leaves a checkpoint the next target can draw
on. What the library can honestly hold depends on how the run started:

- 'scratch' and 'merged-continue' LoRA runs: the trained LoRA is a plain adapter of the base
  (a merged-continue run trains the merged adapter itself, with the merge's ranks and alphas).
- 'merged-fold' LoRA runs trained a fresh LoRA on top of base + merge ΔW. The trained LoRA
  alone would be a correction to a model no one else has; the useful checkpoint is
  merge ΔW + trained ΔW, which stacking the factors (`cat`) holds exactly, at rank
  r_merge + r_lora (or truncated with `cat_svd` when asked for a rank).
- Full finetunes: every weight trained, so the checkpoint is a full model folder.

Each comes with `mashup_meta.json`: `source_task` is the run's target, so leave-one-out
selection (`exclude_task`) never offers a run's own checkpoint back to its own target.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mashup_core.access import require_write
from mashup_core.config import ensure_source
from mashup_core.errors import MashupError
from mashup_core.jobs.spec import RunSpec, SpecError
from mashup_core.jobs.store import RunRecord, get_run
from mashup_core.workspace import Workspace, read_json, write_json_atomic

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
META_FILE = "mashup_meta.json"
TRAINABLE_FILE = "trainable.safetensors"  # what `training.loop.save_checkpoint` writes
# A PeftModel parameter: <saved prefix>.lora_A.<adapter name>.weight; PEFT's files drop the name.
_PEFT_PARAM = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<adapter>[^.]+)\.weight$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PromoteError(MashupError):
    """A run that cannot join the library as asked; the message says why and what to do."""


def default_name(record: RunRecord) -> str:
    """'<target>-<kind>-<short run id>', e.g. 'min-mashup-3fa9c2'."""
    target = re.sub(r"[^a-zA-Z0-9]+", "-", record.spec.target_label).strip("-").lower() or "run"
    return f"{target}-{record.spec.kind}-{record.id.rsplit('-', 1)[-1]}"


def add_run_to_library(
    ws: Workspace, run_id: str, name: str | None = None, dest: Path | None = None, *,
    rank: int | None = None,
) -> Path:
    """Copy finished run `run_id`'s trained weights into the library; returns the new folder.

    `dest` defaults to `ws.library_dir / name`, `name` to `default_name`. `rank` (merged-fold
    LoRA runs only) truncates merge + trained LoRA to that rank with `cat_svd` instead of the
    exact stacked sum; useful when the library is merged with 'linear', which needs equal
    ranks. Raises `PromoteError` for a run that is not done, a destination that exists, or a
    run without its final weights.
    """
    require_write("adding a run to the library")  # a write action, as launching one is
    record = get_run(ws, run_id)
    _check_finished(record)
    ckpt = _final_checkpoint(record)
    name = name if name is not None else default_name(record)
    if not _NAME.match(name):
        raise PromoteError(f"invalid checkpoint name {name!r}: use letters, digits, '.', '_' and "
                           "'-', starting with a letter or digit (no folders)")
    dest = Path(dest) if dest is not None else ws.library_dir / name
    if dest.exists():
        raise PromoteError(f"the library already has {dest.name!r} ({dest}); choose another "
                           "name (`--name`) or remove that folder first")
    if rank is not None and (record.spec.finetune != "lora" or record.spec.init != "merged-fold"):
        raise PromoteError("a rank only applies to LoRA runs with init 'merged-fold' (their "
                           "checkpoint is merge + trained LoRA); this run's adapter keeps its rank")
    if rank is not None and rank < 1:
        raise PromoteError(f"rank must be at least 1 (got {rank})")

    spec = record.spec
    base = record.status.get("base_model") or _workspace_base(ws, spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Built in a hidden sibling (library scans skip dot-folders) and renamed: a failure or a
    # kill midway leaves no half checkpoint in the library.
    tmp = dest.with_name(f".{dest.name}.adding-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if spec.finetune == "full":
            _write_full(tmp, ckpt, base, ws, spec)
            how = "full model"
        elif spec.init == "merged-fold":
            how = _write_fold(tmp, ckpt, record, base, rank, ws)
        else:
            template = (read_json(record.dir / "merged_adapter" / ADAPTER_CONFIG)
                        if spec.init == "merged-continue" else None)
            _write_adapter(tmp, load_file(ckpt / TRAINABLE_FILE), spec, template, base, ws)
            how = "trained LoRA" if spec.init == "scratch" else "merged LoRA, trained further"
        write_json_atomic(tmp / META_FILE, _meta(ws, record, ckpt, base, dest, how))
        try:
            os.rename(tmp, dest)
        except OSError as exc:  # someone took the name meanwhile
            raise PromoteError(f"cannot create {dest}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ensure_source(ws, dest.parent)
    return dest


# --- Checks ---------------------------------------------------------------------------------------


def _check_finished(record: RunRecord) -> None:
    state = record.state
    if state == "done":
        return
    hint = {
        "queued": "wait for it to finish", "running": "wait for it to finish",
        "failed": f"resume it (`mashup resume {record.id}`) and add it once it is done",
        "cancelled": f"resume it (`mashup resume {record.id}`) and add it once it is done",
        "killed": f"resume it (`mashup resume {record.id}`) and add it once it is done",
    }.get(state, "only finished runs can be added")
    raise PromoteError(f"run {record.id} is {state}; only a finished run (state 'done') joins "
                       f"the library: {hint}")


def _final_checkpoint(record: RunRecord) -> Path:
    """The checkpoint of the step the run finished at (its reported final accuracy's weights)."""
    from mashup_core.training.loop import checkpoint_step, latest_checkpoint

    ckpt = latest_checkpoint(record.dir / "checkpoints")
    if ckpt is None or not (ckpt / TRAINABLE_FILE).exists():
        raise PromoteError(f"run {record.id} has no trained weights ({record.dir / 'checkpoints'} "
                           "holds no complete checkpoint; were they deleted?); nothing to add")
    final_step = (record.status.get("final") or {}).get("step", record.spec.train.steps)
    if checkpoint_step(ckpt) != final_step:
        raise PromoteError(f"run {record.id}'s last checkpoint is {ckpt.name}, but it finished at "
                           f"step {final_step}: its final weights are missing; nothing to add")
    return ckpt


def _workspace_base(ws: Workspace, spec: RunSpec) -> str:
    """The base a run trained on, for runs recorded before the status named it."""
    from mashup_core.config import resolve_config

    return str(resolve_config(ws, base=spec.base_model or None).base_model)


# --- Writing the checkpoint -----------------------------------------------------------------------


def _adapter_tensors(trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PeftModel's trainable parameters under the keys PEFT saves (without the adapter name)."""
    out, others = {}, []
    for key, tensor in trained.items():
        match = _PEFT_PARAM.match(key)
        if match is None:
            others.append(key)
            continue
        out[f"{match['module']}.lora_{match['part']}.weight"] = tensor.contiguous()
    if others or not out:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise PromoteError("the run's checkpoint holds weights other than LoRA factors "
                           f"({shown or 'none at all'}); it cannot be saved as an adapter")
    return out


def _config_base(base: str, ws: Workspace) -> str | None:
    """adapter_config's base_model_name_or_path: None for the workspace's own base, which the
    meta file records relative to the checkpoint (as the demo library does), so the workspace
    folder can move."""
    return None if _inside(base, ws.root) else base


def _write_adapter(out: Path, trained: dict[str, torch.Tensor], spec: RunSpec,
                   template: dict[str, Any] | None, base: str, ws: Workspace) -> None:
    """A PEFT adapter folder from a LoRA run's trainable parameters.

    `template`: the adapter_config of the adapter that was trained further (merged-continue);
    else the run's LoRA spec, with target_modules resolved to the layers that really carry a
    LoRA, as PEFT's own save does for 'all-linear'.
    """
    import json

    tensors = _adapter_tensors(trained)
    save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    if template is not None:
        config = {**template, "inference_mode": True,
                  "base_model_name_or_path": _config_base(base, ws)}
        (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return
    peft_config = spec.lora.peft_config()
    peft_config.target_modules = sorted({k.rsplit(".lora_", 1)[0].removeprefix("base_model.model.")
                                         for k in tensors})
    peft_config.inference_mode = True
    peft_config.base_model_name_or_path = _config_base(base, ws)
    peft_config.save_pretrained(str(out))


def _write_fold(out: Path, ckpt: Path, record: RunRecord, base: str, rank: int | None,
                ws: Workspace) -> str:
    """merge ΔW + trained ΔW, stacked exactly (or truncated to `rank`), as one adapter."""
    import json

    from mashup_core.merging.lora import (
        MERGE_METHODS,
        PEFT_PREFIX,
        MergedLora,
        MergeParams,
        read_lora_adapter,
    )

    merged_dir = record.dir / "merged_adapter"
    if not (merged_dir / ADAPTER_CONFIG).exists():
        raise PromoteError(f"run {record.id} trained on top of a merged adapter, but "
                           f"{merged_dir} is gone; without it the trained LoRA alone is no "
                           "checkpoint of the base, so nothing can be added")
    merge = read_lora_adapter(merged_dir)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.lora-") as scratch:
        _write_adapter(Path(scratch), load_file(ckpt / TRAINABLE_FILE), record.spec, None, base, ws)
        trained = read_lora_adapter(scratch)
    method = "cat" if rank is None else "cat_svd"
    params = MergeParams(rank=rank)
    modules = {}
    for module in sorted(merge.modules.keys() | trained.modules.keys()):
        # A layer only one side touched keeps its factors: the sum there is that side alone.
        parts = [a.modules[module] for a in (merge, trained) if module in a.modules]
        modules[module] = (parts[0] if len(parts) == 1 and rank is None else
                           MERGE_METHODS[method].fn(parts, torch.ones(len(parts)), params))
    combined = MergedLora(modules, method, [1.0, 1.0], params)
    template = {**merge.config,
                "target_modules": sorted(m.removeprefix(PEFT_PREFIX) for m in modules),
                "base_model_name_or_path": merge.config.get("base_model_name_or_path")}
    save_file(combined.state_dict(torch.float32), out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    config = combined.adapter_config(template)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return ("merged adapter + trained LoRA, stacked exactly (cat)" if rank is None
            else f"merged adapter + trained LoRA, truncated to rank {rank} (cat_svd)")


def _write_full(out: Path, ckpt: Path, base: str, ws: Workspace, spec: RunSpec) -> None:
    """A full model folder: the base's architecture and config with every trained weight.

    Loaded through transformers and saved with `save_pretrained`, so tied weights, buffers and
    the config come out the way `from_pretrained` expects them.
    """
    from mashup_core.config import resolve_config
    from mashup_core.models.loading import load_base_model

    trust = resolve_config(ws, base=base).base.trust_remote_code
    model = load_base_model(base, device="cpu", dtype=torch.float32, trust_remote_code=trust)
    trained = load_file(ckpt / TRAINABLE_FILE)
    params = dict(model.named_parameters())
    if trained.keys() != params.keys():
        missing = sorted(params.keys() - trained.keys())[:3]
        raise PromoteError(f"the run's checkpoint does not fit its base model {base} (e.g. "
                           f"missing {missing}); was the base changed after the run?")
    with torch.no_grad():
        for key, value in trained.items():
            params[key].copy_(value)
    model.save_pretrained(out, safe_serialization=True)


def _inside(path: str, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return Path(path).is_dir()


def _meta(ws: Workspace, record: RunRecord, ckpt: Path, base: str, dest: Path, how: str) -> dict:
    """Provenance, in the library's mashup_meta.json vocabulary (source_task, base_model, ...)."""
    from mashup_core.training.loop import checkpoint_step
    from mashup_core.training.mashup_init import source_task_of

    spec, final = record.spec, record.status.get("final") or {}
    try:
        source_task = source_task_of(spec.target_spec(ws=ws)) or spec.target_label
    except SpecError:  # a target file moved away since: its label still names it
        source_task = spec.target_label
    # The workspace's base relative to the checkpoint ('../../base'), so a moved workspace
    # still finds it; another base as given (a path or a Hub id).
    recorded_base = (os.path.relpath(Path(base).resolve(), dest.parent.resolve() / dest.name)
                     if _inside(base, ws.root) else base)
    selection = record.selection or {}
    return {
        "source_task": source_task, "base_model": recorded_base, "target": spec.target_label,
        "kind": spec.kind, "init": spec.init, "finetune": spec.finetune,
        "steps": checkpoint_step(ckpt), "lr": spec.train.lr, "seed": spec.seed,
        "train_seed": spec.train.seed, "eval_limit": spec.eval_limit,
        "validation_accuracy": final.get("acc"), "final_accuracy": final.get("acc"),
        "init_accuracy": final.get("init_acc"), "final": True,
        "run_id": record.id, "run_dir": str(record.dir), "created": time.time(),
        "weights": how,
        "merged_from": selection.get("selected") if spec.kind == "mashup" else None,
        "merge_weights": selection.get("weights") if spec.kind == "mashup" else None,
        "merge_method": spec.merge_method if spec.kind == "mashup" else None,
    }
