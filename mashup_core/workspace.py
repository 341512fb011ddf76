"""Where a study lives on disk.

A workspace is one folder: the demo world (base model, tasks, checkpoint library), caches,
uploads and runs. Everything that the CLI and the dashboard show is read from here, so two
processes (a background job and the dashboard) agree by sharing a folder, not memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader never sees half a file, even if we are killed mid-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
