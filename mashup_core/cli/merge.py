"""`mashup merge` and `mashup search-weights`: combine library adapters into one."""

from __future__ import annotations

import argparse
from pathlib import Path

from mashup_core import defaults
from mashup_core.cli._options import (
    add_model_options,
    add_target_options,
    model_config,
    target_rows,
)

# Listed here so `--help` needs no torch; tests check them against the registries.
METHODS = ("linear", "cat", "cat_svd", "task_arithmetic", "ties", "dare_linear", "dare_ties",
           "magnitude_prune", "core_task_arithmetic", "core_magnitude_prune", "core_ties",
           "core_dare_linear", "core_dare_ties", "knots_ties", "knots_dare", "tsv_m", "iso_c",
           "iso_cts")
FULL_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                "breadcrumbs_ties", "della", "della_linear", "linear", "slerp", "nuslerp",
                "multislerp", "karcher", "model_stock", "sce", "nearswap")


def register(sub, parent: argparse.ArgumentParser) -> None:
    merge = sub.add_parser(
        "merge", parents=[parent],
        help="merge LoRA adapters into one PEFT adapter, or full checkpoints of one base into "
        "one checkpoint (streamed, tensor by tensor); --list-methods describes every method",
        description="Inputs are PEFT LoRA adapter folders (or library names), or full "
        "checkpoints (config.json + *.safetensors) of one base. LoRA methods: "
        f"{', '.join(METHODS)}. Full-checkpoint methods: {', '.join(FULL_METHODS)}. "
        "`mashup merge --list-methods` gives each one's parameters, defaults and paper.")
    _adapter_arguments(merge, seed_default=None)
    merge.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="any parameter of the method by its name (see --list-methods), e.g. "
                       "lambda=0.5, normalize=true, rescale=1/density; per-input values "
                       "comma-separated (density=0.5,0.7)")
    merge.add_argument("--list-methods", action="store_true",
                       help="describe every merge method (family, parameters, needs, paper) and exit")
    full = merge.add_argument_group("full checkpoints (folders with config.json + *.safetensors)")
    full.add_argument("--base", metavar="DIR", help="their base model (default: the workspace's)")
    full.add_argument("--config", metavar="MERGEKIT_YML",
                      help="merge as a mergekit YAML config says (its models, base, method, "
                      "parameters, dtypes and mergekit's defaults); no other inputs")
    full.add_argument("--max-shard-size", default="2GB",
                      help="largest output shard, e.g. 500MB or 2GB (default 2GB)")
    how = merge.add_mutually_exclusive_group()
    how.add_argument("--weights", help="one weight per input, comma-separated, e.g. 0.5,0.5 "
                     "(default: the method's: 1 each where weights scale task vectors, 1/k "
                     "where they are shares of an average)")
    how.add_argument("--strategy", choices=("equal", "proportional"), default=None,
                     help="equal (1/k each) or proportional to --scores")
    merge.add_argument("--scores", help="relevance scores for --strategy proportional, comma-separated")
    merge.add_argument("--lower-is-better", action="store_true",
                       help="the --scores are losses (NLL): weights go as exp(-score)")
    merge.add_argument("--out", metavar="DIR",
                       help="output folder (default: <workspace>/merges/<method>-<names>)")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    merge.set_defaults(func=_merge)

    search = sub.add_parser(
        "search-weights", parents=[parent],
        help="search merge weights that do best on a target's train examples, or on several "
        "targets at once (--targets: the recycle search and its trade-off front)",
    )
    _adapter_arguments(search, seed_default=0)
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
    search.add_argument("--n", type=int, default=defaults.STUDY_N,
                        help="target examples to evaluate on (default %(default)s)")
    add_model_options(search, library=False)
    search.add_argument("--batch-size", type=int, default=defaults.EVAL_BATCH_SIZE)
    search.add_argument("--out", metavar="DIR", help="also write the merge with the best weights here")
    search.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    search.set_defaults(func=_search)


