"""The embedded demo world: a tiny base model, 8 synthetic tasks and a LoRA library.

`build_world` makes the whole method runnable offline on a laptop CPU. It writes into the
workspace and, last of all, a manifest (`world.json`) with every file's size and hash: a
folder without a manifest, or whose files disagree with it, is an interrupted or damaged
build and is never silently reused.

While it builds, the `.building` marker says who builds and how far it got
(`demo.progress`: the stage, "adapter 3 of 8", the time elapsed and an estimate).

The library's adapters are independent of each other (each a fresh LoRA on the same saved
base, seeded the same way), so they train side by side in worker processes of one torch
thread each: the bytes are the same whether one process trains them all or several do.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mashup_core.data.examples import write_jsonl
from mashup_core.data.targets import load_demo_task as load_split  # noqa: F401  (re-exported)
from mashup_core.demo import synthetic
from mashup_core.demo.progress import (  # noqa: F401  (world_status re-exported)
    WORLD_DIRS,
    BuildMarker,
    build_progress,
    describe_build,
    world_status,
)
from mashup_core.demo.tiny_model import (
    TinyModelSpec,
    build_char_tokenizer,
    build_tiny_llama,
    set_threads_for_determinism,
)
from mashup_core.errors import MashupError
from mashup_core.models.library import META_FILE
from mashup_core.selection.loglik import evaluate_mc
from mashup_core.training.loop import LoraSpec, TrainConfig, add_lora, as_pairs, train
from mashup_core.workspace import Workspace, sha256_file, write_json_atomic

# Each adapter trains with this many torch threads, in whichever process trains it: the
# thread count decides the reduction order, so it is part of the adapters' bits.
ADAPTER_THREADS = 1


@dataclass(frozen=True)
class Profile:
    name: str
    model: TinyModelSpec
    split_sizes: dict[str, int]
    pretrain: TrainConfig
    adapter: TrainConfig
    snapshot_fractions: tuple[float, ...] = (0.25, 0.5)  # intermediate library checkpoints
    tasks: tuple[str, ...] = synthetic.TASKS
    pretrain_corpus: int = 6000
    # Seconds per stage (demo.progress.STAGES) on a 2-core box, measured, the library with 2
    # workers: the estimate before a stage has progress of its own, scaled by how fast this
    # box has been on the stages before.
    typical_seconds: dict[str, float] = field(default_factory=dict)


PROFILES = {
    "full": Profile(
        name="full",
        model=TinyModelSpec(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=352),
        split_sizes={"train": 2000, "validation": 200, "test": 200},
        pretrain=TrainConfig(steps=400, batch_size=64, lr=3e-3, seed=0),
        adapter=TrainConfig(steps=400, batch_size=32, lr=3e-3, seed=0),
        typical_seconds={"tasks": 0.8, "pretrain": 20, "library": 50, "manifest": 0.5},
    ),
    # For tests: builds in ~15 s on 2 cores; sort/min/dsort/dmax learn, rev/shift barely do.
    "tiny": Profile(
        name="tiny",
        model=TinyModelSpec(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=264),
        split_sizes={"train": 400, "validation": 64, "test": 64},
        pretrain=TrainConfig(steps=120, batch_size=32, lr=5e-3, seed=0),
        adapter=TrainConfig(steps=80, batch_size=16, lr=8e-3, seed=0),
        snapshot_fractions=(0.5,),
        pretrain_corpus=2000,
        typical_seconds={"tasks": 0.2, "pretrain": 4, "library": 6, "manifest": 0.2},
    ),
}


@dataclass
class BuildReport:
    workspace: str
    profile: str
    seed: int
    reused: bool
    seconds: float
    base_accuracy: dict[str, float] = field(default_factory=dict)
    adapter_accuracy: dict[str, float] = field(default_factory=dict)
    cross_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # adapter -> task
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary_table(self) -> str:
        rows = [f"{'task':<7} {'what it asks':<40} {'base':>6} {'adapter':>8}"]
        for task, acc in self.adapter_accuracy.items():
            desc = synthetic.DESCRIPTIONS.get(task, "")
            rows.append(f"{task:<7} {desc:<40} {self.base_accuracy[task]:>6.2f} {acc:>8.2f}")
        wins = sum(a > self.base_accuracy[t] + 0.2 for t, a in self.adapter_accuracy.items())
        state = "reused" if self.reused else f"built in {self.seconds:.1f} s"
        rows.append(
            f"\n{len(self.adapter_accuracy)} tasks; adapter beats base by >0.2 on {wins}; "
            f"workspace {self.workspace} ({self.profile}, seed {self.seed}, {state})"
        )
        return "\n".join(rows)


def pretrain_corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """Generic text for the base model: copying, random strings and bare task prompts.

    Bare prompts carry no answers on purpose: random answers would teach the model to
    ignore the operands, and real answers would make the library pointless.
    """
    rng = random.Random(f"pretrain/{seed}")
    alphabet = synthetic.LETTERS + synthetic.DIGITS
    texts = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            w = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 8)))
            texts.append(("", f"copy:{w}={w}"))
        elif kind == 1:
            texts.append(("", "".join(rng.choice(alphabet + " ") for _ in range(rng.randint(6, 20)))))
        else:
            task = rng.choice(synthetic.TASKS)
            operand, *_ = synthetic.GENERATORS[task](rng)
            texts.append(("", synthetic.prompt_for(task, operand)))
    return texts


class WorldBusy(MashupError):
    """Another process is building the demo world in this workspace right now."""


def build_world(
    workspace: Workspace,
    profile: str = "full",
    seed: int = 0,
    *,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    workers: int | None = None,
) -> BuildReport:
    """Build the demo world once; later calls reuse it (seconds) unless `force`.
    `workers`: processes that train the library's adapters side by side (default: one per
    core, at most one per task); the bytes do not depend on it."""
    if profile not in PROFILES:
        raise MashupError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    workspace.ensure_writable()
    if (building := build_progress(workspace)) is not None:
        raise WorldBusy(f"the demo world in {workspace.root} is being built now by pid "
                        f"{building['pid']} ({describe_build(building)}); wait for it to "
                        "finish (`mashup demo status` says how far it got)")
    usable, reason = world_status(workspace)
    manifest = workspace.manifest()
    if usable and not force:
        if manifest["profile"] == profile and manifest["seed"] == seed:
            report = BuildReport(**manifest["report"])
            report.reused, report.seconds = True, 0.0
            write_demo_config(workspace, manifest["tasks"])
            return report
        log(f"workspace holds the {manifest['profile']!r} world with seed {manifest['seed']}; "
            f"rebuilding as {profile!r} with seed {seed}")
    elif not usable and reason != "no demo world yet":
        log(f"demo world at {workspace.root} cannot be reused: {reason}. Rebuilding it.")
    return _build(workspace, PROFILES[profile], seed, progress, workers)


def _build(ws: Workspace, prof: Profile, seed: int, progress: bool,
           workers: int | None = None) -> BuildReport:
    start = time.perf_counter()
    workers = workers or min(len(prof.tasks), len(os.sched_getaffinity(0)) // ADAPTER_THREADS) or 1
    set_threads_for_determinism()
    torch.use_deterministic_algorithms(True)
    for name in WORLD_DIRS:
        shutil.rmtree(ws.root / name, ignore_errors=True)
    ws.manifest_path.unlink(missing_ok=True)
    marker = BuildMarker(ws, workers, prof.typical_seconds)
    report = BuildReport(str(ws.root), prof.name, seed, reused=False, seconds=0.0)
    # Started first, so that the workers import torch while the base pretrains.
    with _adapter_workers(workers) as pool:
        tokenizer = build_char_tokenizer()
        tokenizer.save_pretrained(ws.base_dir)

        t0 = time.perf_counter()
        marker.stage("tasks", len(prof.tasks), "tasks")
        splits = {}
        for i, task in enumerate(prof.tasks, 1):
            splits[task] = synthetic.generate_splits(task, prof.split_sizes, seed)
            for split, examples in splits[task].items():
                write_jsonl(ws.task_split_path(task, split), examples)
            marker.advance(i)
        report.timings["tasks"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        model = build_tiny_llama(len(tokenizer), prof.model, seed)
        cfg = _with_seed(prof.pretrain, seed)
        marker.stage("pretrain", cfg.steps, "steps")
        with tqdm(total=cfg.steps, desc="pretrain base", disable=not progress) as bar:
            def step(state, lg) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{lg.loss:.3f}")
                marker.advance(state.step)

            train(model, tokenizer, pretrain_corpus(prof.pretrain_corpus, seed), cfg, on_step=step)
        model.save_pretrained(ws.base_dir, safe_serialization=True)
        report.timings["pretrain"] = time.perf_counter() - t0

        validation = {task: splits[task]["validation"] for task in prof.tasks}
        report.base_accuracy = {t: evaluate_mc(model, tokenizer, v).acc for t, v in validation.items()}

        t0 = time.perf_counter()
        marker.stage("library", len(prof.tasks), "adapters")
        jobs = {task: (str(ws.root), prof.name, seed, task) for task in prof.tasks}
        if pool is None:
            done = {}
            for task in tqdm(prof.tasks, desc="train library", disable=not progress):
                done[task] = train_adapter(*jobs[task])
                marker.advance(len(done))
        else:
            futures = {pool.submit(train_adapter, *args): task for task, args in jobs.items()}
            done = {}
            for future in tqdm(as_completed(futures), total=len(futures), desc="train library",
                               disable=not progress):
                done[futures[future]] = future.result()
                marker.advance(len(done))
        report.cross_accuracy = {task: done[task] for task in prof.tasks}  # in task order
        report.adapter_accuracy = {task: done[task][task] for task in prof.tasks}
        report.timings["library"] = time.perf_counter() - t0

    marker.stage("manifest")
    torch.use_deterministic_algorithms(False)
    report.seconds = time.perf_counter() - start
    files = {
        str(p.relative_to(ws.root)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for d in WORLD_DIRS for p in sorted((ws.root / d).rglob("*")) if p.is_file()
    }
    write_json_atomic(ws.manifest_path, {
        "kind": "mashup-demo-world", "version": 1, "profile": prof.name, "seed": seed,
        "tasks": list(prof.tasks), "descriptions": synthetic.DESCRIPTIONS,
        "model": asdict(prof.model), "pretrain": prof.pretrain.to_dict(),
        "adapter": prof.adapter.to_dict(), "lora": asdict(LoraSpec()),
        "adapter_threads": ADAPTER_THREADS, "build_workers": workers,
        "report": asdict(report), "files": files,
    })
    ws.building_marker.unlink()
    write_demo_config(ws, list(prof.tasks))
    return report


@contextlib.contextmanager
def _adapter_workers(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """`workers` processes for `train_adapter`, or None for one (the adapters then train in
    this process). Fresh interpreters, not forks: a fork of a process whose torch has run
    threads can hang. Each imports torch at once, while this process pretrains the base."""
    if workers < 2:
        yield None
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for _ in range(workers):  # one call each starts them all now (the pool starts lazily)
            pool.submit(_imported)
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _imported() -> int:
    """A worker's first call: unpickling it imported this module (torch, transformers, peft)."""
    from mashup_core.models import loading  # noqa: F401 - train_adapter's one lazy import

    return os.getpid()


