"""The Merge and Report pages' studies: a spec from the form, launching, the job, the table.

A study runs as a background job of the one execution layer (`study.job`); the page only
turns its form into a `StudySpec` here (a preset's values with the workspace's overrides, or
the values chosen), and reads the job and the table back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mashup_core.study.job import cancel_study, launch_study, study_job
from mashup_core.study.presets import resolve_preset, workspace_overrides
from mashup_core.study.report import StudyTable, study_table
from mashup_core.study.spec import StudySpec
from mashup_core.workspace import Workspace

__all__ = ["StudySpec", "cancel_study", "launch_study", "load_study_table", "spec_from_form",
           "study_job"]


def spec_from_form(ws: Workspace, config, tasks: Sequence[str], *, preset: str | None,
                   methods: Sequence[str], ks: Sequence[int], n: int, eval_limit: int,
                   train: bool) -> tuple[StudySpec, list[str]]:
    """The validated spec the form asks for, and the lines that show a preset's values.

    With a preset its settings win over the form's (the workspace's own lr and chat template
    override it, and the lines say which did); without one the workspace's LoRA lr is used.
    """
    lines: list[str] = []
    if preset:
        resolved = resolve_preset(preset, config.defaults.finetune,
                                  workspace=workspace_overrides(ws, config))
        spec, lines = StudySpec(tasks=tuple(tasks), **resolved.values), resolved.lines
    else:
        spec = StudySpec(tasks=tuple(tasks), methods=tuple(methods), ks=tuple(ks), ns=(int(n),),
                         eval_limit=int(eval_limit), train=train,
                         lrs=(config.learning_rate("lora"),))
    spec.validate()
    return spec, lines


def load_study_table(study_dir: str | Path) -> StudyTable:
    """The study's cells as one table (`study.report.study_table`)."""
    return study_table(Path(study_dir))
