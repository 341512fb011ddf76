"""Running a leave-one-out study: its missing cells planned as tasks (`study.plan`) and run by
the engine (`study.engine`: Ray, locally or on a cluster, or inline in this process)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mashup_core.study.report import study_table
from mashup_core.study.spec import (
    SPEC_FILE,
    SUMMARY_FILE,
    StudyError,
    StudySpec,
    load_study_split,
    open_study,
    read_cells,
    study_library,
)
from mashup_core.workspace import Workspace, read_json, write_json_atomic


def run_study(
    ws: Workspace, spec: StudySpec, study_id: str | None = None, *, progress: bool = True,
    on_cell: Callable[[dict], None] | None = None, device: str = "cpu", engine: str = "ray",
    address: str | None = None,
) -> Path:
    """Run (or finish) a leave-one-out study; returns its folder. Finished cells are kept.

    `engine`: 'ray' (a local instance sized to the machine, or the cluster at `address` /
    RAY_ADDRESS) or 'inline' (this process, in dependency order). `device` ('cpu', 'cuda',
    'cuda:N'): where train cells run; on CUDA each asks Ray for a GPU and queues for the card
    with training runs and scoring (`jobs.slot`). Scoring and merging run on CPUs.
    """
    from mashup_core.config import resolve_config
    from mashup_core.study.engine import run_tasks
    from mashup_core.study.plan import plan_study, require_recycle

    resolve_config(ws)  # a workspace without a base says how to get one, before any work
    for target in spec.tasks:  # every target and its evaluation split load, before any work
        load_study_split(ws, target, spec.eval_split, 1)
    spec.validate()  # the grid's names and numbers, before reading the library
    library = study_library(ws, spec.finetune)
    if spec.finetune == "full" and not library:
        raise StudyError("finetune full: the library holds no full-model checkpoints (a full "
                         "study merges whole checkpoints of the base); add their folders as "
                         "sources, or use finetune lora")
    spec.validate(min(sum(c.source_task != t for c in library) for t in spec.tasks))
    require_recycle(spec)
    study_dir = open_study(ws, spec, study_id)
    spec = StudySpec.from_dict(read_json(study_dir / SPEC_FILE))  # the grid may have grown
    started = time.perf_counter()
    before = len(read_cells(study_dir))
    tasks = plan_study(ws, spec, study_dir, device)
    if tasks:
        run_tasks(tasks, study_dir, address=address, engine=engine, progress=progress,
                  on_record=on_cell)
    summary = study_table(study_dir).to_dict()
    summary["seconds_this_call"] = time.perf_counter() - started
    summary["cells_computed_this_call"] = len(read_cells(study_dir)) - before
    write_json_atomic(study_dir / SUMMARY_FILE, summary)
    return study_dir
