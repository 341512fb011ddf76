"""`mashup predict`: the payoff of a mashup run before training it, from finished studies."""

from __future__ import annotations

import argparse

from mashup_core import defaults


def register(sub, parent: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser(
        "predict", parents=[parent],
        help="predict a mashup run's Δ accuracy and parity before training, from finished studies",
        description="Fits a small ridge model on every finished train cell of the workspace's "
        "studies (features known before training: relevance of the merged checkpoints and of the "
        "base, their update similarity, k, n, method, lr) and predicts the target's Δ final "
        "accuracy and training-to-parity with 80 % split-conformal intervals. The target's own "
        "cells are left out. --validate: each target predicted from the others.")
    cmd.add_argument("--target", help="a target of the workspace (its relevance must be scored)")
    cmd.add_argument("--k", type=int, default=defaults.TOP_K)
    cmd.add_argument("--method", default=defaults.MERGE_METHOD)
    cmd.add_argument("--n", type=int, default=defaults.STUDY_N)
    cmd.add_argument("--scorer", default=defaults.SCORER)
    cmd.add_argument("--lr", type=float, help="default: the workspace's")
    cmd.add_argument("--eval-metric", default=defaults.EVAL_METRIC,
                     help="the studies to learn from: those evaluating with this metric")
    cmd.add_argument("--validate", action="store_true",
                     help="leave-one-target-out: coverage, rank correlation, error vs the mean")
    cmd.set_defaults(func=_predict)


def _predict(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.compare.payoff import (
        OUTCOMES,
        PredictionError,
        leave_one_target_out,
        teaching_note,
    )
    from mashup_core.config import find_target, resolve_config
    from mashup_core.study.payoff import missing_features, workspace_examples
    from mashup_core.views.payoff import payoff_query, prediction_text, predictions
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    if args.validate:
        examples = workspace_examples(ws, args.eval_metric)
        if examples.empty:
            raise PredictionError(f"no finished train cells in this workspace's studies that "
                                  f"evaluate with {args.eval_metric}")
        out, lines = {"missing_features": missing_features(examples)}, []
        for outcome, label in OUTCOMES.items():
            check = leave_one_target_out(examples, outcome)
            out[outcome] = {"coverage": check.coverage, "spearman": check.spearman,
                            "mae": check.mae, "baseline_mae": check.baseline_mae,
                            "strongest": list(check.strongest),
                            "per_target": check.per_target.to_dict("records")}
            lines.append(f"{label}: coverage {check.coverage:.0%}, Spearman "
                         f"{check.spearman if check.spearman is None else round(check.spearman, 2)}, "
                         f"MAE {check.mae:.2f} vs the mean's {check.baseline_mae:.2f}\n  "
                         + teaching_note(check).replace("**", ""))
        emit(args, out, "\n".join(lines))
        return 0
    if not args.target:
        raise PredictionError("name --target (or --validate)")
    config = resolve_config(ws)
    spec = find_target(ws, args.target, "train").to_dict()
    lr = args.lr if args.lr is not None else config.learning_rate()
    query = payoff_query(ws, spec, k=args.k, method=args.method, lr=lr, n=args.n,
                         scorer=args.scorer)
    found = predictions(ws, query, args.eval_metric)
    emit(args, {"target": args.target, "query": query.to_dict("records")[0],
                **{o: {"value": p.value, "low": p.low, "high": p.high, "cells": p.cells,
                       "targets": p.targets, "features": p.features,
                       "strongest": list(p.strongest)} for o, p in found.items()}},
         prediction_text(found).replace("**", ""))
    return 0
