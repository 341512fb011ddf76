"""A study's work, as functions the engine runs (in this process, or as Ray tasks anywhere).

Each takes plain data (the workspace root, the spec as a dict, a target, cell dicts, the
outputs of the tasks it depends on) and returns {"records": [cell records], "output": ...};
the driver writes the records. Ray reuses its worker processes, so the base model is loaded
once per worker (`_base`) and never changed by a cell: scoring and merge evaluations wrap it
and unwrap it again, training works on a copy.

- `select_cells`: per (target, n): score the whole study library on the first n train rows
  through the workspace's score store (the reference's relevance matrix: every checkpoint on
  every target, once; the Relevance page and map read the same entries), keep the top k of
  the other tasks' checkpoints per (scorer, weighting, k) and record the base and the
  zero-shot merge cells. Its output, the selections, is also saved in the study folder, so a
  resumed study does not score again.
- `recycle_search`: per (target, n): the multi-target searched weights over the library
  (`merging.recycle`), the target itself never seen.
- `train_cell`: one scratch or train cell: merge, start as its init says, finetune, evaluate.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mashup_core.study.spec import RECYCLE, StudySpec, load_study_split
from mashup_core.workspace import Workspace, read_json, write_json_atomic

SELECTIONS_DIR = "selections"  # in the study folder: each (target, n)'s selection, for resume
# What an evaluation record holds (`training.fit`), kept in a train cell's record.
EVAL_FIELDS = ("acc", "acc_norm", "nll", "token_acc", "exact_match")

# (base path, dtype, device) -> (model, tokenizer): one per worker process, reused by its tasks.
_BASES: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _base(ws: Workspace, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from mashup_core.config import resolve_config
    from mashup_core.models.loading import load_base_model

    base = resolve_config(ws).base
    key = (str(base.model), str(dtype), str(device))
    if key not in _BASES:
        if len(_BASES) >= 2:  # one for scoring on the CPU, one for training on the device
            _BASES.pop(next(iter(_BASES)))
        tokenizer = base.load_tokenizer()
        model = load_base_model(base.model, device=device, dtype=dtype,
                                trust_remote_code=base.trust_remote_code)
        _BASES[key] = (model, tokenizer)
    return _BASES[key]


def _open(ctx: Mapping) -> tuple[Workspace, StudySpec, Path]:
    return Workspace(Path(ctx["root"])), StudySpec.from_dict(ctx["spec"]), Path(ctx["study_dir"])


@contextlib.contextmanager
def _quiet_and_slotted(ws: Workspace, device: torch.device, holder: str) -> Iterator[None]:
    """On an accelerator the cell queues with runs and scoring for the card (`jobs.slot`)."""
    from mashup_core.jobs.slot import accelerator_slot

    with accelerator_slot(ws, device, holder=holder, kind="study"), warnings.catch_warnings():
        # PEFT wrapping calls a deprecated transformers property
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        yield


def library_for(ws: Workspace, spec: StudySpec, target: str) -> list:
    """The checkpoints a target may draw on: the study's library less its own task's."""
    from mashup_core.study.spec import study_library

    return [c for c in study_library(ws, spec.finetune) if c.source_task != target]


def validation_rows(ws: Workspace, spec: StudySpec, target: str) -> list:
    # The one sampler: a cell sees the rows a run with this target, eval_limit and seed sees.
    return load_study_split(ws, target, spec.eval_split, spec.eval_limit or None, spec.seed,
                            spec.prompt_format)


def selection_key(scorer: str, weighting: str, k: int) -> str:
    return f"{scorer}/{weighting}/k{k}"


def _saved(study_dir: Path, kind: str, target: str, n: int) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in target)
    return study_dir / SELECTIONS_DIR / f"{kind}-{safe}-n{n}.json"


def mc_scores(result) -> dict:
    """An evaluation's numbers for a cell record (every metric; the study's `eval_metric` says
    which one its tables read); its example count is `eval_n` there, since a cell's `n` is its
    scoring sample."""
    out = result.as_dict()
    out["eval_n"] = out.pop("n", None)
    return out


def relevance_seconds(table, exclude_task: str) -> dict[str, float]:
    """What scoring cost one target, two ways. Ours: the sum of the seconds of every row the
    fold draws on (the other tasks' checkpoints and the base), whether scored now or read from
    the store. The reference's: the least seconds of any one checkpoint's relevance job on the
    target, its own included (src/mashup/analysis/timing.py takes the minimum)."""
    fold = [r.seconds for r in table.rows if r.source_task != exclude_task]
    every = [r.seconds for r in table.rows]
    return {"scoring_s": sum(fold) + (table.base.seconds if table.base else 0.0),
            "relevance_min_s": min(every) if every else 0.0}


def _density(spec: StudySpec, method: str) -> float | None:
    """The study's density for a method that prunes (in its kind's registry), else None."""
    from mashup_core.merging import registry

    kind = "full" if spec.finetune == "full" else "lora"
    found = registry.methods(kind).get(method)
    return spec.density if found is not None and "density" in found.param_names else None


# --- select: score, choose, and the zero-shot merges -----------------------------------------


def select_cells(ctx: Mapping, target: str, n: int, cells: Sequence[dict]) -> dict:
    """Score the target's library on its first n train rows; record `cells` (its base and
    merge cells still to do); output the selection of every (scorer, weighting, k)."""
    ws, spec, study_dir = _open(ctx)
    saved = _saved(study_dir, "select", target, n)
    if not cells and (output := read_json(saved)) is not None:
        return {"records": [], "output": output}  # resumed: nothing to record, nothing to score
    from mashup_core.config import load_target, resolve_config
    from mashup_core.data.examples import sample_examples
    from mashup_core.merging.weights import search_weights
    from mashup_core.selection.loglik import evaluate_mc
    from mashup_core.selection.scoring import get_scorer
    from mashup_core.selection.store import score_library_cached
    from mashup_core.study.spec import study_library, study_target

    device = torch.device("cpu")  # a select task holds CPUs only (the plan's resources)
    model, tokenizer = _base(ws, device, torch.float32)
    matrix_library = study_library(ws, spec.finetune)  # the whole N x N row, own task included
    library = [c for c in matrix_library if c.source_task != target]
    records = []
    with _quiet_and_slotted(ws, device, f"{study_dir.name}:select/{target}/n{n}"):
        validation = validation_rows(ws, spec, target)
        for cell in (c for c in cells if c["kind"] == "base"):
            t0 = time.perf_counter()
            records.append({**cell, **mc_scores(evaluate_mc(model, tokenizer, validation)),
                            "seconds": time.perf_counter() - t0})
        rows = load_target(study_target(ws, target, "train", spec.prompt_format), ws)
        table = score_library_cached(
            ws, matrix_library, rows, n=n, seed=None, base_path=resolve_config(ws).base_model,
            target=target, progress=False, include_full=spec.finetune == "full", device="cpu",
            model_and_tokenizer=(model, tokenizer))
        cost = relevance_seconds(table, target)
        paths = {c.name: str(c.path) for c in library}
        selections = {}
        for scorer_name in spec.scorers:
            scorer = get_scorer(scorer_name)
            for weighting in spec.weightings:
                for k in spec.ks:
                    chosen = table.select_top_k(scorer.name, k, exclude_task=target)
                    scores = [table.row(name).value(scorer.name) for name in chosen]
                    weights = search_weights(weighting, len(chosen), scores=scores,
                                             higher_is_better=scorer.higher_is_better).weights
                    selections[selection_key(scorer_name, weighting, k)] = {
                        "selected": chosen, "scores": scores, "weights": list(weights),
                        "paths": [paths[name] for name in chosen],
                        "base_score": table.base.value(scorer.name) if table.base else None,
                        "similarity": update_similarity_of([paths[name] for name in chosen])
                        if spec.finetune == "lora" else None}
        output = {"target": target, "n": n, **cost, "selections": selections}
        merges = [c for c in cells if c["kind"] == "merge"]
        evaluate = _merge_lora if spec.finetune == "lora" else _merge_full
        sample = sample_examples(rows, n, None)  # the scoring rows, as the store scored them
        for cell, (result, on_train, merging_s, seconds) in zip(
                merges, evaluate(ws, spec, model, tokenizer, merges, selections, validation, sample),
                strict=True):
            chosen = selections[selection_key(cell["scorer"], cell["weighting"], cell["k"])]
            records.append({**cell, **result, "selected": chosen["selected"],
                            "scores": chosen["scores"], "weights": chosen["weights"], **cost,
                            "merging_s": merging_s, "seconds": seconds,
                            # known before training: what the payoff predictor reads
                            "train_value": on_train[spec.eval_metric],
                            "base_score": chosen.get("base_score"),
                            "similarity": chosen.get("similarity")})
    write_json_atomic(saved, output)
    return {"records": records, "output": output}


def update_similarity_of(paths: Sequence[str]) -> float | None:
    """The mean pairwise cosine of these adapters' updates (1.0 for one; None if one cannot
    be read as LoRA factors): how alike the merged checkpoints are."""
    from itertools import combinations

    from mashup_core.selection.bank import BankError, read_bank_adapter
    from mashup_core.selection.similarity import update_similarity

    try:
        sim = update_similarity([read_bank_adapter(p) for p in paths])
    except BankError:
        return None
    pairs = list(combinations(range(len(paths)), 2))
    return float(sum(sim.cosine[i, j] for i, j in pairs) / len(pairs)) if pairs else 1.0


def _merge_lora(ws, spec, model, tokenizer, cells, selections, validation, sample) -> Iterator[tuple]:
    """Each merge in memory, copied into a LoRA slot of the base (one slot per merged rank)."""
    from mashup_core.merging.lora import (
        add_merge_slot,
        load_into_peft,
        load_lora_factors,
        merge_factors,
    )
    from mashup_core.selection.loglik import evaluate_mc

    factors: dict[str, Any] = {}
    wrapped, slots = model, {}
    try:
        for cell in cells:
            t0 = time.perf_counter()
            chosen = selections[selection_key(cell["scorer"], cell["weighting"], cell["k"])]
            for name, path in zip(chosen["selected"], chosen["paths"], strict=True):
                if name not in factors:
                    (factors[name],) = load_lora_factors([path])
            merged = merge_factors([factors[name] for name in chosen["selected"]],
                                   chosen["weights"], cell["method"],
                                   density=_density(spec, cell["method"]), seed=spec.seed)
            merging_s = time.perf_counter() - t0
            slot = slots.setdefault(merged.rank, f"study_r{merged.rank}")
            wrapped = add_merge_slot(wrapped, merged, factors[chosen["selected"][0]].config, slot)
            load_into_peft(wrapped, merged, slot)
            result = mc_scores(evaluate_mc(wrapped, tokenizer, validation))
            on_train = mc_scores(evaluate_mc(wrapped, tokenizer, sample))
            yield result, on_train, merging_s, time.perf_counter() - t0
    finally:
        if wrapped is not model:
            wrapped.unload()  # the bare base again, for the next task of this worker


def _merge_full(ws, spec, model, tokenizer, cells, selections, validation, sample) -> Iterator[tuple]:
    """Each merge streamed into a temporary checkpoint, loaded and evaluated, then deleted."""
    from mashup_core.models.loading import load_base_model
    from mashup_core.selection.loglik import evaluate_mc

    for cell in cells:
        t0 = time.perf_counter()
        chosen = selections[selection_key(cell["scorer"], cell["weighting"], cell["k"])]
        with tempfile.TemporaryDirectory(prefix="study-merge-", dir=_tmp_root(ws)) as tmp:
            merged_dir = merge_full(ws, spec, chosen, cell["method"], Path(tmp) / "merged")
            merging_s = time.perf_counter() - t0
            merged = load_base_model(merged_dir, device="cpu", dtype=torch.float32)
            result = mc_scores(evaluate_mc(merged, tokenizer, validation))
            on_train = mc_scores(evaluate_mc(merged, tokenizer, sample))
            del merged
        yield result, on_train, merging_s, time.perf_counter() - t0


def merge_full(ws: Workspace, spec: StudySpec, chosen: Mapping, method: str, out_dir: Path) -> Path:
    """The chosen full checkpoints merged, streamed tensor by tensor, into `out_dir`."""
    from mashup_core.config import resolve_config
    from mashup_core.merging.full import merge_full_checkpoints

    return Path(merge_full_checkpoints(chosen["paths"], resolve_config(ws).base_model,
                                       chosen["weights"], method, out_dir,
                                       density=_density(spec, method), seed=spec.seed))


def _tmp_root(ws: Workspace) -> Path | None:
    """Merged checkpoints are as large as the model: beside the workspace, not in /tmp."""
    root = ws.cache_dir / "tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return root


# --- recycle: the multi-target searched merge ------------------------------------------------


def recycle_search(ctx: Mapping, target: str, n: int) -> dict:
    """Weights for every checkpoint the target may draw on, searched on the OTHER targets'
    first n train rows (`merging.recycle.recycle_weights`); the target is never seen."""
    ws, spec, study_dir = _open(ctx)
    saved = _saved(study_dir, "recycle", target, n)
    if (output := read_json(saved)) is not None:
        return {"records": [], "output": output}
    from mashup_core.merging.lora import load_lora_factors
    from mashup_core.merging.recycle import DEFAULT_METHOD, recycle_weights

    device = torch.device("cpu")
    model, tokenizer = _base(ws, device, torch.float32)
    library = library_for(ws, spec, target)
    others = {t: load_study_split(ws, t, "train", n, None, spec.prompt_format)
              for t in spec.tasks if t != target}
    with _quiet_and_slotted(ws, device, f"{study_dir.name}:recycle/{target}/n{n}"):
        started = time.perf_counter()
        result = recycle_weights(model, tokenizer, load_lora_factors([c.path for c in library]),
                                 others, budget=spec.recycle_budget, seed=spec.seed,
                                 method=DEFAULT_METHOD)
        search_s = time.perf_counter() - started
    output = {"target": target, "n": n, "method": DEFAULT_METHOD, "scoring_s": search_s,
              "selected": [c.name for c in library], "paths": [str(c.path) for c in library],
              "weights": [float(w) for w in result.weights], "scores": [],
              "per_target": result.per_target}
    write_json_atomic(saved, output)
    return {"records": [], "output": output}


# --- train: one scratch or train cell --------------------------------------------------------


def train_cell(ctx: Mapping, cell: dict, selection: Mapping | None = None) -> dict:
    """Finetune one cell and record its curve. `selection`: the select task's output (train
    cells), the recycle search's (init 'recycle'), or None (scratch)."""
    from mashup_core.training.loop import (
        FitSchedule,
        as_pairs,
        fit,
        training_dtype,
    )

    ws, spec, study_dir = _open(ctx)
    device = torch.device(ctx.get("device") or "cpu")
    base, tokenizer = _base(ws, device, training_dtype(device, spec.finetune))
    train_rows = load_study_split(ws, cell["target"], "train", prompt_format=spec.prompt_format)
    validation = validation_rows(ws, spec, cell["target"])
    cfg = spec.train_config(cell["lr"], cell["seed"], len(train_rows))
    metric = spec.eval_metric
    chosen, about = _chosen(cell, selection)
    with (_quiet_and_slotted(ws, device, f"{study_dir.name}:{cell['kind']}/{cell['target']}"),
          tempfile.TemporaryDirectory(prefix="study-init-", dir=_tmp_root(ws)) as tmp):
        merged_dir, merging_s = None, 0.0
        if chosen is not None:
            t0 = time.perf_counter()
            merged_dir = Path(tmp) / "merged"
            method = selection.get("method", cell["method"])
            if spec.finetune == "full":
                merged_dir = merge_full(ws, spec, chosen, method, merged_dir)
            else:
                from mashup_core.merging.lora import merge_adapters

                merge_adapters(chosen["paths"], chosen["weights"], method, merged_dir,
                               density=_density(spec, method), seed=spec.seed, overwrite=True)
            merging_s = time.perf_counter() - t0
        model = _starting_model(spec, cell, base, merged_dir, device)
        outcome = fit(model, tokenizer, as_pairs(train_rows), validation, cfg,
                      FitSchedule(eval_every=spec.eval_every,
                                  eval_at=spec.eval_steps_for(len(train_rows))))
        del model
    # The curve is the study's metric; the record keeps every metric of the last evaluation.
    curve = [[e["step"], e[metric], e["seconds"]] for e in outcome.evals]
    final = {k: v for k, v in outcome.evals[-1].items() if k in EVAL_FIELDS}
    record = {**cell, **final, "init_acc": outcome.evals[0]["acc"], "init_value": curve[0][1],
              "metric": metric, "curve": curve, "steps": cfg.steps,
              "train_s": outcome.state.elapsed, **about, "merging_s": merging_s}
    return {"records": [record], "output": None}


