"""Training runs: one folder each, run in the foreground or as detached background jobs.

A run is the folder `ws.runs_dir/<run_id>/`; everything about it is a file there, so the
dashboard, the CLI and the job itself agree through the disk:

    spec.json        what to run (`RunSpec`), written once
    status.json      queued | running | done | failed | cancelled | killed, pid, times, error
    metrics.jsonl    one record per training step (phase 'train') and per evaluation ('eval')
    timings.json     seconds spent loading, scoring, merging, searching weights, training, evaluating
    selection.json   mashup runs: the score table, the chosen donors and their weights
    merged_adapter/  mashup runs: the merged initialisation (a PEFT adapter)
    checkpoints/     the latest training checkpoints (safetensors + JSON)
    log.txt          what the job printed

`index.sqlite` beside the runs is a cache for listing and querying; `rebuild_index` makes it
again from the folders. One job trains per device at a time: the others wait, in launch order,
on a `flock`ed file per device, with status 'queued'.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mashup_core.errors import MashupError
from mashup_core.training import FINETUNE_MODES, INIT_MODES, LoraSpec, TrainConfig
from mashup_core.workspace import Workspace, write_json_atomic


class SpecError(MashupError, ValueError):
    """A run spec that cannot run; the message names the field and what is allowed."""


class RunError(MashupError):
    """A run that does not exist, or cannot do what was asked in its current state."""


class RunCancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a job when it is cancelled before training has started."""


KINDS = ("scratch", "mashup")
STATES = ("queued", "running", "done", "failed", "cancelled", "killed")
ACTIVE = ("queued", "running")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
SCHEDULES = ("cosine", "constant")


def _registry(module: str, attr: str) -> tuple[str, ...] | None:
    """Names in another module's registry; None while that module is absent (checked at run)."""
    try:
        return tuple(getattr(__import__(f"mashup_core.{module}", fromlist=[attr]), attr))
    except (ImportError, AttributeError):
        return None


# Fields a mashup run has and its scratch baseline ignores.
MASHUP_FIELDS = ("library", "scorer", "n", "k", "merge_method", "density", "weight_strategy",
                 "weight_budget")
# Fields that name or file a run without changing what it computes.
LABEL_FIELDS = ("name", "group", "checkpoint_every")


