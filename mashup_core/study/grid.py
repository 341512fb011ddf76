"""Running a leave-one-out study: each target's missing cells, the base model loaded once per process."""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from mashup_core.selection.loglik import evaluate_mc
from mashup_core.study.report import study_table
from mashup_core.study.spec import (
    SPEC_FILE,
    SUMMARY_FILE,
    StudySpec,
    append_cell,
    cell_key,
    final_adapters,
    load_study_split,
    open_study,
    planned_cells,
    read_cells,
)
from mashup_core.workspace import Workspace, read_json, write_json_atomic


def study_library(ws: Workspace) -> list:
    """The study's library: each task's final adapter, not checkpoints that runs added later.

    A run added to the library (`jobs.promote`) is a second adapter of its target's task, at
    another rank for merged-fold runs; cells computed before and after it was added would
    silently draw on different libraries, so a study keeps to the world's own adapters.
    """
    return [c for c in final_adapters(ws) if not c.meta.get("run_id")]


class _TargetRunner:
    """Runs one target's missing cells; the base model is loaded once per process.

    On an accelerator each target's work (scoring, merges, training) takes the device's slot
    (`jobs.slot.accelerator_slot`) and gives it back before the next target, so training runs
    launched meanwhile get the card between targets instead of after the whole study. Between
    targets the base waits in CPU memory, so the card is really free for whoever comes next.
    On the CPU studies do not queue (see `jobs.slot`).
    """

    def __init__(self, ws: Workspace, spec: StudySpec, study_dir: Path, library=None,
                 device: str = "cpu"):
        from mashup_core.config import resolve_config
        from mashup_core.models.loading import load_base_model, load_tokenizer

        self.ws, self.spec, self.study_dir = ws, spec, study_dir
        self.device = torch.device(device)
        base = resolve_config(ws).base  # the workspace's base model: the demo's or a user's
        self.tokenizer = load_tokenizer(base.model, trust_remote_code=base.trust_remote_code)
        self.base = load_base_model(base.model, device="cpu", dtype=torch.float32,
                                    trust_remote_code=base.trust_remote_code)
        self.library = library if library is not None else study_library(ws)
        self._factors = None  # every adapter's LoRA factors, read on first use

    @contextlib.contextmanager
    def _on_device(self, target: str) -> Iterator[None]:
        """The slot for one target's work, with the base on the device while it is held."""
        from mashup_core.jobs.slot import accelerator_slot

        with accelerator_slot(self.ws, self.device, holder=self.study_dir.name, kind="study"):
            if self.device.type == "cpu":
                yield
                return
            self.base.to(self.device)
            try:
                yield
            finally:
                self.base.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # hand the memory back, not just the lock

    def factors(self, name: str):
        from mashup_core.merging.lora import load_lora_factors

        if self._factors is None:
            loaded = load_lora_factors([c.path for c in self.library])
            self._factors = {c.name: a for c, a in zip(self.library, loaded, strict=True)}
        return self._factors[name]

    def library_for(self, target: str):
        return [c for c in self.library if c.source_task != target]

    def run(self, target: str, todo: Sequence[dict], on_cell=None) -> None:
        with self._on_device(target), warnings.catch_warnings():
            # PEFT wrapping calls a deprecated transformers property
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            self._run(target, todo, on_cell)

    def _validation(self, target: str) -> list:
        # The one sampler: a study cell sees the examples a run with this target, eval_limit
        # and seed sees.
        spec = self.spec
        return load_study_split(self.ws, target, spec.eval_split, spec.eval_limit or None, spec.seed)

    def _run(self, target: str, todo: Sequence[dict], on_cell=None) -> None:
        from mashup_core.merging.lora import (
            MERGE_METHODS,
            add_merge_slot,
            load_into_peft,
            merge_factors,
        )
        from mashup_core.merging.weights import search_weights
        from mashup_core.selection.scoring import get_scorer, score_library

        spec = self.spec

        def finish(cell: dict, **values) -> None:
            record = {**cell, **values}
            append_cell(self.study_dir, record)
            if on_cell is not None:
                on_cell(record)

        validation = self._validation(target)
        started = time.perf_counter()
        table = None
        if any(c["kind"] in ("merge", "train") for c in todo):
            library = self.library_for(target)
            # The first n train examples, as the reference code and `pipeline` do.
            sample = load_study_split(self.ws, target, "train", spec.n)
            table = score_library(self.base, self.tokenizer, library, sample, progress=False,
                                  target=target)
        scoring_s = time.perf_counter() - started

        for cell in (c for c in todo if c["kind"] == "base"):
            t0 = time.perf_counter()
            finish(cell, **evaluate_mc(self.base, self.tokenizer, validation).as_dict(),
                   seconds=time.perf_counter() - t0)

        model, slots, merges = self.base, {}, {}
        try:
            for cell in (c for c in todo if c["kind"] in ("merge", "train")):
                t0 = time.perf_counter()
                scorer = get_scorer(cell["scorer"])
                chosen = table.select_top_k(scorer.name, cell["k"])
                scores = [table.row(name).value(scorer.name) for name in chosen]
                weights = search_weights(cell["weighting"], len(chosen), scores=scores,
                                         higher_is_better=scorer.higher_is_better).weights
                density = spec.density if MERGE_METHODS[cell["method"]].uses_density else None
                merged = merge_factors([self.factors(n) for n in chosen], weights,
                                       cell["method"], density=density, seed=spec.seed)
                merge_s = time.perf_counter() - t0
                about = {"selected": chosen, "scores": scores, "weights": weights,
                         "scoring_s": scoring_s, "merging_s": merge_s}
                if cell["kind"] == "merge":
                    # One LoRA slot per merged rank (cat merges have rank Σr); reused across cells.
                    slot = slots.setdefault(merged.rank, f"study_r{merged.rank}")
                    model = add_merge_slot(model, merged, self.factors(chosen[0]).config, slot)
                    load_into_peft(model, merged, slot)
                    result = evaluate_mc(model, self.tokenizer, validation)
                    finish(cell, **result.as_dict(), **about, seconds=time.perf_counter() - t0)
                else:
                    merges[cell_key(cell)] = (merged, self.factors(chosen[0]).config, about)
        finally:
            if model is not self.base:
                model.unload()  # the bare base again, for training and the next target

        train_cells = [c for c in todo if c["kind"] in ("scratch", "train")]
        for cell in train_cells:
            merged, template, about = merges.get(cell_key(cell), (None, None, {}))
            curve, seconds = self._train(target, merged, template)
            finish(cell, acc=curve[-1][1], init_acc=curve[0][1], curve=curve, train_s=seconds,
                   **about)

    def _train(self, target: str, merged, template) -> tuple[list[list[float]], float]:
        """Finetune a fresh LoRA from the base, or from the merge folded into the base."""
        from mashup_core.merging.lora import add_merge_slot, load_into_peft
        from mashup_core.training.loop import FitSchedule, add_lora, as_pairs, fit

        spec = self.spec
        model = copy.deepcopy(self.base)
        if merged is not None:  # the pipeline's 'merged-fold' init, without a trip to disk
            model = add_merge_slot(model, merged, template, "study_init")
            load_into_peft(model, merged, "study_init")
            model = model.merge_and_unload()
        torch.manual_seed(spec.seed)
        model = add_lora(model)
        outcome = fit(model, self.tokenizer, as_pairs(load_study_split(self.ws, target, "train")),
                      self._validation(target), spec.train_config(), FitSchedule(eval_every=spec.eval_every))
        curve = [[e["step"], e["acc"], e["seconds"]] for e in outcome.evals]
        return curve, outcome.state.elapsed


