"""`mashup study` (the leave-one-out grid) and `mashup parity` (a mashup run vs its baseline)."""

from __future__ import annotations

import argparse
import os
import sys

from mashup_core import defaults
from mashup_core.cli._options import FORMATS_HELP, add_prompt_format_argument
from mashup_core.selection.scorers import EVAL_METRICS, SCORERS
from mashup_core.study.presets import PRESETS
from mashup_core.study.spec import StudySpec


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _lrs(text: str) -> list[float] | str:
    return "paper" if text.strip() == "paper" else _floats(text)


def register(sub, parent: argparse.ArgumentParser) -> None:
    study = sub.add_parser(
        "study", parents=[parent],
        help="leave-one-out study: for each task, merge top-k of the other tasks' checkpoints",
        description="For each target task, score the other tasks' final checkpoints, merge the "
        "top k with each method, and record the merged model's accuracy; with --train also "
        "finetune from each merge and from scratch, over learning rates, seeds and inits. "
        "Prints the mean rank of each (method, k) across targets. The cells run as Ray tasks "
        "(a local instance, or the cluster at --address). Rerunning resumes: finished cells "
        "are kept. `mashup study report STUDY` writes the paper's tables and figures.",
    )
    study.add_argument("action", nargs="?", choices=["run", "report"], default="run",
                       help="run (default) or report: write a study's tables and figures")
    study.add_argument("study", nargs="?", metavar="STUDY",
                       help="report: the study's id (a folder of the workspace's studies) or path")
    study.add_argument("--out", help="report: the folder to write (default: in the study folder)")
    study.add_argument("--tasks", default="all",
                       help="comma-separated targets, or 'all': the workspace's (default)")
    study.add_argument("--preset", choices=list(PRESETS),
                       help="set every setting as a published pipeline does: 'reference' is "
                       "2son1a/mashup-learning's leave-one-out study (the values and what the "
                       "workspace or a flag overrides are printed before it starts)")
    # None = not given: the spec's default (mashup_core.defaults), or the preset's value.
    study.add_argument("--methods", type=_names, help="comma-separated merge methods (default "
                       f"{','.join(defaults.STUDY_METHODS)})")
    study.add_argument("--ks", type=_ints, help="comma-separated k values (default "
                       f"{','.join(map(str, defaults.STUDY_KS))})")
    study.add_argument("--scorer", dest="scorers", type=_names,
                       help="scorer(s) that rank the library: " + ", ".join(SCORERS))
    study.add_argument("--weights", dest="weightings", type=_names,
                       help="weighting(s): equal, proportional")
    study.add_argument("--ns", "--n", dest="ns", type=_ints,
                       help="comma-separated scoring sample sizes: the first n train examples")
    study.add_argument("--density", type=float, help="density of the pruning methods")
    study.add_argument("--eval-limit", type=int, help="validation examples (0 = all)")
    study.add_argument("--eval-metric", choices=list(EVAL_METRICS),
                       help="what merges and checkpoints are evaluated with (curves, parity, the "
                       "best lr): acc (lm-eval's, the default) or token_acc (the reference's)")
    study.add_argument("--seed", type=int,
                       help="seed of the validation sample and of the merges' random drops")
    study.add_argument("--train", action="store_true", default=None,
                       help="also finetune from every merge and from scratch, and compare")
    study.add_argument("--lrs", "--lr", dest="lrs", type=_lrs,
                       help="comma-separated learning rates, or 'paper': the paper's sweep for the "
                       "finetune mode (default: the workspace's lr)")
    study.add_argument("--seeds", type=_ints,
                       help="comma-separated training seeds (LoRA init, batch order; default 0)")
    study.add_argument("--inits", type=_names,
                       help="where train cells start: merged-continue, merged-fold, recycle "
                       "(default: merged-continue for LoRA, merged-fold for full)")
    study.add_argument("--finetune", choices=["lora", "full"],
                       help="lora, or full: a library of full checkpoints (default: the workspace's)")
    study.add_argument("--train-steps", type=int)
    study.add_argument("--epochs", dest="train_epochs", type=float,
                       help="train this many epochs over the train split instead of --train-steps")
    study.add_argument("--batch-size", dest="train_batch_size", type=int)
    study.add_argument("--eval-every", type=int)
    study.add_argument("--evals-per-epoch", type=int,
                       help="evaluate this many times per epoch instead of every --eval-every steps")
    study.add_argument("--gradient-checkpointing", action="store_true", default=None,
                       help="recompute activations in the backward pass (less memory)")
    add_prompt_format_argument(study, help="how the targets' rows are shown: " + FORMATS_HELP
                               + " (default: the workspace's)")
    study.add_argument("--device", help="where train cells run: cpu, cuda or cuda:N (default: the "
                       "workspace's; on CUDA each train cell asks Ray for a GPU)")
    study.add_argument("--engine", choices=["ray", "inline"], default="ray",
                       help="ray (default: tasks on a local instance or a cluster) or inline "
                       "(this process, one task at a time)")
    study.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                       help="a Ray cluster, e.g. ray://HOST:10001 (default: $RAY_ADDRESS, else "
                       "a local instance sized to this machine)")
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
    from mashup_core.study.spec import StudyError
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    if args.action == "report":
        return _report(args, ws)
    if args.study:
        raise StudyError(f"{args.study!r}: only `mashup study report` takes a study")
    if args.job:
        study_dir = run_study_job(ws, args.job)
        emit(args, {"study_dir": str(study_dir)}, f"study {args.job} done: {study_dir}")
        return 0
    spec = spec_from_args(args, ws)
    config = resolve_config(ws)
    device = args.device or config.defaults.device
    if device == "auto":
        from mashup_core.models.loading import default_device

        device = str(default_device())
    study_dir = run_study(ws, spec, args.study_id, progress=not args.no_progress, device=device,
                          engine=args.engine, address=args.address or None)
    table = study_table(study_dir)
    emit(args, {"study_dir": str(study_dir), **table.to_dict()},
         f"{format_rank_table(table)}\nresults in {study_dir}")
    return 0


