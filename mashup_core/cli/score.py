"""`mashup score`: rank the library's checkpoints by relevance to a target task."""

from __future__ import annotations

import argparse
import os

from mashup_core import defaults
from mashup_core.cli._options import (
    add_model_options,
    add_target_options,
    model_config,
    target_rows,
)


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 8,16,32,64, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def register(sub, parent: argparse.ArgumentParser) -> None:
    from mashup_core.selection.halving import (
        DEFAULT_ETA,
        DEFAULT_MARGIN,
        DEFAULT_MIN_N,
        SELECTIONS,
    )
    from mashup_core.selection.scorers import SCORERS

    score = sub.add_parser(
        "score", parents=[parent],
        help="rank library checkpoints by how well they already do on a target",
        description="Score every checkpoint of the workspace's library (and the base model) on "
        "a sample of the target's train split, rank them and pick the top k to merge.",
    )
    add_target_options(score)
    add_model_options(score)
    score.add_argument("--scorer", default=defaults.SCORER, choices=[*SCORERS, "all"],
                       help="nll: answer loss, lower is better (the paper's text); acc, acc_norm: "
                       "lm-eval's accuracy; token_acc, exact_match: teacher-forced token accuracy "
                       "(the reference code); all: show the top k by each (default: "
                       f"{defaults.SCORER})")
    score.add_argument("--n", type=int, default=defaults.STUDY_N,
                       help=f"target examples to score on (default {defaults.STUDY_N}; the "
                       f"reference code: {defaults.SCORING_N})")
    score.add_argument("--seed", type=int, default=None,
                       help="sample the n examples with this seed (default: the first n)")
    score.add_argument("--k", type=int, default=defaults.TOP_K,
                       help=f"how many checkpoints to select (default {defaults.TOP_K})")
    score.add_argument("--no-snapshots", action="store_true",
                       help="leave out intermediate training snapshots (<task>-step<N>)")
    score.add_argument("--include-own", action="store_true",
                       help="let the target task's own checkpoints be selected (the reference "
                       "code leaves them out)")
    score.add_argument("--sweep", type=_sizes, metavar="N1,N2,...",
                       help="also rank on each of these sample sizes and report how stable the "
                       "ranking is (Kendall tau vs the largest; one scoring pass in all)")
    score.add_argument("--workers", type=int, default=1,
                       help="score on this many Ray workers, each loading the base once and "
                       "scoring a share of the library (default 1: this process)")
    score.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                       help="with --workers: a Ray cluster (default: $RAY_ADDRESS, else local)")
    score.add_argument("--selection", default="full", choices=list(SELECTIONS),
                       help="full: every checkpoint on all n examples; halving: successive "
                       "halving, every checkpoint on --min-n examples, the best 1/eta of them on "
                       "eta times more, ... up to n (large libraries; default: full)")
    score.add_argument("--eta", type=float, default=DEFAULT_ETA,
                       help="halving: keep 1/eta of the checkpoints per round and grow n by eta "
                       "(default %(default)g)")
    score.add_argument("--min-n", type=int, default=DEFAULT_MIN_N,
                       help="halving: examples of the first round (default %(default)s)")
    score.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                       help="halving: also keep every checkpoint within this many standard "
                       "errors of the k-th best, which a few examples cannot tell apart from it "
                       "yet (0: only ties with the cut; default %(default)g)")
    score.add_argument("--batch-size", type=int, default=defaults.EVAL_BATCH_SIZE)
    score.add_argument("--refresh", action="store_true", help="ignore cached scores")
    score.set_defaults(func=_score)


def _load_target(args, ws):
    """(examples, label, the task name its own checkpoints record), from the train split."""
    from mashup_core.training.mashup_init import source_task_of

    spec, rows = target_rows(args, ws, "train")
    return rows, spec.label, source_task_of(spec)


