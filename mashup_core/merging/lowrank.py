"""Low-rank merge maths: every function works on LoRA factors and never forms a d_out × d_in
matrix. A module's update is ΔW = scale · B · A (A: r × in, B: out × r).

The building block is `product_svd(B, A)`: the SVD of B·A from a QR of each factor and an
SVD of the small (r × r) core R_B R_Aᵀ. On top of it:

- Core space (Panariello et al. 2025, arXiv 2509.17786): orthonormal bases U_B of the stacked
  B's columns and V_A of the stacked A's rows; each update becomes a small core matrix
  M_i = U_Bᵀ ΔW_i V_Aᵀ, and since every ΔW_i lies in span(U_B) × span(V_A), ΔW_i = U_B M_i V_A
  exactly. An entry-wise merge (TA, TIES, DARE, magnitude) runs on the M_i.
- KnOTS (Stoica et al. 2024, arXiv 2410.19735): the SVD of the concatenation [ΔW_1 … ΔW_T] =
  U S [V_1 … V_T] aligns the tasks in one basis; the entry-wise merge runs on the V_i.
- TSV-M (Gargiulo et al. 2025, arXiv 2412.00081): each task's top singular vectors, the
  concatenated bases made orthonormal (nearest orthonormal matrix, P·Qᵀ of their SVD).
- Iso-C / Iso-CTS (Marczak et al. 2025, arXiv 2502.04959): the summed update with a flat
  spectrum; CTS keeps a common subspace and adds each task's own top directions.

The papers define TSV-M and Iso on dense updates with min(d_out, d_in) singular values. A
sum of LoRA updates has rank R ≤ Σ r_i: its other singular values are 0 and their vectors
arbitrary, so there the dense definitions would average zeros and spread the update over
arbitrary null-space directions. Here they run on the R directions the updates span, which is
what their dense definitions compute when restricted to that span (the tests compute them
densely and compare). All maths is in float64; factors come back in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mashup_core.models.adapters import LoraFactors

RANK_TOL = 1e-9  # singular values below this fraction of the largest count as zero


def absent_like(f: LoraFactors) -> LoraFactors:
    """ΔW = 0 in the shape of `f`: an adapter at a module it does not target.

    Rank 0 rather than zero-filled factors, so `cat` adds no rank; `f`'s scale, so a merge
    whose first adapter lacks the module still takes its output scale from a real one.
    """
    return LoraFactors(f.A.new_zeros(0, f.A.shape[1]), f.B.new_zeros(f.B.shape[0], 0), f.scale)


Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (out × k), S (k), Vh (k × in)


def product_svd(B: torch.Tensor, A: torch.Tensor) -> Triplets:
    """SVD of B @ A (out × k times k × in) in float64, never forming the product:
    B = Q_B R_B, Aᵀ = Q_A R_A, so B·A = Q_B (R_B R_Aᵀ) Q_Aᵀ and the k × k core's SVD is B·A's."""
    B, A = B.double(), A.double()
    if B.shape[1] == 0:
        return B.new_zeros(B.shape[0], 0), B.new_zeros(0), A.new_zeros(0, A.shape[1])
    q_b, r_b = torch.linalg.qr(B)
    q_a, r_a = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    return q_b @ U, S, Vh @ q_a.T


def numerical_rank(S: torch.Tensor) -> int:
    """How many singular values (sorted, descending) are not zero up to rounding."""
    if S.numel() == 0 or S[0] <= 0:
        return 0
    return int((RANK_TOL * S[0] < S).sum())


def to_factors(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, rank: int, scale: float) -> LoraFactors:
    """LoRA factors of U·diag(S)·Vh (an SVD, S descending) at exactly `rank`: the top `rank`
    triplets (the best rank-`rank` approximation), zero-padded if there are fewer.

    √S goes to each side, so both factors start training at comparable magnitudes."""
    k = min(rank, S.numel())
    root = (S[:k] / scale).clamp(min=0).sqrt()
    A = (root[:, None] * Vh[:k]).float()
    B = (U[:, :k] * root).float()
    missing = rank - A.shape[0]
    if missing > 0:
        A = torch.cat([A, A.new_zeros(missing, A.shape[1])])
        B = torch.cat([B, B.new_zeros(B.shape[0], missing)], dim=1)
    return LoraFactors(A, B, scale)


def refactor(B: torch.Tensor, A: torch.Tensor, rank: int, scale: float) -> LoraFactors:
    """Any low-rank product B·A as LoRA factors of `rank` (truncated by its own SVD)."""
    return to_factors(*product_svd(B, A), rank, scale)


def weighted_stack(factors: Sequence[LoraFactors], weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_cat, A_cat) with B_cat·A_cat = Σ w_i ΔW_i exactly, at rank Σ r_i."""
    B = torch.cat([(float(w) * f.scale) * f.B.double() for f, w in zip(factors, weights, strict=True)], 1)
    return B, torch.cat([f.A.double() for f in factors])


