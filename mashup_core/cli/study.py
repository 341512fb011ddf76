"""`mashup study` (the leave-one-out grid) and `mashup parity` (a mashup run vs its baseline)."""

from __future__ import annotations

import argparse


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub, parent: argparse.ArgumentParser) -> None:
    study = sub.add_parser(
        "study", parents=[parent],
        help="leave-one-out study: for each task, merge top-k of the other tasks' adapters",
        description="For each target task, score the other tasks' final adapters, merge the top k "
        "with each method, and record the merged model's accuracy (optionally after finetuning). "
        "Prints the mean rank of each (method, k) across targets. Rerunning resumes: finished "
        "cells are kept.",
    )
    study.add_argument("--tasks", default="all",
                       help="comma-separated targets, or 'all': the workspace's (default)")
    study.add_argument("--methods", type=_names, default=["linear", "cat_svd", "ties"],
                       help="comma-separated merge methods (default linear,cat_svd,ties)")
    study.add_argument("--ks", type=_ints, default=[1, 2, 3], help="comma-separated k values (default 1,2,3)")
    study.add_argument("--scorer", type=_names, default=["acc"], help="scorer(s): acc, nll, acc_norm")
    study.add_argument("--weights", type=_names, default=["equal"], help="weighting(s): equal, proportional")
    study.add_argument("--n", type=int, default=64, help="target train examples used for scoring")
    study.add_argument("--density", type=float, default=0.5, help="density of the pruning methods")
    study.add_argument("--eval-limit", type=int, default=0, help="validation examples (0 = all)")
    study.add_argument("--seed", type=int, default=0)
    study.add_argument("--train", action="store_true",
                       help="also finetune from every merge and from scratch, and compare")
    study.add_argument("--train-steps", type=int, default=100)
    study.add_argument("--lr", type=float, help="default: the workspace's (mashup.toml), else by finetune mode")
    study.add_argument("--batch-size", type=int, default=32)
    study.add_argument("--eval-every", type=int, default=10)
    study.add_argument("--parallel", type=int, default=1, metavar="N", help="worker processes (one per target at a time)")
    study.add_argument("--device", help="cpu, cuda or cuda:N (default: the workspace's; on a GPU each "
                       "target queues for the card with runs and scoring)")
    study.add_argument("--id", dest="study_id", help="study folder name (default: derived from the settings)")
    study.add_argument("--job", metavar="ID",
                       help="run the stored spec of study ID and record the job's state "
                       "(how the dashboard runs a study in the background)")
    study.set_defaults(func=_study)

    parity = sub.add_parser("parity", parents=[parent],
                            help="compare a mashup run with its from-scratch baseline")
    parity.add_argument("--scratch", required=True, metavar="RUN_ID")
    parity.add_argument("--mashup", required=True, metavar="RUN_ID")
    parity.set_defaults(func=_parity)


def _study(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.config import resolve_config
    from mashup_core.study.grid import run_study
    from mashup_core.study.job import run_study_job
    from mashup_core.study.report import format_rank_table, study_table
    from mashup_core.study.spec import StudyError, StudySpec, study_task_names
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    if args.job:
        study_dir = run_study_job(ws, args.job)
        emit(args, {"study_dir": str(study_dir)}, f"study {args.job} done: {study_dir}")
        return 0
    tasks = study_task_names(ws) if args.tasks == "all" else _names(args.tasks)
    if not tasks:
        raise StudyError(f"the workspace {ws.root} lists no targets; add them to mashup.toml "
                         "(`mashup config --add-target ...`) or name --tasks")
    if args.parallel < 1:
        raise StudyError(f"--parallel must be at least 1 (got {args.parallel})")
    spec = StudySpec(
        tasks=tasks, methods=args.methods, ks=args.ks, scorers=args.scorer, weightings=args.weights,
        n=args.n, seed=args.seed, eval_limit=args.eval_limit, density=args.density,
        train=args.train, train_steps=args.train_steps, train_batch_size=args.batch_size,
        train_lr=args.lr, eval_every=args.eval_every,
    )
    device = args.device or resolve_config(ws).defaults.device
    if device == "auto":
        from mashup_core.models.loading import default_device

        device = str(default_device())
    study_dir = run_study(ws, spec, args.study_id, parallel=args.parallel,
                          progress=not args.no_progress, device=device)
    table = study_table(study_dir)
    emit(args, {"study_dir": str(study_dir), **table.to_dict()},
         f"{format_rank_table(table)}\nresults in {study_dir}")
    return 0


def _parity(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.compare.parity import compare_runs
    from mashup_core.jobs.store import get_run
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    scratch, mashup = get_run(ws, args.scratch), get_run(ws, args.mashup)
    result = compare_runs(scratch.metrics, mashup.metrics, mashup.timings, scratch.timings)
    emit(args, {"scratch": scratch.id, "mashup": mashup.id, **result})
    return 0
