"""The score store: every checkpoint's relevance on every scoring sample, computed once.

The reference pipeline scores every library checkpoint on every target once (the N×N
relevance matrix) and each leave-one-out fold only leaves the target's own checkpoints out.
Here the same holds across the product: a study's select tasks, the Relevance page, the
Relevance map, `mashup score` and the recycle search read and write one store, so what one
computed the others show, and a fold or a page that asks for a subset of a library scores only
the checkpoints the store does not hold yet.

One JSON file per *scoring sample* (`cache/scores/v2/<key>.json`): the key covers the sampled
rows' content (their prompt format included), n, seed, the scorers' version, the base model's
files, device and dtype. Inside it, one entry per *checkpoint*, keyed by its kind, path and
files (name, size, mtime): its row and per-example values, or why it could not be scored.
A rewritten checkpoint has a new key and is scored again; a damaged file is ignored and
rewritten. Writers merge their entries under a lock, so two jobs scoring two folds of one
target keep both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mashup_core import defaults
from mashup_core.data.examples import MCExample, sample_examples
from mashup_core.selection.scoring import (
    BASE_ROW,
    CACHE_VERSION,
    FULL_SKIPPED,
    SCORERS,
    ScoreRow,
    ScoreTable,
    ScoringError,
    provenance,
    score_library,
)
from mashup_core.workspace import Workspace, locked, read_json, write_json_atomic

if TYPE_CHECKING:
    from mashup_core.models.library import Checkpoint

BASE_ENTRY = "base"


class NotCachedError(ScoringError):
    """`score_library_cached(cached_only=True)` found nothing stored: nothing was scored."""


def _fingerprint(path: Path) -> list[tuple[str, int, int]]:
    """(file, size, mtime) of every file under `path`: changes when a checkpoint is rewritten."""
    path = Path(path)
    if not path.exists():
        return [(str(path), -1, -1)]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size,
             p.stat().st_mtime_ns) for p in files]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _where(path: str | Path, root: Path | None) -> str:
    """A path as the store names it: relative to the workspace when inside it, so that a
    workspace copied or moved whole keeps its scores; absolute (or a Hub id) otherwise."""
    local = Path(path)
    if root is not None and local.exists():
        try:
            return str(local.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(local.resolve()) if local.exists() else str(path)


def sample_key(examples: Sequence[MCExample], *, n: int, seed: int | None, base_path: str | Path,
               device: str, dtype: str, root: Path | None = None) -> str:
    """The identity of a scoring sample: the rows as scored, and what scores them."""
    base = Path(base_path)
    return _digest({
        "version": CACHE_VERSION, "scorers": sorted(SCORERS),
        "examples": _digest([ex.to_json() for ex in examples]), "n": n, "seed": seed,
        "base": [_where(base_path, root), _fingerprint(base) if base.exists() else None],
        "device": device, "dtype": dtype,
    })


def checkpoint_key(checkpoint: Checkpoint, root: Path | None = None) -> str:
    """A checkpoint's identity in the store: its kind, folder and files (not its name, which a
    library listing may give it)."""
    return _digest([getattr(checkpoint, "kind", "lora"), _where(checkpoint.path, root),
                    _fingerprint(checkpoint.path)])[:32]


class ScoreStore:
    """The workspace's store of scores (see the module's note)."""

    def __init__(self, ws: Workspace):
        self.root = ws.root
        self.dir = ws.cache_dir / "scores" / f"v{CACHE_VERSION}"

    def checkpoint_keys(self, checkpoints: Sequence[Checkpoint]) -> list[str]:
        return [checkpoint_key(c, self.root) for c in checkpoints]

    def path(self, key: str) -> Path:
        return self.dir / f"{key[:32]}.json"

    def read(self, key: str) -> dict[str, dict]:
        """Every entry stored for this sample; {} when none (or the file is damaged)."""
        data = read_json(self.path(key))
        if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("entries"), dict):
            return {}
        return data["entries"]

    def put_table(self, key: str, checkpoints: Sequence[Checkpoint], table: ScoreTable) -> dict[str, dict]:
        """Store a scored table's rows (and its base, and why any were skipped) under the
        sample `key`; returns the entries written."""
        by_name = dict(zip((c.name for c in checkpoints), self.checkpoint_keys(checkpoints),
                           strict=True))
        new = {BASE_ENTRY: _entry(table.base, table.per_example[BASE_ROW])} if table.base else {}
        sources = {c.name: provenance(c) for c in checkpoints}
        new |= {by_name[r.name]: {**_entry(r, table.per_example[r.name]), "source": sources[r.name]}
                for r in table.rows}
        new |= {by_name[name]: {"skipped": why} for name, why in table.skipped.items()
                if name in by_name and why != FULL_SKIPPED}
        self.write(key, new, table.target)
        return new

    def write(self, key: str, entries: dict[str, dict], target: str | None = None) -> None:
        """Add `entries` to the sample's file; what other writers stored meanwhile is kept."""
        path = self.path(key)
        with locked(path.with_suffix(".lock")):
            merged = {**self.read(key), **entries}
            write_json_atomic(path, {"kind": "mashup-scores", "version": CACHE_VERSION, "key": key,
                                     "target": target, "entries": merged})


def _entry(row: ScoreRow, per_example: dict[str, list[float]]) -> dict:
    return {"row": asdict(row), "per_example": per_example}