def orthonormalize(M: torch.Tensor) -> torch.Tensor:
    """The orthonormal matrix nearest to M (Procrustes): P·Qᵀ for M = P Σ Qᵀ."""
    if M.shape[1] == 0:
        return M
    P, _, Qh = torch.linalg.svd(M, full_matrices=False)
    return P @ Qh


# --------------------------------------------------------------------------- core space

TaskMerge = Callable[[list[torch.Tensor]], torch.Tensor]  # entry-wise merge of same-shape tasks


@dataclass(frozen=True)
class CoreSpace:
    """Orthonormal bases of the stacked factors: ΔW_i = U_B · M_i · V_A for every input."""

    U_B: torch.Tensor  # out × p, p ≤ Σ r_i
    V_A: torch.Tensor  # q × in

    @classmethod
    def of(cls, factors: Sequence[LoraFactors]) -> CoreSpace:
        """From the factors as stored (not weighted: the basis belongs to the adapters, so a
        weight search does not rotate it). Zero directions of a rank-deficient stack are cut."""
        B = torch.cat([f.B.double() for f in factors], dim=1)
        A = torch.cat([f.A.double() for f in factors])
        U, S_b, _ = torch.linalg.svd(B, full_matrices=False)
        _, S_a, Vh = torch.linalg.svd(A, full_matrices=False)
        return cls(U[:, :numerical_rank(S_b)], Vh[:numerical_rank(S_a)])

    def core(self, f: LoraFactors) -> torch.Tensor:
        """M = U_Bᵀ ΔW V_Aᵀ, through the factors: (U_Bᵀ B)(A V_Aᵀ), p × q."""
        return (f.scale * (self.U_B.T @ f.B.double())) @ (f.A.double() @ self.V_A.T)

    def triplets(self, M: torch.Tensor) -> Triplets:
        """The SVD of U_B · M · V_A from the SVD of the small M (the bases are orthonormal)."""
        if M.numel() == 0:  # every update is zero here
            return _empty(self.U_B.shape[0], self.V_A.shape[1])
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        return self.U_B @ U, S, Vh @ self.V_A


def core_merge(factors: Sequence[LoraFactors], merge: TaskMerge) -> Triplets:
    """An entry-wise merge of the core matrices M_i, mapped back: U_B · merge(M_i) · V_A."""
    space = CoreSpace.of(factors)
    return space.triplets(merge([space.core(f) for f in factors]))


# --------------------------------------------------------------------------- KnOTS


@dataclass(frozen=True)
class KnotsAlignment:
    """[ΔW_1 … ΔW_T] = U · diag(S) · [V_1 … V_T]: one left basis for every task."""

    U: torch.Tensor  # out × R
    S: torch.Tensor  # R
    V: list[torch.Tensor]  # each R × in

    @classmethod
    def of(cls, factors: Sequence[LoraFactors]) -> KnotsAlignment:
        """Block i of the concatenation is Q_B R_B[:, i] A_i = Q_B (R_B[:, i] P_iᵀ) Q_iᵀ with
        A_iᵀ = Q_i P_i; the Q_i have orthonormal columns in disjoint blocks, so the SVD of the
        small (at most Σr × Σr) matrix C = [R_B[:, i] P_iᵀ]_i gives the concatenation's:
        V_i = Vh_C[:, i] Q_iᵀ."""
        B = torch.cat([f.scale * f.B.double() for f in factors], dim=1)
        in_dim = factors[0].A.shape[1]
        if B.shape[1] == 0:
            return cls(B, B.new_zeros(0), [B.new_zeros(0, in_dim) for _ in factors])
        q_b, r_b = torch.linalg.qr(B)
        blocks, bases, start = [], [], 0
        for f in factors:
            q_i, p_i = torch.linalg.qr(f.A.double().T)  # q_i: in × min(in, r_i)
            blocks.append(r_b[:, start:start + f.rank] @ p_i.T)
            bases.append(q_i)
            start += f.rank
        U, S, Vh = torch.linalg.svd(torch.cat(blocks, dim=1), full_matrices=False)
        keep = numerical_rank(S)
        U, S, Vh = q_b @ U[:, :keep], S[:keep], Vh[:keep]
        V, start = [], 0
        for q_i in bases:
            V.append(Vh[:, start:start + q_i.shape[1]] @ q_i.T)
            start += q_i.shape[1]
        return cls(U, S, V)


