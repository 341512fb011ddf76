"""Entry-wise merge maths shared by every task-vector method, LoRA and full alike.

Pure functions of tensors, in two steps as mergekit's generalized task arithmetic has them:

1. `sparsify` one task vector τ_i (the whole tensor: magnitude pruning needs all of it):
   keep the top-|τ| entries (TIES), drop at random (DARE), keep a band between the smallest
   and the largest outliers (Model Breadcrumbs), or drop with a probability that falls with
   magnitude rank (DELLA); optionally rescale what is kept.
2. `combine` the (weighted) task vectors entry by entry — so it may run on row blocks —:
   a plain sum, or TIES' sign election and disjoint sum, then a normalisation and λ.

Conventions (`Convention`), both selectable, each equal to its source bit for bit:

- `normalize="count"` (PEFT's `merge_utils.ties`, the TIES paper with weights as scales): the
  sign is elected from the unweighted τ_i and the agreeing weighted entries are divided by how
  many agree.
- `normalize=True/False` (mergekit): τ_i are weighted first, the sign is elected from the
  weighted ones, and the sum is divided by the agreeing inputs' weights (True) or not (False);
  without sign election, True divides by Σ w.
- DARE's kept entries are rescaled by 1/density (`rescale="1/density"`: the DARE paper, PEFT)
  or so that the tensor keeps its L1 norm (`rescale=True`: mergekit).

A deterministic pruning keeps at least one entry of a non-empty tensor (mergekit's
magnitude pruning does; PEFT's would keep none when density × size < 1). Random drops are
checked before any work instead (`check_density`): density × size must be at least 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from peft.utils import merge_utils

from mashup_core.merging.registry import REQUIRED, SAME, MergeConfigError, Param

SPARSIFIERS = ("magnitude", "random", "magnitude_outliers", "della_magprune")
SIGN_METHODS = ("total", "frequency")  # PEFT's names; mergekit's consensus "sum" and "count"
L1_EPS = 1e-7  # below this L1 norm, mergekit leaves a pruned tensor unrescaled
BLOCK_BYTES = 32 << 20  # the combine step runs on row blocks of about this size per input

# --------------------------------------------------------------------------- their parameters
# One definition each, for the LoRA and the full-checkpoint methods (mergekit's names).

SIGN = Param("majority_sign_method", "total", "elect each entry's sign by the sum of the task "
             "vectors ('total', mergekit's 'sum') or by counting signs ('frequency')",
             type=str, choices=SIGN_METHODS)
LAMBDA = Param("lambda", 1.0, "scale of the merged task vector (mergekit's λ)")
INT8_MASK = Param("int8_mask", False, "mergekit's memory option (int8 sign masks); the values "
                  "are the same either way", type=bool)


def density_param(*, per_input: bool, mergekit: Any = SAME) -> Param:
    return Param("density", REQUIRED, "fraction of each task vector's entries kept"
                 + (" (mergekit's default 1.0 prunes nothing, so we ask)" if mergekit is not SAME else ""),
                 low=0, high=1, low_open=True, per_input=per_input, mergekit_default=mergekit,
                 example=0.5)


def normalize_param(default: Any, *, elect_sign: bool, mergekit: Any = SAME) -> Param:
    if elect_sign:
        return Param("normalize", default, "divide the agreeing sum: 'count' by how many agree "
                     "(PEFT, TIES paper), true by their weights (mergekit), false not at all",
                     choices=("count", True, False), mergekit_default=mergekit)
    return Param("normalize", default, "divide the sum by Σ weights", type=bool,
                 mergekit_default=mergekit)


def rescale_param(default: Any, *, random: bool, whole: bool = True, mergekit: Any = SAME) -> Param:
    """`whole`: the method sees each whole tensor (an L1 rescale needs it; row blocks do not)."""
    if random and not whole:
        return Param("rescale", default, "rescale kept entries: '1/density' (DARE paper, PEFT) or "
                     "not (false); an L1-norm rescale needs the whole ΔW: use the core_ variant",
                     choices=("1/density", False), mergekit_default=mergekit)
    if random:
        return Param("rescale", default, "rescale kept entries: '1/density' (DARE paper, PEFT), "
                     "true keeps each tensor's L1 norm (mergekit), false not at all",
                     choices=("1/density", True, False), mergekit_default=mergekit)
    return Param("rescale", default, "rescale kept entries to keep each tensor's L1 norm",
                 type=bool, mergekit_default=mergekit)


# --------------------------------------------------------------------------- sparsify


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype random masks are drawn in: fp16 has no CPU bernoulli, so fp32 (as mergekit)."""
    return x.dtype if x.device.type != "cpu" or x.dtype == torch.bfloat16 else torch.float32


