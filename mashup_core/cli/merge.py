"""`mashup merge` and `mashup search-weights`: combine library adapters into one."""

from __future__ import annotations

import argparse
from pathlib import Path

from mashup_core.cli._options import (
    add_model_options,
    add_target_options,
    model_config,
    target_rows,
)

# Listed here so `--help` needs no torch; tests/test_merging.py checks it against the registry.
METHODS = ("linear", "cat", "cat_svd", "task_arithmetic", "ties", "dare_linear", "dare_ties",
           "magnitude_prune")


def register(sub, parent: argparse.ArgumentParser) -> None:
    merge = sub.add_parser("merge", parents=[parent],
                           help="merge LoRA adapters into one PEFT adapter, or full checkpoints "
                           "of one base into one checkpoint (streamed, tensor by tensor)")
    _adapter_arguments(merge)
    full = merge.add_argument_group("full checkpoints (folders with config.json + *.safetensors)")
    full.add_argument("--base", metavar="DIR", help="their base model (default: the workspace's)")
    full.add_argument("--max-shard-size", default="2GB",
                      help="largest output shard, e.g. 500MB or 2GB (default 2GB)")
    how = merge.add_mutually_exclusive_group()
    how.add_argument("--weights", help="one weight per adapter, comma-separated, e.g. 0.5,0.5")
    how.add_argument("--strategy", choices=("equal", "proportional"), default=None,
                     help="equal (default) or proportional to --scores")
    merge.add_argument("--scores", help="relevance scores for --strategy proportional, comma-separated")
    merge.add_argument("--lower-is-better", action="store_true",
                       help="the --scores are losses (NLL): weights go as exp(-score)")
    merge.add_argument("--out", metavar="DIR",
                       help="output adapter folder (default: <workspace>/merges/<method>-<names>)")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    merge.set_defaults(func=_merge)

    search = sub.add_parser(
        "search-weights", parents=[parent],
        help="search merge weights that do best on a target's train examples, or on several "
        "targets at once (--targets: the recycle search and its trade-off front)",
    )
    _adapter_arguments(search)
    for action in search._actions:  # with --targets, the library's checkpoints are the default
        if action.dest == "adapters":
            action.nargs = "*"
    search.set_defaults(method=None)  # linear for one target, cat (exact) for --targets
    add_target_options(search, required=False)
    several = search.add_argument_group("several targets (recycle: Khalifa et al. 2024)")
    several.add_argument("--targets", metavar="A,B,C",
                         help="search one weight per checkpoint for these targets together")
    several.add_argument("--held-out", metavar="TARGET",
                         help="a target left out of the search, scored on its merges")
    several.add_argument("--objective", default="mean",
                         help="mean (default), min, or weighted:0.5,0.3,0.2 (one per target)")
    several.add_argument("--checkpoints", metavar="NAME,NAME",
                         help="library checkpoints to weigh (default: every LoRA checkpoint)")
    several.add_argument("--front", type=int, default=0, metavar="K",
                         help="K more searches along preference weights over the targets, "
                         "sharing --budget, for the trade-off front (default 0)")
    several.add_argument("--id", dest="front_id", metavar="ID",
                         help="save as recycle/ID.json (default: time and targets)")
    search.add_argument("--strategy", default="cmaes", help="cmaes (default), lorahub, equal")
    search.add_argument("--metric", choices=("acc", "nll"),
                        help="what to optimise (default: acc for cmaes, nll for lorahub)")
    search.add_argument("--budget", type=int, default=30, help="objective evaluations (default 30)")
    search.add_argument("--n", type=int, default=64, help="target examples to evaluate on (default 64)")
    add_model_options(search, library=False)
    search.add_argument("--batch-size", type=int, default=32)
    search.add_argument("--out", metavar="DIR", help="also write the merge with the best weights here")
    search.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    search.set_defaults(func=_search)


