"""`mashup.toml`: the one place that says which model, which library and which data a
workspace studies.

A workspace is one study of one base model. Its config names the base (a folder or a Hub id,
its dtype, whether remote code may run), the checkpoint sources (folders or Hub ids) and the
targets (demo tasks, the paper's benchmarks, a user's files with their field mapping). Every
CLI verb and every page reads it; explicit flags override it. Paths inside it may be relative
to the workspace folder, so a workspace can be moved or shared as a whole; whatever reads it
gets absolute, resolved paths.

    [base]
    model = "base"                 # a folder (relative to the workspace) or a Hub id
    dtype = "auto"                 # auto | float32 | bfloat16 | float16
    trust_remote_code = false
    chat_template = "chat_template.jinja"  # optional: for a base whose tokenizer has none

    [library]
    sources = ["library"]          # folders or Hub ids, scanned for PEFT adapters and full checkpoints
    include_snapshots = true       # intermediate checkpoints (<name>-step<N>) too

    [[targets]]
    kind = "file"                  # demo | benchmark | file
    name_or_path = "data/mine.csv"
    mapping = { prompt = "Q: {question}", choices = ["a", "b"], gold = "answer", gold_format = "letter" }
    prompt_format = "chat"         # optional: this target's format, over the default below

    [defaults]
    device = "auto"
    finetune = "lora"              # lora | full
    prompt_format = "cloze"        # cloze (lm-eval's rows) | chat | reference (the reference pipeline's)
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from mashup_core.access import require_write
from mashup_core.errors import MashupError
from mashup_core.hub import HUB_ID, hub_owner
from mashup_core.workspace import Workspace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, as a package, before 3.11
    import tomli as tomllib

CONFIG_FILE = "mashup.toml"
DTYPES = ("auto", "float32", "bfloat16", "float16")
FINETUNE_MODES = ("lora", "full")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class ConfigError(MashupError, ValueError):
    """A workspace config that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class BaseModel:
    model: str  # a folder (absolute once resolved) or a Hub id
    dtype: str = "auto"
    trust_remote_code: bool = False
    # A Jinja chat template file for a base whose tokenizer has none (absolute once resolved);
    # the chat and reference prompt formats render rows with it.
    chat_template: str | None = None

    def load_tokenizer(self):
        """The base's tokenizer, with the workspace's chat template file when it names one."""
        from mashup_core.models.loading import load_tokenizer

        return load_tokenizer(self.model, trust_remote_code=self.trust_remote_code,
                              chat_template=self.chat_template)


@dataclass(frozen=True)
class Library:
    sources: tuple[str, ...] = ()
    include_snapshots: bool = True


@dataclass(frozen=True)
class Defaults:
    device: str = "auto"
    finetune: str = "lora"
    lr: float | None = None  # None: by finetune mode (mashup_core.defaults.LEARNING_RATE)
    prompt_format: str = "cloze"  # how targets' rows are shown (mashup_core.data.prompts)
    report_to: tuple[str, ...] = ()  # runs mirror their curves here (training.trackers)
    tracking_uri: str | None = None  # MLflow's; None: a file store in the workspace's mlruns/


