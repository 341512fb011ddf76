"""`mashup run|launch|runs|show|cancel|resume|new-spec`: training runs and background jobs."""

from __future__ import annotations

import argparse
import json

from mashup_core import defaults
from mashup_core.cli._options import (
    add_model_options,
    add_target_options,
    model_config,
    target_spec,
)


def register(sub, parent: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", parents=[parent], help="run a spec in the foreground")
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("spec", nargs="?", metavar="SPEC.json", help="a run spec (see new-spec)")
    what.add_argument("--resume-id", metavar="ID", help="continue an existing run in this process")
    run.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    launch = sub.add_parser("launch", parents=[parent],
                            help="start a spec as a background job (it queues if the device is busy)")
    launch.add_argument("spec", metavar="SPEC.json")
    launch.add_argument("--pair", action="store_true",
                        help="also launch (or reuse) the matching from-scratch baseline")
    launch.set_defaults(func=_launch)

    runs = sub.add_parser("runs", parents=[parent], help="list runs, newest first")
    runs.add_argument("--status", help="only runs in this state (queued, running, done, ...)")
    runs.add_argument("--target", help="only runs on this target")
    runs.add_argument("--kind", choices=["scratch", "mashup"])
    runs.add_argument("--group", help="only runs of this pair/group id")
    runs.add_argument("--rebuild-index", action="store_true", help="rebuild the index from the run folders")
    runs.set_defaults(func=_list)

    show = sub.add_parser("show", parents=[parent], help="a run's spec, status, curve and timings")
    show.add_argument("run_id", metavar="ID")
    show.set_defaults(func=_show)

    cancel = sub.add_parser("cancel", parents=[parent], help="stop a queued or running job")
    cancel.add_argument("run_id", metavar="ID")
    cancel.set_defaults(func=_cancel)

    resume = sub.add_parser("resume", parents=[parent],
                            help="continue a killed, cancelled or failed run from its last checkpoint")
    resume.add_argument("run_id", metavar="ID")
    resume.add_argument("--foreground", action="store_true", help="run here instead of in the background")
    resume.set_defaults(func=_resume)

    new = sub.add_parser("new-spec", parents=[parent],
                         help="print a valid run spec with defaults (a template to edit)")
    add_target_options(new)
    add_model_options(new)
    new.add_argument("--kind", choices=["scratch", "mashup"], default="mashup")
    new.add_argument("--name", default="")
    new.add_argument("--scorer", default=defaults.SCORER)
    new.add_argument("--n", type=int, default=defaults.SCORING_N, help="target examples used for scoring")
    new.add_argument("--k", type=int, default=defaults.TOP_K, help="checkpoints to merge")
    new.add_argument("--method", default=defaults.MERGE_METHOD, help="merge method")
    new.add_argument("--weights", default=defaults.WEIGHT_STRATEGY, help="weight strategy")
    new.add_argument("--init", default="", help="scratch, merged-fold or merged-continue (default: "
                     "scratch runs scratch; mashup runs merged-continue, or merged-fold for full)")
    new.add_argument("--finetune", choices=["lora", "full"],
                     help="lora or full (default: the workspace's)")
    new.add_argument("--steps", type=int, default=defaults.TRAIN_STEPS)
    new.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    new.add_argument("--lr", type=float,
                     help="learning rate (default: the workspace's, else by finetune mode)")
    new.add_argument("--eval-every", type=int, default=defaults.EVAL_EVERY)
    new.add_argument("--eval-metric", default=defaults.EVAL_METRIC,
                     help="what curves, parity and the best lr read: acc, acc_norm, token_acc, "
                     "exact_match (every evaluation records all of them)")
    new.add_argument("--checkpoint-every", type=int, default=defaults.CHECKPOINT_EVERY)
    new.add_argument("--report-to", action="append", metavar="TRACKER",
                     help="log the run to tensorboard or mlflow too (repeatable; default: the "
                     "workspace's [defaults] report_to)")
    new.add_argument("--tracking-uri", help="the MLflow tracking URI (default: the workspace's, "
                     "else a file store in the workspace's mlruns/)")
    new.add_argument("--seed", type=int, default=0, help="seeds everything, batch order included")
    new.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the workspace's)")
    new.set_defaults(func=_new_spec)


def _ws(args):
    from mashup_core.workspace import Workspace

    return Workspace.resolve(args.workspace)


def _run(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.jobs.runner import execute_run
    from mashup_core.jobs.spec import RunSpec
    from mashup_core.jobs.store import create_run

    ws = _ws(args)
    run_id = args.resume_id or create_run(ws, RunSpec.load(args.spec))
    record = execute_run(ws, run_id, progress=not args.no_progress, echo=not args.detached)
    if not args.detached:
        emit(args, _summary(record), _describe(record))
    return 0 if record.state == "done" else 1


def _launch(args) -> int:
    from dataclasses import asdict

    from mashup_core.cli import emit
    from mashup_core.jobs.runner import launch, launch_pair
    from mashup_core.jobs.spec import RunSpec

    ws, spec = _ws(args), RunSpec.load(args.spec)
    if args.pair:
        pair = launch_pair(ws, spec)
        reused = " (reused)" if pair.reused_baseline else ""
        emit(args, asdict(pair), f"{pair.mashup_id}\n{pair.baseline_id}{reused}\ngroup {pair.group}")
    else:
        run_id = launch(ws, spec)
        emit(args, {"id": run_id}, run_id)
    return 0


def _list(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.jobs.store import list_runs, rebuild_index

    ws = _ws(args)
    if args.rebuild_index:
        rebuild_index(ws)
    rows = list_runs(ws, status=args.status, target=args.target, kind=args.kind, group=args.group)
    lines = [f"{'id':<44} {'kind':<8} {'target':<12} {'status':<10} {'acc':>6} group"]
    for r in rows:
        acc = f"{r['final_acc']:.3f}" if r["final_acc"] is not None else "-"
        lines.append(f"{r['id']:<44} {r['kind']:<8} {r['target']:<12} {r['status']:<10} {acc:>6} "
                     f"{r['group_id'] or ''}")
    emit(args, rows, "\n".join(lines) if rows else f"no runs in {ws.runs_dir}")
    return 0


def _show(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.jobs.slot import waiting_message
    from mashup_core.jobs.store import get_run

    ws = _ws(args)
    record = get_run(ws, args.run_id)
    waiting = waiting_message(ws, record.id) if record.state == "queued" else None
    text = _describe(record) + (f"\n  {waiting}" if waiting else "")
    emit(args, {**record.to_dict(), "waiting_for": waiting}, text)
    return 0


def _cancel(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.jobs.runner import cancel

    status = cancel(_ws(args), args.run_id)
    emit(args, status, f"{args.run_id}: cancel requested (was {status.get('state')})")
    return 0


def _resume(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.jobs.runner import resume
    from mashup_core.jobs.store import get_run

    ws = _ws(args)
    resume(ws, args.run_id, detach=not args.foreground, progress=not args.no_progress)
    record = get_run(ws, args.run_id)
    emit(args, _summary(record), f"{args.run_id}: {record.state}")
    return 0


def _new_spec(args) -> int:
    from mashup_core.jobs.workspace_spec import workspace_run_spec

    # A spec is complete on its own: absolute paths, the target with its mapping, the lr
    # (built where the dashboard's Launch page builds its specs too).
    ws = _ws(args)
    spec = workspace_run_spec(
        model_config(args, ws), target_spec(args, ws, "train"), finetune=args.finetune,
        lr=args.lr, device=args.device, steps=args.steps, batch_size=args.batch_size,
        seed=args.seed, where="new-spec", kind=args.kind, name=args.name, scorer=args.scorer,
        n=args.n, k=args.k, merge_method=args.method, weight_strategy=args.weights,
        init=args.init, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        eval_metric=args.eval_metric,
        **({"report_to": args.report_to} if args.report_to else {}),
        **({"tracking_uri": args.tracking_uri} if args.tracking_uri else {}),
    )
    print(json.dumps(spec.to_dict(), indent=2))
    return 0


def _summary(record) -> dict:
    return {"id": record.id, "status": record.status, "timings": record.timings,
            "evals": record.evals}


def _describe(record) -> str:
    spec, st = record.spec, record.status
    lines = [f"run {record.id}: {spec.kind} on {spec.target_label} ({spec.init}, {spec.finetune}), "
             f"{st.get('state')}" + (f": {st['error']}" if st.get("error") else "")]
    if record.selection:
        chosen = ", ".join(f"{n} ({w:.2f})" for n, w in
                           zip(record.selection["selected"], record.selection["weights"], strict=True))
        lines.append(f"  merged: {chosen}")
    for e in record.evals:
        lines.append(f"  step {e['step']:>5}  {e['seconds']:>8.1f} s  acc {e['acc']:.3f}  "
                     f"nll {e['nll']:.3f}")
    if record.timings:
        lines.append("  timings: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(record.timings.items())))
    return "\n".join(lines)
