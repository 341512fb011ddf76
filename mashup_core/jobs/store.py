"""Run folders and their index: the record of truth is the folder, `index.sqlite` a cache of it."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup_core.access import require_write
from mashup_core.jobs.background import KINDS, RUN_STATUS
from mashup_core.jobs.devices import device_key, resolve_device
from mashup_core.jobs.record import ACTIVE, JobError, run_dirs, settle, update_record
from mashup_core.jobs.spec import RunSpec, SpecError
from mashup_core.workspace import Workspace, read_json, write_json_atomic


class RunError(JobError):
    """A run that does not exist, or cannot do what was asked in its current state."""


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
        known = [p.name for p in run_dirs(ws)]
        close = difflib.get_close_matches(run_id, known, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (list them with `mashup runs`)"
        raise RunError(f"no run {run_id!r} in {ws.runs_dir}{hint}")
    return path




def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short by a kill is skipped."""
    records = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
        for line in fh:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the records up to `last_step` (a resumed job writes the rest again)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def update_status(
    rd: Path, only_if: Callable[[dict], bool] | None = None, **changes: Any
) -> dict[str, Any]:
    """Read-modify-write status.json under its lock, so the job and its launcher never race."""
    return update_record(rd / RUN_STATUS, only_if, **changes)


def refresh_status(rd: Path, status: dict[str, Any]) -> dict[str, Any]:
    """A queued or running job whose process has gone is 'killed' (or 'cancelled', when a
    cancel was asked for) from now on (`jobs.record.settle`)."""
    return settle(rd / RUN_STATUS, status, KINDS["run"].resume_hint)


def get_run(ws: Workspace, run_id: str) -> RunRecord:
    rd = run_dir(ws, run_id)
    status = refresh_status(rd, read_json(rd / RUN_STATUS, {"state": "queued"}))
    return RunRecord(
        id=run_id, dir=rd, spec=RunSpec.load(rd / "spec.json", merge_methods=False), status=status,
        metrics=read_metrics(rd / "metrics.jsonl"), timings=read_json(rd / "timings.json", {}),
        selection=read_json(rd / "selection.json"), pair=read_json(rd / "pair.json"),
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
    status = refresh_status(rd, read_json(rd / RUN_STATUS, {}))
    pair = read_json(rd / "pair.json", {})
    final = status.get("final") or {}
    return {
        "id": rd.name, "name": spec.name, "kind": spec.kind, "target": spec.target_label,
        "status": status.get("state", "queued"), "created": status.get("created"),
        "started": status.get("started"), "finished": status.get("finished"),
        "final_acc": final.get("acc"), "best_acc": final.get("best_acc"),
        "group_id": pair.get("group") or spec.group or None, "baseline_id": pair.get("baseline"),
        "identity": spec.identity(), "device": status.get("device") or spec.device,
        "steps": spec.train.steps, "error": status.get("error"),
        "synced": _mtime(rd / RUN_STATUS) + _mtime(rd / "pair.json"),
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
    dirs = [run_dir(ws, run_id)] if run_id else run_dirs(ws)
    with contextlib.closing(_index(ws)) as db, db:
        known = {r["id"]: r for r in db.execute("SELECT id, status, synced FROM runs")}
        for rd in dirs:
            row = known.get(rd.name)
            changed = _mtime(rd / RUN_STATUS) + _mtime(rd / "pair.json")
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
    """Index rows, newest first, optionally filtered.

    The index is a cache of the run folders: where it cannot be written (a full disk, a
    read-only file system or folder), the rows are read from the folders instead, so a
    listing never fails for want of room to write its cache."""
    filters = {"status": status, "target": target, "kind": kind, "group_id": group}
    where = {column: value for column, value in filters.items() if value is not None}
    try:
        if sync:
            sync_index(ws)
        query = "SELECT * FROM runs" + (" WHERE " + " AND ".join(f"{c} = ?" for c in where)
                                        if where else "")
        with contextlib.closing(_index(ws)) as db:
            rows = [dict(r) for r in db.execute(query + " ORDER BY created DESC, id DESC",
                                                list(where.values()))]
    except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError):
        rows = []
        for rd in run_dirs(ws):
            with contextlib.suppress(SpecError):
                rows.append(_index_row(rd))
        rows = [r for r in rows if all(r.get(c) == v for c, v in where.items())]
        rows.sort(key=lambda r: (str(r.get("created") or ""), r["id"]), reverse=True)
    for row in rows:
        row.pop("synced", None)
    return rows


# --- Creating, running, launching ---------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()[:24] or "run"


def create_run(ws: Workspace, spec: RunSpec) -> str:
    """A new run folder with its spec, status 'queued' (nothing runs yet)."""
    require_write("creating a run")
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
    write_json_atomic(rd / RUN_STATUS, {"state": "queued", "created": now, "queued_at": now,
                                           "pid": None, "device": device_key(device)})
    write_json_atomic(rd / "spec.json", spec.to_dict())  # last: its presence makes it a run
    sync_index(ws, run_id)
    return run_id
