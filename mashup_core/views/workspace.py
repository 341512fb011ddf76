"""The open workspace for the pages: its config, what is in it, and how to set one up.

A workspace is one study of one base model (`mashup.toml`). A demo world built before configs
existed reads as its own config, so every page works from a config either way; a folder with
neither gets the first screen, which writes one (`create_workspace`) or builds the demo world.
Nothing here imports streamlit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup_core.access import require_write
from mashup_core.config import ConfigError, WorkspaceConfig
from mashup_core.hub import HUB_ID, hub_owner
from mashup_core.workspace import Workspace


@dataclass(frozen=True)
class WorkspaceState:
    root: str
    config: WorkspaceConfig | None  # mashup.toml, else the demo world's; None: neither
    error: str | None  # mashup.toml is there but cannot be used (the message says why)
    demo: bool  # a complete demo world is here (its manifest, tasks, transfer report)
    demo_reason: str  # why not, when not ("no demo world yet", "a half-written build", ...)
    building: bool  # a demo build is writing here now

    @property
    def usable(self) -> bool:
        return self.config is not None and not self.building


def workspace_state(ws: Workspace) -> WorkspaceState:
    """What the pages need to know before anything else: is there a study here to show?"""
    from mashup_core.config import demo_config, load_config
    from mashup_core.demo.progress import world_status

    demo, reason = world_status(ws)
    error = None
    try:
        config = load_config(ws)
    except ConfigError as exc:
        config, error = None, str(exc)
    if config is None and error is None and demo:
        config = demo_config(ws)
    return WorkspaceState(str(ws.root), config, error, demo, reason, build_running(ws))


@dataclass(frozen=True)
class WorkspaceSummary:
    root: str
    base: str  # the base model, as short as it can be said (relative to the workspace)
    sources: int
    checkpoints: int
    targets: int
    runs: int
    studies: int
    profile: str | None = None  # the demo world's profile, if this is one


def workspace_summary(ws: Workspace, config: WorkspaceConfig, checkpoints: int) -> WorkspaceSummary:
    """How much is in this study, counted from the config and the folders. `checkpoints`:
    usable ones in the validated library (the caller has the scan, cached)."""

    def count(folder: Path, marker: str) -> int:
        return sum(1 for d in folder.iterdir() if (d / marker).exists()) if folder.is_dir() else 0

    manifest = ws.manifest()
    return WorkspaceSummary(
        root=str(ws.root), base=short_path(config.base_model, ws), sources=len(config.sources),
        checkpoints=checkpoints, targets=len(config.targets), runs=count(ws.runs_dir, "spec.json"),
        studies=sum(1 for d in ws.studies_dir.iterdir() if d.is_dir()) if ws.studies_dir.is_dir() else 0,
        profile=manifest.get("profile") if manifest else None,
    )


def short_path(value: str, ws: Workspace) -> str:
    """A path inside the workspace relative to it (as mashup.toml writes it); others as given."""
    path = Path(value)
    if path.is_absolute():
        try:
            return str(path.relative_to(ws.root)) or "."
        except ValueError:
            return value
    return value


def local_path(value: str, ws: Workspace) -> str:
    """What a visitor typed: a path relative to the workspace folder if one is there (the
    server's working folder means nothing to someone in a browser), else as typed."""
    value = value.strip()
    path = Path(value).expanduser()
    if value and not path.is_absolute() and (ws.root / path).exists():
        return str((ws.root / path).resolve())
    return str(path) if path.is_absolute() or path.exists() else value


def ensure_config_file(ws: Workspace) -> None:
    """A demo world built before configs existed gets its mashup.toml written out before a
    page changes it (add a source, a target): its config was only read until now."""
    from mashup_core.config import config_path, demo_config, save_config

    if not config_path(ws).exists() and (config := demo_config(ws)) is not None:
        save_config(ws, config)


# --- setting one up ------------------------------------------------------------------------------


def create_workspace(
    ws: Workspace, base: str, sources: Sequence[str], targets: Sequence[dict[str, Any]] = (), *,
    finetune: str = "lora", device: str = "auto", dtype: str = "auto",
    trust_remote_code: bool = False,
) -> WorkspaceConfig:
    """Write mashup.toml for a base model, its checkpoint sources and targets (the first
    screen). Everything is checked first, so a typo leaves no half-made workspace behind."""
    from mashup_core.config import init_workspace

    require_write("creating a workspace")
    base = local_path(base, ws)
    if not base:
        raise ConfigError("name the base model: a folder with its config.json and weights, or a Hub id")
    if Path(base).is_dir() and not (Path(base) / "config.json").exists():
        raise ConfigError(f"{base} has no config.json: give the folder of a Hugging Face model "
                          "(the one holding config.json, the weights and the tokenizer)")
    if not Path(base).exists() and not HUB_ID.match(base):
        raise ConfigError(f"base model {base!r}: no such folder, and not a Hub id (owner/name)")
    picked = [local_path(s, ws) for s in sources if s.strip()]
    if not picked:
        raise ConfigError("name at least one checkpoint source: a folder of LoRA adapters or "
                          "checkpoints (searched recursively), or a Hub id")
    for source in picked:
        if not Path(source).is_dir() and not HUB_ID.match(source) and not hub_owner(source):
            raise ConfigError(f"checkpoint source {source!r}: no such folder, and not a Hub id "
                              "(owner/name) or owner (hf://OWNER)")
    entries = [check_target(ws, t) for t in targets]
    return init_workspace(ws, base, picked, entries, dtype=dtype,
                          trust_remote_code=trust_remote_code, device=device, finetune=finetune)


def check_target(ws: Workspace, target: dict[str, Any]) -> dict[str, Any]:
    """A target entry as mashup.toml keeps it (no split), after loading what can be loaded
    offline: a file's train split through its mapping, a benchmark's local data. A Hub
    benchmark is not fetched here; it loads (or says why not) when it is first used."""
    from mashup_core.config import load_target
    from mashup_core.data.targets import TargetSpec

    entry = {k: v for k, v in dict(target).items() if v not in (None, "")}
    entry.pop("split", None)
    if entry.get("kind") == "file":
        entry["name_or_path"] = local_path(str(entry.get("name_or_path", "")), ws)
    if entry.get("data"):
        entry["data"] = local_path(str(entry["data"]), ws)
    spec = TargetSpec.from_dict({**entry, "split": "train"})
    if spec.kind == "file" or spec.data is not None:
        load_target(spec, ws)
    out = spec.to_dict()
    out.pop("split")
    return {k: v for k, v in out.items() if v is not None}


# --- the demo world, built in the background -----------------------------------------------------


def build_log_path(ws: Workspace) -> Path:
    return ws.root / "demo-build.log"


def _build_pid_path(ws: Workspace) -> Path:
    return ws.root / "demo-build.pid"


def launch_demo_build(ws: Workspace, profile: str = "full", seed: int = 0) -> int:
    """Start `mashup demo build` as a detached process (it outlives the page); returns its pid."""
    require_write("building the demo world")
    ws.ensure_writable()
    from mashup_core.jobs.processes import spawn_detached

    pid = spawn_detached(["demo", "build", "--workspace", str(ws.root), "--profile", profile,
                          "--seed", str(seed), "--no-progress"], build_log_path(ws), mode="w")
    _build_pid_path(ws).write_text(str(pid))
    return pid


def build_running(ws: Workspace) -> bool:
    """Is a demo build writing into this workspace now? One launched from here (its pid file)
    or from a terminal (the world's `.building` marker names its pid)."""
    from mashup_core.jobs.processes import process_alive

    pids = []
    for path, read in ((_build_pid_path(ws), int),
                       (ws.building_marker, lambda text: json.loads(text).get("pid"))):
        try:
            pids.append(read(path.read_text()))
        except (OSError, ValueError, AttributeError):
            continue
    return any(process_alive(pid) for pid in pids)


def build_status(ws: Workspace) -> str | None:
    """What the background build is doing ("adapters: adapter 3 of 8, 41 s, about 30 s left"),
    or None before it has written its first progress."""
    from mashup_core.demo.progress import build_progress, describe_build

    building = build_progress(ws)
    return describe_build(building) if building else None


def demo_content_status(ws: Workspace) -> dict | None:
    """The first-open demo content's status (`demo.content.content_status`) where it was ever
    started in this workspace; None in one where it never was (a user's: nothing to say)."""
    from mashup_core.demo.content import content_path, content_status
    from mashup_core.errors import MashupError

    if not content_path(ws).exists():
        return None
    try:
        return content_status(ws)
    except (MashupError, OSError, ValueError):
        return None