def _chosen(cell: Mapping, selection: Mapping | None) -> tuple[Mapping | None, dict]:
    """The checkpoints and weights a cell merges, and what its record says about them."""
    if cell["kind"] == "scratch":
        return None, {"scoring_s": 0.0, "relevance_min_s": 0.0}
    if cell["init"] == RECYCLE:
        chosen = selection
    else:
        chosen = selection["selections"][selection_key(cell["scorer"], cell["weighting"], cell["k"])]
    return chosen, {"selected": chosen["selected"], "scores": chosen["scores"],
                    "weights": chosen["weights"], "scoring_s": selection["scoring_s"],
                    "relevance_min_s": selection.get("relevance_min_s", selection["scoring_s"]),
                    "base_score": chosen.get("base_score"), "similarity": chosen.get("similarity")}


def _starting_model(spec: StudySpec, cell: Mapping, base, merged_dir: Path | None,
                    device: torch.device):
    """The model a cell trains, by `training.init_model` as runs start theirs:
    scratch (a fresh LoRA, or every weight of the base), merged-continue (the merged LoRA
    itself trains; init 'recycle' too), merged-fold (the merge folded into the base under a
    fresh LoRA), or a full finetune of the merged checkpoint."""
    from mashup_core.training.loop import init_model

    if spec.finetune == "full":
        if merged_dir is None:
            start = copy.deepcopy(base)
        else:
            from mashup_core.models.loading import load_base_model

            start = load_base_model(merged_dir, device=device, dtype=torch.float32)
        return init_model(start, "scratch", finetune="full", seed=cell["seed"])
    init = "scratch" if cell["kind"] == "scratch" else cell["init"]
    init = "merged-continue" if init == RECYCLE else init
    return init_model(copy.deepcopy(base), init, adapter_dir=merged_dir, finetune="lora",
                      seed=cell["seed"])
