"""The paper's protocol as a study (issue 11): lr × seed × init × n grids planned as engine
tasks, merged-continue starting at the merge itself, resume without recomputing, old studies."""

from __future__ import annotations

import argparse
import json

import pytest
from peft import PeftModel

from mashup_core.cli import build_parser
from mashup_core.cli.study import spec_from_args
from mashup_core.data.examples import sample_examples
from mashup_core.defaults import DEMO_LEARNING_RATE, LR_SWEEP
from mashup_core.demo.world import load_split
from mashup_core.merging.lora import merge_adapters
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.loglik import evaluate_mc
from mashup_core.study.grid import run_study
from mashup_core.study.plan import plan_study
from mashup_core.study.report import study_table
from mashup_core.study.spec import (
    CELLS_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    StudyError,
    StudySpec,
    cell_key,
    planned_cells,
    read_cells,
)
from mashup_core.training.loop import epoch_steps
from mashup_core.workspace import read_json, write_json_atomic

INLINE = {"progress": False, "engine": "inline"}
TWO = {"tasks": ("min", "sort"), "methods": ("linear",), "ks": (1,), "ns": (16,),
       "eval_limit": 16, "train": True, "train_batch_size": 8, "eval_every": 2}


def validation(ws, target):
    return sample_examples(load_split(ws, target, "validation"), 16, 0)  # as a study cell


def stored_spec(study_dir) -> StudySpec:
    return StudySpec.from_dict(read_json(study_dir / SPEC_FILE))


def test_protocol_grid_records_exactly_its_cells_and_resumes_without_recomputing(world_copy):
    spec = StudySpec(**TWO, lrs=(3e-3, 1e-3), seeds=(0, 1),
                     inits=("merged-continue", "merged-fold"), train_epochs=0.05)
    study_dir = run_study(world_copy, spec, "grid", **INLINE)
    cells = read_cells(study_dir)
    # 2 targets × (base + merge + 2 lrs × 2 seeds × (scratch + 2 inits))
    assert set(cells) == {cell_key(c) for c in planned_cells(stored_spec(study_dir))}
    assert len(cells) == 2 * (2 + 4 * 3)
    steps = epoch_steps(0.05, len(load_split(world_copy, "min", "train")), 8)  # ceil(0.05 × 400 / 8)
    for target in ("min", "sort"):
        mine = [c for c in cells.values() if c["target"] == target]
        (base,) = [c for c in mine if c["kind"] == "base"]
        (merge,) = [c for c in mine if c["kind"] == "merge"]
        trained = [c for c in mine if c["kind"] in ("scratch", "train")]
        assert sorted((c["kind"], c.get("init"), c["lr"], c["seed"]) for c in trained) == sorted(
            [("scratch", None, lr, s) for lr in (3e-3, 1e-3) for s in (0, 1)]
            + [("train", i, lr, s) for i in ("merged-continue", "merged-fold")
               for lr in (3e-3, 1e-3) for s in (0, 1)])
        for cell in trained:
            assert cell["steps"] == steps and [p[0] for p in cell["curve"]][-1] == steps
            assert cell["train_s"] > 0
            if cell["kind"] == "scratch":  # a fresh LoRA (B = 0) is the base, exactly
                assert cell["init_acc"] == base["acc"]
                continue
            assert cell["selected"] == merge["selected"] and cell["weights"] == merge["weights"]
            assert cell["scoring_s"] == merge["scoring_s"]  # one scoring, counted for each
            if cell["init"] == "merged-continue":  # the merged adapter itself: the same model
                assert cell["init_acc"] == merge["acc"]
            else:  # folded into the base weights: the same model up to float rounding
                assert cell["init_acc"] == pytest.approx(merge["acc"], abs=1 / 16 + 1e-9)
    lines = (study_dir / CELLS_FILE).read_text()

    again = []
    run_study(world_copy, spec, "grid", **INLINE, on_cell=again.append)
    assert again == [] and (study_dir / CELLS_FILE).read_text() == lines
    assert read_json(study_dir / SUMMARY_FILE)["cells_computed_this_call"] == 0

    # Another seed adds only its cells, on the selection already made (no second scoring).
    run_study(world_copy, StudySpec(**{**spec.to_dict(), "seeds": (2,)}), "grid", **INLINE,
              on_cell=again.append)
    assert {(c["kind"], c["seed"]) for c in again} == {("scratch", 2), ("train", 2)}
    assert len(again) == 2 * 2 * 3
    merges = {c["target"]: c for c in read_cells(study_dir).values() if c["kind"] == "merge"}
    assert all(c["scoring_s"] == merges[c["target"]]["scoring_s"] for c in again
               if c["kind"] == "train")
    assert stored_spec(study_dir).seeds == (0, 1, 2)