def _adapter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER_DIR",
                        help="PEFT adapter folders, or names in the workspace library")
    parser.add_argument("--method", default="linear", help=f"merge method: {', '.join(METHODS)} (default linear)")
    parser.add_argument("--rank", type=int, help="output rank of cat_svd and the dense methods")
    parser.add_argument("--density", type=float, help="fraction kept by ties, dare_*, magnitude_prune")
    parser.add_argument("--majority-sign-method", default="total", choices=("total", "frequency"))
    parser.add_argument("--seed", type=int, default=0)


def _floats(text: str, option: str) -> list[float]:
    from mashup_core.merging.lora import MergeConfigError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise MergeConfigError(f"{option} must be comma-separated numbers, got {text!r}") from exc


def _adapter_dirs(ws, names: list[str]) -> list[Path]:
    """A path if it exists, else the checkpoint of that name in the workspace's library."""
    if all(Path(n).exists() for n in names):
        return [Path(n) for n in names]
    from mashup_core.errors import MashupError
    from mashup_core.models.library import workspace_library

    try:
        known = {c.name: c.path for c in workspace_library(ws).checkpoints}
    except MashupError:  # no library configured: the names stay paths, and fail as such
        known = {}
    return [Path(n) if Path(n).exists() or n not in known else known[n] for n in names]


def _merge_options(args) -> dict:
    return {"rank": args.rank, "density": args.density, "seed": args.seed,
            "majority_sign_method": args.majority_sign_method}


def _default_out(ws, method: str, dirs: list[Path]) -> Path:
    return ws.merges_dir / "-".join([method, *(d.name for d in dirs)])


def _merge(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.merging.lora import MergeConfigError, merge_adapters
    from mashup_core.merging.weights import search_weights
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    dirs = _adapter_dirs(ws, args.adapters)
    full = _full_checkpoints(dirs)
    if args.weights is not None:
        weights = _floats(args.weights, "--weights")
    else:
        if args.scores is not None and args.strategy != "proportional":
            raise MergeConfigError("--scores only applies to --strategy proportional")
        scores = _floats(args.scores, "--scores") if args.scores is not None else None
        weights = search_weights(args.strategy or "equal", len(dirs), scores=scores,
                                 higher_is_better=not args.lower_is_better).weights
    out = Path(args.out) if args.out else _default_out(ws, args.method, dirs)
    if full:
        return _merge_full(args, ws, dirs, weights, out)
    record = merge_adapters(dirs, weights, args.method, out, overwrite=args.overwrite,
                            **_merge_options(args))
    shown = ", ".join(f"{d.name}={w:.3g}" for d, w in zip(dirs, record.weights, strict=True))
    emit(args, record.to_dict(),
         f"merged {shown} with {record.method} (rank {record.rank}) in {record.seconds:.2f} s "
         f"-> {record.out_dir}")
    return 0


def _full_checkpoints(dirs: list[Path]) -> bool:
    """Whether `dirs` are full checkpoints (config.json, no adapter_config.json); a mix of
    LoRA adapters and full checkpoints is refused."""
    from mashup_core.merging.lora import MergeConfigError
    from mashup_core.models.library import ADAPTER_CONFIG, MODEL_CONFIG

    full = [d for d in dirs if (d / MODEL_CONFIG).exists() and not (d / ADAPTER_CONFIG).exists()]
    if full and len(full) < len(dirs):
        lora = [d for d in dirs if d not in full]
        raise MergeConfigError(
            f"got both LoRA adapters ({', '.join(d.name for d in lora)}) and full checkpoints "
            f"({', '.join(d.name for d in full)}); merge one kind at a time")
    return bool(full)


def _bytes(text: str) -> int:
    from mashup_core.merging.lora import MergeConfigError

    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30}
    number = text.strip().upper().rstrip("BIKMG")
    unit = text.strip().upper()[len(number):]
    try:
        value = int(float(number) * units[unit])
    except (ValueError, KeyError):
        value = 0
    if value < 1:
        raise MergeConfigError(f"--max-shard-size must be a size like 500MB or 2GB, got {text!r}")
    return value