def kept_count(numel: int, density: float) -> int:
    """Entries a deterministic pruning keeps: density × size, at least one."""
    return max(1, int(density * numel)) if numel else 0


def rescale(x: torch.Tensor, mask: torch.Tensor, how: Any, density: float) -> torch.Tensor:
    """x · mask, rescaled: None/False keeps the kept entries as they are, "1/density" divides
    them by the density (unbiased for random drops), True (mergekit's `rescale`) restores the
    tensor's L1 norm."""
    masked = x * mask
    if how is None or how is False:
        return masked
    if how == "1/density":
        return masked / density
    before, after = x.abs().sum(), masked.abs().sum()
    if before < L1_EPS or after < L1_EPS:
        return masked
    return masked * (before / after)


def keep_top_magnitude(x: torch.Tensor, density: float, how: Any = None) -> torch.Tensor:
    """TIES' trim: the `kept_count` largest |x| entries (mergekit's `magnitude`)."""
    if density >= 1:
        return x
    magnitude = x.abs().reshape(-1)
    if magnitude.device.type == "cpu":
        magnitude = magnitude.float()  # sorting bf16 on a CPU is slow, and ties differ
    mask = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
    mask[torch.argsort(magnitude, descending=True)[: kept_count(x.numel(), density)]] = 1
    return rescale(x, mask.reshape_as(x), how, density)


def keep_between_outliers(x: torch.Tensor, density: float, gamma: float,
                          how: Any = None) -> torch.Tensor:
    """Model Breadcrumbs: drop the `gamma` largest |x| as outliers and the smallest, keeping
    `density` of the entries (mergekit's `magnitude_outliers`; fewer outliers go when both
    cannot be met)."""
    if density >= 1:
        return x
    numel = x.numel()
    keep = kept_count(numel, density)
    below = max(0, numel - keep - int(gamma * numel))
    magnitude = x.abs().reshape(-1)
    if magnitude.device.type == "cpu":
        magnitude = magnitude.float()
    mask = torch.zeros(numel, dtype=x.dtype, device=x.device)
    mask[torch.sort(magnitude, descending=False).indices[below: below + keep]] = 1
    return rescale(x, mask.reshape_as(x), how, density)


def drop_random(x: torch.Tensor, density: float, generator: torch.Generator | None,
                how: Any = "1/density") -> torch.Tensor:
    """DARE: keep each entry with probability `density` (one Bernoulli draw per entry, as PEFT
    and mergekit draw it, so the same generator state gives their mask)."""
    if density >= 1:
        return x
    if density * x.numel() < 1:  # the checks before work see the shapes; this is the last net
        raise MergeConfigError(f"density {density:g} keeps on average {density * x.numel():.2g} of "
                               f"{x.numel()} entries: random drops would erase them; use density "
                               f"≥ {1 / x.numel():.3g}")
    work = _work_dtype(x)
    mask = torch.bernoulli(torch.full_like(x, density, dtype=work), generator=generator)
    return rescale(x.to(work), mask, how, density).to(x.dtype)


def drop_by_magnitude_rank(x: torch.Tensor, density: float, epsilon: float,
                           generator: torch.Generator | None, how: Any = True) -> torch.Tensor:
    """DELLA's MAGPRUNE: per row, keep probabilities rise linearly with magnitude rank from
    density − ε to density + ε (mergekit's `della_magprune`)."""
    if density >= 1:
        return x
    work = _work_dtype(x)
    rows = x.unsqueeze(0) if x.dim() < 2 else x
    ranks = torch.argsort(rows.abs(), dim=1, descending=False).argsort(dim=1).to(work) + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    position = ((ranks - low) / (high - low)).clamp(0, 1)
    mask = torch.bernoulli((density - epsilon) + position * 2 * epsilon, generator=generator)
    return rescale(rows.to(work), mask.to(work), how, density).to(x.dtype).reshape(x.shape)


