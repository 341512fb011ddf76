"""Running a training run: in this process, or launched as a detached job; cancel, wait, resume."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mashup_core.access import require_write
from mashup_core.errors import MashupError
from mashup_core.jobs.background import RUN_STATUS, cancel_job, resume_job, start_job
from mashup_core.jobs.devices import device_key, resolve_device
from mashup_core.jobs.processes import process_start
from mashup_core.jobs.slot import RunCancelled, accelerator_slot
from mashup_core.jobs.spec import RunSpec, SpecError
from mashup_core.jobs.store import (
    ACTIVE,
    RunError,
    RunRecord,
    create_run,
    get_run,
    list_runs,
    read_metrics,
    refresh_status,
    run_dir,
    sync_index,
    truncate_metrics,
    update_status,
)
from mashup_core.workspace import Workspace, read_json, write_json_atomic


class _Stop:
    """Cancellation: a cancel asked for in the run's record (`jobs.background.cancel_job`,
    which also sends SIGTERM), or SIGTERM alone.

    Training checks it between steps and stops cleanly after a checkpoint; before training
    (loading, scoring, merging, waiting in the queue) SIGTERM interrupts at once.
    """

    def __init__(self, rd: Path):
        self.status, self.requested, self.training = rd / RUN_STATUS, False, False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        if not self.training:
            raise RunCancelled

    def __call__(self) -> bool:
        self.requested = self.requested or bool(read_json(self.status, {}).get("cancel_requested"))
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Log:
    def __init__(self, rd: Path, echo: bool):
        self.path, self.echo = rd / "log.txt", echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.echo:
            print(line, file=sys.stderr)


def execute_run(ws: Workspace, run_id: str, *, progress: bool = True, echo: bool = True) -> RunRecord:
    """Run (or continue) `run_id` in this process: queue for the device, train, record."""
    rd = run_dir(ws, run_id)
    spec = RunSpec.load(rd / "spec.json")
    status = refresh_status(rd, read_json(rd / "status.json", {}))
    if status.get("state") in ACTIVE and status.get("pid") not in (None, os.getpid()):
        raise RunError(f"run {run_id} is already {status['state']} (pid {status['pid']})")
    if status.get("state") == "done":
        raise RunError(f"run {run_id} has finished already; launch a new run to train again")
    log, stop = _Log(rd, echo), _Stop(rd)
    try:
        device = resolve_device(spec.device)
        key, queued_at = device_key(device), status.get("queued_at") or time.time()
        update_status(rd, state="queued", pid=os.getpid(), pid_start=process_start(os.getpid()),
                       device=key, queued_at=queued_at, error=None, finished=None,
                       waiting_for=None)
        sync_index(ws, run_id)
        log(f"run {run_id}: {spec.kind} on {spec.target_label}, waiting for {key}")

        def waiting(who: str | None) -> None:
            # In status.json, so `mashup show` and the pages can say whom a queued run waits for.
            update_status(rd, waiting_for=who)
            if who is not None:
                log(f"waiting for {who}")

        with accelerator_slot(ws, key, holder=run_id, kind="run", queued_at=queued_at,
                              should_stop=stop, on_wait=waiting):
            update_status(rd, state="running", started=time.time(), waiting_for=None)
            sync_index(ws, run_id)
            log("started")
            outcome = _train(ws, rd, spec, device, log, stop, progress)
        state = "cancelled" if outcome["stopped"] else "done"
        update_status(rd, state=state, finished=time.time(), final=outcome["final"])
        log(f"{state} at step {outcome['step']}: {outcome['final']}")
    except (RunCancelled, KeyboardInterrupt) as exc:
        update_status(rd, state="cancelled", finished=time.time(), waiting_for=None,
                       error="interrupted" if isinstance(exc, KeyboardInterrupt) else None)
        log("cancelled")
        if isinstance(exc, KeyboardInterrupt):
            raise
    except MashupError as exc:
        update_status(rd, state="failed", finished=time.time(), error=str(exc))
        log(f"failed: {exc}")
        raise
    except Exception as exc:
        update_status(rd, state="failed", finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        log(f"failed:\n{traceback.format_exc()}")
        raise
    finally:
        stop.close()
        update_status(rd, cancel_requested=None)  # asked and answered: a resume starts clean
        sync_index(ws, run_id)
    return get_run(ws, run_id)


def _train(ws: Workspace, rd: Path, spec: RunSpec, device, log, stop: _Stop, progress: bool) -> dict:
    """Load, build the initialisation (mashup: score, select, merge), then `fit`."""
    from mashup_core.config import load_target
    from mashup_core.data.examples import sample_examples
    from mashup_core.models.loading import load_base_model
    from mashup_core.training.loop import (
        FitSchedule,
        as_pairs,
        checkpoint_step,
        fit,
        init_model,
        latest_checkpoint,
        training_dtype,
    )

    if not progress:  # a background job's log is no place for loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    timings = read_json(rd / "timings.json", {})
    started = time.perf_counter()
    from mashup_core.config import resolve_config

    config = resolve_config(ws, base=spec.base_model or None)  # an old spec: the workspace's
    base_path, trust = config.base_model, config.base.trust_remote_code
    tokenizer = config.base.load_tokenizer()  # with the workspace's chat template file, if any
    base = load_base_model(base_path, device=device, dtype=training_dtype(device, spec.finetune),
                           trust_remote_code=trust)
    update_status(rd, base_model=str(base_path))  # what the weights sit on (jobs.promote reads it)
    target = spec.target_spec(ws=ws)
    train_examples = load_target(target.with_split("train"), ws, tokenizer)  # in its prompt format
    validation = load_target(target.with_split("validation"), ws, tokenizer)
    train_examples = sample_examples(train_examples, spec.train_limit or None, spec.seed)
    validation = sample_examples(validation, spec.eval_limit or None, spec.seed)
    timings["load_s"] = time.perf_counter() - started
    log(f"loaded {base_path} on {device}; {len(train_examples)} train, "
        f"{len(validation)} validation examples")

    adapter_dir = None
    if spec.kind == "mashup":
        adapter_dir = rd / "merged_adapter"
        if (rd / "selection.json").exists():  # a resumed run keeps the initialisation it had
            log("reusing the merged initialisation")
        else:
            from mashup_core.training.mashup_init import prepare_mashup_init, source_task_of

            init = prepare_mashup_init(
                ws, base, tokenizer, spec.library or None, train_examples, scorer=spec.scorer,
                n=spec.n, k=spec.k, method=spec.merge_method, weight_strategy=spec.weight_strategy,
                seed=spec.seed, out_dir=adapter_dir, budget=spec.weight_budget, density=spec.density,
                exclude_task=source_task_of(target), target_label=spec.target_label,
                progress=progress,
            )
            timings.update(init.timings)
            write_json_atomic(rd / "selection.json", init.to_dict())
            log(f"merged {', '.join(init.selected)} with weights {init.weights}")
    write_json_atomic(rd / "timings.json", timings)

    model = init_model(base, spec.init, adapter_dir=adapter_dir, lora=spec.lora,
                       finetune=spec.finetune, seed=spec.seed)
    ckpt = latest_checkpoint(rd / "checkpoints")
    truncate_metrics(rd / "metrics.jsonl", checkpoint_step(ckpt) if ckpt else -1)
    if ckpt:
        log(f"resuming from {ckpt.name}")
    stop.training = True
    from mashup_core.training.trackers import open_trackers

    trackers = open_trackers(spec.report_to, rd, spec.name or rd.name, spec.tracking_uri or None)
    with open(rd / "metrics.jsonl", "a", encoding="utf-8") as fh:
        def record(row: dict) -> None:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            for tracker in trackers:  # mirrors of metrics.jsonl (report_to)
                tracker.log(row)

        try:
            result = fit(
                model, tokenizer, as_pairs(train_examples), validation, spec.train,
                FitSchedule(eval_every=spec.eval_every, checkpoint_every=spec.checkpoint_every),
                checkpoint_dir=rd / "checkpoints", on_record=record, should_stop=stop,
                progress=progress,
            )
        finally:
            for tracker in trackers:
                tracker.close()
    timings["training_s"] = result.state.elapsed
    timings["eval_s"] = timings.get("eval_s", 0.0) + result.eval_seconds
    write_json_atomic(rd / "timings.json", timings)
    evals = [m for m in read_metrics(rd / "metrics.jsonl") if m.get("phase") == "eval"]
    final = {"step": evals[-1]["step"], "acc": evals[-1]["acc"], "acc_norm": evals[-1]["acc_norm"],
             "nll": evals[-1]["nll"], "init_acc": evals[0]["acc"],
             "best_acc": max(e["acc"] for e in evals)} if evals else {}
    return {"stopped": result.stopped, "step": result.state.step, "final": final}


def _spawn(ws: Workspace, run_id: str) -> int:
    """Start the run as a detached job (`mashup jobs exec run ID`)."""
    return start_job(ws, "run", run_id, error=RunError)


def launch(ws: Workspace, spec: RunSpec) -> str:
    """Create a run and start it in the background; it queues if its device is busy."""
    require_write("launching a run")
    run_id = create_run(ws, spec)
    _spawn(ws, run_id)
    return run_id


@dataclass
class PairLaunch:
    group: str
    mashup_id: str
    baseline_id: str
    reused_baseline: bool


def launch_pair(ws: Workspace, spec: RunSpec) -> PairLaunch:
    """A mashup run and its from-scratch baseline (same target, training and seed), linked.

    An identical baseline that is done, or still queued or running, is reused, not rerun.
    """
    require_write("launching a run")
    if spec.kind != "mashup":
        raise SpecError("field 'kind': a pair starts from a mashup spec (kind 'mashup')")
    group = spec.group or f"pair-{secrets.token_hex(4)}"
    baseline = replace(spec.scratch_baseline(), group=group)
    wanted = baseline.identity()
    reusable = [r for r in list_runs(ws, kind="scratch")
                if r["identity"] == wanted and r["status"] in ("done", *ACTIVE)]
    mashup_id = create_run(ws, replace(spec, group=group))
    baseline_id = reusable[0]["id"] if reusable else create_run(ws, baseline)
    write_json_atomic(ws.runs_dir / mashup_id / "pair.json",
                      {"group": group, "baseline": baseline_id, "reused": bool(reusable)})
    _spawn(ws, mashup_id)
    if not reusable:
        _spawn(ws, baseline_id)
    sync_index(ws)
    return PairLaunch(group, mashup_id, baseline_id, bool(reusable))


def cancel(ws: Workspace, run_id: str) -> dict[str, Any]:
    """Ask a queued or running job to stop (it checkpoints first); returns its status."""
    run_dir(ws, run_id)  # an unknown id: the message lists close ones
    status = cancel_job(ws, "run", run_id, error=RunError).fields
    sync_index(ws, run_id)
    return status


def wait(ws: Workspace, run_id: str, timeout: float = 600, poll: float = 0.5) -> RunRecord:
    """Block until `run_id` is no longer queued or running (or raise `RunError` on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        record = get_run(ws, run_id)
        if record.state not in ACTIVE:
            return record
        if time.monotonic() > deadline:
            raise RunError(f"run {run_id} still {record.state} after {timeout:.0f} s")
        time.sleep(poll)


def resume(ws: Workspace, run_id: str, *, detach: bool = True, progress: bool = True) -> str:
    """Continue a killed, cancelled or failed run from its last checkpoint."""
    run_dir(ws, run_id)
    resume_job(ws, "run", run_id, detach=detach, error=RunError)
    sync_index(ws, run_id)
    if not detach:
        execute_run(ws, run_id, progress=progress)
    return run_id
