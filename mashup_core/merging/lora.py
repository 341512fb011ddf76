"""Merge LoRA adapters of one base model into one PEFT adapter.

Every method is a small pure function over ONE target module: it gets each adapter's factors
(A: r×in, B: out×r, scale = alpha/r, so ΔW = scale·B·A) and the weights, and returns merged
factors. The driver streams modules one at a time, so memory stays at one module's worth.

- `linear` adds factors: A = Σ w_i A_i, B = Σ w_i B_i, as the Mashup reference code and
  LoraHub do. Cheap, but B·A then holds cross terms w_i w_j B_i A_j: an approximation, and each
  adapter's own term scales as w_i² (PEFT's `linear` puts √w on each side instead).
- `cat` stacks factors: exactly Σ w_i ΔW_i at rank Σ r_i. `cat_svd` truncates that exact sum to
  rank r through QR of the stacked factors and an SVD of a (Σr)×(Σr) core, never forming ΔW.
- `task_arithmetic`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` combine the dense
  ΔW_i with `peft.utils.merge_utils`, in row blocks, then truncate back to rank r.

Adapters may target different modules (a q_proj,v_proj LoRA next to an all-linear one): every
method but `linear` merges over the union, and an adapter enters a module it does not touch as
a rank-0 factor pair, i.e. ΔW = 0 there. `cat` then gets no rank from it, and the dense methods
see an all-zero task, exactly the zero-padded stack PEFT's merge_utils would be given.

Files are read with safetensors only; the merged adapter is a normal PEFT adapter folder
(`PeftModel.from_pretrained` loads it) plus `merge_record.json`, written all at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.utils import merge_utils
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mashup_core.errors import MashupError
from mashup_core.models.library import META_FILE, PICKLE_SUFFIXES
from mashup_core.workspace import sha256_file, write_json_atomic

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
RECORD_FILE = "merge_record.json"
SIGN_METHODS = ("total", "frequency")
SEARCH_SLOT = "mashup_search"  # the adapter slot a weight search writes merges into
PEFT_PREFIX = "base_model.model."  # saved keys = this + the module's name in the base model
BLOCK_BYTES = 32 << 20  # per stacked row block of the dense methods; PEFT's ops make ~5 copies
EXACT_SVD_MAX_DIM = 1024  # above this, a full SVD costs minutes on a CPU: use subspace iteration
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class MergeConfigError(MashupError, ValueError):
    """A merge that cannot run as asked: bad method parameters or adapters that do not fit."""


class AdapterFileError(MergeConfigError):
    """An adapter folder that cannot be read: the message names the file and what to do."""


# --------------------------------------------------------------------------- factors


@dataclass(frozen=True)
class LoraFactors:
    """One target module of one adapter: ΔW = scale · B @ A."""

    A: torch.Tensor  # r × in
    B: torch.Tensor  # out × r
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self, rows: slice = slice(None)) -> torch.Tensor:
        return (self.scale * self.B[rows]) @ self.A


def absent_like(f: LoraFactors) -> LoraFactors:
    """ΔW = 0 in the shape of `f`: an adapter at a module it does not target.

    Rank 0 rather than zero-filled factors, so `cat` adds no rank; `f`'s scale, so a merge
    whose first adapter lacks the module still takes its output scale from a real one.
    """
    return LoraFactors(f.A.new_zeros(0, f.A.shape[1]), f.B.new_zeros(f.B.shape[0], 0), f.scale)


@dataclass(frozen=True)
class MergeParams:
    rank: int | None = None  # output rank of truncating methods; default: the largest input rank
    density: float | None = None  # fraction of ΔW entries the pruning methods keep
    majority_sign_method: str = "total"
    seed: int = 0  # DARE's random drops


MergeFn = Callable[[Sequence[LoraFactors], torch.Tensor, MergeParams], LoraFactors]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MergeFn
    summary: str
    equal_ranks: bool = False  # adds factors entry by entry: same modules, equal ranks
    truncates: bool = False  # output rank set by `rank`
    uses_density: bool = False
    uses_sign: bool = False


MERGE_METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, summary: str, **traits: bool) -> Callable[[MergeFn], MergeFn]:
    def register(fn: MergeFn) -> MergeFn:
        MERGE_METHODS[name] = MergeMethod(name, fn, summary, **traits)
        return fn

    return register


@merge_method("linear", "factor-space average A=Σw·A_i, B=Σw·B_i (reference code; approximate)",
              equal_ranks=True)
def linear(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    scale = factors[0].scale
    # A_i carries its scale relative to the output's, so an adapter with another alpha still
    # enters its own term w_i²·B_i·A_i at its own strength.
    rel = torch.tensor([f.scale / scale for f in factors], dtype=weights.dtype)
    A = merge_utils.task_arithmetic([f.A for f in factors], weights * rel)
    B = merge_utils.task_arithmetic([f.B for f in factors], weights)
    return LoraFactors(A, B, scale)


@merge_method("cat", "exact Σ w·ΔW_i by stacking factors; rank = Σ ranks")
def cat(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    scale = factors[0].scale
    A = torch.cat([(w * f.scale / scale) * f.A for f, w in zip(factors, weights, strict=True)])
    B = torch.cat([f.B for f in factors], dim=1)
    return LoraFactors(A, B, scale)


@merge_method("cat_svd", "exact Σ w·ΔW_i truncated to rank r via QR + small SVD (no dense ΔW)",
              truncates=True)
def cat_svd(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    rank = params.rank or max(f.rank for f in factors)
    # ΔW = B_cat A_cat = Q_B (R_B R_A^T) Q_A^T: the SVD of the (Σr)×(Σr) core is ΔW's SVD.
    # float64 costs nothing at these sizes and keeps the core's small singular values exact.
    B_cat = torch.cat([(w * f.scale) * f.B for f, w in zip(factors, weights, strict=True)], 1)
    A_cat = torch.cat([f.A for f in factors])
    q_b, r_b = torch.linalg.qr(B_cat.double())
    q_a, r_a = torch.linalg.qr(A_cat.double().T)
    U, S, Vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    return _from_svd(q_b @ U[:, :rank], S, Vh[:rank] @ q_a.T, rank, factors[0].scale)


def truncated_svd(
    matrix: torch.Tensor, rank: int, *, randomized: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` singular triplets (U, S, Vh) of a dense matrix.

    `randomized=None` picks: a full SVD up to EXACT_SVD_MAX_DIM, else subspace iteration
    (`torch.svd_lowrank`), seeded so the result does not depend on the global RNG.
    """
    if randomized is None:
        randomized = min(matrix.shape) > EXACT_SVD_MAX_DIM
    if not randomized:
        U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
        return U[:, :rank], S[:rank], Vh[:rank]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        U, S, V = torch.svd_lowrank(matrix, q=min(2 * rank + 8, *matrix.shape), niter=6)
    return U[:, :rank], S[:rank], V[:, :rank].T