def _adapter_arguments(parser: argparse.ArgumentParser, seed_default: int | None) -> None:
    parser.add_argument("adapters", nargs="*", metavar="INPUT_DIR",
                        help="LoRA adapter folders or full checkpoint folders, or names in the "
                        "workspace library")
    parser.add_argument("--method", default=defaults.MERGE_METHOD,
                        help="merge method (default linear); `mashup merge --list-methods` "
                        "lists them all")
    parser.add_argument("--rank", type=int, help="output rank of the truncating LoRA methods")
    parser.add_argument("--density", type=float, help="fraction of entries the pruning methods keep")
    parser.add_argument("--majority-sign-method", default=None, choices=("total", "frequency"),
                        help="TIES-style sign election: by the sum (total, default) or by count")
    parser.add_argument("--seed", type=int, default=seed_default,
                        help="seed of the random methods' drops"
                        + (" and of the search" if seed_default is not None else ""))


def _floats(text: str, option: str) -> list[float]:
    from mashup_core.merging.lora import MergeConfigError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise MergeConfigError(f"{option} must be comma-separated numbers, got {text!r}") from exc


def _value(text: str):
    """A --param value: a number, true/false, a string, or comma-separated values (per input)."""
    if "," in text:
        return [_value(part) for part in text.split(",")]
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        number = float(text)
    except ValueError:
        return text.strip()
    return int(number) if number.is_integer() and "." not in text and "e" not in lowered else number