# The study flags, by the StudySpec field each sets (argparse's dest is the field's name).
SPEC_FLAGS = ("methods", "ks", "scorers", "weightings", "ns", "lrs", "seeds", "inits", "seed",
              "eval_limit", "eval_metric", "density", "train", "train_steps", "train_epochs",
              "train_batch_size", "eval_every", "evals_per_epoch", "finetune",
              "gradient_checkpointing", "prompt_format")


def spec_from_args(args, ws) -> StudySpec:
    """The study the flags describe (a preset's, with the workspace's and the flags' overrides,
    printed); `--lrs paper` is the paper's sweep for the finetune mode."""
    from mashup_core.config import resolve_config
    from mashup_core.defaults import LR_SWEEP
    from mashup_core.study.presets import resolve_preset, workspace_overrides
    from mashup_core.study.spec import StudyError, study_task_names

    tasks = study_task_names(ws) if args.tasks == "all" else _names(args.tasks)
    if not tasks:
        raise StudyError(f"the workspace {ws.root} lists no targets; add them to mashup.toml "
                         "(`mashup config --add-target ...`) or name --tasks")
    config = resolve_config(ws)
    finetune = args.finetune or config.defaults.finetune
    given = {f: getattr(args, f) for f in SPEC_FLAGS if getattr(args, f, None) is not None}
    if given.get("lrs") == "paper":
        given["lrs"] = LR_SWEEP[finetune]
    given["finetune"] = finetune
    if not args.preset:
        return StudySpec(tasks=tuple(tasks), **given)
    if args.finetune is None:
        del given["finetune"]
    resolved = resolve_preset(args.preset, finetune, workspace=workspace_overrides(ws, config),
                              flags=given)
    print("\n".join(resolved.lines), file=sys.stderr if args.json else sys.stdout)
    return StudySpec(tasks=tuple(tasks), **resolved.values)


def _report(args, ws) -> int:
    from pathlib import Path

    from mashup_core.cli import emit
    from mashup_core.study.spec import StudyError
    from mashup_core.views.export import write_report

    if not args.study:
        raise StudyError("mashup study report STUDY: name the study (its id or folder)")
    study_dir = Path(args.study)
    if not (study_dir / "spec.json").exists():
        study_dir = ws.studies_dir / args.study
    if not (study_dir / "spec.json").exists():
        known = ", ".join(sorted(p.name for p in ws.studies_dir.glob("*/spec.json"))) or "none"
        raise StudyError(f"no study {args.study!r} (studies in {ws.studies_dir}: {known})")
    written = write_report(study_dir, Path(args.out) if args.out else None)
    files = {name: str(path) for name, path in written.items()}
    emit(args, {"study_dir": str(study_dir), **files},
         "\n".join(f"{name}: {path}" for name, path in files.items()))
    return 0


def _parity(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.compare.parity import compare_runs
    from mashup_core.jobs.store import get_run
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    scratch, mashup = get_run(ws, args.scratch), get_run(ws, args.mashup)
    result = compare_runs(scratch.metrics, mashup.metrics, mashup.timings, scratch.timings,
                          metric=mashup.spec.eval_metric)
    emit(args, {"scratch": scratch.id, "mashup": mashup.id, **result})
    return 0
