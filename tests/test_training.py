"""The training loop around a run: initialisations, evaluation schedule, checkpoints, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from mashup_core.demo.world import load_split
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.loglik import evaluate_mc
from mashup_core.training.loop import (
    FitSchedule,
    LoraSpec,
    TrainConfig,
    TrainingError,
    as_pairs,
    fit,
    init_model,
    list_checkpoints,
    trainable_state,
)

CFG = TrainConfig(steps=12, batch_size=16, lr=5e-3, seed=0)


@pytest.fixture(scope="module")
def data(tiny_world):
    tok = load_tokenizer(tiny_world.base_dir)
    return tok, load_split(tiny_world, "min", "train"), load_split(tiny_world, "min", "validation")


def base(ws):
    return load_base_model(ws.base_dir, device="cpu")


def average_adapters(ws, names, out):
    """The reference merge: equal-weight average of every lora_A and lora_B."""
    states = [load_file(ws.library_dir / n / "adapter_model.safetensors") for n in names]
    out.mkdir(parents=True)
    save_file({k: sum(s[k] for s in states) / len(states) for k in states[0]},
              out / "adapter_model.safetensors")
    shutil.copy(ws.library_dir / names[0] / "adapter_config.json", out / "adapter_config.json")
    return out


def run_fit(ws, data, init="scratch", adapter=None, *, finetune="lora", ckpt=None, stop_after=None,
            cfg=CFG):
    tok, train, val = data
    model = init_model(base(ws), init, adapter_dir=adapter, finetune=finetune, seed=0)
    records, steps = [], []

    def record(r):
        records.append(r)
        if r["phase"] == "train":
            steps.append(r["step"])

    outcome = fit(model, tok, as_pairs(train), val, cfg, FitSchedule(eval_every=4, checkpoint_every=5),
                  checkpoint_dir=ckpt, on_record=record,
                  should_stop=lambda: stop_after is not None and len(steps) >= stop_after)
    return model, outcome, records


@pytest.mark.parametrize("init", ["merged-fold", "merged-continue"])
def test_step0_accuracy_is_the_merged_models(tiny_world, data, tmp_path, init):
    tok, _, val = data
    merged = average_adapters(tiny_world, ["sort", "dmax"], tmp_path / "merged")
    expected = evaluate_mc(PeftModel.from_pretrained(base(tiny_world), str(merged)), tok, val)
    plain = evaluate_mc(base(tiny_world), tok, val)
    assert expected.nll != pytest.approx(plain.nll, abs=1e-3)  # the merge changes the model

    _, outcome, records = run_fit(tiny_world, data, init, merged, cfg=TrainConfig(steps=4, batch_size=16))
    step0 = records[0]
    assert (step0["step"], step0["phase"], step0["loss"]) == (0, "eval", None)
    assert step0["acc"] == expected.acc
    # Folding sums the same numbers in another order: equal up to float rounding.
    assert step0["nll"] == pytest.approx(expected.nll, abs=1e-4)
    assert [e["step"] for e in outcome.evals] == [0, 4]


def test_fit_records_evaluates_and_learns(tiny_world, data):
    _, outcome, records = run_fit(tiny_world, data)
    train = [r for r in records if r["phase"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert [e["step"] for e in outcome.evals] == [0, 4, 8, 12]
    seconds = [r["seconds"] for r in train]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert outcome.evals[4 // 4]["loss"] == pytest.approx(sum(r["loss"] for r in train[:4]) / 4)
    assert outcome.evals[-1]["nll"] < outcome.evals[0]["nll"]
    assert not outcome.stopped


def test_stop_and_resume_match_an_uninterrupted_run(tiny_world, data, tmp_path):
    straight, _, records = run_fit(tiny_world, data)
    ckpt = tmp_path / "ckpt"
    _, stopped, first = run_fit(tiny_world, data, ckpt=ckpt, stop_after=7)
    assert stopped.stopped and stopped.state.step == 7
    # Checkpoints at 5 and at the stop; only the newest two are kept.
    assert [p.name for p in list_checkpoints(ckpt)] == ["step-00000005", "step-00000007"]
    assert {p.suffix for p in (ckpt / "step-00000007").iterdir()} == {".safetensors", ".json"}

    resumed, outcome, rest = run_fit(tiny_world, data, ckpt=ckpt)
    assert outcome.resumed_from == 7
    assert [r["step"] for r in rest if r["phase"] == "train"] == list(range(8, 13))
    assert [r["step"] for r in first + rest if r["phase"] == "eval"] == [0, 4, 8, 12]
    for name, value in trainable_state(straight).items():
        torch.testing.assert_close(trainable_state(resumed)[name], value, atol=1e-6, rtol=1e-5)
    assert rest[-1]["acc"] == records[-1]["acc"]
    assert rest[-1]["nll"] == pytest.approx(records[-1]["nll"], abs=1e-5)


def test_full_finetune_trains_every_weight(tiny_world, data):
    model = init_model(base(tiny_world), "scratch", finetune="full")
    assert not isinstance(model, PeftModel)
    assert all(p.requires_grad for p in model.parameters())
    lora = init_model(base(tiny_world), "scratch", lora=LoraSpec(r=4))
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_bad_setups_are_explained(tiny_world, data, tmp_path):
    with pytest.raises(TrainingError, match="cannot be a full finetune; use init 'merged-fold'"):
        init_model(base(tiny_world), "merged-continue", adapter_dir=tiny_world.library_dir / "sort",
                   finetune="full")
    with pytest.raises(TrainingError, match="needs a PEFT adapter folder"):
        init_model(base(tiny_world), "merged-fold", adapter_dir=tmp_path)
    with pytest.raises(TrainingError, match="unknown init 'warm'; choose from scratch"):
        init_model(base(tiny_world), "warm")

    ckpt = tmp_path / "ckpt"
    run_fit(tiny_world, data, ckpt=ckpt, stop_after=1)
    tok, train, val = data
    other = init_model(base(tiny_world), lora=LoraSpec(target_modules=("q_proj",)))
    with pytest.raises(TrainingError, match="does not fit this model .* Delete its checkpoints"):
        fit(other, tok, as_pairs(train), val, CFG, checkpoint_dir=ckpt)
    assert json.loads((list_checkpoints(ckpt)[-1] / "trainer.json").read_text())["step"] == 1


@pytest.mark.gpu
def test_bf16_lora_step_on_cuda(tiny_world, data):
    from mashup_core.training.loop import training_dtype

    tok, train, val = data
    device = torch.device("cuda")
    model = load_base_model(tiny_world.base_dir, device=device, dtype=training_dtype(device))
    assert next(model.parameters()).dtype == torch.bfloat16
    model = init_model(model, "scratch", seed=0)
    before = {k: v.clone() for k, v in trainable_state(model).items()}
    outcome = fit(model, tok, as_pairs(train), val, TrainConfig(steps=3, batch_size=16, lr=5e-3),
                  FitSchedule(eval_every=3))
    after = trainable_state(model)
    assert outcome.state.step == 3 and all(e["nll"] == e["nll"] for e in outcome.evals)  # no NaN
    assert any(not torch.equal(before[k], after[k]) for k in before)
