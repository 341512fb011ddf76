"""How alike two adapters' updates are, computed in rank space, for a library of any size.

A LoRA update of a layer is ΔW = B A (d_out × d_in, the scale folded into B). Its Frobenius
inner product with another's never needs either matrix:

    ⟨B₁A₁, B₂A₂⟩_F = tr(A₁ᵀ B₁ᵀ B₂ A₂) = Σ (B₁ᵀB₂) ⊙ (A₁A₂ᵀ)

an r₁ × r₂ sum, from the two Gram products. For N adapters the products of every pair come
from two matmuls per layer of the stacked factors (rank-padded with zeros, which add nothing),
in row blocks, so memory is a block × N, never N × d_out × d_in.

- the cosine of two adapters **per layer** is their inner product over the product of norms;
- **over the model**, the update is one vector (every layer's entries): the sum of the layers'
  inner products over the product of the whole norms; a layer only one adapter targets adds
  to its norm and nothing to the inner product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mashup_core.selection.bank import BankAdapter


@dataclass
class Similarity:
    names: list[str]
    cosine: np.ndarray  # N × N, over the whole model
    layer_cosine: dict[str, np.ndarray]  # layer -> N × N (NaN where one of the two is absent)
    norms: np.ndarray  # each adapter's ‖ΔW‖_F over the model


def _stacked(adapters: Sequence[BankAdapter], layer: str):
    """(A as (N·r, in), Bᵀ as (N·r, out), present mask) for one layer, ranks padded to r."""
    present = [layer in a.factors for a in adapters]
    first = next(a.factors[layer] for a in adapters if layer in a.factors)
    d_in, d_out = first[0].shape[1], first[1].shape[0]
    r = max(a.factors[layer][0].shape[0] for a in adapters if layer in a.factors)
    A = torch.zeros(len(adapters), r, d_in, dtype=torch.float64)
    Bt = torch.zeros(len(adapters), r, d_out, dtype=torch.float64)
    for i, a in enumerate(adapters):
        if layer in a.factors:
            fa, fb = a.factors[layer]
            A[i, : fa.shape[0]] = fa.double()
            Bt[i, : fa.shape[0]] = fb.double().T
    return A.reshape(-1, d_in), Bt.reshape(-1, d_out), r, np.array(present)


def layer_inner_products(adapters: Sequence[BankAdapter], layer: str, block: int = 64) -> np.ndarray:
    """N × N ⟨ΔWᵢ, ΔWⱼ⟩_F of one layer (0 where an adapter does not target it)."""
    A, Bt, r, _ = _stacked(adapters, layer)
    n = len(adapters)
    out = np.zeros((n, n))
    for lo in range(0, n, block):  # the upper triangle, block rows against the columns from lo
        hi = min(n, lo + block)
        ga = A[lo * r: hi * r] @ A[lo * r:].T  # Aᵢ Aⱼᵀ for the block's i and every j >= lo
        gb = Bt[lo * r: hi * r] @ Bt[lo * r:].T  # Bᵢᵀ Bⱼ
        part = (ga * gb).reshape(hi - lo, r, n - lo, r).sum(dim=(1, 3)).numpy()
        out[lo:hi, lo:] = part
        out[lo:, lo:hi] = part.T
    return out


def update_similarity(adapters: Sequence[BankAdapter], block: int = 64) -> Similarity:
    """Cosines of every pair of adapters' updates, per layer and over the model."""
    layers = sorted({name for a in adapters for name in a.factors})
    n = len(adapters)
    total = np.zeros((n, n))
    per_layer = {}
    for layer in layers:
        inner = layer_inner_products(adapters, layer, block)
        total += inner
        norm = np.sqrt(np.clip(np.diag(inner), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = inner / np.outer(norm, norm)
        cos[(norm == 0)[:, None] | (norm == 0)[None, :]] = np.nan
        per_layer[layer] = cos
    norms = np.sqrt(np.clip(np.diag(total), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = total / np.outer(norms, norms)
    cosine = np.nan_to_num(cosine)
    np.fill_diagonal(cosine, 1.0)
    return Similarity([a.name for a in adapters], cosine, per_layer, norms)


def layout_2d(cosine: np.ndarray) -> np.ndarray:
    """Classical MDS of the cosine distances 1 − cos: N × 2 points whose distances follow the
    updates' (deterministic; the axes mean nothing by themselves)."""
    n = len(cosine)
    if n < 3:
        return np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    d2 = np.square(np.clip(1.0 - cosine, 0.0, 2.0))
    centre = np.eye(n) - np.ones((n, n)) / n
    gram = -0.5 * centre @ d2 @ centre
    values, vectors = np.linalg.eigh(gram)
    top = np.argsort(values)[::-1][:2]
    points = vectors[:, top] * np.sqrt(np.clip(values[top], 0.0, None))
    signs = np.sign(points[np.abs(points).argmax(axis=0), range(2)])  # a stable orientation
    return points * np.where(signs == 0, 1.0, signs)


def clusters(cosine: np.ndarray, count: int | None = None) -> np.ndarray:
    """Cluster labels (1..count) by average linkage on 1 − cos; default count ≈ √(N/2)."""
    n = len(cosine)
    if n < 3:
        return np.ones(n, dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distance = np.clip(1.0 - cosine, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform((distance + distance.T) / 2, checks=False), method="average")
    return fcluster(tree, t=count or max(2, round((n / 2) ** 0.5)), criterion="maxclust")


def nearest(similarity: Similarity, name: str, k: int = 5) -> list[tuple[str, float]]:
    """The k adapters whose updates are most like `name`'s, with their cosines."""
    i = similarity.names.index(name)
    order = [j for j in np.argsort(-similarity.cosine[i]) if j != i][:k]
    return [(similarity.names[j], float(similarity.cosine[i, j])) for j in order]


def similarity_vs_relevance(names: Sequence[str], cosine: np.ndarray,
                             profiles: dict[str, Sequence[float]]) -> dict:
    """Do similar updates help the same targets? Spearman's rho, over every pair of adapters
    with a relevance profile, between their update cosine and the Pearson correlation of their
    profiles (each adapter's gain over the base on each target)."""
    from scipy.stats import spearmanr

    index = {n: i for i, n in enumerate(names)}
    names = [n for n in names if n in profiles]
    xs, ys = [], []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            pa, pb = np.asarray(profiles[names[a]], float), np.asarray(profiles[names[b]], float)
            if len(pa) < 2 or np.std(pa) == 0 or np.std(pb) == 0:
                continue
            xs.append(cosine[index[names[a]], index[names[b]]])
            ys.append(float(np.corrcoef(pa, pb)[0, 1]))
    if len(xs) < 3:
        return {"pairs": len(xs), "spearman": None, "p_value": None}
    result = spearmanr(xs, ys)
    return {"pairs": len(xs), "spearman": float(result.statistic), "p_value": float(result.pvalue)}