@dataclass
class RunSpec:
    """Everything needed to run (and re-run) one training run."""

    target: str | dict  # a demo task, benchmark or file path, or a TargetSpec dict
    kind: str = "scratch"  # 'scratch': from the base model; 'mashup': from the merged top-k
    name: str = ""
    group: str = ""  # links a mashup run and its scratch baseline
    base_model: str = ""  # '' = the workspace's demo base model
    library: list[str] = field(default_factory=list)  # checkpoint sources; [] = the demo library
    scorer: str = "acc"  # the reference code ranks by accuracy; 'nll' is the paper's text
    n: int = 256  # target train examples used for scoring
    k: int = 2
    merge_method: str = "linear"
    density: float = 0.2  # kept fraction, for the pruning merge methods (ties, dare_*)
    weight_strategy: str = "equal"
    weight_budget: int = 20  # evaluations for the searched weight strategies
    init: str = ""  # '' = by kind: 'scratch' or 'merged-fold'
    finetune: str = "lora"  # or 'full': every parameter trains
    lora: LoraSpec = field(default_factory=LoraSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_every: int = 10
    checkpoint_every: int = 20
    train_limit: int = 0  # 0 = the whole train split
    eval_limit: int = 0  # 0 = the whole validation split
    seed: int = 0  # LoRA init, train/eval subsets, weight search (batch order: train.seed)
    device: str = "auto"  # auto = CUDA (bf16) when present, else CPU

    def __post_init__(self) -> None:
        if hasattr(self.target, "to_dict"):  # a TargetSpec
            self.target = self.target.to_dict()
        if not self.init:
            self.init = "scratch" if self.kind == "scratch" else "merged-fold"
        if isinstance(self.lora.target_modules, list):
            self.lora = replace(self.lora, target_modules=tuple(self.lora.target_modules))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"]["target_modules"] = list(self.lora.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "spec") -> RunSpec:
        """A validated spec; every problem is a `SpecError` naming `where` and the field."""
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected a JSON object, got {type(data).__name__}")
        values = _typed(cls, data, where)
        values["lora"] = LoraSpec(**_typed(LoraSpec, data.get("lora", {}), f"{where}: lora"))
        values["train"] = TrainConfig(**_typed(TrainConfig, data.get("train", {}), f"{where}: train"))
        spec = cls(**values)
        spec.validate(where)
        return spec

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError(f"{path}: no such spec file (make one with `mashup new-spec`)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{path}: cannot read ({exc})") from exc
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        return cls.from_dict(data, str(path))

    def validate(self, where: str = "spec") -> None:
        def bad(name: str, problem: str) -> SpecError:
            return SpecError(f"{where}: field '{name}': {problem}")

        def choose(name: str, value: str, allowed: tuple[str, ...] | None) -> None:
            if allowed is not None and value not in allowed:
                raise bad(name, f"{value!r} is not one of {', '.join(allowed)}")

        for name, value in [("n", self.n), ("k", self.k), ("weight_budget", self.weight_budget),
                            ("eval_every", self.eval_every), ("checkpoint_every", self.checkpoint_every),
                            ("train.steps", self.train.steps), ("train.batch_size", self.train.batch_size),
                            ("lora.r", self.lora.r), ("lora.alpha", self.lora.alpha)]:
            if value < 1:
                raise bad(name, f"must be at least 1 (got {value})")
        for name, value in [("train_limit", self.train_limit), ("eval_limit", self.eval_limit)]:
            if value < 0:
                raise bad(name, f"must be 0 (all) or more (got {value})")
        if not self.train.lr > 0:
            raise bad("train.lr", f"must be positive (got {self.train.lr})")
        for name, value in [("train.warmup_ratio", self.train.warmup_ratio),
                            ("lora.dropout", self.lora.dropout)]:
            if not 0 <= value < 1:
                raise bad(name, f"must be in [0, 1) (got {value})")
        if not 0 < self.density <= 1:
            raise bad("density", f"must be in (0, 1] (got {self.density})")
        if self.train.weight_decay < 0 or self.train.grad_clip < 0:
            raise bad("train.weight_decay/grad_clip", "must not be negative")
        if not self.lora.target_modules:
            raise bad("lora.target_modules", "name at least one module")
        choose("kind", self.kind, KINDS)
        choose("init", self.init, INIT_MODES)
        choose("finetune", self.finetune, FINETUNE_MODES)
        choose("train.schedule", self.train.schedule, SCHEDULES)
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise bad("device", f"{self.device!r} is not auto, cpu, mps, cuda or cuda:N")
        if (self.kind == "scratch") != (self.init == "scratch"):
            raise bad("init", f"a {self.kind} run cannot start from {self.init!r}; use "
                      + ("'scratch'" if self.kind == "scratch" else "'merged-fold' or 'merged-continue'"))
        if self.init == "merged-continue" and self.finetune == "full":
            raise bad("finetune", "'full' needs init 'merged-fold' ('merged-continue' trains the LoRA)")
        if self.kind == "mashup":
            choose("scorer", self.scorer, _registry("scoring", "SCORERS"))
            choose("merge_method", self.merge_method, _registry("merging", "MERGE_METHODS"))
            choose("weight_strategy", self.weight_strategy, _registry("weights", "WEIGHT_STRATEGIES"))
        self.target_spec(where)

    def target_spec(self, where: str = "spec", ws: Workspace | None = None):
        """The target as a `TargetSpec` (a name or path is resolved against `ws`)."""
        from mashup_core.tasks import DatasetError, TargetSpec, resolve_target

        try:
            if isinstance(self.target, dict):
                return TargetSpec.from_dict(self.target)
            if not self.target.strip():
                raise DatasetError("name a demo task, a benchmark or a file")
            return resolve_target(self.target, ws) if ws is not None else None
        except DatasetError as exc:
            raise SpecError(f"{where}: field 'target': {exc}") from exc

    @property
    def target_label(self) -> str:
        if isinstance(self.target, dict):
            return Path(str(self.target.get("name_or_path", "custom"))).name
        return Path(self.target).name

    def scratch_baseline(self) -> RunSpec:
        """The from-scratch run this mashup run is compared with: same target, training, seed."""
        defaults = RunSpec(target=self.target)
        return replace(self, kind="scratch", init="scratch",
                       name=f"{self.name or self.target_label} (scratch)",
                       **{f: getattr(defaults, f) for f in MASHUP_FIELDS})

    def identity(self) -> str:
        """A hash of what the run computes: equal for runs that would produce the same curve."""
        data = {k: v for k, v in self.to_dict().items() if k not in LABEL_FIELDS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _typed(cls, data: Any, where: str) -> dict[str, Any]:
    """`data`'s keys checked against `cls`'s fields and their default values' types."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
            raise SpecError(f"{where}: unknown field '{key}'{hint}")
    out = {}
    probe = cls(target="") if cls is RunSpec else cls()
    for key, value in data.items():
        if key in ("lora", "train") and cls is RunSpec:
            continue
        default = getattr(probe, key)
        if key == "target":
            ok = isinstance(value, str | dict)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:  # lists and tuples of names
            ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        if not ok:
            expected = "a list of strings" if isinstance(default, list | tuple) else type(default).__name__
            raise SpecError(f"{where}: field '{key}': expected {expected}, got {value!r}")
        out[key] = float(value) if isinstance(default, float) else value
    return out


# --- The run folder -----------------------------------------------------------------------------


@dataclass
class RunRecord:
    id: str
    dir: Path
    spec: RunSpec
    status: dict[str, Any]
    metrics: list[dict[str, Any]]
    timings: dict[str, float]
    selection: dict[str, Any] | None = None
    pair: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        return self.status["state"]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [m for m in self.metrics if m.get("phase") == "eval"]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "dir": str(self.dir), "spec": self.spec.to_dict(),
                "status": self.status, "metrics": self.metrics, "timings": self.timings,
                "selection": self.selection, "pair": self.pair}


def run_dir(ws: Workspace, run_id: str) -> Path:
    path = ws.runs_dir / run_id
    if not run_id or "/" in run_id or not (path / "spec.json").exists():
        known = [p.name for p in _run_dirs(ws)]
        close = difflib.get_close_matches(run_id, known, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (list them with `mashup runs`)"
        raise RunError(f"no run {run_id!r} in {ws.runs_dir}{hint}")
    return path


def _run_dirs(ws: Workspace) -> list[Path]:
    if not ws.runs_dir.is_dir():
        return []
    return sorted(p for p in ws.runs_dir.iterdir() if (p / "spec.json").exists())


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short by a kill is skipped."""
    records = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
        for line in fh:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the records up to `last_step` (a resumed job writes the rest again)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _update_status(
    rd: Path, only_if: Callable[[dict], bool] | None = None, **changes: Any
) -> dict[str, Any]:
    """Read-modify-write status.json under a lock, so the job and its launcher never race."""
    with _locked(rd / ".status.lock"):
        status = _read_json(rd / "status.json", {})
        if only_if is None or only_if(status):
            status.update(changes, updated=time.time())
            write_json_atomic(rd / "status.json", status)
    return status


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a reused pid from our job."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int | None, started: str | None = None) -> bool:
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own finished child, or it stays a zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z" or (started is not None and stat[19] != started):
            return False
    return True


def _refresh(rd: Path, status: dict[str, Any]) -> dict[str, Any]:
    """A queued or running job whose process has gone is 'killed' from now on."""
    if status.get("state") in ACTIVE and status.get("pid") and not process_alive(
        status["pid"], status.get("pid_start")
    ):
        pid = status["pid"]
        # `cancel`'s SIGTERM can land while the job is still importing torch, before its handler
        # exists: the job dies without a word, but the user did ask it to stop.
        if (rd / "cancel").exists():
            outcome = {"state": "cancelled"}
        else:
            outcome = {"state": "killed", "error": f"the job (pid {pid}) ended without recording "
                       "a result; resume it to continue from its last checkpoint"}
        status = _update_status(
            rd, only_if=lambda st: st.get("state") in ACTIVE and st.get("pid") == pid,
            finished=time.time(), **outcome,
        )
        (rd / "cancel").unlink(missing_ok=True)
    return status


def get_run(ws: Workspace, run_id: str) -> RunRecord:
    rd = run_dir(ws, run_id)
    status = _refresh(rd, _read_json(rd / "status.json", {"state": "queued"}))
    return RunRecord(
        id=run_id, dir=rd, spec=RunSpec.load(rd / "spec.json"), status=status,
        metrics=read_metrics(rd / "metrics.jsonl"), timings=_read_json(rd / "timings.json", {}),
        selection=_read_json(rd / "selection.json"), pair=_read_json(rd / "pair.json"),
    )


# --- The index ----------------------------------------------------------------------------------

INDEX_COLUMNS = ("id", "name", "kind", "target", "status", "created", "started", "finished",
                 "final_acc", "best_acc", "group_id", "baseline_id", "identity", "device",
                 "steps", "error", "synced")


def _index(ws: Workspace) -> sqlite3.Connection:
    ws.runs_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(ws.runs_dir / "index.sqlite", timeout=30)
    db.row_factory = sqlite3.Row
    db.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(INDEX_COLUMNS)}, PRIMARY KEY (id))")
    return db