def _merge_full(args, ws, dirs: list[Path], weights: list[float], out: Path) -> int:
    """`mashup merge` on full checkpoints: the streamed merge into a sharded checkpoint."""
    import json

    from mashup_core.cli import emit
    from mashup_core.merging.full import RECORD_FILE, merge_full_checkpoints
    from mashup_core.merging.lora import MergeConfigError

    if args.rank is not None:
        raise MergeConfigError("--rank applies to LoRA merges; a full merge keeps every tensor's shape")
    base = model_config(args, ws).base_model  # --base wins over the workspace config
    merge_full_checkpoints(dirs, base, weights, args.method, out, density=args.density,
                           seed=args.seed, max_shard_bytes=_bytes(args.max_shard_size),
                           majority_sign_method=args.majority_sign_method, overwrite=args.overwrite)
    record = json.loads((out / RECORD_FILE).read_text())
    shown = ", ".join(f"{d.name}={w:.3g}" for d, w in zip(dirs, record["weights"], strict=True))
    emit(args, record, f"merged {shown} with {record['method']} (full checkpoints, "
         f"{record['shards']} shard(s)) in {record['seconds']:.2f} s -> {record['out_dir']}")
    return 0


def _target_examples(args, ws):
    """A seeded sample of n train examples of the target the options name."""
    from mashup_core.data.targets import DatasetError, sample_examples

    if args.n < 1:
        raise DatasetError(f"--n must be at least 1, got {args.n}")
    return sample_examples(target_rows(args, ws, "train")[1], args.n, args.seed)


def _search(args) -> int:
    from tqdm.auto import tqdm

    from mashup_core.cli import emit
    from mashup_core.merging.lora import load_lora_factors, merge_adapters
    from mashup_core.merging.objective import make_merge_objective
    from mashup_core.merging.weights import WEIGHT_STRATEGIES, WeightSearchError, search_weights
    from mashup_core.models.loading import default_device, load_base_model, load_tokenizer
    from mashup_core.workspace import Workspace

    if args.targets is not None:
        return _search_targets(args)
    if args.target is None:
        raise WeightSearchError("name a target (--target T), or several (--targets A,B,C)")
    args.method = args.method or "linear"
    ws = Workspace.resolve(args.workspace)
    spec = WEIGHT_STRATEGIES.get(args.strategy)
    if spec is None or spec.needs_scores:
        usable = ", ".join(n for n, s in WEIGHT_STRATEGIES.items() if not s.needs_scores)
        raise WeightSearchError(f"--strategy must be one of {usable}, got {args.strategy!r}")
    dirs = _adapter_dirs(ws, args.adapters)
    adapters = load_lora_factors(dirs)  # bad adapters fail before the model loads
    examples = _target_examples(args, ws)
    config = model_config(args, ws)
    trust = config.base.trust_remote_code
    model = load_base_model(config.base_model, device=default_device(), trust_remote_code=trust)
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=trust)
    metric = args.metric or ("acc" if spec.maximize else "nll")
    objective = make_merge_objective(model, tokenizer, adapters, examples, args.method, metric=metric,
                                     batch_size=args.batch_size, **_merge_options(args))
    total = args.budget if spec.needs_objective else 1
    with tqdm(total=total, desc=f"{args.strategy} search", disable=args.no_progress) as bar:
        def progress(_index: int, _value: float, best: float) -> None:
            bar.update(1)
            bar.set_postfix({f"best {metric}": f"{best:.4f}"})

        result = search_weights(args.strategy, len(adapters), objective=objective,
                                budget=args.budget, seed=args.seed, on_progress=progress)
    report = {**result.to_dict(), "metric": metric, "method": args.method, "target": args.target,
              "n": len(examples), "adapters": [str(d) for d in dirs]}
    if args.out:
        record = merge_adapters(dirs, result.weights, args.method, args.out, overwrite=args.overwrite,
                                extra={"search": {k: v for k, v in report.items() if k != "history"}},
                                **_merge_options(args))
        report["merge"] = record.to_dict()
    shown = ", ".join(f"{d.name}={w:.3f}" for d, w in zip(dirs, result.weights, strict=True))
    text = (f"{args.strategy}: {shown}; {metric} {result.best_value:.4f} on {len(examples)} "
            f"examples of {args.target} after {len(result.history)} evaluations "
            f"({result.seconds:.1f} s)")
    if args.out:
        text += f"\nmerged adapter -> {report['merge']['out_dir']}"
    emit(args, report, text)
    return 0


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())


