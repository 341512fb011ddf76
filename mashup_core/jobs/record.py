"""The one record of a background job, whatever its kind.

A job's record is a JSON file in the workspace (where each kind always kept it, so old
workspaces still read), edited under a `flock` so that the job and its launcher never race.
Every kind says how it stands in one vocabulary:

    queued     launched (or waiting for its device), not working yet
    running    working
    done       finished with a result
    failed     stopped by an error (`error` says which)
    cancelled  stopped because someone asked
    killed     its process ended without saying how (SIGKILL, a reboot): found out on read

A record read while its process is gone is settled on the spot: it says "killed" (or
"cancelled", if a cancel was asked for), on disk too, never "running". The process is
known by pid *and* kernel start time, so a pid the kernel has handed to another process
does not keep a dead job alive.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mashup_core.errors import MashupError
from mashup_core.jobs.processes import process_alive
from mashup_core.workspace import Workspace, locked, read_json, write_json_atomic

STATES = ("queued", "running", "done", "failed", "cancelled", "killed")
ACTIVE = ("queued", "running")
# What records written before this vocabulary said, in its words.
OLD_STATES = {"starting": "queued", "pending": "queued"}


class JobError(MashupError):
    """A job that does not exist, or cannot do what was asked in its current state."""


@dataclass
class JobRecord:
    kind: str                 # run | study | demo | recycle
    id: str
    state: str                # one of STATES
    pid: int | None = None
    pid_start: str | None = None  # the kernel's start time of `pid` (jobs.processes)
    progress: dict[str, Any] = field(default_factory=dict)  # {"done", "total", "unit"}, ...
    log: str | None = None    # the job's output
    result: Any = None        # what it produced (a run's final numbers, a search's file)
    error: str | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    fields: dict[str, Any] = field(default_factory=dict, repr=False)  # the file as written

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def alive(self) -> bool:
        return process_alive(self.pid, self.pid_start)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("fields")
        return out


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def editing(path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write a record under its lock: change the yielded dict, it is written
    (atomically) when the block ends without an error."""
    with locked(lock_path(path)):
        record = read_json(path, {})
        record = record if isinstance(record, dict) else {}
        before = copy.deepcopy(record)  # deep: a change may be inside (the demo's stages)
        yield record
        if record != before:  # an unchanged record keeps its mtime (the run index reads it)
            record["updated"] = time.time()
            write_json_atomic(path, record)


def update_record(path: Path, only_if: Callable[[dict], bool] | None = None,
                  **changes: Any) -> dict[str, Any]:
    """Set `changes` in the record at `path` (if `only_if(record)` holds); returns it."""
    with editing(path) as record:
        if only_if is None or only_if(record):
            record.update(changes)
    return record


def settle(path: Path, record: dict[str, Any], resume_hint: str) -> dict[str, Any]:
    """The record as it truly stands: an active one whose process is gone is 'cancelled'
    (when a cancel was asked for) or 'killed', written back so that every reader agrees."""
    state = OLD_STATES.get(record.get("state"), record.get("state"))
    pid, started = record.get("pid"), record.get("pid_start") or record.get("proc_start")
    if state not in ACTIVE or not pid or process_alive(pid, started):
        return record
    if record.get("cancel_requested"):
        outcome = {"state": "cancelled"}
    else:
        outcome = {"state": "killed", "error": f"the job (pid {pid}) ended without recording "
                   f"a result; {resume_hint}"}
    outcome["finished"] = record.get("finished") or time.time()
    try:
        return update_record(path, only_if=lambda now: now.get("pid") == pid
                             and OLD_STATES.get(now.get("state"), now.get("state")) in ACTIVE,
                             **outcome)
    except OSError:  # a read-only workspace: say it, even if it cannot be written down
        return {**record, **outcome}


def job_record(kind: str, job_id: str, record: dict[str, Any], **known: Any) -> JobRecord:
    """A record file's dict as a JobRecord; `known` fills what this kind keeps elsewhere
    (a study's progress file, a run's log path). Reads every older layout too."""
    state = OLD_STATES.get(record.get("state"), record.get("state")) or "queued"
    values = {
        "state": state if state in STATES else "failed", "pid": record.get("pid"),
        "pid_start": record.get("pid_start") or record.get("proc_start"),
        "progress": record.get("progress") or {}, "log": record.get("log"),
        "result": record.get("result"), "error": record.get("error"),
        "created": record.get("created") or record.get("queued_at") or record.get("started"),
        "started": record.get("started"), "finished": record.get("finished"),
    }
    values.update({k: v for k, v in known.items() if v is not None})
    return JobRecord(kind=kind, id=job_id, fields=record, **values)


def run_dirs(ws: Workspace) -> list[Path]:
    """The workspace's run folders (each with its spec.json), in id order."""
    if not ws.runs_dir.is_dir():
        return []
    return sorted(p for p in ws.runs_dir.iterdir() if (p / "spec.json").exists())