def test_an_old_format_study_reads_as_the_grid_it_ran_and_resumes(world_copy):
    spec = StudySpec(**{**TWO, "tasks": ("min",), "ns": (32,)}, inits=("merged-fold",),
                     train_steps=2)
    study_dir = run_study(world_copy, spec, "old", **INLINE)
    new_keys = set(read_cells(study_dir))
    # The files as the study wrote them before the protocol grid: one n, seed and train_lr.
    stored = read_json(study_dir / SPEC_FILE)
    old = {k: v for k, v in stored.items() if k in (
        "tasks", "methods", "ks", "scorers", "weightings", "seed", "eval_split", "eval_limit",
        "density", "train", "train_steps", "train_batch_size", "eval_every")}
    old.update(n=32, train_lr=stored["lrs"][0])
    write_json_atomic(study_dir / SPEC_FILE, old)
    dropped = {"merge": ("n",), "scratch": ("lr", "seed"), "train": ("n", "init", "lr", "seed")}
    records = [json.loads(line) for line in (study_dir / CELLS_FILE).read_text().splitlines()]
    (study_dir / CELLS_FILE).write_text("".join(
        json.dumps({k: v for k, v in r.items() if k not in dropped.get(r["kind"], ())}) + "\n"
        for r in records))

    legacy = StudySpec.from_dict(old)
    assert (legacy.ns, legacy.seeds, legacy.lrs, legacy.inits, legacy.prompt_format) == (
        (32,), (0,), (DEMO_LEARNING_RATE,), ("merged-fold",), "cloze")
    assert set(read_cells(study_dir)) == new_keys
    assert study_table(study_dir).complete

    seen = []
    run_study(world_copy, legacy, "old", **INLINE, on_cell=seen.append)
    assert seen == []
    assert "ns" in read_json(study_dir / SPEC_FILE)  # rewritten in the new format ...
    assert all("n" in r for r in read_cells(study_dir).values() if r["kind"] == "merge")
    assert set(read_cells(study_dir)) == new_keys  # ... its records completed, none recomputed


def test_merged_continue_and_recycle_start_from_the_merges_they_train(world_copy):
    spec = StudySpec(**TWO, train_steps=2, inits=("recycle",), recycle_budget=8)
    study_dir = run_study(world_copy, spec, "recycle", **INLINE)
    cells = read_cells(study_dir)
    base = load_base_model(world_copy.base_dir, device="cpu")
    tokenizer = load_tokenizer(world_copy.base_dir)
    for target in ("min", "sort"):
        (cell,) = [c for c in cells.values() if c["kind"] == "train" and c["target"] == target]
        assert (cell["init"], cell["k"], cell["method"]) == ("recycle", 0, "recycle")
        # every checkpoint but the target's own, weighed on the OTHER target's rows only
        assert len(cell["weights"]) == len(cell["selected"]) == 7
        assert not any(name.startswith(target) for name in cell["selected"])
        assert (study_dir / "selections" / f"recycle-{target}-n16.json").exists()
        out = world_copy.root / f"check-{target}"
        merge_adapters([world_copy.library_dir / name for name in cell["selected"]],
                       cell["weights"], "cat", out)
        merged = PeftModel.from_pretrained(base, out)
        assert cell["init_acc"] == evaluate_mc(merged, tokenizer, validation(world_copy, target)).acc
        base = merged.unload()


def test_the_ray_engine_gives_the_numbers_inline_gives(world_copy):
    """The issue's small study (2 targets × 2 lrs × 1 seed) through a local Ray instance."""
    spec = StudySpec(**TWO, lrs=(3e-3, 1e-3), train_steps=2)
    inline = read_cells(run_study(world_copy, spec, "inline", **INLINE))
    ray = read_cells(run_study(world_copy, spec, "ray", progress=False, engine="ray"))
    assert ray.keys() == inline.keys() and len(ray) == 2 * (2 + 2 * 2)
    for key, cell in inline.items():
        assert ray[key]["acc"] == cell["acc"], key
        if "curve" in cell:
            assert [p[:2] for p in ray[key]["curve"]] == [p[:2] for p in cell["curve"]], key


def test_the_plan_declares_resources_and_dependencies(tiny_world, tmp_path):
    spec = StudySpec(**{**TWO, "ns": (8, 16)}, lrs=(1e-3,), inits=("merged-continue", "recycle"))
    tasks = plan_study(tiny_world, spec, tmp_path, device="cuda")
    by_name = {t.name: t for t in tasks}
    assert len(by_name) == len(tasks)
    assert {c for t in tasks for c in t.cells} == {cell_key(c) for c in planned_cells(spec)}
    for task in tasks:
        kind = task.name.split("/")[0]
        if kind in ("select", "recycle"):  # scoring, merging, searching: CPUs
            assert task.num_gpus == 0 and not task.deps
        else:  # one training: a GPU, after the task that chose what it merges
            assert task.num_gpus == 1 and task.cells == (task.name,)
            cell = task.args[1]
            wanted = () if kind == "scratch" else (
                f"{'recycle' if cell['init'] == 'recycle' else 'select'}/{cell['target']}/n{cell['n']}",)
            assert task.deps == wanted
    assert all(t.num_gpus == 0 for t in plan_study(tiny_world, spec, tmp_path, device="cpu"))