def _score(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.models.library import scan_library
    from mashup_core.selection.scoring import (
        SCORERS,
        ScoringError,
        explain_choice,
        sweep_from_table,
    )
    from mashup_core.selection.store import score_library_cached
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    examples, label, task = _load_target(args, ws)
    config = model_config(args, ws)
    snapshots = False if args.no_snapshots else config.library.include_snapshots
    scan = scan_library(config.sources, base_model_dir=config.base_model, include_snapshots=snapshots)
    if not scan.checkpoints:
        raise ScoringError(f"no usable checkpoints in {', '.join(config.sources) or 'no sources'}"
                           + "".join(f"\n  {r.name}: {r.reason}" for r in scan.rejected))
    scorers = list(SCORERS) if args.scorer == "all" else [args.scorer]
    exclude_task = None if args.include_own else task
    if args.selection == "halving":
        return _halving(args, ws, config, scan, examples, label, exclude_task)
    scored_n = max([args.n, *(args.sweep or [])])
    full = score_library_cached(ws, scan.checkpoints, examples, n=scored_n, seed=args.seed,
                                target=label, base_path=config.base_model, batch_size=args.batch_size,
                                progress=not args.no_progress, refresh=args.refresh,
                                workers=args.workers, address=args.address)
    table = full.head(args.n)
    selected = {s: table.select_top_k(s, args.k, exclude_task=exclude_task) for s in scorers}
    explanation = explain_choice(table, scorers[0], args.k, exclude_task=exclude_task)
    sweep = (sweep_from_table(full, args.sweep, scorers[0], seed=args.seed or 0,
                              exclude_task=exclude_task) if args.sweep else None)

    data = table.to_dict()
    data.pop("per_example")
    result = {
        "workspace": str(ws.root), "target": label, "n": table.n, "seed": args.seed,
        "k": args.k, "scorers": scorers, "exclude_task": exclude_task, "selected": selected,
        "explanation": explanation, "table": data, "from_cache": full.from_cache,
        "rejected": [r.to_dict() for r in scan.rejected],
        "sweep": sweep.to_dict() if sweep else None,
    }
    text = [_render(table, scorers[0], selected[scorers[0]], exclude_task)]
    text += [f"top {args.k} by {s}: {', '.join(names)}" for s, names in selected.items()]
    text += ["", explanation]
    if sweep:
        text += ["", _render_sweep(sweep)]
    if scan.rejected:
        text += ["", "Rejected checkpoints:"] + [f"  {r.name}: {r.reason}" for r in scan.rejected]
    if full.from_cache:
        text.append(f"(scores from the cache in {ws.cache_dir / 'scores'}; --refresh to recompute)")
    emit(args, result, "\n".join(text))
    return 0


def _halving(args, ws, config, scan, examples, label, exclude_task) -> int:
    from mashup_core.cli import emit
    from mashup_core.selection.halving import successive_halving_cached
    from mashup_core.selection.scoring import SCORERS, ScoringError, explain_choice

    if args.scorer == "all":
        raise ScoringError("--selection halving ranks by one scorer: pass --scorer "
                           + ", ".join(SCORERS))
    if args.sweep:
        raise ScoringError("--sweep needs every checkpoint scored on all n: use --selection full")
    result = successive_halving_cached(
        ws, scan.checkpoints, examples, n=args.n, seed=args.seed, base_path=config.base_model,
        target=label, scorer=args.scorer, k=args.k, eta=args.eta, min_n=args.min_n,
        margin=args.margin, exclude_task=exclude_task, batch_size=args.batch_size,
        progress=not args.no_progress, refresh=args.refresh)
    explanation = explain_choice(result.table, args.scorer, args.k)
    data = result.to_dict()
    data["table"].pop("per_example")
    out = {
        "workspace": str(ws.root), "target": label, "n": result.n, "seed": args.seed,
        "k": args.k, "scorers": [args.scorer], "exclude_task": exclude_task,
        "selection": "halving", "selected": {args.scorer: result.selected},
        "explanation": explanation, "halving": data, "from_cache": result.from_cache,
        "rejected": [r.to_dict() for r in scan.rejected],
    }
    text = [_render(result.table, args.scorer, result.selected, None), "",
            _render_halving(result), f"top {args.k} by {args.scorer}: {', '.join(result.selected)}",
            "", explanation]
    if result.excluded:
        text.append(f"(left out, trained on {exclude_task}: {', '.join(result.excluded)})")
    if result.from_cache:
        text.append(f"(from the cache in {ws.cache_dir / 'halving'}; --refresh to recompute)")
    emit(args, out, "\n".join(text))
    return 0


def _render_halving(result) -> str:
    margin = f", margin {result.margin:g} SE" if result.margin else ""
    lines = [f"Successive halving (eta {result.eta:g}{margin}, by {result.scorer}): "
             f"{result.cost} example-forwards, {result.cost_ratio:.2f}x full scoring's "
             f"{result.full_cost}",
             f"  {'n':>5} {'alive':>6} {'kept':>5} {'cost':>7} {'secs':>6}  dropped (best first)"]
    for r in result.rounds:
        dropped = ", ".join(r.dropped[:6]) + (f", ... (+{len(r.dropped) - 6})" if len(r.dropped) > 6
                                              else "")
        lines.append(f"  {r.n:>5} {len(r.alive):>6} {len(r.kept):>5} {r.cost:>7} "
                     f"{r.seconds:>6.1f}  {dropped or '-'}")
    return "\n".join(lines)


def _render(table, scorer: str, selected: list[str], exclude_task: str | None) -> str:
    from mashup_core.selection.scoring import BASE_ROW, SCORERS

    s = SCORERS[scorer]
    order = table.rank(scorer, exclude_task=exclude_task)
    base = table.base
    if base is not None:  # the base sits where it would rank: rows below it look irrelevant
        at = sum(s.better(table.row(n).value(scorer), base.value(scorer)) for n in order)
        order.insert(at, BASE_ROW)
    left_out = [r.name for r in table.rows if r.name not in order]
    header = (f"Target {table.target}: {table.n} examples, ranked by {s.label} "
              f"({'higher' if s.higher_is_better else 'lower'} is better)")
    lines = [header, f"    {'#':>3}  {'checkpoint':<18} {'trained on':<10} {'nll':>7} {'acc':>6} "
                     f"{'acc_norm':>8} {'secs':>6}"]
    rank = 0
    for name in order + left_out:
        row = table.row(name)
        if name == BASE_ROW:
            place = "-"
        elif name in left_out:
            place = "x"
        else:
            rank += 1
            place = str(rank)
        mark = "*" if name in selected else " "
        lines.append(f"  {mark} {place:>3}  {name:<18} {row.source_task or '-':<10} {row.nll:>7.3f} "
                     f"{row.acc:>6.2f} {row.acc_norm:>8.2f} {row.seconds:>6.2f}")
    notes = ["* selected"]
    if left_out:
        notes.append(f"x left out (trained on the target {exclude_task})")
    lines.append("  " + "; ".join(notes))
    for name, reason in table.skipped.items():
        lines.append(f"  not scored: {name}: {reason}")
    return "\n".join(lines)


def _render_sweep(sweep) -> str:
    lines = [f"Sample-size sweep ({sweep.scorer}): how the ranking at n agrees with n={sweep.ns[-1]}",
             f"  {'n':>5} {'tau':>6} {'top-1 agree':>12}  top 3"]
    for n in sweep.ns:
        tau = "-" if sweep.tau[n] is None else f"{sweep.tau[n]:.2f}"
        lines.append(f"  {n:>5} {tau:>6} {sweep.top1_agreement[n]:>12.2f}  "
                     f"{', '.join(sweep.rankings[n][:3])}")
    lines.append(f"  (top-1 agreement over {sweep.reshuffles} reshuffles of the scored sample)")
    lines += [f"  {note}" for note in sweep.notes]
    return "\n".join(lines)
