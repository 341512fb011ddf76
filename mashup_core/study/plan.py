"""A study as a plan of engine tasks (`study.engine.CellTask`): who computes which cells, on
what resources, after whom.

    select/T/nN     score T's library on its first N train rows; base + merge cells   (CPU)
    recycle/T/nN    the recycle search for T on the other targets' rows (init recycle) (CPU)
    scratch/...     one scratch cell (a fresh finetune of the base)                   (GPU*)
    train/...       one train cell, after its select (or recycle) task                (GPU*)

(*) num_gpus=1 when the study runs on CUDA, else CPUs only. Only cells not yet in the study's
cells file are planned; a select task whose cells are all done still serves its selection
(saved in the study folder) to train cells that need it, without scoring again.
"""

from __future__ import annotations

from pathlib import Path

from mashup_core.study.engine import CellTask
from mashup_core.study.spec import (
    RECYCLE,
    StudyError,
    StudySpec,
    cell_key,
    planned_cells,
    read_cells,
)
from mashup_core.workspace import Workspace


def require_recycle(spec: StudySpec) -> None:
    """Init 'recycle' needs `merging.recycle` and at least two targets (one to hold out)."""
    if not spec.train or RECYCLE not in spec.inits:
        return
    try:
        from mashup_core.merging.recycle import recycle_weights  # noqa: F401
    except ImportError as exc:
        raise StudyError(f"inits: recycle needs mashup_core.merging.recycle ({exc})") from exc
    if len(spec.tasks) < 2:
        raise StudyError("inits: recycle searches on the other targets' rows, so a study with "
                         "init recycle needs at least two tasks")


def plan_study(ws: Workspace, spec: StudySpec, study_dir: Path, device: str = "cpu"
               ) -> list[CellTask]:
    """The tasks that compute the study's missing cells (none when it is complete)."""
    from mashup_core.study import cells as work

    require_recycle(spec)
    done = read_cells(study_dir)
    todo = [c for c in planned_cells(spec) if cell_key(c) not in done]
    ctx = {"root": str(ws.root), "spec": spec.to_dict(), "study_dir": str(study_dir),
           "device": device}
    gpus = 1.0 if device.startswith("cuda") else 0.0
    tasks: list[CellTask] = []
    for target in spec.tasks:
        mine = [c for c in todo if c["target"] == target]
        trains = [c for c in mine if c["kind"] == "train"]
        for n in spec.ns:
            select = [c for c in mine if (c["kind"] == "merge" and c["n"] == n)
                      or (c["kind"] == "base" and n == spec.ns[0])]
            picks = [c for c in trains if c["n"] == n and c["init"] != RECYCLE]
            recycled = [c for c in trains if c["n"] == n and c["init"] == RECYCLE]
            if select or picks:
                name = f"select/{target}/n{n}"
                tasks.append(CellTask(name, work.select_cells, (ctx, target, n, select),
                                      cells=tuple(cell_key(c) for c in select)))
                tasks += [_train(work, ctx, c, (name,), gpus) for c in picks]
            if recycled:
                name = f"recycle/{target}/n{n}"
                tasks.append(CellTask(name, work.recycle_search, (ctx, target, n)))
                tasks += [_train(work, ctx, c, (name,), gpus) for c in recycled]
        tasks += [_train(work, ctx, c, (), gpus) for c in mine if c["kind"] == "scratch"]
    return tasks


def _train(work, ctx: dict, cell: dict, deps: tuple[str, ...], gpus: float) -> CellTask:
    key = cell_key(cell)
    args = (ctx, cell) if deps else (ctx, cell, None)
    return CellTask(key, work.train_cell, args, deps=deps, num_gpus=gpus, cells=(key,))