@dataclass(frozen=True)
class WorkspaceConfig:
    """A parsed, validated `mashup.toml` with every path made absolute."""

    base: BaseModel
    library: Library = field(default_factory=Library)
    targets: tuple[dict[str, Any], ...] = ()  # TargetSpec dicts (kind, name_or_path, mapping, ...)
    defaults: Defaults = field(default_factory=Defaults)

    def __post_init__(self) -> None:
        # Every target says its prompt format (its own, else the default), so whatever reads an
        # entry (find_target, the pages' spec dicts, studies) sees one answer. Cloze, when it is
        # the default too, is said by saying nothing (entries as they were before formats).
        # The file keeps only the targets that differ from the default (`to_toml_dict`).
        default = self.defaults.prompt_format
        entries = []
        for t in self.targets:
            fmt = t.get("prompt_format") or default
            rest = {k: v for k, v in t.items() if k != "prompt_format"}
            entries.append(rest if fmt == default == "cloze" else {**rest, "prompt_format": fmt})
        object.__setattr__(self, "targets", tuple(entries))

    @property
    def base_model(self) -> str:
        return self.base.model

    @property
    def sources(self) -> list[str]:
        return list(self.library.sources)

    def target_specs(self, split: str = "train") -> list:
        """The configured targets as `TargetSpec`s of `split`, each in its prompt format."""
        from mashup_core.data.targets import TargetSpec

        return [TargetSpec.from_dict({**t, "split": split}) for t in self.targets]

    def target_names(self) -> list[str]:
        """Short names for the targets (a demo task, a benchmark, a file's stem)."""
        return [target_name(t) for t in self.targets]

    def to_toml_dict(self, root: Path) -> dict[str, Any]:
        """The config as written: paths inside the workspace are stored relative to it."""
        return {
            "base": _without_none({"model": _portable(self.base.model, root), "dtype": self.base.dtype,
                                   "trust_remote_code": self.base.trust_remote_code,
                                   "chat_template": _portable(self.base.chat_template, root)
                                   if self.base.chat_template else None}),
            "library": {"sources": [_portable(s, root) for s in self.library.sources],
                        "include_snapshots": self.library.include_snapshots},
            "targets": [_without_none({**t, "name_or_path": _portable(t["name_or_path"], root)
                                       if t.get("kind") == "file" else t["name_or_path"],
                                       **({"data": _portable(t["data"], root)} if t.get("data") else {}),
                                       "prompt_format": None if t.get("prompt_format")
                                       == self.defaults.prompt_format else t.get("prompt_format")})
                        for t in self.targets],
            "defaults": _without_none({"device": self.defaults.device,
                                       "finetune": self.defaults.finetune, "lr": self.defaults.lr,
                                       "prompt_format": None if self.defaults.prompt_format == "cloze"
                                       else self.defaults.prompt_format,
                                       "report_to": list(self.defaults.report_to) or None,
                                       "tracking_uri": self.defaults.tracking_uri}),
        }

    def learning_rate(self, finetune: str | None = None) -> float:
        from mashup_core.defaults import learning_rate

        return learning_rate(finetune or self.defaults.finetune, self.defaults.lr)


def target_name(target: dict[str, Any]) -> str:
    if target.get("kind") == "file":
        return Path(target["name_or_path"]).stem
    return str(target["name_or_path"])


def find_target(ws: Workspace, name: str, split: str = "train", *, mapping=None, data=None,
                prompt_format: str | None = None):
    """A target by name: the workspace config's (with its mapping, data and prompt format), else
    a demo task, a benchmark or a file (in the workspace's default prompt format); a `mapping`,
    `data` or `prompt_format` given here overrides the config's."""
    from mashup_core.data.targets import TargetSpec, resolve_target

    config = load_config(ws)
    for entry in config.targets if config else ():
        if name == target_name(entry):
            spec = TargetSpec.from_dict({**entry, "split": split})
            return replace(spec, mapping=mapping or spec.mapping,
                           data=str(data) if data is not None else spec.data,
                           prompt_format=prompt_format or spec.prompt_format)
    if data is not None:
        spec = resolve_target(name, ws, split, mapping, data=data)
    else:
        spec = resolve_target(name, ws, split, mapping)
    return replace(spec, prompt_format=prompt_format or (config.defaults.prompt_format if config
                                                         else spec.prompt_format))


def load_target(spec, ws: Workspace | None = None, tokenizer=None) -> list:
    """All examples of the target's split in its prompt format (sample them with
    `sample_examples`). The one place rows are formatted, so scoring, training and evaluation
    see the same text; a format that needs a tokenizer uses `tokenizer`, else the workspace
    base's (`base_tokenizer`)."""
    from mashup_core.data.prompts import PROMPT_FORMATS, check_format, format_examples
    from mashup_core.data.targets import read_target

    ws = ws or Workspace.resolve()
    examples = read_target(spec, ws)
    name = check_format(spec.prompt_format)
    if tokenizer is None and PROMPT_FORMATS[name].needs_tokenizer:
        tokenizer = base_tokenizer(ws)
    return format_examples(examples, name, tokenizer)


def base_tokenizer(ws: Workspace):
    """The tokenizer of the workspace's base model (its config's, or the demo world's, with its
    chat template file), loaded once per process while its files stay the same."""
    base = resolve_config(ws).base
    path = Path(base.model)
    files = [*sorted(path.glob("tokenizer*")), *sorted(path.glob("chat_template*"))] if path.is_dir() else []
    if base.chat_template:
        files.append(Path(base.chat_template))
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in files if p.is_file())
    return _tokenizer(base, stamp)


@functools.lru_cache(maxsize=4)
def _tokenizer(base: BaseModel, stamp: tuple):
    return base.load_tokenizer()