def _worker(ws_root: str, spec_dict: dict, study_dir: str, targets: list[str], todo: list[dict],
            device: str = "cpu") -> int:
    """One process of `--parallel`: its own base model, one thread (workers share the cores)."""
    torch.set_num_threads(1)
    runner = _TargetRunner(Workspace(Path(ws_root)), StudySpec.from_dict(spec_dict), Path(study_dir),
                           device=device)
    for target in targets:
        runner.run(target, [c for c in todo if c["target"] == target])
    return len(todo)


def run_study(
    ws: Workspace, spec: StudySpec, study_id: str | None = None, *, parallel: int = 1,
    progress: bool = True, on_cell: Callable[[dict], None] | None = None, device: str = "cpu",
) -> Path:
    """Run (or finish) a leave-one-out study; returns its folder. Finished cells are kept.

    `device` ('cpu', 'cuda', 'cuda:N'): on an accelerator each target queues for the device's
    slot, shared with training runs, scoring and the demo build (`jobs.slot`). Parallel
    workers on one accelerator take turns, so `parallel` only helps on the CPU.
    """
    from tqdm.auto import tqdm

    from mashup_core.config import resolve_config

    resolve_config(ws)  # a workspace without a base says how to get one, before any work
    for target in spec.tasks:  # every target and its evaluation split load, before any work
        load_study_split(ws, target, spec.eval_split, 1)
    library = study_library(ws)
    spec.validate(min(sum(c.source_task != t for c in library) for t in spec.tasks))
    study_dir = open_study(ws, spec, study_id)
    spec = StudySpec.from_dict(read_json(study_dir / SPEC_FILE))  # the grid may have grown
    started = time.perf_counter()
    done = read_cells(study_dir)
    todo = [c for c in planned_cells(spec) if cell_key(c) not in done]
    targets = list(dict.fromkeys(c["target"] for c in todo))
    with tqdm(total=len(done) + len(todo), initial=len(done), desc="study cells",
              disable=not progress) as bar:
        def tick(record: dict) -> None:
            bar.update(1)
            if on_cell is not None:
                on_cell(record)

        if todo and parallel <= 1:
            runner = _TargetRunner(ws, spec, study_dir, library, device=device)
            for target in targets:
                runner.run(target, [c for c in todo if c["target"] == target], tick)
        elif todo:
            _run_parallel(ws, spec, study_dir, targets, todo, parallel, bar, device)
    summary = study_table(study_dir).to_dict()
    summary["seconds_this_call"] = time.perf_counter() - started
    summary["cells_computed_this_call"] = len(todo)
    write_json_atomic(study_dir / SUMMARY_FILE, summary)
    return study_dir


def _run_parallel(ws, spec, study_dir, targets, todo, parallel, bar, device: str = "cpu") -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    shares = [targets[i::parallel] for i in range(parallel)]
    with ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn")) as pool:
        pending = {pool.submit(_worker, str(ws.root), spec.to_dict(), str(study_dir), share,
                               [c for c in todo if c["target"] in share], device)
                   for share in shares if share}
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()  # a worker's error surfaces here
            bar.n = len(read_cells(study_dir))  # workers report through the cells file
            bar.refresh()
