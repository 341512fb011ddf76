"""Full-checkpoint merge methods (mergekit's family), one pure function of one tensor each.

Each function gets the tensor of every input model and of the base (already in the compute
dtype: fp32, or the inputs' own when a mergekit config asks for it), the method's resolved
parameters (`values`: shared ones as values, per-input ones as lists, `weight` among them),
and a generator seeded for this tensor (random methods only). It returns the merged tensor.
`merging.full` streams checkpoints through them tensor by tensor.

Definitions follow mergekit 0.1.5's arithmetic operation for operation, so that a mergekit
config merged here gives mergekit's tensors bit for bit (tests/test_mergekit_parity.py);
each method's docstring names its paper. Where our defaults differ (density required,
PEFT's TIES/DARE conventions for the methods this project had before), the registry says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from mashup_core.merging import elementwise
from mashup_core.merging.registry import (
    REQUIRED,
    MergeConfigError,
    MethodSpec,
    Param,
    register,
)

FullFn = Callable[[list[torch.Tensor], "torch.Tensor | None", dict[str, Any],
                   "torch.Generator | None"], torch.Tensor]
SLERP_CHUNK = 1 << 20  # mergekit's slerp reduces norms and dots in chunks of this many entries

# --------------------------------------------------------------------------- parameters

DENSITY = elementwise.density_param(per_input=True, mergekit=1.0)
SIGN, LAMBDA, INT8_MASK = elementwise.SIGN, elementwise.LAMBDA, elementwise.INT8_MASK
_normalize, _rescale = elementwise.normalize_param, elementwise.rescale_param
GAMMA = Param("gamma", 0.01, "fraction of the largest-magnitude entries dropped as outliers",
              low=0, high=1, per_input=True)
EPSILON = Param("epsilon", 0.15, "keep probabilities span density ± epsilon by magnitude rank",
                low=0, high=1, low_open=True, high_open=True, per_input=True)

# --------------------------------------------------------------------------- task arithmetic family


def _task_arithmetic_method(name: str, summary: str, citation: str, sparsifier: str | None,
                            elect_sign: bool, params: tuple[Param, ...], notes: str = "",
                            validate: Callable[[dict[str, Any]], None] | None = None) -> MethodSpec:
    def merge(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
              rng: torch.Generator | None) -> torch.Tensor:
        deltas = [t.sub_(base) for t in tensors]  # in place: each read tensor becomes its τ
        return base + elementwise.merge_task_vectors(deltas, values, sparsifier=sparsifier,
                                                     elect_sign=elect_sign, generator=rng)

    merge.__doc__ = f"{summary} ({citation})."
    return register(MethodSpec(
        name, "full", "task vectors (W_i − W_base)", summary, citation, merge, params,
        weights="scale", base="required", random=sparsifier in ("random", "della_magprune"),
        notes=notes, validate=validate))


def _check_della(values: dict[str, Any]) -> None:
    for d, e in zip(values["density"], values["epsilon"], strict=True):
        if d < 1 and not (d - e > 0 and d + e < 1):
            raise MergeConfigError(f"della: density ± epsilon must lie in (0, 1); density {d:g} "
                                   f"with epsilon {e:g} does not: lower epsilon")


_PEFT_NOTE = ("our defaults are PEFT's (and the paper's) conventions, which the earlier "
              "versions of this project used; mergekit's are selectable under its names")

# Each method's normalize / rescale: our default first, mergekit's where it differs.
PLAIN_SUM = _normalize(False, elect_sign=False)
NO_L1 = _rescale(False, random=False)
L1 = _rescale(True, random=False)  # DELLA: mergekit's L1 rescale of its random drops
DARE_RESCALE = _rescale("1/density", random=True, mergekit=True)
for _spec in [
    ("task_arithmetic", "W_base + λ Σ w_i τ_i: task vectors added, weights as scales",
     "Ilharco et al. 2023, Editing Models with Task Arithmetic, arXiv 2212.04089",
     None, False, (PLAIN_SUM, LAMBDA, INT8_MASK), ""),
    ("ties", "TIES: keep each τ_i's top-density entries, elect signs, merge the agreeing",
     "Yadav et al. 2023, TIES-Merging, arXiv 2306.01708", "magnitude", True,
     (DENSITY, _normalize("count", elect_sign=True, mergekit=True), NO_L1, SIGN, LAMBDA,
      INT8_MASK), _PEFT_NOTE),
    ("dare_linear", "DARE: drop entries of each τ_i at random, rescale the rest, add them",
     "Yu et al. 2024, Language Models are Super Mario (DARE), arXiv 2311.03099", "random", False,
     (DENSITY, PLAIN_SUM, DARE_RESCALE, LAMBDA, INT8_MASK), _PEFT_NOTE),
    ("dare_ties", "DARE drops, then TIES' sign election and disjoint merge",
     "Yu et al. 2024, DARE, arXiv 2311.03099 (with TIES, arXiv 2306.01708)", "random", True,
     (DENSITY, _normalize("count", elect_sign=True, mergekit=False), DARE_RESCALE, SIGN, LAMBDA,
      INT8_MASK), _PEFT_NOTE),
    ("breadcrumbs", "Model Breadcrumbs: drop each τ_i's largest outliers and smallest entries",
     "Davari & Belilovsky 2024, Model Breadcrumbs, arXiv 2312.06795", "magnitude_outliers", False,
     (DENSITY, GAMMA, PLAIN_SUM, NO_L1, LAMBDA, INT8_MASK), ""),
    ("breadcrumbs_ties", "Model Breadcrumbs' band, then TIES' sign election",
     "Davari & Belilovsky 2024, Model Breadcrumbs, arXiv 2312.06795", "magnitude_outliers", True,
     (DENSITY, GAMMA, _normalize(False, elect_sign=True), NO_L1, SIGN, LAMBDA, INT8_MASK), ""),
    ("della", "DELLA: drop by magnitude rank (MAGPRUNE), rescale, TIES' sign election",
     "Deep et al. 2024, DELLA-Merging, arXiv 2406.11617", "della_magprune", True,
     (DENSITY, EPSILON, _normalize(True, elect_sign=True), L1, SIGN, LAMBDA, INT8_MASK), ""),
    ("della_linear", "DELLA's MAGPRUNE drops and rescale, then a plain sum",
     "Deep et al. 2024, DELLA-Merging, arXiv 2406.11617", "della_magprune", False,
     (DENSITY, EPSILON, PLAIN_SUM, L1, LAMBDA, INT8_MASK), ""),
]:
    _name, _summary, _citation, _sparsifier, _elect, _params, _notes = _spec
    _task_arithmetic_method(_name, _summary, _citation, _sparsifier, _elect, _params, _notes,
                            _check_della if _sparsifier == "della_magprune" else None)


# --------------------------------------------------------------------------- averages


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def linear(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
           rng: torch.Generator | None) -> torch.Tensor:
    """Σ w_i W_i / Σ w_i: the weighted average of the models themselves (model soups;
    Wortsman et al. 2022, arXiv 2203.05482). With `normalize: false`, Σ w_i W_i."""
    first = tensors[0]
    dtype = _compute_dtype(first)
    weight = torch.tensor([values["weight"]], dtype=dtype)  # [1, n]: one row, as mergekit packs it
    result = torch.zeros_like(first, dtype=dtype)
    for tensor, coefficient in zip(tensors, weight.unbind(1), strict=True):
        result.addcmul_(tensor, coefficient)
    if values["normalize"]:
        result.div_(weight.sum(dim=1))
    return result.to(first.dtype)


def _check_linear(values: dict[str, Any]) -> None:
    if values["normalize"] and abs(math.fsum(values["weight"])) < 1e-12:
        raise MergeConfigError(f"linear averages the models with weights divided by their sum, "
                               f"but {values['weight']} sum to 0; use 'task_arithmetic' for "
                               "weights that are scales, or normalize: false")


register(MethodSpec(
    "linear", "full", "averages and interpolations", "Σ w_i W_i / Σ w_i: the weighted average of "
    "the models", "Wortsman et al. 2022, Model soups, arXiv 2203.05482", linear,
    (Param("normalize", True, "divide by Σ weights", type=bool),), weights="share", base="unused",
    validate=_check_linear))


def _slerp_rows(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, dot_threshold: float = 0.9995,
                eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of each row of a and b (1 × N here: the whole tensor), norms and
    dots reduced in chunks of SLERP_CHUNK entries (mergekit's order of operations)."""
    dtype = _compute_dtype(a)
    if not a.shape[1]:
        return ((1 - t) * a + t * b).to(a.dtype)
    step = max(1, SLERP_CHUNK // a.shape[0])
    chunks = [slice(start, start + step) for start in range(0, a.shape[1], step)]

    def norm(x: torch.Tensor) -> torch.Tensor:
        parts = torch.stack([torch.linalg.vector_norm(x[:, c].to(dtype), dim=1, keepdim=True)
                             for c in chunks])
        value = torch.linalg.vector_norm(parts, dim=0)
        return torch.where(value > eps, value, 1)

    norm_a, norm_b = norm(a), norm(b)
    dot = torch.stack([((a[:, c].to(dtype) / norm_a) * (b[:, c].to(dtype) / norm_b)).sum(dim=1, keepdim=True)
                       for c in chunks]).sum(dim=0).clamp(-1, 1)
    straight = dot.abs() > dot_threshold  # (anti)parallel: interpolate linearly
    theta = torch.acos(torch.where(straight, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(straight, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(straight, t, torch.sin(t * theta) / sin_theta)
    result = torch.empty_like(a)
    for c in chunks:
        result[:, c] = coef_a * a[:, c].to(dtype) + coef_b * b[:, c].to(dtype)
    return result


def slerp(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
          rng: torch.Generator | None) -> torch.Tensor:
    """Spherical linear interpolation from the base (t = 0) to the other model (t = 1) along
    the great circle through the two flattened tensors (Shoemake 1985)."""
    t = torch.tensor([values["t"]], dtype=torch.float32).reshape(-1, 1).to(_compute_dtype(base))
    return _slerp_rows(base.reshape(1, -1), tensors[0].reshape(1, -1), t).reshape(base.shape)


register(MethodSpec(
    "slerp", "full", "averages and interpolations", "spherical interpolation from the base "
    "(t=0) to one model (t=1)", "Shoemake 1985, Animating rotation with quaternion curves "
    "(SIGGRAPH); mergekit", slerp,
    (Param("t", 0.5, "interpolation factor: 0 is the base, 1 the other model (mergekit has no "
           "default; the midpoint here, so a study can run it)", low=0, high=1,
           mergekit_default=REQUIRED, example=0.5),),
    weights=None, base="required", min_inputs=1, max_inputs=1))


def _nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool,
             eps: float = 1e-8) -> torch.Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos_theta = torch.sum(unit(v0) * unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    parallel = (1 - cos_theta.square()) <= eps**2
    theta = torch.acos(torch.where(parallel, 0, cos_theta))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(parallel, (1 - t) * v0 + t * v1, result)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
            rng: torch.Generator | None) -> torch.Tensor:
    """SLERP of two models (or of their task vectors, given a base) at t = w_2 / (w_1 + w_2),
    whole tensors (`nuslerp_flatten`) or row by row (`nuslerp_row_wise`); mergekit's NuSLERP."""
    w = values["weight"]
    total = sum(w)
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    flatten, row_wise = values["nuslerp_flatten"], values["nuslerp_row_wise"]
    if base is None:
        return _nuslerp(t, tensors[0], tensors[1], row_wise, flatten)
    return base + _nuslerp(t, tensors[0] - base, tensors[1] - base, row_wise, flatten)


register(MethodSpec(
    "nuslerp", "full", "averages and interpolations", "SLERP of two models, or of their task "
    "vectors given a base, at t = w₂/(w₁+w₂)", "Shoemake 1985 (SLERP); mergekit's NuSLERP",
    nuslerp,
    (Param("nuslerp_flatten", True, "interpolate whole tensors (false: rows or columns)",
           type=bool),
     Param("nuslerp_row_wise", False, "without flatten: rows (true) or columns (false)",
           type=bool)),
    weights="share", base="optional", min_inputs=2, max_inputs=2))


def multislerp(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
               rng: torch.Generator | None) -> torch.Tensor:
    """Weighted barycentre on the hypersphere: project the unit (task) vectors to the tangent
    space at their weighted mean, average there, map back, rescale by the mean norm
    (Goddard, mergekit's Multi-SLERP; Buss & Fillmore 2001 for spherical averages)."""
    if len(tensors) == 1:
        return tensors[0]
    eps = values["eps"]
    stacked = torch.stack(tensors, dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)
    weights = torch.tensor(values["weight"], dtype=stacked.dtype)
    if values["normalize_weights"]:
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] != 2:
            raise MergeConfigError("multislerp: the weighted mean of the unit vectors is zero "
                                   "(antipodal inputs whose weights cancel); change the weights")
        result = (stacked[0] * weights[0] + stacked[1] * weights[1]).view(stacked.shape[1:])
        return result if base is None else result + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    result = (result * (norms.squeeze(-1) * weights).sum()).view(stacked.shape[1:])
    return result if base is None else result + base


register(MethodSpec(
    "multislerp", "full", "averages and interpolations", "weighted spherical barycentre of any "
    "number of models (or task vectors, given a base)", "Buss & Fillmore 2001, Spherical "
    "averages (ACM TOG); mergekit's Multi-SLERP (Goddard)", multislerp,
    (Param("normalize_weights", True, "divide the weights by their sum", type=bool),
     Param("eps", 1e-8, "numerical floor of the norms", low=0, low_open=True)),
    weights="share", base="optional"))


def karcher(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
            rng: torch.Generator | None) -> torch.Tensor:
    """The Karcher (Riemannian) mean of the models' directions on the unit sphere, by fixed-
    point iteration, scaled by their mean norm; every model weighs 1/n (mergekit's karcher)."""
    if len(tensors) == 1:
        return tensors[0]
    max_iter, tol = values["max_iter"], values["tol"]
    alphas = [1.0 / len(tensors)] * len(tensors)
    dtype = _compute_dtype(tensors[0])
    norms = [torch.linalg.vector_norm(t.to(dtype)) for t in tensors]
    units = [torch.zeros_like(t) if n.item() == 0.0 else (t / n).to(t.dtype)
             for t, n in zip(tensors, norms, strict=True)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum(t * 0 for t in tensors)
    total = sum(alphas[i] for i in valid)
    shares = [alphas[i] / total for i in valid]
    points = [units[i] for i in valid]
    mean = torch.zeros_like(points[0])
    for share, point in zip(shares, points, strict=True):
        mean += share * point
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = points[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for share, point in zip(shares, points, strict=True):
            dot = torch.clamp(torch.dot(mean.flatten(), point.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += share * (theta / torch.sin(theta)) * (point - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent.to(dtype))
        if tangent_norm.item() < tol:
            break
        mean = (torch.cos(tangent_norm) * mean
                + torch.sin(tangent_norm) * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    return sum(alpha * n for alpha, n in zip(alphas, norms, strict=True)) * mean


register(MethodSpec(
    "karcher", "full", "averages and interpolations", "Riemannian (Karcher) mean of the models' "
    "directions on the sphere, every model 1/n", "Karcher 1977, Riemannian center of mass; "
    "mergekit (arXiv 2603.04972)", karcher,
    (Param("max_iter", 10, "fixed-point iterations at most", type=int, low=1),
     Param("tol", 1e-5, "stop when the tangent step is shorter", low=0, low_open=True)),
    weights=None, base="unused"))


def model_stock(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
                rng: torch.Generator | None) -> torch.Tensor:
    """Model Stock: interpolate between the base and the models' average by t = k·cosθ /
    (1 + (k−1)·cosθ), θ the mean angle between the task vectors, per tensor or per row
    (`filter_wise`) (Jang et al. 2024, arXiv 2403.19522)."""
    w0, ws = base, tensors
    shape = w0.shape
    if values["filter_wise"]:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            product = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / product.clamp(min=1e-6)).clamp(-1, 1))
    cos_theta = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denominator = 1 + (k - 1) * cos_theta
    singular = denominator.abs() < 1e-6  # no finite estimate: keep the base there
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), (k * cos_theta) / safe)
    average = sum(ws) / k
    return (t * average + (1 - t) * w0).reshape(shape)


register(MethodSpec(
    "model_stock", "full", "averages and interpolations", "interpolate base → average of the "
    "models by their task vectors' mean angle", "Jang et al. 2024, Model Stock, arXiv 2403.19522",
    model_stock, (Param("filter_wise", False, "one ratio per row instead of per tensor",
                        type=bool),),
    weights=None, base="required", min_inputs=2))


def sce(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
        rng: torch.Generator | None) -> torch.Tensor:
    """SCE: Select the entries where the task vectors vary most (top `select_topk` by
    variance), Calculate each task vector's weight from its mean square, Erase entries that
    disagree with the elected sign, then the weighted disjoint mean (Wan et al. 2024,
    FuseChat, arXiv 2408.07990)."""
    mask_dtype = torch.int8 if values["int8_mask"] else base.dtype
    tvs = torch.stack([t.sub_(base) for t in tensors], dim=0)
    del tensors[:]
    density = values["select_topk"]
    if density < 1:
        variance = torch.var(tvs, dim=0, unbiased=False)
        k = int(torch.count_nonzero(variance) * density)
        keep = torch.zeros_like(variance, dtype=mask_dtype)
        if torch.count_nonzero(variance):  # keep at least one entry (mergekit: maybe none)
            keep.view(-1)[torch.topk(variance.abs().view(-1), k=max(1, k), largest=True)[1]] = 1
        tvs = tvs * keep.unsqueeze(0)
    agree = elementwise.sign_agreement(tvs)
    energy = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    total = torch.sum(energy).item()
    weights = torch.ones_like(energy) / energy.shape[0] if abs(total) < 1e-6 else energy / total
    weights = weights.view(weights.shape + (1,) * (tvs.dim() - 1))
    erased = weights * agree
    return base + (tvs * erased).sum(dim=0) / torch.sum(erased, dim=0).clamp(min=1e-6)


register(MethodSpec(
    "sce", "full", "task vectors (W_i − W_base)", "SCE: select high-variance entries, weigh task "
    "vectors by their energy, erase sign conflicts", "Wan et al. 2024, FuseChat (SCE), "
    "arXiv 2408.07990", sce,
    (Param("select_topk", 1.0, "fraction of entries kept, by variance across the task vectors",
           low=0, high=1, low_open=True), INT8_MASK),
    weights=None, base="required"))


def nearswap(tensors: list[torch.Tensor], base: torch.Tensor | None, values: dict[str, Any],
             rng: torch.Generator | None) -> torch.Tensor:
    """NearSwap: take the other model's value where it is within t of the base's,
    interpolating by t/|Δ| further out (alchemonaut; mergekit's nearswap)."""
    other = tensors[0]
    weight = (values["t"] / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


register(MethodSpec(
    "nearswap", "full", "averages and interpolations", "swap in the other model's entries that "
    "are near the base's", "alchemonaut 2024, QuartetAnemoi (NearSwap); mergekit", nearswap,
    (Param("t", REQUIRED, "distance below which the other model's value is taken whole",
           low=0, example=1e-4),),
    weights=None, base="required", min_inputs=1, max_inputs=1))
