"""Merge LoRA adapters of one base model into one PEFT adapter.

Every method is a small pure function over ONE target module: it gets each adapter's factors
(A: r×in, B: out×r, scale = alpha/r, so ΔW = scale·B·A) and the weights, and returns merged
factors. The driver streams modules one at a time, so memory stays at one module's worth.
Methods and their parameters live in one registry (`merging.registry`; `MERGE_METHODS` is its
LoRA part), checked before any file is read. Families:

- factor space: `linear` adds factors, A = Σ w_i A_i, B = Σ w_i B_i, as the Mashup reference
  code and LoraHub do. Cheap, but B·A then holds cross terms w_i w_j B_i A_j: an approximation.
- exact: `cat` stacks factors (exactly Σ w_i ΔW_i at rank Σ r_i); `cat_svd` truncates that
  sum to rank r by QR of the stacked factors and an SVD of a (Σr)×(Σr) core.
- dense ΔW: `task_arithmetic`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` combine
  the dense ΔW_i (PEFT's `merge_utils` conventions), in row blocks, then truncate to rank r.
  The only methods here that build a d_out × d_in matrix: they are defined entry-wise on it.
- core space (`core_*`), KnOTS (`knots_*`), TSV-M, Iso-C, Iso-CTS: low-rank throughout
  (`merging.lowrank`, whose docstring says what each equals).

Adapters may target different modules (a q_proj,v_proj LoRA next to an all-linear one): every
method but `linear` merges over the union, and an adapter enters a module it does not touch as
a rank-0 factor pair, i.e. ΔW = 0 there.

Weights default to 1/k for `linear`, `cat`, `cat_svd` (shares of an average) and to 1 each for
the others (scales of task vectors, as in mergekit and the papers). What a merge cannot carry
exactly is refused before any work, with what would work: DoRA, `lora_bias`, trainable
tokens, LoRA on embedding layers; whole saved modules (`modules_to_save`, e.g. a resized
embedding and head) are averaged with the weights by the methods linear in the updates when
the weights sum to 1 (then Σ w_i W_i is exactly the task-arithmetic merge of those modules),
and refused otherwise. rsLoRA and rank/alpha patterns are read into each module's scale, and
the output's config says every module's rank and alpha, so it reloads in PEFT as it was merged.

Files are read with safetensors only; the merged adapter is a normal PEFT adapter folder
(`PeftModel.from_pretrained` loads it) plus `merge_record.json`, its recipe as mergekit YAML
and a model card, written all at once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from hashlib import sha256
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mashup_core import defaults
from mashup_core.merging import elementwise, lowrank, recipe
from mashup_core.merging.lowrank import LoraFactors, absent_like  # noqa: F401  (re-exported)
from mashup_core.merging.registry import (
    MergeConfigError,
    MethodSpec,
    Param,
    check_weights,
    get,
    methods,
    register,
    resolve_params,
)
from mashup_core.models.adapters import (  # noqa: F401  (the adapters' files, read where they are)
    CONFIG_FILE,
    FOLD_HINT,
    PEFT_PREFIX,
    WEIGHTS_FILE,
    AdapterFileError,
    LoraAdapter,
    read_lora_adapter,
)
from mashup_core.workspace import (
    clean_stale_temporaries,
    usual_permissions,
    write_json_atomic,
    writing,
)

RECORD_FILE = "merge_record.json"
SIGN_METHODS = elementwise.SIGN_METHODS
SEARCH_SLOT = "mashup_search"  # the adapter slot a weight search writes merges into
BLOCK_BYTES = 32 << 20  # per stacked row block of the dense methods; PEFT's ops make ~5 copies
EXACT_SVD_MAX_DIM = 1024  # above this, a full SVD costs minutes on a CPU: use subspace iteration
# Methods whose result is linear in the updates: whole saved modules average exactly with them.
LINEAR_IN_UPDATES = frozenset({"linear", "cat", "cat_svd", "task_arithmetic", "core_task_arithmetic"})

MergeMethod = MethodSpec  # the older name of a registry entry


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class MergeParams:
    """A method's resolved parameters for one merge. The four fields every caller knew stay
    fields; every other parameter is in `options`. `rng` is the module's seeded generator."""

    rank: int | None = None  # output rank of truncating methods; default: the largest input rank
    density: float | None = None  # fraction of entries the pruning methods keep
    majority_sign_method: str = "total"
    seed: int = 0  # random methods' drops
    options: Mapping[str, Any] = field(default_factory=dict)
    rng: torch.Generator | None = field(default=None, compare=False, repr=False)

    def __getitem__(self, name: str) -> Any:
        if name in ("rank", "density", "majority_sign_method", "seed"):
            return getattr(self, name)
        return self.options[name]

    def get(self, name: str, default: Any = None) -> Any:
        try:
            value = self[name]
        except KeyError:
            return default
        return default if value is None else value

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "density": self.density,
                "majority_sign_method": self.majority_sign_method, "seed": self.seed,
                **self.options}


