"""The checkpoint library: find, describe and validate the checkpoints Mashup Learning draws on.

A source is a folder, searched recursively, or a Hugging Face Hub id. Every checkpoint found
is checked before any model work: safetensors only, a readable header, finite values,
complete LoRA pairs, and layers and shapes that exist in the base model. A full-model checkpoint
(sharded with model.safetensors.index.json, or not) is checked from its files' headers alone
(names, shapes, the index against its shards): it may be GBs, and its values are checked where
they are read (a merge, a load). The base is read from
its config on the `meta` device, so no base weights are loaded. A bad checkpoint becomes a
`Rejected` with its reason and the rest still load.

A scan can keep what it found in a cache file (`scan_library(cache=...)`; the workspace's is
`cache/library_scan.json`): a checkpoint folder whose files (names, sizes, mtimes) and base are
unchanged is not read again, so a library of a thousand adapters is validated once, then
listed in the time it takes to stat its files. A checkpoint's model card (README.md front
matter, as Hub adapters carry it: base_model, datasets, tags) is kept in `card`; its first
dataset is the source task when mashup_meta.json names none.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from mashup_core.errors import MashupError
from mashup_core.hub import HUB_ID, hub_owner
from mashup_core.workspace import JsonFileError, Workspace, load_json_object

if TYPE_CHECKING:  # torch is imported where a checkpoint is opened: a scan the cache answers needs none
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
SHARD_INDEX = "model.safetensors.index.json"
META_FILE = "mashup_meta.json"  # our metadata beside a checkpoint (the demo world writes it)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_PATTERNS = ["*.json", "*.safetensors"]  # never download pickles
SNAPSHOT_NAME = re.compile(r"-step\d+$")
# PEFT saves a LoRA layer as `base_model.model.<module>.lora_A.weight` (and lora_B, or the
# lora_embedding_A/B pair for embeddings): the module name is what the base model calls it.
LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>lora_(?:embedding_)?[AB])(?:\.weight)?$"
)
PEFT_PREFIX = "base_model.model."


class LibraryError(MashupError):
    """The library as a whole cannot be used (unreadable base model, unknown checkpoint name)."""


class CheckpointFileError(MashupError):
    """A checkpoint's weight files cannot be used: pickles, missing shards, a broken header."""


class _Reject(Exception):
    """One checkpoint or source is unusable; becomes a `Rejected` with this message."""


@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path
    kind: str  # 'lora' | 'full'
    source_task: str | None = None
    base_model: str | None = None  # local path (resolved) or Hub id it was trained from
    rank: int | None = None
    alpha: float | None = None
    target_modules: tuple[str, ...] = ()
    size_bytes: int = 0
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    hub_id: str | None = None
    weight_files: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()  # checks that could not run, e.g. base config unavailable
    card: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # README front matter
    revision: str | None = None  # the Hub snapshot it was read from

    @property
    def is_snapshot(self) -> bool:
        return _is_snapshot(self.name, self.meta)

    def state_dict(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        """All tensors of the checkpoint, as saved (PEFT key names for LoRA)."""
        from safetensors.torch import load_file

        return {k: v for f in self.weight_files for k, v in load_file(f, device=device).items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path), "kind": self.kind,
            "source_task": self.source_task, "base_model": self.base_model, "rank": self.rank,
            "alpha": self.alpha, "target_modules": list(self.target_modules),
            "size_bytes": self.size_bytes, "meta": self.meta, "hub_id": self.hub_id,
            "weight_files": [str(f) for f in self.weight_files], "notes": list(self.notes),
            "snapshot": self.is_snapshot, "card": self.card, "revision": self.revision,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(name=data["name"], path=Path(data["path"]), kind=data["kind"],
                   source_task=data.get("source_task"), base_model=data.get("base_model"),
                   rank=data.get("rank"), alpha=data.get("alpha"),
                   target_modules=tuple(data.get("target_modules") or ()),
                   size_bytes=data.get("size_bytes", 0), meta=data.get("meta") or {},
                   hub_id=data.get("hub_id"),
                   weight_files=tuple(Path(f) for f in data.get("weight_files") or ()),
                   notes=tuple(data.get("notes") or ()), card=data.get("card") or {},
                   revision=data.get("revision"))


@dataclass(frozen=True)
class Rejected:
    path: Path
    reason: str
    name: str = ""  # the checkpoint name it would have had, or the source as given

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.path.name)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "reason": self.reason}