def workspace_library(ws: Workspace, *, include_snapshots: bool | None = None,
                      base: str | None = None, sources: Sequence[str] | None = None):
    """The workspace's library, a `models.library.LibraryScan` (its config's sources, checked
    against its base model, scanned through the workspace's scan cache); `base` and `sources`
    override the config, as the CLI's flags do."""
    from mashup_core.models.library import LibraryError, scan_library

    config = resolve_config(ws, base=base, sources=list(sources) if sources else None)
    if not config.sources:
        raise LibraryError(f"the workspace {ws.root} lists no checkpoint sources; add one with "
                           "`mashup config --add-source DIR` (or --source DIR)")
    snapshots = config.library.include_snapshots if include_snapshots is None else include_snapshots
    return scan_library(config.sources, base_model_dir=config.base_model, include_snapshots=snapshots,
                        cache=ws.cache_dir / "library_scan.json")


def config_path(ws: Workspace) -> Path:
    return ws.root / CONFIG_FILE


def load_config(ws: Workspace) -> WorkspaceConfig | None:
    """The workspace's config, validated; None if it has none (a bare or demo-only folder)."""
    path = config_path(ws)
    if not path.exists():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_config(data, ws.root, where=str(path))


def parse_config(data: dict[str, Any], root: Path, where: str = CONFIG_FILE) -> WorkspaceConfig:
    """Check every key and value before any work starts; relative paths are taken from `root`."""
    _known(data, {"base", "library", "targets", "defaults"}, where)
    base = data.get("base", {})
    _known(base, {"model", "dtype", "trust_remote_code", "chat_template"}, f"{where} [base]")
    if not base.get("model"):
        raise ConfigError(f"{where}: [base] model is missing: name the base model's folder or Hub "
                          "id (e.g. `mashup init --base ./my-base`)")
    model = _resolve(_text(base["model"], f"{where} [base] model"), root)
    dtype = _choice(base.get("dtype", "auto"), DTYPES, f"{where} [base] dtype")
    trust = _flag(base.get("trust_remote_code", False), f"{where} [base] trust_remote_code")
    if not Path(model).exists() and not HUB_ID.match(model):
        raise ConfigError(f"{where}: [base] model {base['model']!r}: no such folder "
                          f"({model}) and not a Hub id (owner/name)")
    template = base.get("chat_template")
    if template is not None:
        template = _resolve(_text(template, f"{where} [base] chat_template"), root)
        if not Path(template).is_file():
            raise ConfigError(f"{where}: [base] chat_template {base['chat_template']!r}: no such "
                              f"file ({template}); give a Jinja chat template file")

    lib = data.get("library", {})
    _known(lib, {"sources", "include_snapshots"}, f"{where} [library]")
    sources = lib.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        raise ConfigError(f"{where}: [library] sources must be a list of folders or Hub ids")
    library = Library(tuple(_resolve(s, root) for s in sources),
                      _flag(lib.get("include_snapshots", True), f"{where} [library] include_snapshots"))

    raw_targets = data.get("targets", [])
    if not isinstance(raw_targets, list):
        raise ConfigError(f"{where}: targets must be a list of [[targets]] tables")
    targets = tuple(_target(t, root, f"{where} [[targets]] #{i + 1}") for i, t in enumerate(raw_targets))
    names = [target_name(t) for t in targets]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{where}: target {', '.join(dup)} is listed twice")

    d = data.get("defaults", {})
    _known(d, {"device", "finetune", "lr", "prompt_format", "report_to", "tracking_uri"},
           f"{where} [defaults]")
    report_to = d.get("report_to", [])
    if not isinstance(report_to, list) or not all(t in ("tensorboard", "mlflow") for t in report_to):
        raise ConfigError(f"{where}: [defaults] report_to must be a list of tensorboard, mlflow; "
                          f"got {report_to!r}")
    lr = d.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0):
        raise ConfigError(f"{where}: [defaults] lr must be a positive number, got {lr!r}")
    device = _text(d.get("device", "auto"), f"{where} [defaults] device")
    if not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"{where}: [defaults] device {device!r} is not auto, cpu, mps, cuda or cuda:N")
    defaults = Defaults(device, _choice(d.get("finetune", "lora"), FINETUNE_MODES,
                                        f"{where} [defaults] finetune"),
                        float(lr) if lr is not None else None,
                        _choice(d.get("prompt_format", "cloze"), prompt_format_names(),
                                f"{where} [defaults] prompt_format"),
                        tuple(report_to),
                        _text(d["tracking_uri"], f"{where} [defaults] tracking_uri")
                        if d.get("tracking_uri") is not None else None)
    return WorkspaceConfig(BaseModel(model, dtype, trust, template), library, targets, defaults)