def _from_svd(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, rank: int, scale: float) -> LoraFactors:
    """LoRA factors of U·diag(S)·Vh at exactly `rank` (zero-padded if the matrix has less).

    √S goes to each side, so both factors start training at comparable magnitudes.
    """
    k = min(rank, S.numel())
    root = (S[:k] / scale).sqrt()
    A = (root[:, None] * Vh[:k]).float()
    B = (U[:, :k] * root).float()
    missing = rank - A.shape[0]
    if missing > 0:
        A = torch.cat([A, A.new_zeros(missing, A.shape[1])])
        B = torch.cat([B, B.new_zeros(B.shape[0], missing)], dim=1)
    return LoraFactors(A, B, scale)


# --------------------------------------------------------------------------- dense methods

Combine = Callable[[list[torch.Tensor], torch.Tensor, MergeParams], torch.Tensor]


def dense_method(name: str, summary: str, *, magnitude_prune: bool = False,
                 **traits: bool) -> Callable[[Combine], Combine]:
    """Register a method that combines dense ΔW_i row block by row block, then truncates.

    PEFT's magnitude pruning keeps the top `density` of each WHOLE ΔW_i, which a row block
    cannot see: with `magnitude_prune`, each adapter's global threshold is found first and
    blocks arrive already pruned. Everything else in PEFT's methods is entry-wise.
    """

    def register(combine: Combine) -> Combine:
        def merge(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
            out_dim, in_dim = factors[0].B.shape[0], factors[0].A.shape[1]
            blocks = list(_row_blocks(out_dim, in_dim, len(factors)))
            thresholds = ([_magnitude_threshold(f, blocks, params.density) for f in factors]
                          if magnitude_prune else None)
            merged = torch.empty(out_dim, in_dim)
            for rows in blocks:
                tasks = [f.delta(rows) for f in factors]
                if thresholds is not None:
                    tasks = [t * (t.abs() >= thr) for t, thr in zip(tasks, thresholds, strict=True)]
                merged[rows] = combine(tasks, weights, params)
            rank = params.rank or max(f.rank for f in factors)
            return _from_svd(*truncated_svd(merged, rank), rank, factors[0].scale)

        MERGE_METHODS[name] = MergeMethod(name, merge, summary, truncates=True, **traits)
        return combine

    return register


@dense_method("task_arithmetic", "Σ w·ΔW_i, dense, truncated to rank r (cat_svd's slow twin)")
def _task_arithmetic(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return merge_utils.task_arithmetic(tasks, weights)


@dense_method("magnitude_prune", "keep the top-density |ΔW_i| entries, then Σ w·ΔW_i",
              magnitude_prune=True, uses_density=True)
def _magnitude_prune(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return merge_utils.task_arithmetic(tasks, weights)


@dense_method("ties", "TIES: magnitude prune, elect signs, average the agreeing entries",
              magnitude_prune=True, uses_density=True, uses_sign=True)
def _ties(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    stacked = torch.stack(tasks)
    agree = merge_utils.calculate_majority_sign_mask(stacked, params.majority_sign_method)
    weighted = stacked * merge_utils.reshape_weight_task_tensors(stacked, weights)
    return merge_utils.disjoint_merge(weighted, agree)


@dense_method("dare_linear", "DARE: drop entries at random, rescale by 1/density, Σ w·ΔW_i",
              uses_density=True)
def _dare_linear(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return merge_utils.dare_linear(tasks, weights, params.density)


@dense_method("dare_ties", "DARE drops, then TIES sign election", uses_density=True, uses_sign=True)
def _dare_ties(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return merge_utils.dare_ties(tasks, weights, params.density, params.majority_sign_method)


def dense_delta(f: LoraFactors, blocks: Sequence[slice]) -> torch.Tensor:
    """ΔW assembled from the same row blocks the merge sees.

    B[rows] @ A and (B @ A)[rows] may differ in the last bit (BLAS picks kernels by shape, and
    differently on each CPU), and an entry at the pruning threshold would then flip. Taking
    the threshold from these very values makes the pruning exact by construction.
    """
    return torch.cat([f.delta(rows) for rows in blocks])


def _magnitude_threshold(f: LoraFactors, blocks: Sequence[slice], density: float) -> float:
    """|x| at which PEFT's `magnitude_based_pruning` of the whole ΔW would cut."""
    if f.rank == 0:  # ΔW = 0, pruned or not: no need to build and sort it
        return math.inf
    numel = f.B.shape[0] * f.A.shape[1]
    keep = int(density * numel)  # PEFT's count
    if keep >= numel:
        return -math.inf
    return _kth_largest(dense_delta(f, blocks).abs_().view(-1), keep) if keep > 0 else math.inf


def _kth_largest(values: torch.Tensor, k: int, sample: int = 1 << 16) -> float:
    """Exactly the k-th largest entry of a 1-D tensor; on 50M entries about 2x faster than
    `kthvalue` on all of them.

    A random sample brackets the answer (±0.01 in quantile, > 6 standard errors); only the
    entries inside the bracket are selected from. A miss is detected and falls back.
    """
    n = values.numel()
    if n <= 16 * sample:
        return torch.kthvalue(values, n - k + 1).values.item()
    gen = torch.Generator().manual_seed(0)
    q = 1 - k / n
    probe = values[torch.randint(n, (sample,), generator=gen)]
    lo, hi = torch.quantile(probe, torch.tensor([max(q - 0.01, 0.0), min(q + 0.01, 1.0)]))
    rank = k - int((values > hi).sum())  # the answer's rank among the bracket's entries
    band = values[(values >= lo) & (values <= hi)]
    if 1 <= rank <= band.numel():
        return torch.kthvalue(band, band.numel() - rank + 1).values.item()
    return torch.kthvalue(values, n - k + 1).values.item()


def _row_blocks(rows: int, cols: int, n_tasks: int) -> Iterator[slice]:
    step = max(1, BLOCK_BYTES // (4 * cols * n_tasks))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


# --------------------------------------------------------------------------- adapters on disk


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read into memory."""

    path: Path
    config: dict[str, Any]  # adapter_config.json as written
    modules: dict[str, LoraFactors]  # saved key prefix of each target module → its factors
    dtype: torch.dtype
    sha256: str
    base_model: str | None  # what it was trained on, when the folder says

    @property
    def name(self) -> str:
        return self.path.name


def read_lora_adapter(path: str | os.PathLike) -> LoraAdapter:
    path = Path(path)
    if not path.is_dir():
        raise AdapterFileError(
            f"{path}: not a folder; pass a PEFT adapter folder "
            f"({CONFIG_FILE} + {WEIGHTS_FILE})"
        )
    config = _read_config(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.exists():
        pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise AdapterFileError(
                f"{path} holds pickle weights ({', '.join(pickles)}) and no {WEIGHTS_FILE}; pickles "
                "can run code when loaded, so they are refused. Convert once in a trusted "
                "environment: `from safetensors.torch import save_file; "
                f"save_file(torch.load('{pickles[0]}', weights_only=True), '{WEIGHTS_FILE}')`"
            )
        raise AdapterFileError(f"{path}: no {WEIGHTS_FILE}; is this a PEFT adapter folder?")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(
            f"{weights_path}: not a readable safetensors file ({exc}); the file is damaged or "
            "truncated: save or copy the adapter again"
        ) from exc
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterFileError(
                f"{weights_path}: tensor {key!r} is not a LoRA A/B factor; adapters with "
                "modules_to_save, DoRA or bias weights cannot be merged here"
            )
        if not torch.isfinite(tensor).all():
            raise AdapterFileError(
                f"{weights_path}: tensor {key!r} holds NaN or infinite values (diverged "
                "training?); retrain the adapter or leave it out of the merge"
            )
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if not parts:
        raise AdapterFileError(f"{weights_path}: no LoRA tensors in the file")
    modules = {name: _factors(weights_path, name, ab, config) for name, ab in sorted(parts.items())}
    return LoraAdapter(
        path=path, config=config, modules=modules, dtype=next(iter(tensors.values())).dtype,
        sha256=sha256_file(weights_path), base_model=_base_model(path, config),
    )


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        raise AdapterFileError(f"{path}: no {CONFIG_FILE}; is this a PEFT adapter folder?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"{config_path}: not valid JSON ({exc})") from exc
    if config.get("peft_type") != "LORA":
        raise AdapterFileError(
            f"{config_path}: peft_type is {config.get('peft_type')!r}; only LORA adapters merge"
        )
    if config.get("use_dora"):
        raise AdapterFileError(f"{config_path}: DoRA adapters (use_dora: true) cannot be merged")
    return config


def _factors(file: Path, name: str, ab: dict[str, torch.Tensor], config: dict[str, Any]) -> LoraFactors:
    if set(ab) != {"A", "B"}:
        raise AdapterFileError(f"{file}: module {name} has lora_{''.join(ab)} but not both A and B")
    A, B = ab["A"].float(), ab["B"].float()
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise AdapterFileError(
            f"{file}: module {name} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}; "
            "expected (r, in) and (out, r)"
        )
    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), name), config.get("lora_alpha", 8))
    r = A.shape[0]
    scale = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    if not math.isfinite(scale) or scale <= 0:
        raise AdapterFileError(f"{file.parent / CONFIG_FILE}: lora_alpha must be positive, got {alpha}")
    return LoraFactors(A, B, scale)


def _base_model(path: Path, config: dict[str, Any]) -> str | None:
    try:  # the demo library records its base as a path relative to the adapter
        base = json.loads((path / META_FILE).read_text()).get("base_model")
    except (OSError, ValueError, AttributeError):
        base = None
    if base:
        return str((path / base).resolve()) if base.startswith(".") else base
    return config.get("base_model_name_or_path")


def load_lora_factors(adapter_dirs: Sequence[str | os.PathLike]) -> list[LoraAdapter]:
    """Read the adapters once (for repeated `merge_factors` calls) and check that they fit."""
    adapters = [read_lora_adapter(d) for d in adapter_dirs]
    check_compatible(adapters)
    return adapters


def check_compatible(adapters: Sequence[LoraAdapter], method: str | None = None) -> None:
    """One base model: one fan_in_fan_out, one shape per module name. Target modules may differ
    (the merge covers their union), except for a `method` that adds factors entry by entry."""
    if not adapters:
        raise MergeConfigError("no adapters to merge")
    first = adapters[0]
    bases = {a.base_model for a in adapters if a.base_model}
    if len(bases) > 1:
        listing = "; ".join(f"{a.name}: {a.base_model}" for a in adapters)
        raise MergeConfigError(f"the adapters come from different base models ({listing})")
    entry_wise = method is not None and MERGE_METHODS[method].equal_ranks
    for other in adapters[1:]:
        if other.config.get("fan_in_fan_out") != first.config.get("fan_in_fan_out"):
            raise MergeConfigError(f"adapters {first.name} and {other.name} differ in fan_in_fan_out")
        only_first, only_other = first.modules.keys() - other.modules.keys(), other.modules.keys() - first.modules.keys()
        if entry_wise and (only_first or only_other):
            example = sorted(only_first or only_other)[0]
            raise MergeConfigError(
                f"method '{method}' adds factors entry by entry and needs the same target modules "
                f"in every adapter, but {first.name} and {other.name} differ ({len(only_first)} "
                f"only in {first.name}, {len(only_other)} only in {other.name}, e.g. {example}); "
                "use 'cat' or 'cat_svd', which merge adapters with different target modules exactly"
            )
    owner: dict[str, tuple[LoraAdapter, LoraFactors]] = {}
    for other in adapters:
        for name, g in other.modules.items():
            if name not in owner:
                owner[name] = (other, g)
                continue
            a, f = owner[name]
            if (f.B.shape[0], f.A.shape[1]) != (g.B.shape[0], g.A.shape[1]):
                raise MergeConfigError(
                    f"module {name} is {f.B.shape[0]}×{f.A.shape[1]} in {a.name} but "
                    f"{g.B.shape[0]}×{g.A.shape[1]} in {other.name}: different base models"
                )
            if entry_wise and f.rank != g.rank:
                raise MergeConfigError(
                    f"method '{method}' adds factors entry by entry and needs equal ranks, but "
                    f"{a.name} has rank {f.rank} and {other.name} rank {g.rank} (module "
                    f"{name}); use 'cat' or 'cat_svd', which merge any ranks"
                )


def union_modules(adapters: Sequence[LoraAdapter]) -> list[str]:
    """Every module some adapter targets, in a fixed order."""
    return sorted(set().union(*(a.modules for a in adapters)))


def module_factors(adapters: Sequence[LoraAdapter], name: str) -> list[LoraFactors]:
    """Each adapter's factors at `name`; ΔW = 0 (`absent_like`) where it does not target it."""
    present = next(a.modules[name] for a in adapters if name in a.modules)
    return [a.modules[name] if name in a.modules else absent_like(present) for a in adapters]


# --------------------------------------------------------------------------- merging


def validate_params(
    method: str,
    n_adapters: int,
    weights: Sequence[float],
    *,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str = "total",
) -> tuple[MergeMethod, MergeParams]:
    """Check everything that needs no file, before any work starts."""
    spec = MERGE_METHODS.get(method)
    if spec is None:
        raise MergeConfigError(f"unknown merge method {method!r}; choose from {', '.join(MERGE_METHODS)}")
    if n_adapters < 1:
        raise MergeConfigError("no adapters to merge")
    if len(weights) != n_adapters:
        raise MergeConfigError(
            f"got {len(weights)} weights for {n_adapters} adapters; give one weight per adapter"
        )
    if not all(math.isfinite(float(w)) for w in weights):
        raise MergeConfigError(f"weights must be finite numbers, got {list(weights)}")
    if spec.uses_density:
        if density is None:
            raise MergeConfigError(f"method '{method}' needs a density in (0, 1], e.g. 0.2")
        if not 0 < density <= 1:
            raise MergeConfigError(f"density must be in (0, 1], got {density}")
    elif density is not None:
        raise MergeConfigError(f"method '{method}' does not prune; drop the density")
    if rank is not None:
        if not spec.truncates:
            truncating = ", ".join(m.name for m in MERGE_METHODS.values() if m.truncates)
            raise MergeConfigError(
                f"method '{method}' keeps the adapters' rank; a rank applies to {truncating}"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise MergeConfigError(f"rank must be an integer ≥ 1, got {rank!r}")
    if majority_sign_method not in SIGN_METHODS:
        raise MergeConfigError(
            f"majority_sign_method must be one of {', '.join(SIGN_METHODS)}, got {majority_sign_method!r}"
        )
    return spec, MergeParams(rank, density, majority_sign_method, seed)


@dataclass
class MergedLora:
    """A merge in memory: per module factors, ready to save or to copy into a PeftModel."""

    modules: dict[str, LoraFactors]
    method: str
    weights: list[float]
    params: MergeParams
    # The inputs targeted different modules: no input's config describes `modules`.
    mixed_targets: bool = False

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        out = {}
        for name, f in self.modules.items():
            out[f"{name}.lora_A.weight"] = f.A.to(dtype).contiguous()
            out[f"{name}.lora_B.weight"] = f.B.to(dtype).contiguous()
        return out

    def adapter_config(self, template: dict[str, Any]) -> dict[str, Any]:
        """`template` (an input's adapter_config.json) with this merge's ranks and alphas."""
        shape = {name: (f.rank, _alpha(f)) for name, f in self.modules.items()}
        (r, alpha), _ = Counter(shape.values()).most_common(1)[0]
        odd = {name.removeprefix(PEFT_PREFIX): ra for name, ra in shape.items() if ra != (r, alpha)}
        targets: dict[str, Any] = {}
        if self.mixed_targets:
            # Full module names match exactly these modules in PEFT, whatever mix of lists,
            # regexes and "all-linear" the inputs used; layer filters would only cut them.
            targets = {"target_modules": sorted(name.removeprefix(PEFT_PREFIX) for name in self.modules),
                       "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None}
        return {
            **template, **targets, "r": r, "lora_alpha": alpha, "use_rslora": False,
            "use_dora": False, "inference_mode": True,
            "rank_pattern": {name: ra[0] for name, ra in odd.items() if ra[0] != r},
            "alpha_pattern": {name: ra[1] for name, ra in odd.items()},
        }

    @property
    def rank(self) -> int:
        return Counter(f.rank for f in self.modules.values()).most_common(1)[0][0]


def _alpha(f: LoraFactors) -> float | int:
    alpha = f.scale * f.rank
    return int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha


def merge_factors(
    adapters: Sequence[LoraAdapter],
    weights: Sequence[float],
    method: str = "linear",
    *,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str = "total",
) -> MergedLora:
    """Merge adapters already in memory; no file is touched (weight searches call this often)."""
    spec, params = validate_params(method, len(adapters), weights, rank=rank, density=density,
                                   seed=seed, majority_sign_method=majority_sign_method)
    check_compatible(adapters, method)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # DARE draws from the global RNG; keep it a function of `seed`
        warnings.filterwarnings("ignore", message="The density .* no pruning will be performed")
        modules = {name: spec.fn(module_factors(adapters, name), w, params)
                   for name in union_modules(adapters)}
    mixed = any(a.modules.keys() != adapters[0].modules.keys() for a in adapters)
    return MergedLora(modules, method, [float(x) for x in weights], params, mixed)


@dataclass
class MergeRecord:
    """What `merge_record.json` holds: enough to redo the merge and to trust its inputs."""

    method: str
    weights: list[float]
    inputs: list[dict[str, str]]  # path and sha256 of each adapter's weights
    params: dict[str, Any]
    rank: int
    out_dir: str
    base_model: str | None
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "mashup-merge"
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_adapters(
    adapter_dirs: Sequence[str | os.PathLike],
    weights: Sequence[float],
    method: str,
    out_dir: str | os.PathLike,
    *,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str = "total",
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> MergeRecord:
    """Merge adapter folders into a new PEFT adapter folder `out_dir`, atomically."""
    start = time.perf_counter()
    validate_params(method, len(adapter_dirs), weights, rank=rank, density=density, seed=seed,
                    majority_sign_method=majority_sign_method)
    out_dir = Path(out_dir).resolve()
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite):
        raise MergeConfigError(f"{out_dir} already exists; choose another output folder or overwrite it")
    adapters = load_lora_factors(adapter_dirs)
    loaded = time.perf_counter()
    merged = merge_factors(adapters, weights, method, rank=rank, density=density, seed=seed,
                           majority_sign_method=majority_sign_method)
    done = time.perf_counter()
    record = MergeRecord(
        method=method, weights=merged.weights,
        inputs=[{"path": str(a.path.resolve()), "sha256": a.sha256} for a in adapters],
        params={k: v for k, v in asdict(merged.params).items() if v is not None},
        rank=merged.rank, out_dir=str(out_dir), base_model=adapters[0].base_model, seconds=0.0,
        timings={"load": loaded - start, "merge": done - loaded}, extra=extra or {},
    )

    def write(tmp: Path) -> None:
        save_file(merged.state_dict(adapters[0].dtype), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        config = merged.adapter_config(adapters[0].config)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        record.timings["write"] = time.perf_counter() - done
        record.seconds = time.perf_counter() - start
        write_json_atomic(tmp / RECORD_FILE, record.to_dict())

    _replace_dir_atomically(out_dir, write)
    return record


def _replace_dir_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Fill a hidden sibling folder, then rename it into place: a killed merge leaves no half."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- into a live model


@torch.no_grad()
def load_into_peft(model, merged: MergedLora, adapter_name: str = SEARCH_SLOT) -> None:
    """Copy a merge into an existing LoRA slot of a PeftModel (no disk, no re-wrapping)."""
    layers = dict(model.named_modules())
    for name, f in merged.modules.items():
        layer = layers.get(name)
        if layer is None or adapter_name not in getattr(layer, "lora_A", {}):
            raise MergeConfigError(f"the model has no LoRA slot {adapter_name!r} at {name}")
        A, B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
        if A.shape != f.A.shape or B.shape != f.B.shape:
            raise MergeConfigError(
                f"LoRA slot {adapter_name!r} at {name} has rank {A.shape[0]}, the merge rank "
                f"{f.rank}; use another slot name"
            )
        A.copy_(f.A)
        B.copy_(f.B)
        layer.scaling[adapter_name] = f.scale


def add_merge_slot(model, merged: MergedLora, template: dict[str, Any], adapter_name: str = SEARCH_SLOT):
    """`model` (a PeftModel, or a bare base it wraps in place) with an active slot shaped for `merged`."""
    from peft import PeftConfig, PeftModel, get_peft_model

    config = PeftConfig.from_peft_type(**merged.adapter_config(template))
    with torch.random.fork_rng(devices=[]):  # PEFT initialises the slot from the global RNG
        if not isinstance(model, PeftModel):
            model = get_peft_model(model, config, adapter_name=adapter_name)
        elif adapter_name not in model.peft_config:
            model.add_adapter(adapter_name, config)
    model.set_adapter(adapter_name)
    model.eval()
    return model
