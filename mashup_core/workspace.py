"""Where a study lives on disk.

A workspace is one folder: the demo world (base model, tasks, checkpoint library), caches,
uploads and runs. Everything that the CLI and the dashboard show is read from here, so two
processes (a background job and the dashboard) agree by sharing a folder, not memory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup_core.errors import MashupError

ENV_VAR = "MASHUP_WORKSPACE"
DEFAULT_DIR = "workspace"


class WorkspaceError(MashupError):
    """The workspace folder cannot be used (unwritable, half-built, from another version)."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike | None = None) -> Workspace:
        """`path`, else $MASHUP_WORKSPACE, else ./workspace."""
        chosen = path or os.environ.get(ENV_VAR) or DEFAULT_DIR
        return cls(Path(chosen).expanduser().resolve())

    # The layout, in one place, so that no other module spells a path by hand.
    @property
    def manifest_path(self) -> Path:
        return self.root / "world.json"

    @property
    def building_marker(self) -> Path:
        return self.root / ".building"

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def library_dir(self) -> Path:
        return self.root / "library"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def studies_dir(self) -> Path:
        return self.root / "studies"

    @property
    def merges_dir(self) -> Path:
        return self.root / "merges"

    @property
    def uploads_dir(self) -> Path:
        return self.root / "uploads"

    def task_split_path(self, task: str, split: str) -> Path:
        return self.tasks_dir / task / f"{split}.jsonl"

    def manifest(self) -> dict[str, Any] | None:
        """The demo world's manifest, or None if no complete world is here."""
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as exc:
            raise WorkspaceError(
                f"workspace {self.root} is not writable ({exc.strerror or exc}); "
                f"choose another with --workspace or ${ENV_VAR}"
            ) from exc


class JsonFileError(MashupError, ValueError):
    """A JSON file that a user may have written is missing, unreadable or of the wrong shape."""


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file this program wrote (a status, a record): missing or cut short -> `default`.

    A job killed mid-write leaves no half file (see `write_json_atomic`), but a reader can
    still race a first write; treating that as "not there yet" is what every reader wants.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def load_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file a user may have written; the error says what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise JsonFileError(f"{path.name} is missing") from exc
    except UnicodeDecodeError as exc:
        raise JsonFileError(f"{path.name} is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise JsonFileError(f"{path.name} is not valid JSON (line {exc.lineno}, column "
                            f"{exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise JsonFileError(f"{path.name} should hold a JSON object, not {type(data).__name__}")
    return data


# Why a write failed, for the errors a person can act on (the rest stay tracebacks: bugs).
WRITE_FAILURES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "the operation is not permitted"}


class WriteError(WorkspaceError, OSError):
    """A write that the machine refused (full disk, read-only file system, no permission)."""


def _write_failure(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno in WRITE_FAILURES:
        return WRITE_FAILURES[exc.errno]
    # safetensors reports its I/O errors as SafetensorError with the OS's text inside
    text = str(exc)
    for code, why in WRITE_FAILURES.items():
        if os.strerror(code) in text:
            return why
    return None


@contextlib.contextmanager
def writing(path: Path, cleanup: Path | None = None) -> Iterator[None]:
    """Every write of the product runs inside this: a full disk, a read-only file system or a
    folder without permission becomes a `WriteError` naming `path` and what to do, and the
    temporary `cleanup` (a file or folder written before its rename into place) is removed,
    so nothing half-written is left and nothing that was there is lost."""
    try:
        yield
    except Exception as exc:
        if cleanup is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(cleanup) if cleanup.is_dir() else cleanup.unlink(missing_ok=True)
        why = _write_failure(exc)
        if why is None or isinstance(exc, WriteError):
            raise
        raise WriteError(f"cannot write {path}: {why}; nothing there was changed (free some "
                         "space, or choose a folder you can write)") from exc


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader never sees half a file, even if we are killed mid-write."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path, cleanup=tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would, racing other threads)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    return 0o022


def usual_permissions(folder: Path) -> None:
    """Files and folders under `folder` readable as the umask says. safetensors writes its
    files 0600, which would hide a merge from the lab's other accounts."""
    mask = _umask()
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the `.NAME.tmp-PID` / `.NAME.old-PID` siblings that a killed writer left in
    `folder` (its pid gone); a live writer's are kept. Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = re.fullmatch(r"\..+\.(?:tmp|old)-(\d+)", entry.name)
        if found and not _pid_alive(int(found[1])):
            with contextlib.suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def locked(path: Path, *, wait: bool = True) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if missing). The kernel drops it when its
    holder dies, even by SIGKILL, so a crashed job never leaves a file locked. With
    `wait=False`, raises BlockingIOError at once if another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