def knots_merge(factors: Sequence[LoraFactors], merge: TaskMerge) -> Triplets:
    """KnOTS: an entry-wise merge of the aligned V_i, then U · diag(S) · merge(V_i)."""
    aligned = KnotsAlignment.of(factors)
    return product_svd(aligned.U * aligned.S, merge(aligned.V))


# --------------------------------------------------------------------------- TSV-M and Iso


def _task_triplets(f: LoraFactors, w: float, keep: int | None = None) -> Triplets:
    U, S, Vh = product_svd((w * f.scale) * f.B, f.A)
    k = numerical_rank(S) if keep is None else min(keep, numerical_rank(S))
    return U[:, :k], S[:k], Vh[:k]


def tsv_merge(factors: Sequence[LoraFactors], weights: Sequence[float]) -> Triplets:
    """TSV-M: each present task's top k = min(r_i, ⌊min(out, in)/T⌋) singular triplets (the
    paper's 1/T share of the spectrum, of which a rank-r update has only r non-zero), the
    concatenated U's and V's each replaced by the nearest orthonormal matrix, then
    U_⊥ · diag(S_cat) · V_⊥ᵀ. (Tasks that share a singular direction make the concatenation
    rank-deficient; its nearest orthonormal matrix then adds a direction no task has, as the
    dense TSV-M does.)"""
    present = [(f, w) for f, w in zip(factors, weights, strict=True) if f.rank and w != 0]
    out_dim, in_dim = factors[0].shape
    if not present:
        return _empty(out_dim, in_dim)
    share = min(out_dim, in_dim) // len(present)
    parts = [_task_triplets(f, w, share) for f, w in present]
    U = orthonormalize(torch.cat([u for u, _, _ in parts], dim=1))
    V = orthonormalize(torch.cat([vh.T for _, _, vh in parts], dim=1))
    S = torch.cat([s for _, s, _ in parts])
    order = torch.argsort(S, descending=True)  # an SVD: orthonormal bases, sorted spectrum
    return U[:, order], S[order], V[:, order].T


def _empty(out_dim: int, in_dim: int) -> Triplets:
    z = torch.zeros(0, dtype=torch.float64)
    return z.new_zeros(out_dim, 0), z, z.new_zeros(0, in_dim)


def isotropic(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> Triplets:
    """U·Vh scaled by the mean of S: the spectrum made flat, its mass kept."""
    return U, torch.full_like(S, float(S.mean())) if S.numel() else S, Vh


def iso_c_merge(factors: Sequence[LoraFactors], weights: Sequence[float]) -> Triplets:
    """Iso-C: the SVD of Σ w_i ΔW_i with every singular value replaced by their mean."""
    U, S, Vh = product_svd(*weighted_stack(factors, weights))
    k = numerical_rank(S)
    return isotropic(U[:, :k], S[:k], Vh[:k])


def iso_cts_merge(factors: Sequence[LoraFactors], weights: Sequence[float],
                  common_space_fraction: float) -> Triplets:
    """Iso-CTS: of the D directions of Σ w_i ΔW_i, the top `common_space_fraction` stay (the
    common subspace); the rest go to the tasks, an equal number n each: every task's top
    directions outside the common subspace. Both bases made orthonormal, the spectrum flat.
    D = the sum's rank (the paper: min(out, in), all non-zero for dense updates)."""
    U, S, Vh = product_svd(*weighted_stack(factors, weights))
    D = numerical_rank(S)
    present = [(f, w) for f, w in zip(factors, weights, strict=True) if f.rank and w != 0]
    if not D or not present:
        return U[:, :0], S[:0], Vh[:0]
    common = int(D * common_space_fraction)
    per_task = min(round((D - common) / len(present)), D // len(present))
    common = D - per_task * len(present)  # the task-specific part splits evenly
    U_c, S_c, Vh_c = U[:, :common], S[:common], Vh[:common]
    parts = []
    for f, w in present:
        B = (w * f.scale) * f.B.double()
        residual = B - U_c @ (U_c.T @ B)  # the task's update with the common subspace removed
        u, s, vh = product_svd(residual, f.A)
        k = min(per_task, numerical_rank(s))
        parts.append((u[:, :k], s[:k], vh[:k]))
    parts.append((U_c, S_c, Vh_c))
    U_all = orthonormalize(torch.cat([u for u, _, _ in parts], dim=1))
    V_all = orthonormalize(torch.cat([vh.T for _, _, vh in parts], dim=1))
    return isotropic(U_all, torch.cat([s for _, s, _ in parts]), V_all.T)
