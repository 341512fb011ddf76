"""A complete run spec from a workspace's config and a run's own choices.

`mashup new-spec` and the dashboard's Launch page both build their specs here, so a run
launched from either records the same things: the base model and library sources as
absolute paths, the target with its field mapping or local data, the finetune mode, and the
learning rate the workspace gives that mode. A spec is then complete on its own: a job
started from any folder, or rerun later, reads exactly what it was launched with.
"""

from __future__ import annotations

from typing import Any

from mashup_core import defaults
from mashup_core.config import WorkspaceConfig
from mashup_core.jobs.spec import RunSpec
from mashup_core.training.settings import TrainConfig


def workspace_run_spec(
    config: WorkspaceConfig, target: Any, *, finetune: str | None = None,
    lr: float | None = None, device: str | None = None, steps: int = defaults.TRAIN_STEPS,
    batch_size: int = defaults.BATCH_SIZE, seed: int = 0, where: str = "spec", **fields: Any,
) -> RunSpec:
    """`target`: a TargetSpec or its dict (a configured target's dict has no split: train).
    `fields`: any other RunSpec field (kind, name, scorer, n, k, merge_method, eval_every, ...).
    Unset choices come from the config: finetune mode, device, lr for that mode."""
    from mashup_core.data.targets import TargetSpec

    if not hasattr(target, "to_dict"):
        target = TargetSpec.from_dict({"split": "train", **dict(target)})
    finetune = finetune or config.defaults.finetune
    fields.setdefault("report_to", list(config.defaults.report_to))
    fields.setdefault("tracking_uri", config.defaults.tracking_uri or "")
    spec = RunSpec(
        target=target.to_dict(), base_model=config.base_model, library=config.sources,
        finetune=finetune, device=device or config.defaults.device, seed=seed,
        train=TrainConfig(steps=steps, batch_size=batch_size,
                          lr=lr if lr is not None else config.learning_rate(finetune), seed=seed),
        **fields,
    )
    return RunSpec.from_dict(spec.to_dict(), where)  # the same checks a run makes