def test_bad_studies_are_refused_before_any_work(world_copy):
    def refused(message: str, **changes) -> None:
        with pytest.raises(StudyError, match=message):
            run_study(world_copy, StudySpec(**{**TWO, **changes}), **INLINE)

    refused(r"lrs: every learning rate must be positive \(got 0.0\)", lrs=(1e-3, 0))
    refused("inits: warm unknown; choose from merged-continue, merged-fold, recycle", inits=("warm",))
    refused("inits: merged-continue cannot be a full finetune", finetune="full",
            inits=("merged-continue",))
    refused("methods: cat_svd unknown; choose from task_arithmetic, ties", finetune="full",
            methods=("cat_svd",))
    refused("finetune full: the library holds no full-model checkpoints", finetune="full")
    refused(r"ns: every n must be at least 1 \(got \[0\]\)", ns=(0,))
    refused(r"train_epochs: must be positive \(got 0\)", train_epochs=0)
    refused("a study with init recycle needs at least two tasks", tasks=("min",),
            inits=("recycle",))
    assert not world_copy.studies_dir.exists() or not any(world_copy.studies_dir.iterdir())


def test_the_cli_offers_the_papers_sweep_and_the_old_flags(tiny_world):
    def spec(*argv: str) -> StudySpec:
        args = build_parser().parse_args(["study", "--workspace", str(tiny_world.root), *argv])
        assert isinstance(args, argparse.Namespace)
        return spec_from_args(args, tiny_world)

    assert spec("--lrs", "paper", "--train").lrs == LR_SWEEP["lora"]
    assert spec("--lrs", "paper", "--finetune", "full").lrs == LR_SWEEP["full"]
    full = spec("--finetune", "full", "--tasks", "min")
    assert (full.inits, full.lrs, full.tasks) == (("merged-fold",), (), ("min",))
    old = spec("--lr", "0.01", "--n", "8", "--seed", "3")  # the flags before the grid grew
    assert (old.lrs, old.ns, old.seed, old.seeds, old.inits) == (
        (0.01,), (8,), 3, (0,), ("merged-continue",))
    grid = spec("--lrs", "1e-3,2e-3", "--seeds", "0,1", "--inits", "merged-fold,recycle",
                "--ns", "8,16", "--epochs", "1", "--engine", "inline")
    assert (grid.lrs, grid.seeds, grid.inits, grid.ns, grid.train_epochs) == (
        (1e-3, 2e-3), (0, 1), ("merged-fold", "recycle"), (8, 16), 1.0)


def test_a_full_finetune_study_merges_full_checkpoints_and_trains_from_the_merge(world_copy):
    """A library of full checkpoints (each task's adapter folded into the base, saved as a
    plain model): the study scores them, merges the chosen ones streamed, and trains the
    merge as a full finetune."""
    for task in ("min", "sort", "dmax"):
        model = PeftModel.from_pretrained(load_base_model(world_copy.base_dir),
                                          world_copy.library_dir / task).merge_and_unload()
        out = world_copy.root / "full-library" / f"{task}-full"
        model.save_pretrained(out)
        (out / "mashup_meta.json").write_text(json.dumps({"source_task": task, "final": True}))
    from mashup_core.config import add_source

    add_source(world_copy, str(world_copy.root / "full-library"))
    spec = StudySpec(**{**TWO, "methods": ("task_arithmetic",)}, finetune="full", lrs=(1e-4,),
                     seeds=(0,), train_steps=2)
    study_dir = run_study(world_copy, spec, "full", **INLINE)
    cells = read_cells(study_dir)
    assert set(cells) == {cell_key(c) for c in planned_cells(stored_spec(study_dir))}
    tokenizer = load_tokenizer(world_copy.base_dir)
    for target in ("min", "sort"):
        mine = {c["kind"]: c for c in cells.values() if c["target"] == target}
        merged, trained, scratch = mine["merge"], mine["train"], mine["scratch"]
        assert all(name.endswith("-full") for name in merged["selected"])
        assert trained["init"] == "merged-fold" and trained["selected"] == merged["selected"]
        assert trained["init_acc"] == merged["acc"], "training starts from the merge itself"
        assert scratch["init_acc"] == mine["base"]["acc"]
        # k=1 with weight 1: the merge is the chosen checkpoint (up to W_base + (W - W_base))
        (chosen,) = merged["selected"]
        alone = load_base_model(world_copy.root / "full-library" / chosen)
        acc = evaluate_mc(alone, tokenizer, validation(world_copy, target)).acc
        assert abs(acc - merged["acc"]) <= 1 / 16
