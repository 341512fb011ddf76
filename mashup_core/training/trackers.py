"""Logging a run's curves to the lab's tools, as HF Trainer's `report_to` does.

A run's records (`metrics.jsonl`: one per step, one per evaluation) stay the record of truth;
a tracker mirrors each as it is written: TensorBoard event files in the run folder
(`tensorboard/`), or an MLflow run on a tracking URI (a local `file:` store by default, so it
works offline; a resumed run continues the same MLflow run). Train records log `train/loss`
and `train/lr`, evaluation records `eval/<metric>` at their step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mashup_core.errors import MashupError

EVAL_KEYS = ("acc", "acc_norm", "nll", "token_acc", "exact_match", "loss")


class TrackerError(MashupError):
    """A tracker that cannot start (its package missing, a bad tracking URI)."""


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    if record.get("phase") == "train":
        keys, prefix = ("loss", "lr"), "train"
    else:
        keys, prefix = EVAL_KEYS, "eval"
    return {f"{prefix}/{k}": float(record[k]) for k in keys if isinstance(record.get(k), int | float)}


class TensorBoard:
    def __init__(self, run_dir: Path, name: str, uri: str | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackerError("report_to tensorboard needs the tensorboard package "
                               "(pip install tensorboard)") from exc
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: Mapping[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, int(record["step"]))

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per mashup run (its id kept in the run folder, so a resume continues it)."""

    def __init__(self, run_dir: Path, name: str, uri: str | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise TrackerError("report_to mlflow needs MLflow (pip install mlflow-skinny)") from exc
        self.uri = uri or (Path(run_dir).parent.parent / "mlruns").resolve().as_uri()
        if self.uri.startswith("file:"):
            # MLflow 3 keeps the file store for offline use behind this switch (its database
            # store needs SQLAlchemy, which mlflow-skinny leaves out); a server URI needs none.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        state = Path(run_dir) / "mlflow.json"
        saved = json.loads(state.read_text()) if state.exists() else {}
        if saved.get("uri") == self.uri:
            self.run_id = saved["run_id"]
        else:
            experiment = self.client.get_experiment_by_name("mashup") \
                or self.client.get_experiment(self.client.create_experiment("mashup"))
            self.run_id = self.client.create_run(experiment.experiment_id, run_name=name).info.run_id
            state.write_text(json.dumps({"uri": self.uri, "run_id": self.run_id}))

    def log(self, record: Mapping[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.client.log_metric(self.run_id, key, value, step=int(record["step"]))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS: dict[str, Callable[..., Any]] = {"tensorboard": TensorBoard, "mlflow": MLflow}


def open_trackers(names: Sequence[str], run_dir: Path, run_name: str,
                  uri: str | None = None) -> list:
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TrackerError(f"report_to: {', '.join(unknown)} unknown; choose from "
                           f"{', '.join(TRACKERS)}")
    return [TRACKERS[n](run_dir, run_name, uri) for n in names]