def _params(args) -> dict:
    from mashup_core.merging.lora import MergeConfigError

    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise MergeConfigError(f"--param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = _value(value)
    return params


def _adapter_dirs(ws, names: list[str]) -> list[Path]:
    """A path if it exists, else the checkpoint of that name in the workspace's library."""
    if all(Path(n).exists() for n in names):
        return [Path(n) for n in names]
    from mashup_core.config import workspace_library
    from mashup_core.errors import MashupError

    try:
        known = {c.name: c.path for c in workspace_library(ws).checkpoints}
    except MashupError:  # no library configured: the names stay paths, and fail as such
        known = {}
    return [Path(n) if Path(n).exists() or n not in known else known[n] for n in names]


def _merge_options(args) -> dict:
    params = _params(args) if hasattr(args, "param") else {}
    return {"rank": args.rank, "density": args.density, "seed": args.seed or 0,
            "majority_sign_method": args.majority_sign_method, **({"params": params} if params else {})}


def _default_out(ws, method: str, dirs: list[Path]) -> Path:
    return ws.merges_dir / "-".join([method, *(d.name for d in dirs)])


def _check_seed(args, kind: str) -> None:
    """An explicit --seed a deterministic method would ignore is named, not silently taken."""
    from mashup_core.merging.registry import MergeConfigError, get

    if args.seed is not None and not get(kind, args.method).random:
        raise MergeConfigError(f"method '{args.method}' draws no random numbers: --seed would have "
                               "no effect; drop it")


def _list_methods(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.merging import full, lora  # noqa: F401  (both register their methods)
    from mashup_core.merging.registry import KINDS, Listing

    listings = [Listing.of(kind) for kind in KINDS]
    emit(args, {x.kind: x.families for x in listings}, "\n\n".join(x.text() for x in listings))
    return 0


def _merge(args) -> int:
    from mashup_core.cli import emit
    from mashup_core.merging.lora import MergeConfigError, merge_adapters
    from mashup_core.merging.weights import search_weights
    from mashup_core.workspace import Workspace

    if args.list_methods:
        return _list_methods(args)
    ws = Workspace.resolve(args.workspace)
    if args.config:
        return _merge_config(args, ws)
    if not args.adapters:
        raise MergeConfigError("name the adapters or checkpoints to merge (or --config "
                               "mergekit.yml, or --list-methods)")
    dirs = _adapter_dirs(ws, args.adapters)
    full = _full_checkpoints(dirs)
    _check_seed(args, "full" if full else "lora")
    if args.weights is not None:
        weights = _floats(args.weights, "--weights")
    elif args.strategy is None and args.scores is None:
        weights = None  # the method's default: 1 each for scales, 1/k for shares
    else:
        if args.scores is not None and args.strategy != "proportional":
            raise MergeConfigError("--scores only applies to --strategy proportional")
        scores = _floats(args.scores, "--scores") if args.scores is not None else None
        weights = search_weights(args.strategy or "equal", len(dirs), scores=scores,
                                 higher_is_better=not args.lower_is_better).weights
    out = Path(args.out) if args.out else _default_out(ws, args.method, dirs)
    _warn_inputs("full" if full else "lora", args.method, weights, dirs)
    if full:
        return _merge_full(args, ws, dirs, weights, out)
    if args.base is not None:
        raise MergeConfigError("--base applies to full checkpoints; LoRA adapters carry their base")
    record = merge_adapters(dirs, weights, args.method, out, overwrite=args.overwrite,
                            **_merge_options(args))
    shown = ", ".join(f"{d.name}={w:.3g}" for d, w in zip(dirs, record.weights, strict=True))
    emit(args, record.to_dict(),
         f"merged {shown} with {record.method} (rank {record.rank}) in {record.seconds:.2f} s "
         f"-> {record.out_dir}")
    return 0


def _warn_inputs(kind: str, method: str, weights: list[float] | None, dirs: list[Path]) -> None:
    """Allowed, but likely not what was meant (one input, weights of an average not summing
    to 1): said on stderr before any work."""
    import sys

    from mashup_core.merging import full, lora  # noqa: F401  (both register their methods)
    from mashup_core.merging.registry import MergeConfigError, get, input_warnings

    try:
        spec = get(kind, method)
    except MergeConfigError:
        return  # an unknown method: the merge itself names it
    n = len(dirs)
    for warning in input_warnings(spec, weights or spec.default_weights(n), n, inputs=dirs):
        print(f"warning: {warning}", file=sys.stderr)


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


def _merge_full(args, ws, dirs: list[Path], weights: list[float] | None, out: Path) -> int:
    """`mashup merge` on full checkpoints: the streamed merge into a sharded checkpoint."""
    from mashup_core.merging.full import merge_full_checkpoints
    from mashup_core.merging.lora import MergeConfigError

    if args.rank is not None:
        raise MergeConfigError("--rank applies to LoRA merges; a full merge keeps every tensor's shape")
    base = model_config(args, ws).base_model  # --base wins over the workspace config
    merge_full_checkpoints(dirs, base, weights, args.method, out, density=args.density,
                           seed=args.seed or 0, max_shard_bytes=_bytes(args.max_shard_size),
                           majority_sign_method=args.majority_sign_method, params=_params(args),
                           overwrite=args.overwrite)
    return _report_full(args, out, [d.name for d in dirs])


def _report_full(args, out: Path, names: list[str], notes: list[str] = ()) -> int:
    import json

    from mashup_core.cli import emit
    from mashup_core.merging.full import RECORD_FILE

    record = json.loads((out / RECORD_FILE).read_text())
    weights = record["weights"] or [None] * len(names)
    shown = ", ".join(n if w is None else f"{n}={w:.3g}" for n, w in zip(names, weights, strict=True))
    emit(args, {**record, "notes": list(notes)},
         "\n".join([*notes, f"merged {shown} with {record['method']} (full checkpoints, "
                    f"{record['shards']} shard(s)) in {record['seconds']:.2f} s -> {record['out_dir']}"]))
    return 0


def _merge_config(args, ws) -> int:
    """`mashup merge --config mergekit.yml`: the merge that config describes, as mergekit would."""
    from mashup_core.merging.full import merge_config
    from mashup_core.merging.lora import MergeConfigError

    given = [flag for flag, value in (("inputs", args.adapters), ("--weights", args.weights),
                                      ("--strategy", args.strategy), ("--base", args.base),
                                      ("--rank", args.rank), ("--density", args.density),
                                      ("--majority-sign-method", args.majority_sign_method),
                                      ("--param", args.param)) if value]
    if given or args.method != "linear":
        raise MergeConfigError(f"--config describes the whole merge; drop {', '.join(given or ['--method'])}")
    config_path = Path(args.config)
    out = Path(args.out) if args.out else ws.merges_dir / f"config-{config_path.stem}"
    out, unused = merge_config(config_path, out, max_shard_bytes=_bytes(args.max_shard_size),
                               seed=args.seed or 0, overwrite=args.overwrite)
    notes = [f"note: {config_path.name} sets {', '.join(unused)}, which this method does not use "
             "(mergekit ignores them too)"] if unused else []
    import json

    from mashup_core.merging.full import RECORD_FILE

    names = [Path(p).name for p in json.loads((out / RECORD_FILE).read_text())["inputs"]]
    return _report_full(args, out, names, notes)


def _target_examples(args, ws):
    """A seeded sample of n train examples of the target the options name."""
    from mashup_core.data.examples import DatasetError, sample_examples

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