def table_from_entries(entries: dict[str, dict], checkpoints: Sequence[Checkpoint],
                       keys: Sequence[str], target: str | None) -> ScoreTable:
    """The table of `checkpoints` from stored entries, under the names and source tasks they
    have now; those with no entry are listed in `table.unscored`."""
    table = ScoreTable(rows=[], base=None, target=target)
    if (base := entries.get(BASE_ENTRY)) is not None:
        table.base = ScoreRow(**{**base["row"], "name": BASE_ROW})
        table.per_example[BASE_ROW] = base["per_example"]
    for ckpt, key in zip(checkpoints, keys, strict=True):
        entry = entries.get(key)
        if entry is None:
            table.unscored.append(ckpt.name)
        elif "skipped" in entry:
            table.skipped[ckpt.name] = entry["skipped"]
        else:
            table.rows.append(ScoreRow(**{**entry["row"], "name": ckpt.name,
                                          "source_task": getattr(ckpt, "source_task", None)}))
            table.per_example[ckpt.name] = entry["per_example"]
            table.provenance[ckpt.name] = entry.get("source") or provenance(ckpt)
    return table


@dataclass
class CachedInputs:
    """What a stored score (or halving) is computed on, and the key it is kept under."""

    sample: list[MCExample]
    key: str
    device: Any  # torch.device
    base_path: str | Path


def cached_inputs(ws: Workspace, checkpoints: Sequence[Checkpoint], examples: Sequence[MCExample], *,
                  n: int, seed: int | None, base_path: str | Path | None, device: str | None,
                  include_full: bool = False) -> CachedInputs:
    """The sampled rows and their sample key: rows, n, seed, base, device and dtype."""
    import torch

    from mashup_core.models.loading import default_device, default_dtype

    if base_path is None:
        from mashup_core.config import resolve_config

        base_path = resolve_config(ws).base_model
    dev = torch.device(device) if device else default_device()
    sample = sample_examples(examples, n, seed)
    key = sample_key(sample, n=n, seed=seed, base_path=base_path, device=dev.type,
                     dtype=str(default_dtype(dev)), root=ws.root)
    return CachedInputs(sample, key, dev, base_path)


@contextlib.contextmanager
def base_in_slot(ws: Workspace, inputs: CachedInputs, holder: str):
    """(model, tokenizer) of the base on the device, while holding the device's slot: on a GPU,
    scoring queues with runs and studies for the card (stored scores never wait)."""
    from mashup_core.jobs.slot import accelerator_slot
    from mashup_core.models.loading import load_base_model, load_tokenizer

    with accelerator_slot(ws, inputs.device, holder=holder, kind="score"):
        yield load_base_model(inputs.base_path, device=inputs.device), load_tokenizer(inputs.base_path)


def score_library_cached(
    ws: Workspace,
    checkpoints: Sequence[Checkpoint],
    examples: Sequence[MCExample],
    *,
    n: int = defaults.STUDY_N,
    seed: int | None = None,
    base_path: str | Path | None = None,
    target: str | None = None,
    batch_size: int = defaults.EVAL_BATCH_SIZE,
    progress: bool = True,
    include_full: bool = False,
    device: str | None = None,
    refresh: bool = False,
    cached_only: bool = False,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    workers: int = 1,
    address: str | None = None,
) -> ScoreTable:
    """`score_library` on `sample_examples(examples, n, seed)`, through the score store: only
    the checkpoints (and the base) the store lacks are scored, and stored for everyone.

    `cached_only`: never score nor write; the table holds what is stored (`table.unscored`
    names the rest), and `NotCachedError` when nothing is. `refresh`: score every checkpoint
    again. `model_and_tokenizer`: a base already loaded by the caller (a study's worker),
    used instead of loading one in the device's slot. `workers` > 1: what the store lacks is
    scored on that many Ray workers (`selection.fanout`; `address`: a cluster).
    """
    inputs = cached_inputs(ws, checkpoints, examples, n=n, seed=seed, base_path=base_path,
                           device=device, include_full=include_full)
    store = ScoreStore(ws)
    keys = store.checkpoint_keys(checkpoints)
    stored = {} if refresh else store.read(inputs.key)
    todo = [c for c, key in zip(checkpoints, keys, strict=True) if key not in stored
            and (include_full or getattr(c, "kind", "lora") != "full")]
    if cached_only or not (todo or BASE_ENTRY not in stored):
        table = table_from_entries(stored, checkpoints, keys, target)
        _skip_full(table, checkpoints, include_full)
        if cached_only and table.base is None and not table.rows:
            raise NotCachedError(f"{target or 'this target'}: not scored yet on n={n} "
                                 f"({len(checkpoints)} checkpoints)")
        table.from_cache = True
        return table
    if workers > 1 and todo:
        from mashup_core.selection.fanout import score_library_ray

        scored = score_library_ray(str(inputs.base_path), todo, inputs.sample, workers=workers,
                                   batch_size=batch_size, address=address, target=target)
    elif model_and_tokenizer is not None:
        scored = score_library(*model_and_tokenizer, todo, inputs.sample, batch_size=batch_size,
                               progress=progress, target=target, include_full=include_full)
    else:
        with base_in_slot(ws, inputs, holder=target or "score") as (model, tokenizer):
            scored = score_library(model, tokenizer, todo, inputs.sample, batch_size=batch_size,
                                   progress=progress, target=target, include_full=include_full)
    new = store.put_table(inputs.key, todo, scored)
    table = table_from_entries({**stored, **new}, checkpoints, keys, target)
    _skip_full(table, checkpoints, include_full)
    table.choice_scores = scored.choice_scores
    return table


def _skip_full(table: ScoreTable, checkpoints: Sequence[Checkpoint], include_full: bool) -> None:
    """Full-model checkpoints not asked for are skipped with the reason, as `score_library` says."""
    if include_full:
        return
    for c in checkpoints:
        if getattr(c, "kind", "lora") == "full" and c.name in table.unscored:
            table.unscored.remove(c.name)
            table.skipped[c.name] = FULL_SKIPPED