def _search_targets(args) -> int:
    """`--targets A,B,C`: the multi-target search, its front, saved in the workspace."""
    from tqdm.auto import tqdm

    from mashup_core.cli import emit
    from mashup_core.merging.recycle import (
        DEFAULT_METHOD,
        RecycleError,
        RecycleRequest,
        run_recycle,
        summary,
        validate_request,
    )
    from mashup_core.workspace import Workspace

    if args.target is not None:
        raise RecycleError("give --target (one target) or --targets (several), not both")
    if args.out or args.strategy != "cmaes" or args.metric not in (None, "acc"):
        raise RecycleError("--targets searches accuracy with CMA-ES; --out, --strategy and "
                           "--metric apply to one --target (write a merge of the front with "
                           "`mashup recycle write ID POINT` or from the Recycle page)")
    if args.adapters and args.checkpoints:
        raise RecycleError("name the checkpoints once: as arguments or with --checkpoints")
    ws = Workspace.resolve(args.workspace)
    req = RecycleRequest(
        targets=_names(args.targets), held_out=args.held_out, objective=args.objective,
        checkpoints=_names(args.checkpoints) or tuple(args.adapters), budget=args.budget,
        front_k=args.front, n=args.n, seed=args.seed, method=args.method or DEFAULT_METHOD,
        batch_size=args.batch_size,
    )
    validate_request(ws, req)  # every bad input is a message before the model loads
    with tqdm(total=args.budget, desc="recycle search", disable=args.no_progress) as bar:
        def progress(_index: int, _value: float, best: float) -> None:
            bar.update(1)
            bar.set_postfix({"best": f"{best:.4f}"})

        front = run_recycle(ws, req, on_progress=progress, front_id=args.front_id)
    numbers = summary(front)
    text = _recycle_text(front, numbers)
    emit(args, {"id": front["id"], "summary": numbers, "result": front["result"],
                "evaluations": front["evaluations"], "seconds": front["seconds"]}, text)
    return 0


def _recycle_text(front: dict, numbers: dict) -> str:
    def line(label: str, row: dict | None) -> str:
        if row is None:
            return f"  {label}: –"
        accs = ", ".join(f"{t} {a:.3f}" for t, a in row["per_target"].items())
        held = "" if row.get("held_out") is None else f"; held-out {row['held_out']:.3f}"
        return f"  {label} ({row['label']}): {front['objective']} {row['objective']:.3f} ({accs}){held}"

    result = front["result"]
    shown = ", ".join(f"{n}={w:.2f}" for n, w in zip(result["checkpoints"], result["weights"],
                                                       strict=True))
    corr = numbers["spearman_weight_own_score"]
    return "\n".join([
        f"recycle search {front['id']}: {front['evaluations']} evaluations in "
        f"{front['seconds']:.1f} s over {len(front['checkpoints'])} checkpoints ({front['method']})",
        line("searched", numbers["searched"]), line("equal weights", numbers["equal"]),
        line("best single", numbers["best_single"]), line("base", numbers["base"]),
        f"  weights: {shown}",
        f"  {numbers['weights_above_0.05']}/{numbers['n_checkpoints']} checkpoints weigh > 0.05; "
        f"Spearman(weight, own score) = {'undefined' if corr is None else f'{corr:.2f}'}; "
        f"{len(numbers['front'])} merges on the front",
        f"  saved: recycle/{front['id']}.json (the Recycle page shows it)",
    ])