def _index_row(rd: Path) -> dict[str, Any]:
    spec = RunSpec.load(rd / "spec.json")
    status = _refresh(rd, _read_json(rd / "status.json", {}))
    pair = _read_json(rd / "pair.json", {})
    final = status.get("final") or {}
    return {
        "id": rd.name, "name": spec.name, "kind": spec.kind, "target": spec.target_label,
        "status": status.get("state", "queued"), "created": status.get("created"),
        "started": status.get("started"), "finished": status.get("finished"),
        "final_acc": final.get("acc"), "best_acc": final.get("best_acc"),
        "group_id": pair.get("group") or spec.group or None, "baseline_id": pair.get("baseline"),
        "identity": spec.identity(), "device": status.get("device") or spec.device,
        "steps": spec.train.steps, "error": status.get("error"),
        "synced": _mtime(rd / "status.json") + _mtime(rd / "pair.json"),
    }


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _upsert(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
               list(row.values()))


def sync_index(ws: Workspace, run_id: str | None = None) -> None:
    """Bring the index up to date with the run folders (only changed or active ones are read)."""
    dirs = [run_dir(ws, run_id)] if run_id else _run_dirs(ws)
    with contextlib.closing(_index(ws)) as db, db:
        known = {r["id"]: r for r in db.execute("SELECT id, status, synced FROM runs")}
        for rd in dirs:
            row = known.get(rd.name)
            changed = _mtime(rd / "status.json") + _mtime(rd / "pair.json")
            if row is None or row["synced"] != changed or row["status"] in ACTIVE:
                with contextlib.suppress(SpecError):  # a hand-broken spec: leave the row out
                    _upsert(db, _index_row(rd))
        if run_id is None:
            gone = set(known) - {rd.name for rd in dirs}
            db.executemany("DELETE FROM runs WHERE id = ?", [(g,) for g in gone])