def train_adapter(root: str, profile: str, seed: int, task: str) -> dict[str, float]:
    """Train `task`'s LoRA on the world's saved base and write it (with its snapshots) into the
    library; returns its accuracy on every task's validation split. A pure function of its
    arguments: the base is read from disk, the data regenerated from the seed, the LoRA seeded
    alike, with ADAPTER_THREADS threads, so any process, in any order, writes the same bytes."""
    from mashup_core.models.loading import load_base_model

    ws, prof = Workspace(Path(root)), PROFILES[profile]
    threads = torch.get_num_threads()
    torch.set_num_threads(ADAPTER_THREADS)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        tokenizer = build_char_tokenizer()
        base = load_base_model(ws.base_dir, device="cpu")
        # Nameless, as the base was when it was trained: PEFT writes this name into each
        # adapter's config (an absolute path would differ from one workspace to the next).
        base.name_or_path = base.config.name_or_path = ""
        validation = {t: synthetic.generate_splits(t, prof.split_sizes, seed)["validation"]
                      for t in prof.tasks}
        train_rows = synthetic.generate_splits(task, prof.split_sizes, seed)["train"]
        cfg = _with_seed(prof.adapter, seed)
        snapshots = {max(1, int(f * cfg.steps)) for f in prof.snapshot_fractions}
        torch.manual_seed(seed)
        peft_model = add_lora(base, LoraSpec())

        def save_snapshot(state, _log) -> None:
            if state.step in snapshots:
                _save_adapter(ws, peft_model, f"{task}-step{state.step}", task, state.step, cfg,
                              seed, None)

        train(peft_model, tokenizer, as_pairs(train_rows), cfg, on_step=save_snapshot)
        cross = {t: evaluate_mc(peft_model, tokenizer, v).acc for t, v in validation.items()}
        _save_adapter(ws, peft_model, task, task, cfg.steps, cfg, seed, cross[task])
        return cross
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def write_demo_config(ws: Workspace, tasks: list[str]) -> None:
    """The demo world as a workspace like any other: its base, its library, its 8 targets.
    A config already there is the user's (they may have added sources): it is kept."""
    from mashup_core.config import (
        BaseModel,
        Defaults,
        Library,
        WorkspaceConfig,
        config_path,
        save_config,
    )
    from mashup_core.defaults import DEMO_LEARNING_RATE

    if config_path(ws).exists():
        return
    save_config(ws, WorkspaceConfig(
        BaseModel(str(ws.base_dir)), Library((str(ws.library_dir),)),
        tuple({"kind": "demo", "name_or_path": t} for t in tasks),
        Defaults(lr=DEMO_LEARNING_RATE)))


def _with_seed(cfg: TrainConfig, seed: int) -> TrainConfig:
    return TrainConfig(**{**cfg.to_dict(), "seed": seed})


def _save_adapter(ws, peft_model, name, task, step, cfg, seed, accuracy) -> Path:
    out = ws.library_dir / name
    config = peft_model.peft_config["default"]
    # Same bytes in any process: PEFT keeps the resolved modules as a set, whose order
    # follows the process's string hashing.
    config.target_modules = sorted(config.target_modules)
    peft_model.save_pretrained(out)
    meta = {"source_task": task, "steps": step, "lr": cfg.lr, "seed": seed,
            "validation_accuracy": accuracy, "final": accuracy is not None,
            "base_model": "../../base"}
    write_json_atomic(out / META_FILE, meta)
    return out