MergeFn = Callable[[Sequence[LoraFactors], torch.Tensor, MergeParams], LoraFactors]
MERGE_METHODS: dict[str, MethodSpec] = methods("lora")

RANK = Param("rank", None, "output rank (default: the largest input rank; Σ ranks truncates "
             "nothing)", type=int, low=1)
DENSITY = elementwise.density_param(per_input=False)
SIGN, LAMBDA = elementwise.SIGN, elementwise.LAMBDA
NORMALIZE = elementwise.normalize_param("count", elect_sign=True)
RESCALE_DARE = elementwise.rescale_param("1/density", random=True)
RESCALE_BLOCKED = elementwise.rescale_param("1/density", random=True, whole=False)
RESCALE_MAGNITUDE = elementwise.rescale_param(False, random=False)


def lora_method(name: str, family: str, summary: str, citation: str, *,
                params: tuple[Param, ...] = (), weights: str = "scale", equal_ranks: bool = False,
                random: bool = False, notes: str = "") -> Callable[[MergeFn], MergeFn]:
    def add(fn: MergeFn) -> MergeFn:
        register(MethodSpec(name, "lora", family, summary, citation, fn, params, weights=weights,
                            equal_ranks=equal_ranks, random=random, notes=notes))
        return fn

    return add


def _output_rank(factors: Sequence[LoraFactors], params: MergeParams) -> int:
    return params.rank or max(f.rank for f in factors)


def _task_values(params: MergeParams, weights: torch.Tensor, n: int) -> dict[str, Any]:
    """A LoRA method's parameters in the form `elementwise.merge_task_vectors` takes."""
    return {"density": [params.density or 1.0] * n, "weight": [float(w) for w in weights],
            "rescale": params.get("rescale"), "normalize": params.get("normalize", False),
            "majority_sign_method": params.majority_sign_method,
            "lambda": params.get("lambda", 1.0)}


# --------------------------------------------------------------------------- factor space, exact

FACTOR, EXACT, DENSE, CORE, KNOTS, SPECTRAL = (
    "factor space (approximate)", "exact low-rank sums", "dense ΔW (PEFT merge_utils)",
    "core space (Panariello et al. 2025)", "KnOTS (SVD-aligned)", "spectral (TSV, Iso)")


@lora_method("linear", FACTOR, "factor-space average A=Σw·A_i, B=Σw·B_i (reference code; "
             "approximate)", "Mashup reference code; Huang et al. 2024, LoraHub, arXiv 2307.13269",
             weights="share", equal_ranks=True)
