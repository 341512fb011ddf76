"""Runs: specs, the index, foreground runs, and real background jobs (kill, resume, queue, cancel)."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import pytest
from waiting import poll

from mashup_core.cli import main
from mashup_core.defaults import DEMO_LEARNING_RATE
from mashup_core.jobs import runner
from mashup_core.jobs.runner import cancel, execute_run, launch, launch_pair, resume, wait
from mashup_core.jobs.spec import RunSpec, SpecError
from mashup_core.jobs.store import (
    RunError,
    create_run,
    get_run,
    list_runs,
    rebuild_index,
    update_status,
)
from mashup_core.training.loop import TrainConfig, latest_checkpoint


def tiny_spec(**changes) -> RunSpec:
    return RunSpec(**{"target": "min", "train": TrainConfig(steps=20, batch_size=16, lr=5e-3),
                      "eval_every": 10, "checkpoint_every": 5, "eval_limit": 16, "device": "cpu",
                      **changes})




def steps(record, phase):
    return [m["step"] for m in record.metrics if m["phase"] == phase]


# --- specs ------------------------------------------------------------------------------------


def test_spec_round_trips_through_json():
    spec = tiny_spec(kind="mashup", target={"kind": "demo", "name_or_path": "min", "split": "train",
                                            "mapping": None},
                     library=["/some/where"], init="merged-continue", k=3, scorer="nll")
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.lora.target_modules == spec.lora.target_modules  # a tuple again, not a list
    # the default init by kind and finetune: the merged LoRA trains on (the reference's way)
    assert RunSpec(target="tail", kind="mashup").init == "merged-continue"
    assert RunSpec(target="tail", kind="mashup", finetune="full").init == "merged-fold"


@pytest.mark.parametrize("change, message", [
    ({"stpes": 3}, "unknown field 'stpes'; did you mean 'steps'?"),
    ({"train": {"steps": 0}}, "field 'train.steps': must be at least 1 (got 0)"),
    ({"train": {"lr": "fast"}}, "spec: train: field 'lr': expected float, got 'fast'"),
    ({"train": {"batchsize": 8}}, "spec: train: unknown field 'batchsize'; did you mean 'batch_size'?"),
    ({"k": True}, "field 'k': expected int, got True"),
    ({"kind": "mashup", "init": "scratch"}, "field 'init': a mashup run cannot start from 'scratch'"),
    ({"init": "merged-fold"}, "field 'init': a scratch run cannot start from 'merged-fold'"),
    ({"kind": "mashup", "init": "merged-continue", "finetune": "full"},
     "field 'finetune': 'full' needs init 'merged-fold'"),
    ({"kind": "mashup", "init": "merged-fold", "scorer": "vibes"},
     "field 'scorer': 'vibes' is not one of nll, acc"),
    ({"device": "gpu"}, "field 'device': 'gpu' is not auto, cpu, mps, cuda or cuda:N"),
    ({"target": {"kind": "web", "name_or_path": "x"}}, "field 'target': target kind 'web'"),
    ({"lora": {"target_modules": 3}}, "field 'target_modules': expected a list of strings"),
])
def test_bad_specs_name_the_field(change, message):
    data = {**tiny_spec().to_dict(), **change}
    for nested in ("train", "lora"):
        if nested in change:
            data[nested] = {**tiny_spec().to_dict()[nested], **change[nested]}
    if "stpes" in change:
        data["train"] = {**data["train"], "stpes": data.pop("stpes")}
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        RunSpec.from_dict(data)


def test_spec_files_and_unknown_targets(world_copy, tmp_path):
    broken = tmp_path / "spec.json"
    broken.write_text('{"target": "min",\n "kind": }')
    with pytest.raises(SpecError, match=r"spec.json:2: invalid JSON"):
        RunSpec.load(broken)
    with pytest.raises(SpecError, match="field 'target': no target 'nope'"):
        create_run(world_copy, tiny_spec(target="nope"))
    assert list_runs(world_copy) == []


def test_new_spec_writes_a_valid_template(tiny_world, capsys):
    ws = ["--workspace", str(tiny_world.root)]
    assert main(["new-spec", *ws, "--target", "tail", "--kind", "mashup", "--steps", "30", "--k", "3"]) == 0
    spec = RunSpec.from_dict(json.loads(capsys.readouterr().out))
    assert (spec.kind, spec.init, spec.k, spec.train.steps) == ("mashup", "merged-continue", 3, 30)
    # complete on its own: absolute paths from the workspace config, the demo's own lr
    assert spec.base_model == str(tiny_world.base_dir) and spec.library == [str(tiny_world.library_dir)]
    assert spec.target == {"kind": "demo", "name_or_path": "tail", "split": "train", "mapping": None}
    assert spec.train.lr == DEMO_LEARNING_RATE and spec.finetune == "lora"
    assert main(["new-spec", *ws, "--target", "tail", "--init", "merged-fold", "--kind", "scratch"]) == 2
    assert "cannot start from 'merged-fold'" in capsys.readouterr().err


# --- runs in this process ---------------------------------------------------------------------


def test_foreground_run_writes_everything_and_indexes_it(world_copy, capsys):
    run_id = create_run(world_copy, tiny_spec(name="fg"))
    record = execute_run(world_copy, run_id, progress=False, echo=False)
    assert record.state == "done" and record.status["pid"] == os.getpid()
    assert steps(record, "train") == list(range(1, 21))
    assert steps(record, "eval") == [0, 10, 20]
    assert record.status["final"]["acc"] == record.evals[-1]["acc"]
    assert {"load_s", "training_s", "eval_s"} <= record.timings.keys()
    assert latest_checkpoint(record.dir / "checkpoints").name == "step-00000020"
    (row,) = list_runs(world_copy)
    assert (row["id"], row["status"], row["final_acc"], row["name"]) == (
        run_id, "done", record.evals[-1]["acc"], "fg")
    with pytest.raises(RunError, match="has finished already"):
        execute_run(world_copy, run_id, progress=False, echo=False)
    assert main(["show", run_id, "--workspace", str(world_copy.root)]) == 0
    assert "step    20" in capsys.readouterr().out
    assert main(["runs", "--json", "--workspace", str(world_copy.root)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == run_id
    assert main(["resume", run_id, "--workspace", str(world_copy.root)]) == 2
    assert "only killed, cancelled or failed runs resume" in capsys.readouterr().err

    # The folders are the truth: a lost index comes back from them.
    (world_copy.runs_dir / "index.sqlite").unlink()
    assert rebuild_index(world_copy) == 1
    assert list_runs(world_copy, status="done")[0]["id"] == run_id


def test_mashup_run_trains_from_the_merged_top_k(world_copy):
    from peft import PeftModel

    from mashup_core.data.examples import sample_examples
    from mashup_core.demo.world import load_split
    from mashup_core.models.loading import load_base_model, load_tokenizer
    from mashup_core.selection.loglik import evaluate_mc

    spec = tiny_spec(kind="mashup", n=32, k=2, train=TrainConfig(steps=10, batch_size=16, lr=5e-3))
    record = execute_run(world_copy, create_run(world_copy, spec), progress=False, echo=False)
    assert record.state == "done", record.status
    chosen = record.selection["selected"]
    assert len(chosen) == 2 and not any(c.split("-")[0] == "min" for c in chosen)  # own task excluded
    assert {"scoring_s", "weight_search_s", "merging_s", "training_s"} <= record.timings.keys()
    assert record.selection["weights"] == [0.5, 0.5]

    tok = load_tokenizer(world_copy.base_dir)
    merged = PeftModel.from_pretrained(load_base_model(world_copy.base_dir, device="cpu"),
                                       str(record.dir / "merged_adapter"))
    validation = sample_examples(load_split(world_copy, "min", "validation"), 16, 0)
    assert record.evals[0]["acc"] == evaluate_mc(merged, tok, validation).acc


def test_dead_job_reads_as_killed_and_unknown_ids_are_explained(world_copy):
    run_id = create_run(world_copy, tiny_spec())
    proc = __import__("subprocess").Popen(["true"])
    proc.wait()
    update_status(world_copy.runs_dir / run_id, state="running", pid=proc.pid)
    record = get_run(world_copy, run_id)
    assert record.state == "killed" and "resume it" in record.status["error"]
    assert list_runs(world_copy)[0]["status"] == "killed"
    with pytest.raises(RunError, match="is killed; only queued or running runs can be cancelled"):
        cancel(world_copy, run_id)
    with pytest.raises(RunError, match=f"no run '{run_id[:-1]}' .* did you mean {run_id}"):
        get_run(world_copy, run_id[:-1])


def test_pair_reuses_an_identical_finished_baseline(world_copy, monkeypatch):
    spawned = []
    monkeypatch.setattr(runner, "_spawn", lambda ws, run_id: spawned.append(run_id))
    spec = tiny_spec(kind="mashup", k=2)
    first = launch_pair(world_copy, spec)
    assert not first.reused_baseline and spawned == [first.mashup_id, first.baseline_id]
    baseline = get_run(world_copy, first.baseline_id)
    assert baseline.spec == replace(spec.scratch_baseline(), group=first.group)
    assert (baseline.spec.kind, baseline.spec.init, baseline.spec.train) == ("scratch", "scratch", spec.train)

    update_status(baseline.dir, state="done")
    second = launch_pair(world_copy, replace(spec, k=3, name="other"))  # mashup side differs
    assert second.reused_baseline and second.baseline_id == first.baseline_id
    assert spawned[-1] == second.mashup_id
    third = launch_pair(world_copy, replace(spec, train=replace(spec.train, lr=1e-3)))
    assert not third.reused_baseline  # another learning rate: another baseline
    row = {r["id"]: r for r in list_runs(world_copy)}[second.mashup_id]
    assert (row["group_id"], row["baseline_id"]) == (second.group, first.baseline_id)


# --- real background jobs ---------------------------------------------------------------------


def test_sigkilled_job_resumes_from_its_checkpoint(world_copy):
    run_id = launch(world_copy, tiny_spec(train=TrainConfig(steps=40, batch_size=16, lr=5e-3)))
    ckpt_dir = world_copy.runs_dir / run_id / "checkpoints"
    poll(lambda: latest_checkpoint(ckpt_dir))
    pid = get_run(world_copy, run_id).status["pid"]
    os.kill(pid, signal.SIGKILL)
    record = poll(lambda: (r := get_run(world_copy, run_id)).state != "running" and r)
    assert record.state == "killed"
    assert steps(record, "train")[-1] < 40  # it really was cut short

    resume(world_copy, run_id)
    record = wait(world_copy, run_id, timeout=180)
    assert record.state == "done", record.status
    assert steps(record, "train") == list(range(1, 41))  # complete and unique
    assert steps(record, "eval") == [0, 10, 20, 30, 40]
    assert "resuming from step-" in (record.dir / "log.txt").read_text()


def test_launches_queue_in_order_and_cancel_stops_them(world_copy):
    first = launch(world_copy, tiny_spec(train=TrainConfig(steps=2000, batch_size=16, lr=5e-3)))
    second = launch(world_copy, tiny_spec(train=TrainConfig(steps=5, batch_size=16, lr=5e-3)))
    third = launch(world_copy, tiny_spec(train=TrainConfig(steps=5, batch_size=16, lr=5e-3)))

    def all_waiting():
        a, b, c = (get_run(world_copy, i) for i in (first, second, third))
        return a.state == "running" and steps(a, "train") and all(
            r.status.get("device") == "cpu" for r in (b, c))

    poll(all_waiting)
    assert [r["status"] for r in list_runs(world_copy)] == ["queued", "queued", "running"]

    cancel(world_copy, third)  # waiting in the queue: it ends without ever starting
    assert wait(world_copy, third, timeout=60).status.get("started") is None
    assert get_run(world_copy, third).state == "cancelled"

    cancel(world_copy, first)  # training: it stops between steps, after a checkpoint
    cancelled = wait(world_copy, first, timeout=60)
    assert cancelled.state == "cancelled"
    stopped_at = steps(cancelled, "train")[-1]
    assert latest_checkpoint(cancelled.dir / "checkpoints").name == f"step-{stopped_at:08d}"

    done = wait(world_copy, second, timeout=120)
    assert done.state == "done" and done.status["started"] >= cancelled.status["finished"]