def rebuild_index(ws: Workspace) -> int:
    """Drop the index and read every run folder again; returns how many runs it holds."""
    (ws.runs_dir / "index.sqlite").unlink(missing_ok=True)
    sync_index(ws)
    return len(list_runs(ws, sync=False))


def list_runs(
    ws: Workspace, *, status: str | None = None, target: str | None = None,
    kind: str | None = None, group: str | None = None, sync: bool = True,
) -> list[dict[str, Any]]:
    """Index rows, newest first, optionally filtered."""
    if sync:
        sync_index(ws)
    where, args = [], []
    for column, value in (("status", status), ("target", target), ("kind", kind),
                          ("group_id", group)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    query = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
    with contextlib.closing(_index(ws)) as db:
        rows = [dict(r) for r in db.execute(query + " ORDER BY created DESC, id DESC", args)]
    for row in rows:
        row.pop("synced")
    return rows


# --- Creating, running, launching ---------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()[:24] or "run"


def create_run(ws: Workspace, spec: RunSpec) -> str:
    """A new run folder with its spec, status 'queued' (nothing runs yet)."""
    spec.validate()
    spec.target_spec(ws=ws)  # the target must exist before anything is queued
    device = resolve_device(spec.device)
    ws.ensure_writable()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{spec.kind}-{_slug(spec.target_label)}-{secrets.token_hex(3)}"
    rd = ws.runs_dir / run_id
    rd.mkdir(parents=True)
    now = time.time()
    # The device is known from the start, so a job still importing torch keeps its place.
    write_json_atomic(rd / "status.json", {"state": "queued", "created": now, "queued_at": now,
                                           "pid": None, "device": device_key(device)})
    write_json_atomic(rd / "spec.json", spec.to_dict())  # last: its presence makes it a run
    sync_index(ws, run_id)
    return run_id


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"field 'device': {name!r} asked for, but no CUDA device is available")
    return device