def linear(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    scale = factors[0].scale
    # A_i carries its scale relative to the output's, so an adapter with another alpha still
    # enters its own term w_i²·B_i·A_i at its own strength.
    rel = torch.tensor([f.scale / scale for f in factors], dtype=weights.dtype)
    A = sum(w * f.A for w, f in zip(weights * rel, factors, strict=True))
    B = sum(w * f.B for w, f in zip(weights, factors, strict=True))
    return LoraFactors(A, B, scale)


@lora_method("cat", EXACT, "exact Σ w·ΔW_i by stacking factors; rank = Σ ranks",
             "PEFT add_weighted_adapter(combination_type='cat')", weights="share")
def cat(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    scale = factors[0].scale
    A = torch.cat([(w * f.scale / scale) * f.A for f, w in zip(factors, weights, strict=True)])
    B = torch.cat([f.B for f in factors], dim=1)
    return LoraFactors(A, B, scale)


@lora_method("cat_svd", EXACT, "exact Σ w·ΔW_i truncated to rank r via QR + small SVD (no dense "
             "ΔW)", "Eckart & Young 1936 (best rank-r approximation)", params=(RANK,),
             weights="share")
def cat_svd(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    # float64 costs nothing at these sizes and keeps the core's small singular values exact.
    B, A = lowrank.weighted_stack(factors, weights)
    return lowrank.refactor(B, A, _output_rank(factors, params), factors[0].scale)


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


_from_svd = lowrank.to_factors  # the older name


# --------------------------------------------------------------------------- dense methods

Combine = Callable[[list[torch.Tensor], torch.Tensor, MergeParams], torch.Tensor]


def dense_method(name: str, summary: str, citation: str, *, params: tuple[Param, ...],
                 magnitude_prune: bool = False, random: bool = False) -> Callable[[Combine], Combine]:
    """Register a method that combines dense ΔW_i row block by row block, then truncates.

    Magnitude pruning keeps the top `density` of each WHOLE ΔW_i, which a row block cannot
    see: with `magnitude_prune`, each adapter's global threshold is found first and blocks
    arrive already pruned. Everything else in these methods is entry-wise."""

    def add(combine: Combine) -> Combine:
        def merge(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
            out_dim, in_dim = factors[0].shape
            blocks = list(_row_blocks(out_dim, in_dim, len(factors)))
            thresholds = ([_magnitude_threshold(f, blocks, params.density) for f in factors]
                          if magnitude_prune else None)
            merged = torch.empty(out_dim, in_dim)
            for rows in blocks:
                tasks = [f.delta(rows) for f in factors]
                if thresholds is not None:
                    tasks = [t * (t.abs() >= thr) for t, thr in zip(tasks, thresholds, strict=True)]
                merged[rows] = combine(tasks, weights, params)
            rank = _output_rank(factors, params)
            return lowrank.to_factors(*truncated_svd(merged, rank), rank, factors[0].scale)

        register(MethodSpec(name, "lora", DENSE, summary, citation, merge, (RANK, *params),
                            random=random, notes="builds each module's dense ΔW (in row blocks)"))
        return combine

    return add


def _combine(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams, *,
             elect_sign: bool) -> torch.Tensor:
    return elementwise.combine(tasks, weights.tolist(), elect_sign=elect_sign,
                               normalize=params.get("normalize", False),
                               majority_sign_method=params.majority_sign_method,
                               lam=params.get("lambda", 1.0))


def _drop(tasks: list[torch.Tensor], params: MergeParams) -> list[torch.Tensor]:
    return [elementwise.drop_random(t, params.density, params.rng, params.get("rescale"))
            for t in tasks]


@dense_method("task_arithmetic", "Σ w·ΔW_i, dense, truncated to rank r (cat_svd's slow twin)",
              "Ilharco et al. 2023, Task Arithmetic, arXiv 2212.04089", params=(LAMBDA,))
def _task_arithmetic(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return _combine(tasks, weights, params, elect_sign=False)


@dense_method("magnitude_prune", "keep the top-density |ΔW_i| entries, then Σ w·ΔW_i",
              "PEFT merge_utils.magnitude_prune", params=(DENSITY, LAMBDA), magnitude_prune=True)
def _magnitude_prune(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return _combine(tasks, weights, params, elect_sign=False)


@dense_method("ties", "TIES: magnitude prune, elect signs, average the agreeing entries",
              "Yadav et al. 2023, TIES-Merging, arXiv 2306.01708",
              params=(DENSITY, NORMALIZE, SIGN, LAMBDA), magnitude_prune=True)
def _ties(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return _combine(tasks, weights, params, elect_sign=True)


@dense_method("dare_linear", "DARE: drop entries at random, rescale by 1/density, Σ w·ΔW_i",
              "Yu et al. 2024, DARE, arXiv 2311.03099", params=(DENSITY, RESCALE_BLOCKED, LAMBDA),
              random=True)
def _dare_linear(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return _combine(_drop(tasks, params), weights, params, elect_sign=False)


@dense_method("dare_ties", "DARE drops, then TIES sign election", "Yu et al. 2024, DARE, "
              "arXiv 2311.03099", params=(DENSITY, RESCALE_BLOCKED, NORMALIZE, SIGN, LAMBDA),
              random=True)
def _dare_ties(tasks: list[torch.Tensor], weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    return _combine(_drop(tasks, params), weights, params, elect_sign=True)


def dense_delta(f: LoraFactors, blocks: Sequence[slice]) -> torch.Tensor:
    """ΔW assembled from the same row blocks the merge sees.

    B[rows] @ A and (B @ A)[rows] may differ in the last bit (BLAS picks kernels by shape, and
    differently on each CPU), and an entry at the pruning threshold would then flip. Taking
    the threshold from these very values makes the pruning exact by construction.
    """
    return torch.cat([f.delta(rows) for rows in blocks])


def _magnitude_threshold(f: LoraFactors, blocks: Sequence[slice], density: float) -> float:
    """|x| at which keeping the top `kept_count` entries of the whole ΔW would cut (at least
    one entry stays: a density below 1/size would otherwise keep nothing)."""
    if f.rank == 0:  # ΔW = 0, pruned or not: no need to build and sort it
        return math.inf
    numel = f.B.shape[0] * f.A.shape[1]
    keep = elementwise.kept_count(numel, density)
    if keep >= numel:
        return -math.inf
    return _kth_largest(dense_delta(f, blocks).abs_().view(-1), keep)


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
    return elementwise.row_blocks(rows, cols, n_tasks, BLOCK_BYTES)


# --------------------------------------------------------------------------- low-rank families

_CORE_CITE = "Panariello et al. 2025, Accurate and Efficient Low-Rank Model Merging in Core Space, arXiv 2509.17786"
_CORE_NOTE = ("M_i = U_Bᵀ ΔW_i V_Aᵀ in orthonormal bases of the stacked B's and A's; "
              "ΔW_i = U_B M_i V_A exactly, so core_task_arithmetic equals the exact sum (cat)")
_KNOTS_CITE = "Stoica et al. 2024, Model merging with SVD to tie the KnOTS, arXiv 2410.19735"
_KNOTS_NOTE = "[ΔW_1 … ΔW_T] = U S [V_1 … V_T], merged on the V_i, never forming ΔW"


def _task_merge(weights: torch.Tensor, params: MergeParams, sparsifier: str | None,
                elect_sign: bool) -> lowrank.TaskMerge:
    def merge(tasks: list[torch.Tensor]) -> torch.Tensor:
        values = _task_values(params, weights, len(tasks))
        return elementwise.merge_task_vectors(tasks, values, sparsifier=sparsifier,
                                              elect_sign=elect_sign, generator=params.rng)

    return merge


def _aligned_method(name: str, family: str, summary: str, citation: str, notes: str,
                    space: Callable[[Sequence[LoraFactors], lowrank.TaskMerge], lowrank.Triplets],
                    sparsifier: str | None, elect_sign: bool, params: tuple[Param, ...]) -> None:
    """A method that runs an entry-wise merge inside an aligned low-rank space."""

    def merge(factors: Sequence[LoraFactors], weights: torch.Tensor, p: MergeParams) -> LoraFactors:
        triplets = space(factors, _task_merge(weights, p, sparsifier, elect_sign))
        return lowrank.to_factors(*triplets, _output_rank(factors, p), factors[0].scale)

    merge.__doc__ = f"{summary} ({citation})."
    register(MethodSpec(name, "lora", family, summary, citation, merge, (RANK, *params),
                        random=sparsifier == "random", notes=notes))


for _name, _summary, _sparsifier, _elect, _params in [
    ("core_task_arithmetic", "Σ w·ΔW_i in core space (exact: equals cat_svd)", None, False,
     (LAMBDA,)),
    ("core_magnitude_prune", "magnitude pruning of each core matrix, then Σ w·M_i", "magnitude",
     False, (DENSITY, RESCALE_MAGNITUDE, LAMBDA)),
    ("core_ties", "TIES on the core matrices M_i", "magnitude", True,
     (DENSITY, RESCALE_MAGNITUDE, NORMALIZE, SIGN, LAMBDA)),
    ("core_dare_linear", "DARE on the core matrices M_i", "random", False,
     (DENSITY, RESCALE_DARE, LAMBDA)),
    ("core_dare_ties", "DARE drops and TIES' sign election on the core matrices", "random", True,
     (DENSITY, RESCALE_DARE, NORMALIZE, SIGN, LAMBDA)),
]:
    _aligned_method(_name, CORE, _summary, _CORE_CITE, _CORE_NOTE, lowrank.core_merge,
                    _sparsifier, _elect, _params)

_aligned_method("knots_ties", KNOTS, "TIES on the SVD-aligned V_i of [ΔW_1 … ΔW_T]", _KNOTS_CITE,
                _KNOTS_NOTE, lowrank.knots_merge, "magnitude", True,
                (DENSITY, NORMALIZE, SIGN, LAMBDA))
_aligned_method("knots_dare", KNOTS, "DARE drops and TIES' election on the aligned V_i "
                "(the paper's KnOTS-DARE-TIES)", _KNOTS_CITE, _KNOTS_NOTE, lowrank.knots_merge,
                "random", True, (DENSITY, RESCALE_DARE, NORMALIZE, SIGN, LAMBDA))


def _scaled(triplets: lowrank.Triplets, lam: float) -> lowrank.Triplets:
    """λ times an SVD-shaped product: |λ| on the spectrum, its sign on U."""
    U, S, Vh = triplets
    return (U if lam >= 0 else -U), S * abs(lam), Vh


@lora_method("tsv_m", SPECTRAL, "TSV-M: each task's top singular vectors, bases decorrelated",
             "Gargiulo et al. 2025, Task Singular Vectors, arXiv 2412.00081", params=(RANK, LAMBDA),
             notes="each task keeps min(r_i, ⌊min(out, in)/T⌋) triplets (its non-zero ones)")
def tsv_m(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    triplets = _scaled(lowrank.tsv_merge(factors, weights.tolist()), params.get("lambda", 1.0))
    return lowrank.to_factors(*triplets, _output_rank(factors, params), factors[0].scale)


_ISO_CITE = "Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging, arXiv 2502.04959"
_ISO_NOTE = ("the output has rank Σ r_i (a flat spectrum has no best truncation); one adapter "
             "comes back with its spectrum flattened, by definition")


@lora_method("iso_c", SPECTRAL, "Iso-C: the summed update with a flat spectrum", _ISO_CITE,
             params=(LAMBDA,), notes=_ISO_NOTE)
def iso_c(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    U, S, Vh = _scaled(lowrank.iso_c_merge(factors, weights.tolist()), params.get("lambda", 1.0))
    return lowrank.to_factors(U, S, Vh, _own_rank(factors), factors[0].scale)


@lora_method("iso_cts", SPECTRAL, "Iso-CTS: a common subspace plus each task's own directions, "
             "flat spectrum", _ISO_CITE, notes=_ISO_NOTE,
             params=(Param("common_space_fraction", 0.8, "share of the merge's directions taken "
                           "from the common subspace", low=0, high=1), LAMBDA))
def iso_cts(factors: Sequence[LoraFactors], weights: torch.Tensor, params: MergeParams) -> LoraFactors:
    U, S, Vh = _scaled(lowrank.iso_cts_merge(factors, weights.tolist(),
                                             params["common_space_fraction"]),
                       params.get("lambda", 1.0))
    return lowrank.to_factors(U, S, Vh, _own_rank(factors), factors[0].scale)


def _own_rank(factors: Sequence[LoraFactors]) -> int:
    """Σ r_i: the most directions a merge of these updates can have (zero-padded to it, so
    every module's rank is what `cat` would give, whatever the numerical rank)."""
    return max(1, sum(f.rank for f in factors))


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
            if f.shape != g.shape:
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
    _check_saved(adapters, method)


def _check_saved(adapters: Sequence[LoraAdapter], method: str | None,
                 weights: Sequence[float] | None = None) -> None:
    """Whole saved modules merge only as an average: the same modules in every adapter, of
    one shape (a resized vocabulary must be resized alike), and, once the method and the
    weights are known, a method linear in the updates with weights summing to 1."""
    if not any(a.saved for a in adapters):
        return
    first = adapters[0]
    for other in adapters:
        if other.saved.keys() != first.saved.keys():
            diff = sorted(other.saved.keys() ^ first.saved.keys())[0]
            raise MergeConfigError(
                f"{first.name} and {other.name} save different whole modules (modules_to_save; "
                f"e.g. {diff}): where one adapter has none, its value is the base's, which a "
                f"LoRA merge does not have; {FOLD_HINT}")
        for key, tensor in other.saved.items():
            if tensor.shape != first.saved[key].shape:
                raise MergeConfigError(
                    f"{key} is {list(first.saved[key].shape)} in {first.name} but "
                    f"{list(tensor.shape)} in {other.name} (differently resized vocabularies?); "
                    "they cannot be merged entry by entry")
    if method is not None and method not in LINEAR_IN_UPDATES:
        raise MergeConfigError(
            f"the adapters save whole modules ({', '.join(sorted(first.saved))}); '{method}' "
            "would prune or rotate their LoRA updates but could only average those modules: "
            f"use one of {', '.join(sorted(LINEAR_IN_UPDATES))}, or {FOLD_HINT}")
    if weights is not None and abs(math.fsum(weights) - 1) > 1e-6:
        raise MergeConfigError(
            f"the adapters save whole modules ({', '.join(sorted(first.saved))}); their average "
            f"Σ w_i W_i equals the merge of those modules only when the weights sum to 1, and "
            f"{list(weights)} sum to {math.fsum(weights):g}: rescale the weights, or {FOLD_HINT}")


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
    weights: Sequence[float] | None,
    *,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> tuple[MethodSpec, MergeParams]:
    """Check everything that needs no file, before any work starts. `params` holds any other
    parameter by its registry name (e.g. {"lambda": 0.5, "normalize": True}); a parameter the
    method does not use is an error that names it. `seed` is accepted by every method (a
    study passes one to all) and used by the random ones."""
    spec = get("lora", method)
    if n_adapters < 1:
        raise MergeConfigError("no adapters to merge")
    check_weights(spec, weights, n_adapters)
    named = {k: v for k, v in (("rank", rank), ("density", density),
                               ("majority_sign_method", majority_sign_method)) if v is not None}
    if twice := sorted(set(named) & set(params or {})):  # --density 0.3 --param density=0.5
        raise MergeConfigError(f"{', '.join(twice)} given twice (as an option and in params); "
                               "give each once")
    given = {**(params or {}), **named}
    values = resolve_params(spec, given, n_adapters)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MergeConfigError(f"seed must be an integer, got {seed!r}")
    core = {k: values.pop(k) for k in ("rank", "density") if k in values}
    sign = values.pop("majority_sign_method", "total")
    return spec, MergeParams(core.get("rank"), core.get("density"), sign, seed, values)


@dataclass
class MergedLora:
    """A merge in memory: per module factors, ready to save or to copy into a PeftModel."""

    modules: dict[str, LoraFactors]
    method: str
    weights: list[float]
    params: MergeParams
    # The inputs targeted different modules: no input's config describes `modules`.
    mixed_targets: bool = False
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # whole modules, averaged

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        out = {key: t.to(dtype).contiguous() for key, t in self.saved.items()}
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


def module_seed(seed: int, name: str) -> int:
    """A random method's seed for one module: a function of the merge's seed and the module's
    name only, so a merge does not depend on which other modules it covers."""
    return int.from_bytes(sha256(f"{seed}:{name}".encode()).digest()[:7], "little")


def merge_factors(
    adapters: Sequence[LoraAdapter],
    weights: Sequence[float] | None,
    method: str = defaults.MERGE_METHOD,
    *,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> MergedLora:
    """Merge adapters already in memory; no file is touched (weight searches call this often).
    `weights=None` takes the method's default (1/k for shares, 1 each for scales)."""
    spec, resolved = validate_params(method, len(adapters), weights, rank=rank, density=density,
                                     seed=seed, majority_sign_method=majority_sign_method,
                                     params=params)
    weights = check_weights(spec, weights, len(adapters))
    check_compatible(adapters, method)
    _check_saved(adapters, method, weights)
    w = torch.tensor(weights, dtype=torch.float32)
    names = union_modules(adapters)
    if spec.random and spec.family == DENSE:  # its drops see each whole ΔW: check before work
        shapes = {name: module_factors(adapters, name)[0].shape for name in names}
        elementwise.check_density(shapes, resolved.density, "module")
    modules = {}
    for name in names:
        params = resolved
        if spec.random:  # a generator per module: the merge of one module never moves another
            params = replace(resolved, rng=torch.Generator().manual_seed(module_seed(seed, name)))
        modules[name] = spec.fn(module_factors(adapters, name), w, params)
    saved = {key: sum(wi * a.saved[key] for wi, a in zip(weights, adapters, strict=True))
             for key in adapters[0].saved}
    mixed = any(a.modules.keys() != adapters[0].modules.keys() for a in adapters)
    return MergedLora(modules, method, weights, resolved, mixed, saved)


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
    version: int = 2

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def record_params(spec: MethodSpec, params: MergeParams) -> dict[str, Any]:
    """The parameters that shaped this merge: the method's own (defaults included), and the
    seed only when the method draws random numbers."""
    values = {k: v for k, v in params.as_dict().items()
              if k in spec.param_names and v is not None}
    if spec.truncates and values.get("rank") is None:
        values.pop("rank", None)
    if spec.random:
        values["seed"] = params.seed
    return values


def merge_adapters(
    adapter_dirs: Sequence[str | os.PathLike],
    weights: Sequence[float] | None,
    method: str,
    out_dir: str | os.PathLike,
    *,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str | None = None,
    params: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> MergeRecord:
    """Merge adapter folders into a new PEFT adapter folder `out_dir`, atomically, with its
    `merge_record.json`, its recipe (`mergekit_config.yml`) and a model card (`README.md`)."""
    start = time.perf_counter()
    spec, _ = validate_params(method, len(adapter_dirs), weights, rank=rank, density=density,
                              seed=seed, majority_sign_method=majority_sign_method, params=params)
    out_dir = Path(out_dir).resolve()
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite):
        raise MergeConfigError(f"{out_dir} already exists; choose another output folder or overwrite it")
    adapters = load_lora_factors(adapter_dirs)
    loaded = time.perf_counter()
    merged = merge_factors(adapters, weights, method, rank=rank, density=density, seed=seed,
                           majority_sign_method=majority_sign_method, params=params)
    done = time.perf_counter()
    inputs = [{"path": str(a.path.resolve()), "sha256": a.sha256} for a in adapters]
    values = record_params(spec, merged.params)
    record = MergeRecord(
        method=method, weights=merged.weights, inputs=inputs, params=values,
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
        text = recipe.recipe_yaml(spec, [i["path"] for i in inputs], merged.weights, values)
        (tmp / recipe.RECIPE_FILE).write_text(text)
        (tmp / recipe.CARD_FILE).write_text(recipe.model_card(
            spec, name=out_dir.name, inputs=inputs, weights=merged.weights, values=values,
            base=adapters[0].base_model, recipe=text, seconds=record.seconds,
            extra={"rank": merged.rank, **(extra or {})}))

    _replace_dir_atomically(out_dir, write)
    return record


def _replace_dir_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Fill a hidden sibling folder, then rename it into place: a killed merge leaves no half
    (and the next merge into that folder removes what a killed one left); a full disk or a
    read-only folder is a `WriteError` naming `out_dir`, with the old output kept."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    clean_stale_temporaries(out_dir.parent)
    with writing(out_dir, cleanup=tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            usual_permissions(tmp)
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
    if merged.saved:
        raise MergeConfigError(
            f"the merge holds whole modules ({', '.join(sorted(merged.saved))}), which a LoRA "
            "slot cannot: evaluating it in memory would silently drop them; save it with "
            "`merge_adapters` and load the folder")
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