def _target(entry: Any, root: Path, where: str) -> dict[str, Any]:
    from mashup_core.data.examples import DatasetError
    from mashup_core.data.targets import TargetSpec

    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table, got {type(entry).__name__}")
    entry = dict(entry)
    entry.pop("split", None)  # a target is every split; verbs choose one
    if entry.get("kind") == "file" and isinstance(entry.get("name_or_path"), str):
        entry["name_or_path"] = _resolve(entry["name_or_path"], root)
    if isinstance(entry.get("data"), str):
        entry["data"] = _resolve(entry["data"], root)
    try:
        spec = TargetSpec.from_dict(entry)
    except (DatasetError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    out = spec.to_dict()
    out.pop("split")
    out["prompt_format"] = entry.get("prompt_format")  # kept as given (None: the default's)
    return _without_none(out)


def save_config(ws: Workspace, config: WorkspaceConfig) -> Path:
    """Write `mashup.toml` atomically (a reader never sees half of it)."""
    require_write("changing the workspace config")
    ws.ensure_writable()
    path = config_path(ws)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(_HEADER + tomli_w.dumps(config.to_toml_dict(ws.root)), encoding="utf-8")
    os.replace(tmp, path)
    return path


_HEADER = ("# One study of one base model: which model, which checkpoint library, which targets.\n"
           "# Read by every `mashup` verb and every dashboard page; paths are relative to this folder.\n\n")


def init_workspace(
    ws: Workspace, base: str, sources: list[str] | tuple[str, ...] = (),
    targets: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (), *, dtype: str = "auto",
    trust_remote_code: bool = False, device: str = "auto", finetune: str = "lora",
    lr: float | None = None, prompt_format: str = "cloze", force: bool = False,
    chat_template: str | None = None,
) -> WorkspaceConfig:
    """Create a workspace for a user's base model and checkpoint folders (`mashup init`)."""
    if config_path(ws).exists() and not force:
        raise ConfigError(f"{config_path(ws)} exists already; edit it, add to it with "
                          "`mashup library add-source` / `mashup targets add`, or pass --force")
    data = {"base": _without_none({"model": _abs_if_local(base), "dtype": dtype,
                                   "trust_remote_code": trust_remote_code,
                                   "chat_template": _abs_if_local(chat_template)
                                   if chat_template else None}),
            "library": {"sources": [_abs_if_local(s) for s in sources]},
            "targets": [dict(t) for t in targets],
            "defaults": _without_none({"device": device, "finetune": finetune, "lr": lr,
                                       "prompt_format": prompt_format})}
    config = parse_config(data, ws.root, where="mashup init")
    from mashup_core.models import model_folder_problem

    if Path(config.base_model).is_dir() and (problem := model_folder_problem(Path(config.base_model))):
        raise ConfigError(f"mashup init: [base] model: {problem}")
    save_config(ws, config)
    return config


def add_source(ws: Workspace, source: str) -> WorkspaceConfig:
    """Add a library source (kept across reloads and restarts); a known one is not added twice."""
    config = require_config(ws)
    resolved = _abs_if_local(source.strip())
    if not resolved:
        raise ConfigError("name a folder or a Hub id to add")
    if not Path(resolved).exists() and not HUB_ID.match(resolved) and not hub_owner(resolved):
        raise ConfigError(f"{source!r}: no such folder and not a Hub id (owner/name) or a Hub "
                          "owner (hf://OWNER)")
    if resolved in config.library.sources:
        return config
    config = replace(config, library=replace(config.library, sources=(*config.library.sources, resolved)))
    save_config(ws, config)
    return config


def ensure_source(ws: Workspace, folder: Path) -> None:
    """Make `folder` a library source unless a source already holds it: a user's workspace may
    list only their own folders, and what the product writes into the library (a promoted run,
    a recycled merge) must be seen by the next scan, and the next target."""
    config = load_config(ws)
    folder = Path(folder).resolve()
    if config is not None and not any(folder == Path(s).resolve() or folder.is_relative_to(Path(s).resolve())
                                      for s in config.sources if Path(s).exists()):
        add_source(ws, str(folder))


def remove_source(ws: Workspace, source: str) -> WorkspaceConfig:
    config = require_config(ws)
    kept = tuple(s for s in config.library.sources if s != source)
    if kept == config.library.sources:
        raise ConfigError(f"{source!r} is not a source of this workspace "
                          f"({', '.join(config.library.sources) or 'none'})")
    config = replace(config, library=replace(config.library, sources=kept))
    save_config(ws, config)
    return config


def add_target(ws: Workspace, spec) -> WorkspaceConfig:
    """Add (or replace, by name) a target: a TargetSpec or its dict, with its mapping."""
    config = require_config(ws)
    entry = _target(spec.to_dict() if hasattr(spec, "to_dict") else dict(spec), ws.root, "target")
    name = target_name(entry)
    kept = tuple(t for t in config.targets if target_name(t) != name)
    config = replace(config, targets=(*kept, entry))
    save_config(ws, config)
    return config


def set_prompt_format(ws: Workspace, prompt_format: str, target: str | None = None) -> WorkspaceConfig:
    """Set the workspace's default prompt format, or one target's (`mashup config --prompt-format`)."""
    config = require_config(ws)
    _choice(prompt_format, prompt_format_names(), "prompt format")
    if target is None:  # the targets that followed the default follow the new one
        old = config.defaults.prompt_format
        config = WorkspaceConfig(
            config.base, config.library,
            tuple({**t, "prompt_format": None} if t.get("prompt_format", "cloze") == old else t
                  for t in config.targets),
            replace(config.defaults, prompt_format=prompt_format))
    else:
        names = [target_name(t) for t in config.targets]
        if target not in names:
            raise ConfigError(f"no target {target!r} in {config_path(ws)} ({', '.join(names) or 'none'}); "
                              "add it first (`mashup config --add-target`)")
        config = replace(config, targets=tuple({**t, "prompt_format": prompt_format}
                                               if target_name(t) == target else t for t in config.targets))
    save_config(ws, config)
    return config


def prompt_format_names() -> tuple[str, ...]:
    from mashup_core.data.prompts import PROMPT_FORMATS

    return tuple(PROMPT_FORMATS)


def require_config(ws: Workspace) -> WorkspaceConfig:
    config = load_config(ws)
    if config is None:
        raise ConfigError(f"{ws.root} has no {CONFIG_FILE}: create one with `mashup init --base "
                          "BASE --source DIR` or build the demo world with `mashup demo build`")
    return config


def demo_config(ws: Workspace) -> WorkspaceConfig | None:
    """A demo world built before configs existed reads as its own config."""
    manifest = ws.manifest()
    if manifest is None:
        return None
    from mashup_core.defaults import DEMO_LEARNING_RATE

    return WorkspaceConfig(
        BaseModel(str(ws.base_dir)), Library((str(ws.library_dir),)),
        tuple({"kind": "demo", "name_or_path": t} for t in manifest.get("tasks", [])),
        Defaults(lr=DEMO_LEARNING_RATE))


def resolve_config(
    ws: Workspace, *, base: str | None = None, sources: list[str] | tuple[str, ...] | None = None,
    trust_remote_code: bool | None = None, chat_template: str | None = None,
) -> WorkspaceConfig:
    """The workspace's config with explicit flags applied on top (flags win).

    A folder without a config works when the flags say everything (a base model); a demo
    world without one reads as the demo config.
    """
    config = load_config(ws) or demo_config(ws)
    if config is None:
        if base is None:
            require_config(ws)  # raises, saying how to make one
        config = WorkspaceConfig(BaseModel(_abs_if_local(base)))
    if base is not None:
        config = replace(config, base=replace(config.base, model=_abs_if_local(base)))
    if trust_remote_code is not None:
        config = replace(config, base=replace(config.base, trust_remote_code=trust_remote_code))
    if chat_template is not None:
        if not Path(chat_template).expanduser().is_file():
            raise ConfigError(f"--chat-template {chat_template}: no such file (a Jinja chat template)")
        config = replace(config, base=replace(config.base,
                                              chat_template=_abs_if_local(chat_template)))
    if sources:
        config = replace(config, library=replace(
            config.library, sources=tuple(_abs_if_local(s) for s in sources)))
    return config


# --- small checks -------------------------------------------------------------------------------


def _known(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(allowed))}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return value.strip()


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _resolve(value: str, root: Path) -> str:
    """A Hub id or owner stays a name; anything else is a path, relative to the workspace folder."""
    if hub_owner(value):
        return value
    path = Path(value).expanduser()
    if HUB_ID.match(value) and not path.exists() and not (root / path).exists():
        return value
    return str(path if path.is_absolute() else (root / path).resolve())


def _abs_if_local(value: str) -> str:
    """What a user typed on the command line: a path relative to where they typed it."""
    path = Path(value).expanduser()
    if hub_owner(value) or (HUB_ID.match(value) and not path.exists()):
        return value
    return str(path.resolve() if not path.is_absolute() else path)


def _portable(value: str, root: Path) -> str:
    path = Path(value)
    if path.is_absolute():
        try:
            return str(path.relative_to(root))
        except ValueError:
            return value
    return value


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: an unset value is an absent key (nested tables too)."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}