def device_key(device) -> str:
    """'cpu', 'cuda:0', ...: the name of the device's queue."""
    if device.type == "cuda":
        import torch

        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


def _older_waiters(ws: Workspace, run_id: str, key: str, since: float) -> bool:
    """Is a job launched before `run_id` waiting for the same device? Then it goes first."""
    for rd in _run_dirs(ws):
        if rd.name == run_id:
            continue
        st = _read_json(rd / "status.json", {})
        if (st.get("state") == "queued" and st.get("device") == key
                and (st.get("queued_at") or 0, rd.name) < (since, run_id)
                and process_alive(st.get("pid"), st.get("pid_start"))):
            return True
    return False


@contextlib.contextmanager
def device_slot(
    ws: Workspace, key: str, *, run_id: str = "", queued_at: float | None = None,
    should_stop: Callable[[], bool] = lambda: False, poll: float = 0.25,
) -> Iterator[None]:
    """Hold the device `key` (waiting, first come first served): one training job at a time.

    Anything else that trains on a device (a study) can take the same slot.
    """
    lock_dir = ws.runs_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    queued_at = time.time() if queued_at is None else queued_at
    with open(lock_dir / f"{key.replace(':', '-')}.lock", "a") as fh:
        while True:
            if should_stop():
                raise RunCancelled
            if not _older_waiters(ws, run_id, key, queued_at):
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
            time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Stop:
    """Cancellation: a `cancel` file in the run folder, or SIGTERM to the job.

    Training checks it between steps and stops cleanly after a checkpoint; before training
    (loading, scoring, merging, waiting in the queue) SIGTERM interrupts at once.
    """

    def __init__(self, rd: Path):
        self.flag, self.requested, self.training = rd / "cancel", False, False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        if not self.training:
            raise RunCancelled

    def __call__(self) -> bool:
        self.requested = self.requested or self.flag.exists()
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
    status = _refresh(rd, _read_json(rd / "status.json", {}))
    if status.get("state") in ACTIVE and status.get("pid") not in (None, os.getpid()):
        raise RunError(f"run {run_id} is already {status['state']} (pid {status['pid']})")
    if status.get("state") == "done":
        raise RunError(f"run {run_id} has finished already; launch a new run to train again")
    log, stop = _Log(rd, echo), _Stop(rd)
    try:
        device = resolve_device(spec.device)
        key, queued_at = device_key(device), status.get("queued_at") or time.time()
        _update_status(rd, state="queued", pid=os.getpid(), pid_start=_process_start(os.getpid()),
                       device=key, queued_at=queued_at, error=None, finished=None)
        sync_index(ws, run_id)
        log(f"run {run_id}: {spec.kind} on {spec.target_label}, waiting for {key}")
        with device_slot(ws, key, run_id=run_id, queued_at=queued_at, should_stop=stop):
            _update_status(rd, state="running", started=time.time())
            sync_index(ws, run_id)
            log("started")
            outcome = _train(ws, rd, spec, device, log, stop, progress)
        state = "cancelled" if outcome["stopped"] else "done"
        _update_status(rd, state=state, finished=time.time(), final=outcome["final"])
        log(f"{state} at step {outcome['step']}: {outcome['final']}")
    except (RunCancelled, KeyboardInterrupt) as exc:
        _update_status(rd, state="cancelled", finished=time.time(),
                       error="interrupted" if isinstance(exc, KeyboardInterrupt) else None)
        log("cancelled")
        if isinstance(exc, KeyboardInterrupt):
            raise
    except MashupError as exc:
        _update_status(rd, state="failed", finished=time.time(), error=str(exc))
        log(f"failed: {exc}")
        raise
    except Exception as exc:
        _update_status(rd, state="failed", finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        log(f"failed:\n{traceback.format_exc()}")
        raise
    finally:
        stop.close()
        (rd / "cancel").unlink(missing_ok=True)
        sync_index(ws, run_id)
    return get_run(ws, run_id)


def _train(ws: Workspace, rd: Path, spec: RunSpec, device, log, stop: _Stop, progress: bool) -> dict:
    """Load, build the initialisation (mashup: score, select, merge), then `fit`."""
    from mashup_core.modeling import load_base_model, load_tokenizer
    from mashup_core.tasks import load_target, sample_examples
    from mashup_core.training import (
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
    timings = _read_json(rd / "timings.json", {})
    started = time.perf_counter()
    base_path = spec.base_model or str(ws.base_dir)
    tokenizer = load_tokenizer(base_path)
    base = load_base_model(base_path, device=device, dtype=training_dtype(device, spec.finetune))
    target = spec.target_spec(ws=ws)
    train_examples = load_target(target.with_split("train"), ws)
    validation = load_target(target.with_split("validation"), ws)
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
            from mashup_core.pipeline import prepare_mashup_init, source_task_of

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
    _truncate_metrics(rd / "metrics.jsonl", checkpoint_step(ckpt) if ckpt else -1)
    if ckpt:
        log(f"resuming from {ckpt.name}")
    stop.training = True
    with open(rd / "metrics.jsonl", "a", encoding="utf-8") as fh:
        def record(row: dict) -> None:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

        result = fit(
            model, tokenizer, as_pairs(train_examples), validation, spec.train,
            FitSchedule(eval_every=spec.eval_every, checkpoint_every=spec.checkpoint_every),
            checkpoint_dir=rd / "checkpoints", on_record=record, should_stop=stop,
            progress=progress,
        )
    timings["training_s"] = result.state.elapsed
    timings["eval_s"] = timings.get("eval_s", 0.0) + result.eval_seconds
    write_json_atomic(rd / "timings.json", timings)
    evals = [m for m in read_metrics(rd / "metrics.jsonl") if m.get("phase") == "eval"]
    final = {"step": evals[-1]["step"], "acc": evals[-1]["acc"], "acc_norm": evals[-1]["acc_norm"],
             "nll": evals[-1]["nll"], "init_acc": evals[0]["acc"],
             "best_acc": max(e["acc"] for e in evals)} if evals else {}
    return {"stopped": result.stopped, "step": result.state.step, "final": final}


def spawn_detached(cli_args: Sequence[str], log_path: Path, mode: str = "a") -> int:
    """Start `mashup CLI_ARGS...` in its own session, so it outlives the caller (a dashboard
    or a terminal); its output goes to `log_path`. Returns the pid."""
    cmd = [sys.executable, "-m", "mashup_core.cli", *cli_args]
    with open(log_path, mode) as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc.pid


def _spawn(ws: Workspace, run_id: str) -> int:
    """Start `mashup run --resume-id` detached."""
    rd = run_dir(ws, run_id)
    cli_args = ["run", "--resume-id", run_id, "--workspace", str(ws.root), "--no-progress",
                "--detached"]
    try:
        pid = spawn_detached(cli_args, rd / "log.txt")
    except OSError as exc:
        _update_status(rd, state="failed", error=f"cannot start the job: {exc}")
        raise RunError(f"cannot start the job for run {run_id}: {exc}") from exc
    # The job writes its own status too; whichever writes first, the pid is the same.
    _update_status(rd, only_if=lambda st: st.get("pid") is None, pid=pid,
                   pid_start=_process_start(pid))
    return pid


def launch(ws: Workspace, spec: RunSpec) -> str:
    """Create a run and start it in the background; it queues if its device is busy."""
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
    rd = run_dir(ws, run_id)
    status = _refresh(rd, _read_json(rd / "status.json", {}))
    if status.get("state") not in ACTIVE:
        raise RunError(f"run {run_id} is {status.get('state')}; only queued or running runs "
                       "can be cancelled")
    (rd / "cancel").touch()
    pid = status.get("pid")
    if pid and process_alive(pid, status.get("pid_start")):
        with contextlib.suppress(ProcessLookupError):
            # A launched job leads its own process group; a foreground one shares the shell's.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
    else:  # never started: nothing will write the status for it
        status = _update_status(rd, state="cancelled", finished=time.time())
        (rd / "cancel").unlink(missing_ok=True)
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
    rd = run_dir(ws, run_id)
    state = _refresh(rd, _read_json(rd / "status.json", {})).get("state")
    if state in ACTIVE or state == "done":
        raise RunError(f"run {run_id} is {state}; only killed, cancelled or failed runs resume")
    (rd / "cancel").unlink(missing_ok=True)
    _update_status(rd, state="queued", pid=None, pid_start=None, error=None, finished=None,
                   queued_at=time.time())
    sync_index(ws, run_id)
    if detach:
        _spawn(ws, run_id)
    else:
        execute_run(ws, run_id, progress=progress)
    return run_id
