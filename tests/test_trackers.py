"""A run's curves mirrored to TensorBoard and MLflow, read back equal to the run's records."""

from __future__ import annotations

import pytest

from mashup_core.jobs.runner import execute_run
from mashup_core.jobs.spec import RunSpec, SpecError
from mashup_core.jobs.store import create_run
from mashup_core.training.loop import TrainConfig
from mashup_core.workspace import read_json


def test_tensorboard_and_mlflow_hold_the_runs_values(world_copy):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = RunSpec(target="rev", kind="scratch", train=TrainConfig(steps=6, batch_size=8, lr=3e-3),
                   eval_every=2, checkpoint_every=6, eval_limit=8, device="cpu",
                   report_to=["tensorboard", "mlflow"], name="tracked")
    record = execute_run(world_copy, create_run(world_copy, spec), progress=False, echo=False)
    assert record.state == "done", record.status
    evals = [m for m in record.metrics if m.get("phase") == "eval"]
    steps = [m for m in record.metrics if m.get("phase") == "train"]

    events = EventAccumulator(str(world_copy.runs_dir / record.id / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/acc")] == \
        [(m["step"], pytest.approx(m["acc"])) for m in evals]
    assert [e.value for e in events.Scalars("train/loss")] == [pytest.approx(m["loss"]) for m in steps]

    saved = read_json(world_copy.runs_dir / record.id / "mlflow.json")
    client = MlflowClient(tracking_uri=saved["uri"])
    history = client.get_metric_history(saved["run_id"], "eval/token_acc")
    assert [(h.step, h.value) for h in history] == \
        [(m["step"], pytest.approx(m["token_acc"])) for m in evals]
    assert client.get_run(saved["run_id"]).info.status == "FINISHED"
    assert saved["uri"].startswith("file:") and (world_copy.root / "mlruns").is_dir()


def test_an_unknown_tracker_is_refused():
    with pytest.raises(SpecError, match="report_to.*'wandb' is not one of tensorboard, mlflow"):
        RunSpec.from_dict({"target": "rev", "report_to": ["wandb"]})