@dataclass
class LibraryScan:
    checkpoints: list[Checkpoint] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.checkpoints]

    def by_name(self, name: str) -> Checkpoint:
        for ckpt in self.checkpoints:
            if ckpt.name == name:
                return ckpt
        raise LibraryError(f"no checkpoint named {name!r} in the library; known: {', '.join(self.names) or 'none'}")

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    def __len__(self) -> int:
        return len(self.checkpoints)

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoints": [c.to_dict() for c in self.checkpoints],
                "rejected": [r.to_dict() for r in self.rejected]}


@dataclass(frozen=True)
class BaseShapes:
    """What validation needs from a base model: its layers' in/out sizes and tensor shapes."""

    source: str
    layers: dict[str, tuple[int, int]]  # module name -> (in, out) of every layer LoRA can wrap
    tensors: dict[str, tuple[int, ...]]  # state-dict key -> shape


def base_shapes(name_or_path: str | Path, *, trust_remote_code: bool = False) -> BaseShapes:
    """Instantiate the base from its config on the `meta` device: real names and shapes, no weights."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            try:
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
            except ValueError:  # not a causal LM (an encoder, a classifier's backbone)
                model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LibraryError(f"cannot read the base model's config from {name_or_path}: {exc}") from exc
    layers = {name: io for name, module in model.named_modules() if (io := _layer_io(module))}
    tensors = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    return BaseShapes(str(name_or_path), layers, tensors)


def _layer_io(module: torch.nn.Module) -> tuple[int, int] | None:
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if hasattr(module, "nx") and hasattr(module, "nf"):  # transformers' Conv1D (GPT-2 style)
        return module.nx, module.nf
    return None


def scan_library(
    sources: Sequence[str | Path],
    *,
    base_model_dir: Path | str | None = None,
    include_snapshots: bool = True,
    cache: Path | None = None,
) -> LibraryScan:
    """Find and validate every checkpoint under `sources` (folders or Hub ids).

    With `base_model_dir` (a folder or a Hub id), every checkpoint is checked against that
    base, which must be readable (`LibraryError` otherwise). Without it, each is checked
    against the base it records (adapter_config's `base_model_name_or_path`, else
    mashup_meta.json's `base_model`); one whose base cannot be read is kept with a note.
    """
    base_for = _BaseResolver(base_model_dir)
    skip = {Path(base_model_dir).resolve()} if base_model_dir is not None else set()  # not a checkpoint
    scan = LibraryScan()
    taken: dict[str, Path] = {}
    known = _ScanCache(cache, base_model_dir)
    found = []
    for source in sources:
        try:
            found += _materialize(source)
        except _Reject as exc:
            scan.rejected.append(Rejected(Path(str(source)), str(exc), str(source)))
    for root, hub_id, revision in found:
        for path, kind in _find_candidates(root, skip):
            rel = path.relative_to(root).as_posix()
            name = (hub_id or root.name) if rel == "." else (f"{hub_id}/{rel}" if hub_id else rel)
            if taken.get(name) == path:  # the same folder given twice
                continue
            try:
                meta = _read_meta(path)
                if not include_snapshots and _is_snapshot(name, meta):
                    continue
                if name in taken:
                    raise _Reject(f"another checkpoint is already named {name!r} ({taken[name]}); "
                                  "rename one of the folders")
                ckpt = known.get(path, name)
                if ckpt is None:
                    try:
                        ckpt = INSPECTORS[kind](path, name, meta, hub_id, base_for)
                    except _Reject as exc:
                        known.put(path, name, None, str(exc))
                        raise
                    ckpt = _with_card(ckpt)
                    if revision is not None:
                        from dataclasses import replace

                        ckpt = replace(ckpt, revision=revision)
                    known.put(path, name, ckpt)
            except _Reject as exc:
                scan.rejected.append(Rejected(path, str(exc), name))
                continue
            except OSError as exc:  # permissions, a file vanishing mid-scan
                scan.rejected.append(Rejected(path, f"cannot read: {exc}", name))
                continue
            taken[name] = path
            scan.checkpoints.append(ckpt)
    known.save()
    return scan


def _stamp(folder: Path) -> list:
    """The files of a checkpoint folder (not its subfolders): name, size, mtime."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                  if p.is_file())


class _ScanCache:
    """What earlier scans found per checkpoint folder, valid while its files and the base's
    config are unchanged (a checkpoint or a rejection, with its reason)."""

    def __init__(self, path: Path | None, base: Path | str | None):
        self.path = Path(path) if path is not None else None
        base_config = Path(base) / MODEL_CONFIG if base is not None else None
        self.base = [str(base), _stamp(Path(base)) if base_config is not None and base_config.exists() else None]
        self.entries: dict[str, dict] = {}
        self.changed = False
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == SCAN_CACHE_VERSION and data.get("base") == json.loads(json.dumps(self.base)):
                    self.entries = data.get("entries", {})
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    def get(self, path: Path, name: str) -> Checkpoint | None:
        entry = self.entries.get(str(path)) if self.path is not None else None
        if entry is None or entry.get("name") != name or entry.get("stamp") != json.loads(json.dumps(_stamp(path))):
            return None
        if "reason" in entry:
            raise _Reject(entry["reason"])
        return Checkpoint.from_dict(entry["checkpoint"])

    def put(self, path: Path, name: str, ckpt: Checkpoint | None, reason: str | None = None) -> None:
        if self.path is None:
            return
        entry = {"name": name, "stamp": _stamp(path)}
        entry.update({"checkpoint": ckpt.to_dict()} if ckpt is not None else {"reason": reason})
        self.entries[str(path)] = entry
        self.changed = True

    def save(self) -> None:
        from mashup_core.access import read_only

        if self.path is None or not self.changed or read_only():  # a reader never writes
            return
        import contextlib

        from mashup_core.workspace import write_json_atomic

        with contextlib.suppress(OSError):  # a read-only workspace scans every time
            write_json_atomic(self.path, {"version": SCAN_CACHE_VERSION, "base": self.base,
                                          "entries": self.entries})


SCAN_CACHE_VERSION = 1


def _with_card(ckpt: Checkpoint) -> Checkpoint:
    """The checkpoint with its model card's front matter, and the card's first dataset as its
    source task when mashup_meta.json names none."""
    card = read_card(ckpt.path)
    if not card:
        return ckpt
    from dataclasses import replace

    datasets = card.get("datasets") or []
    task = ckpt.source_task or (str(datasets[0]) if datasets else None)
    return replace(ckpt, card=card, source_task=task)


def read_card(folder: Path) -> dict[str, Any]:
    """The YAML front matter of a checkpoint's README.md (huggingface_hub's reader), as plain
    JSON-able values; {} without one or when it does not parse."""
    readme = Path(folder) / "README.md"
    if not readme.exists():
        return {}
    try:
        from huggingface_hub import metadata_load

        data = metadata_load(readme) or {}
    except Exception:  # a card is documentation: a broken one never rejects a checkpoint
        return {}
    return json.loads(json.dumps(data, default=str))


def demo_library(ws: Workspace, include_snapshots: bool = True) -> LibraryScan:
    """The demo world's adapters, validated against the demo base model."""
    if not ws.library_dir.is_dir():
        raise LibraryError(f"no demo library in {ws.root}; build it with `mashup demo build` "
                           "or point --source at a folder of checkpoints")
    return scan_library([ws.library_dir], base_model_dir=ws.base_dir,
                        include_snapshots=include_snapshots)


# --- finding ---------------------------------------------------------------------------------


def _offline() -> bool:
    return any(os.environ.get(v, "0") not in ("", "0", "false", "False")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _materialize(source: str | Path) -> list[tuple[Path, str | None, str | None]]:
    """(local folder, Hub id or None, revision or None) for each repo a source names: a
    folder; a Hub id (downloaded, json + safetensors only); or a Hub owner (`hf://OWNER`,
    `OWNER/*`): every repo of it, read from the local Hugging Face cache when offline."""
    path = Path(source).expanduser()
    if path.is_dir():
        return [(path.resolve(), None, None)]
    if path.exists():
        raise _Reject(f"{path} is a file; a library source is a folder of checkpoints or a Hub id")
    if owner := hub_owner(str(source)):
        return _hub_owner(owner)
    if not HUB_ID.match(str(source)):
        raise _Reject(f"no folder {path}, and {str(source)!r} is not a Hub id (owner/name) or "
                      "owner (hf://OWNER)")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id=str(source), allow_patterns=HUB_PATTERNS)
    except (OSError, ValueError) as exc:
        hint = (" (HF_HUB_OFFLINE is set: unset it, or download the repo elsewhere and pass its "
                "folder)") if _offline() else ""
        raise _Reject(f"no folder {str(source)!r} here, and fetching it from the Hugging Face Hub "
                      f"failed{hint}: {exc}") from exc
    return [(Path(local), str(source), Path(local).name)]


def _hub_owner(owner: str) -> list[tuple[Path, str, str]]:
    """Every repo of `owner`: listed on the Hub and fetched when online; else (or when the Hub
    cannot be reached) the snapshots the local cache holds (models--OWNER--NAME/snapshots/REV,
    REV the one refs/main names, else the newest)."""
    if not _offline():
        try:
            from huggingface_hub import list_models, snapshot_download

            repos = [m.id for m in list_models(author=owner)]
            return [(Path(p), repo, Path(p).name) for repo in repos
                    for p in [snapshot_download(repo_id=repo, allow_patterns=HUB_PATTERNS)]]
        except Exception:  # no network here: the cache is what there is
            pass
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = Path(os.environ.get("HF_HUB_CACHE", HF_HUB_CACHE))
    found = []
    for repo_dir in sorted(cache.glob(f"models--{owner}--*")):
        snapshots = repo_dir / "snapshots"
        main = repo_dir / "refs" / "main"
        revision = main.read_text().strip() if main.exists() else None
        if revision is None or not (snapshots / revision).is_dir():
            revs = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
            revision = revs[-1].name if revs else None
        if revision is not None:
            found.append((snapshots / revision, f"{owner}/{repo_dir.name.split('--', 2)[2]}", revision))
    if not found:
        raise _Reject(f"no repos of {owner!r} in the Hugging Face cache ({cache})"
                      + (" and the Hub is offline (HF_HUB_OFFLINE)" if _offline() else
                         " and the Hub could not be listed"))
    return found


def _find_candidates(root: Path, skip: set[Path]) -> Iterator[tuple[Path, str]]:
    """(folder, kind) for every folder that holds a checkpoint; checkpoints do not nest."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if here.resolve() in skip:
            dirnames[:] = []
            continue
        kind = _classify(set(filenames))
        if kind is not None:
            dirnames[:] = []
            yield here, kind


def _classify(files: set[str]) -> str | None:
    if ADAPTER_CONFIG in files:
        return "lora"
    weights = any(f.endswith(".safetensors") for f in files)
    pickles = any(f.endswith(PICKLE_SUFFIXES) for f in files)
    if MODEL_CONFIG in files and (weights or pickles or SHARD_INDEX in files):
        return "full"
    if weights or pickles:
        return "loose"
    return None


def _is_snapshot(name: str, meta: dict[str, Any]) -> bool:
    if "final" in meta:
        return not meta["final"]
    return bool(SNAPSHOT_NAME.search(name))


# --- validating ------------------------------------------------------------------------------


class _BaseResolver:
    """Base shapes per base reference, read once per scan (`(shapes, None)` or `(None, note)`)."""

    def __init__(self, override: Path | str | None):
        self.override = override
        self.cache: dict[str, BaseShapes | str] = {}

    def __call__(self, recorded: str | None) -> tuple[BaseShapes | None, str | None]:
        if self.override is not None and str(self.override) not in self.cache:
            # An explicit base must be usable: read before the first checkpoint is (not when
            # the scan cache answers for all of them, which needs neither torch nor the base).
            self.cache[str(self.override)] = base_shapes(self.override)
        ref = str(self.override) if self.override is not None else recorded
        if ref is None:
            return None, "no base model recorded: layers and shapes not checked"
        if ref not in self.cache:
            try:
                self.cache[ref] = base_shapes(ref)
            except LibraryError as exc:
                self.cache[ref] = f"layers and shapes not checked: {exc}"
        found = self.cache[ref]
        return (found, None) if isinstance(found, BaseShapes) else (None, found)


def _inspect_lora(path: Path, name: str, meta: dict, hub_id: str | None, base_for: _BaseResolver) -> Checkpoint:
    config = _read_json(path / ADAPTER_CONFIG)
    peft_type = str(config.get("peft_type") or "LORA")
    if peft_type.upper() != "LORA":
        raise _Reject(f"{ADAPTER_CONFIG}: peft_type is {peft_type}; only LoRA adapters can be merged")
    weights = path / ADAPTER_WEIGHTS
    if not weights.exists():
        fetched = " (only *.json and *.safetensors are fetched from the Hub)" if hub_id else ""
        raise _Reject(_pickle_reason(path, "PeftModel.from_pretrained(base, DIR)")
                      or f"no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}{fetched}")
    shapes = _read_tensors(weights)
    pairs = _lora_pairs(shapes)
    rank = config.get("r")
    if rank is not None and not config.get("rank_pattern"):  # PEFT could not load other ranks
        odd = [f"{m} has rank {r}" for m, (r, _, _) in pairs.items() if r != rank]
        if odd:
            raise _Reject(f"{ADAPTER_CONFIG} says r={rank} but " + "; ".join(_few(odd)))
    raw_targets = config.get("target_modules") or ()
    # PEFT saves "all-linear" resolved to full module paths; a layer's own name is what a
    # person compares ("q_proj", "qkv_proj", "c_attn"), whatever block it sits in.
    targets = ((raw_targets,) if isinstance(raw_targets, str)
               else tuple(sorted({t.rsplit(".", 1)[-1] for t in raw_targets})))
    base_model = _resolve_ref(config.get("base_model_name_or_path") or meta.get("base_model"), path)
    base, note = base_for(base_model)
    if base is not None:
        _check_lora_against_base(raw_targets, pairs, shapes, base)
    return Checkpoint(
        name=name, path=path, kind="lora", source_task=meta.get("source_task"),
        base_model=base_model, rank=rank, alpha=config.get("lora_alpha"),
        target_modules=targets, size_bytes=weights.stat().st_size, meta=meta, hub_id=hub_id,
        weight_files=(weights,), notes=(note,) if note else (),
    )


def _inspect_full(path: Path, name: str, meta: dict, hub_id: str | None, base_for: _BaseResolver) -> Checkpoint:
    _read_json(path / MODEL_CONFIG)
    try:  # headers only: a full checkpoint is GBs; its values are checked where they are read
        tensors, index_problems = full_checkpoint_tensors(path)
    except CheckpointFileError as exc:
        raise _Reject(str(exc)) from exc
    shapes = {key: info.shape for key, info in tensors.items()}
    base_model = _resolve_ref(meta.get("base_model"), path)
    base, note = base_for(base_model)
    if base is not None:
        unknown = [k for k in shapes if k not in base.tensors]
        wrong = [f"{k} {list(s)} vs {list(base.tensors[k])}" for k, s in shapes.items()
                 if k in base.tensors and s != base.tensors[k]]
        if unknown or wrong:
            raise _Reject("does not fit the base model "
                          f"{base.source} (a different architecture or size?): "
                          + "; ".join(_few(wrong, "shape mismatch") + _few(unknown, "tensor the base lacks")))
    if index_problems:
        raise _Reject(f"{SHARD_INDEX} does not match its shards: " + "; ".join(_few(index_problems)))
    files = sorted({info.file for info in tensors.values()})
    return Checkpoint(
        name=name, path=path, kind="full", source_task=meta.get("source_task"),
        base_model=base_model, size_bytes=sum(f.stat().st_size for f in files), meta=meta,
        hub_id=hub_id, weight_files=tuple(files), notes=(note,) if note else (),
    )


def _inspect_loose(path: Path, *_: Any) -> Checkpoint:
    raise _Reject(_pickle_reason(path, "AutoModelForCausalLM.from_pretrained(DIR)")
                  or f"weights without {ADAPTER_CONFIG} or {MODEL_CONFIG}: cannot tell which "
                  "model they belong to; save them with PEFT's or transformers' save_pretrained")


Inspector = Callable[[Path, str, dict, "str | None", _BaseResolver], Checkpoint]
INSPECTORS: dict[str, Inspector] = {"lora": _inspect_lora, "full": _inspect_full, "loose": _inspect_loose}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return load_json_object(path)
    except JsonFileError as exc:
        raise _Reject(str(exc)) from exc


def _read_meta(path: Path) -> dict[str, Any]:
    return _read_json(path / META_FILE) if (path / META_FILE).exists() else {}


def _resolve_ref(ref: str | None, checkpoint_dir: Path) -> str | None:
    """A base reference as given, resolved against the checkpoint's folder when it is a relative path."""
    if not ref:
        return None
    local = checkpoint_dir / ref
    if not Path(ref).is_absolute() and (ref.startswith(".") or local.exists()):
        return str(local.resolve())
    return ref


def _read_tensors(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor, after checking the header and that every value is finite."""
    import torch

    shapes = {}
    try:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not (finite := torch.isfinite(tensor)).all():
                    raise _Reject(f"{path.name}: tensor {key} has {int((~finite).sum())} non-finite "
                                  "values (NaN or inf): a diverged or corrupted training run")
                shapes[key] = tuple(tensor.shape)
    except SafetensorError as exc:
        raise _Reject(f"{path.name} is corrupted or truncated ({exc}); re-save or re-download it") from exc
    if not shapes:
        raise _Reject(f"{path.name} holds no tensors")
    return shapes


def _lora_pairs(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, int, int]]:
    """module -> (rank, in, out), after checking every lora_A has its lora_B of the same rank."""
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        if m := LORA_KEY.match(key):
            parts.setdefault(m["module"], {})[m["part"][-1]] = shape
    if not parts:
        raise _Reject(f"{ADAPTER_WEIGHTS} holds no lora_A/lora_B tensors")
    pairs, problems = {}, []
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            problems.append(f"{module} has no {missing}")
        elif len(ab["A"]) == 2 and len(ab["B"]) == 2:  # conv LoRA factors are 4-D: not checked
            (rank_a, fan_in), (fan_out, rank_b) = ab["A"], ab["B"]
            if rank_a != rank_b:
                problems.append(f"{module}: lora_A has rank {rank_a} but lora_B has rank {rank_b}")
            pairs[module] = (rank_a, fan_in, fan_out)
    if problems:
        raise _Reject("incomplete LoRA pairs: " + "; ".join(_few(problems)))
    return pairs


def _check_lora_against_base(targets: str | Sequence[str], pairs, shapes, base: BaseShapes) -> None:
    problems = []
    # PEFT's rule: a string is one regex that must match whole layer names; a list holds names
    # matched by suffix. Each listed name should match something, else the base is another one.
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise _Reject(f"{ADAPTER_CONFIG}: target_modules {targets!r} is not a valid regex ({exc})") from exc
        if targets != "all-linear" and not any(pattern.fullmatch(layer) for layer in base.layers):
            problems.append(f"target_modules regex {targets!r} matches no layer of the base")
    else:
        problems += [f"target module {t!r} matches no layer of the base" for t in targets
                     if not any(layer == t or layer.endswith("." + t) for layer in base.layers)]
    for module, (_rank, fan_in, fan_out) in pairs.items():
        if module not in base.layers:
            problems.append(f"tensors for {module}, a layer the base does not have")
        elif base.layers[module] != (fan_in, fan_out):
            b_in, b_out = base.layers[module]
            problems.append(f"{module} is {fan_in}->{fan_out} in the adapter but {b_in}->{b_out} in the base")
    # modules_to_save copies are full tensors under the base's own key
    for key, shape in shapes.items():
        if "lora_" in key:
            continue
        plain = key.removeprefix(PEFT_PREFIX)
        if plain not in base.tensors:
            problems.append(f"tensor {key} matches no tensor of the base")
        elif base.tensors[plain] != shape:
            problems.append(f"{key} is {list(shape)} but {list(base.tensors[plain])} in the base")
    if problems:
        raise _Reject(f"does not fit the base model {base.source} (trained on another base?): "
                      + "; ".join(_few(problems)))


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors checkpoint, from its file's header (no values read)."""

    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors' name: F32, BF16, F16, I64, ...


def tensor_headers(file: Path) -> dict[str, TensorInfo]:
    """Name -> shape and dtype of every tensor in one safetensors file, from its header."""
    try:
        with safe_open(file, framework="pt") as f:
            infos = {}
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                part = f.get_slice(key)
                infos[key] = TensorInfo(file, tuple(part.get_shape()), part.get_dtype())
    except SafetensorError as exc:
        raise CheckpointFileError(f"{file} is corrupted or truncated ({exc}); re-save or "
                                  "re-download it") from exc
    if not infos:
        raise CheckpointFileError(f"{file} holds no tensors")
    return infos


def full_checkpoint_tensors(path: Path) -> tuple[dict[str, TensorInfo], list[str]]:
    """Every tensor of a full-model checkpoint folder (sharded with model.safetensors.index.json,
    or its *.safetensors files) from the files' headers, and what its shard index gets wrong
    (tensors it maps to a shard that does not hold them). Pickles are refused."""
    path = Path(path)
    index = path / SHARD_INDEX
    if not index.exists():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointFileError(_pickle_reason(path, "AutoModelForCausalLM.from_pretrained(DIR)")
                                      or f"{MODEL_CONFIG} but no *.safetensors weights")
        tensors: dict[str, TensorInfo] = {}
        for f in files:
            for key, info in tensor_headers(f).items():
                if key in tensors:
                    raise CheckpointFileError(f"{path}: tensor {key} is in both "
                                              f"{tensors[key].file.name} and {f.name}")
                tensors[key] = info
        return tensors, []
    try:
        weight_map = load_json_object(index).get("weight_map")
    except JsonFileError as exc:
        raise CheckpointFileError(str(exc)) from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFileError(f"{SHARD_INDEX} has no weight_map")
    shards = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointFileError(f"{SHARD_INDEX} names a shard {shard!r} outside its folder")
        shards[shard] = path / shard
    missing = [name for name, f in shards.items() if not f.exists()]
    if missing:
        raise CheckpointFileError(f"{SHARD_INDEX} lists shards that are missing: {', '.join(_few(missing))}")
    held = {name: tensor_headers(f) for name, f in shards.items()}
    tensors, problems = {}, []
    for key, shard in weight_map.items():
        if key in held[shard]:
            tensors[key] = held[shard][key]
        else:
            problems.append(f"{key} is mapped to {shard}, which does not hold it")
    return tensors, problems


def _pickle_reason(path: Path, loader: str) -> str | None:
    pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if not pickles:
        return None
    return (f"only pickle weights ({', '.join(_few(pickles))}); pickles can run code when loaded, "
            "so they are refused. Convert once in an environment you trust: "
            f"`{loader}.save_pretrained(DIR, safe_serialization=True)`")


def _few(items: list[str], label: str | None = None, limit: int = 3) -> list[str]:
    shown = [f"{label} {i}" if label else i for i in items[:limit]]
    return shown + [f"and {len(items) - limit} more"] if len(items) > limit else shown