def sparsify(x: torch.Tensor, method: str | None, density: float, *, rescale_how: Any = None,
             gamma: float = 0.0, epsilon: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    if method is None:
        return x
    if method == "magnitude":
        return keep_top_magnitude(x, density, rescale_how)
    if method == "random":
        return drop_random(x, density, generator, rescale_how)
    if method == "magnitude_outliers":
        return keep_between_outliers(x, density, gamma, rescale_how)
    if method == "della_magprune":
        return drop_by_magnitude_rank(x, density, epsilon, generator, rescale_how)
    raise ValueError(f"unknown sparsification {method!r}; one of {SPARSIFIERS}")


def check_density(shapes: dict[str, Sequence[int]], density: float | Sequence[float],
                  what: str) -> None:
    """Random drops keep density × size entries on average: refuse a density that expects to
    keep less than one entry of some tensor, naming it and the smallest density that works."""
    for d in density if isinstance(density, (list, tuple)) else [density]:
        if d >= 1:
            continue
        for name, shape in shapes.items():
            numel = math.prod(shape)
            if numel and d * numel < 1:
                raise MergeConfigError(
                    f"density {d:g} keeps on average {d * numel:.2g} of the {numel} entries of "
                    f"{what} {name}: random drops would erase it; use density ≥ {1 / numel:.3g}")


# --------------------------------------------------------------------------- combine


def sign_agreement(tasks: torch.Tensor, method: str = "total") -> torch.Tensor:
    """Which entries of each stacked task agree with the elected sign (the sign of the sum, or
    of the count of signs; a tie elects +). An entry that is 0 agrees with neither."""
    sign = tasks.sign()
    votes = tasks.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == ((votes >= 0).to(sign.dtype) * 2 - 1)


def combine(tasks: Sequence[torch.Tensor], weights: Sequence[float], *, elect_sign: bool,
            normalize: Any, majority_sign_method: str = "total", lam: float = 1.0) -> torch.Tensor:
    """Σ_i w_i τ_i entry by entry, with TIES' sign election when `elect_sign`.

    `normalize`: "count" (PEFT: sign from the unweighted τ_i, divide by the number agreeing),
    True (mergekit: divide by the agreeing weights, or by Σ w without election), False (no
    division). Then × `lam` (mergekit's λ). Entry-wise, so row blocks give the same result."""
    stacked = torch.stack(list(tasks))
    w = torch.tensor([float(x) for x in weights], dtype=stacked.dtype, device=stacked.device)
    w = w.view(w.shape + (1,) * (stacked.dim() - 1))
    if normalize == "count":
        agree = merge_utils.calculate_majority_sign_mask(stacked, majority_sign_method)
        merged = merge_utils.disjoint_merge(stacked * w, agree)
    else:
        stacked.mul_(w)
        if elect_sign:
            agree = sign_agreement(stacked, majority_sign_method)
            merged = (stacked * agree).sum(dim=0)
            divisor = (w * agree).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            merged = stacked.sum(dim=0)
            divisor = w.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if normalize:
            merged /= divisor
    if lam != 1:
        merged *= lam
    return merged


def row_blocks(rows: int, cols: int, n_inputs: int, block_bytes: int = BLOCK_BYTES) -> Iterator[slice]:
    """Row slices whose stacked float32 temporaries over `n_inputs` take about `block_bytes`."""
    step = max(1, block_bytes // (4 * max(cols, 1) * max(n_inputs, 1)))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def merge_task_vectors(tasks: list[torch.Tensor], values: Mapping[str, Any], *,
                       sparsifier: str | None, elect_sign: bool,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Generalized task arithmetic on task vectors τ_i (the list is consumed): sparsify each
    whole τ_i, then `combine` entry by entry in row blocks, so the stacked temporaries stay
    small. `values` holds the method's parameters (per-input ones as lists) and "weight";
    the first τ's memory receives the result."""
    n = len(tasks)
    if tasks[0].numel() == 0:  # e.g. the core space of updates that are all zero
        return torch.zeros_like(tasks[0])
    for i in range(n):
        tasks[i] = sparsify(
            tasks[i], sparsifier, values["density"][i] if sparsifier else 1.0,
            rescale_how=values.get("rescale"), generator=generator,
            gamma=values["gamma"][i] if "gamma" in values else 0.0,
            epsilon=values["epsilon"][i] if "epsilon" in values else 0.0)
    shape = tasks[0].shape
    flat = [t.reshape(shape[0], -1) if t.dim() else t.reshape(1, 1) for t in tasks]
    tasks.clear()
    merged = flat[0]  # each block is combined into a new tensor first: safe to overwrite
    for rows in row_blocks(merged.shape[0], merged.shape[1], n):
        merged[rows] = combine(
            [t[rows] for t in flat], values["weight"], elect_sign=elect_sign,
            normalize=values.get("normalize", False),
            majority_sign_method=values.get("majority_sign_method", "total"),
            lam=values.get("lambda", 1.0))
    return merged.reshape(shape)
