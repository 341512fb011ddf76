"""Properties of the merge maths and of training-to-parity, on random small inputs (hypothesis).

Adapters are built in memory (no files, no model), so each example costs milliseconds. Shapes,
ranks, alphas, weights and target-module sets are all drawn: adapters may target different
modules, and a module may have its own rank and alpha (PEFT's rank/alpha patterns).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from peft.utils import merge_utils

from mashup_core.compare.parity import (
    ComparisonError,
    compare_runs,
    first_reach,
    training_to_parity,
    wallclock_ratio,
    wallclock_ratio_timed,
)
from mashup_core.merging import elementwise, full_methods, lowrank
from mashup_core.merging import lora as merging
from mashup_core.merging.lora import LoraAdapter, LoraFactors, merge_factors
from mashup_core.merging.registry import MergeConfigError

# No example database: it would be written into the working tree, and every run draws afresh.
PROPERTY = settings(max_examples=40, deadline=None, database=None)
DENSE_METHODS = ["task_arithmetic", "magnitude_prune", "ties", "dare_linear", "dare_ties"]
LOW_RANK_METHODS = ["core_task_arithmetic", "core_magnitude_prune", "core_ties", "core_dare_linear",
                    "core_dare_ties", "knots_ties", "knots_dare", "tsv_m", "iso_c", "iso_cts"]
Draw = Callable[[st.SearchStrategy], object]


# --------------------------------------------------------------------------- adapters


def _adapters(
    draw: Draw, *, max_adapters: int = 3, same_modules: bool = False, equal_ranks: bool = False,
    make: Callable[[torch.Generator, int, int, int], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[list[LoraAdapter], list[float]]:
    n_modules = draw(st.integers(1, 3))
    names = [f"{merging.PEFT_PREFIX}layers.{i}.proj" for i in range(n_modules)]
    shapes = [(draw(st.integers(1, 7)), draw(st.integers(1, 7))) for _ in names]  # out, in
    shared_ranks = [draw(st.integers(1, 4)) for _ in names]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    make = make or (lambda g, r, out, in_: (torch.randn(r, in_, generator=g), torch.randn(out, r, generator=g)))
    adapters = []
    for j in range(draw(st.integers(1, max_adapters))):
        chosen = (range(n_modules) if same_modules else
                  draw(st.lists(st.integers(0, n_modules - 1), min_size=1, max_size=n_modules, unique=True)))
        modules = {}
        for i in sorted(chosen):
            r = shared_ranks[i] if equal_ranks else draw(st.integers(1, 4))
            A, B = make(gen, r, *shapes[i])
            modules[names[i]] = LoraFactors(A, B, draw(st.sampled_from([0.25, 1.0, 2.0, 3.5])))
        adapters.append(LoraAdapter(Path(f"a{j}"), {}, modules, torch.float32, "", None))
    weight = st.tuples(st.sampled_from([1.0, -1.0]), st.floats(0.01, 2)).map(lambda sw: sw[0] * sw[1])
    weights = draw(st.lists(weight, min_size=len(adapters), max_size=len(adapters)))
    return adapters, weights


adapter_sets = st.composite(_adapters)


def union(adapters: list[LoraAdapter]) -> set[str]:
    return set().union(*(a.modules for a in adapters))


def exact_sum(adapters: list[LoraAdapter], weights: list[float], name: str) -> tuple[torch.Tensor, float]:
    """Σ w_i ΔW_i at `name` in float64, and Σ |w_i|·‖ΔW_i‖: the scale of float32 rounding."""
    terms = [w * a.modules[name].delta().double() for a, w in zip(adapters, weights, strict=True)
             if name in a.modules]
    return sum(terms), sum(float(t.norm()) for t in terms)


def padded_tasks(adapters: list[LoraAdapter], name: str) -> list[torch.Tensor]:
    """Each adapter's ΔW at `name`, zeros where it does not target it: what PEFT would stack."""
    f = next(a.modules[name] for a in adapters if name in a.modules)
    return [a.modules[name].delta() if name in a.modules else torch.zeros(f.B.shape[0], f.A.shape[1])
            for a in adapters]


def full_rank(adapters: list[LoraAdapter]) -> int:
    """An output rank that truncates nothing, for the methods whose result is not low-rank."""
    return max(min(f.B.shape[0], f.A.shape[1]) for a in adapters for f in a.modules.values())


def drops_keep_something(adapters: list[LoraAdapter], density: float) -> bool:
    """Random drops refuse a density that expects to keep less than one entry of a module."""
    return all(density * f.B.shape[0] * f.A.shape[1] >= 1 for a in adapters for f in a.modules.values())


# --------------------------------------------------------------------------- cat, cat_svd, linear


@PROPERTY
@given(adapter_sets())
def test_cat_is_the_exact_weighted_sum_over_the_union(case):
    adapters, weights = case
    merged = merge_factors(adapters, weights, "cat")
    assert merged.modules.keys() == union(adapters)
    for name, f in merged.modules.items():
        expected, size = exact_sum(adapters, weights, name)
        assert f.rank == sum(a.modules[name].rank for a in adapters if name in a.modules)
        assert float((f.delta().double() - expected).norm()) <= 1e-5 * size


@PROPERTY
@given(adapter_sets(), st.integers(1, 14), st.sampled_from(["cat_svd", "task_arithmetic"]))
def test_truncation_is_the_best_rank_r_approximation(case, rank, method):
    """Eckart–Young: at rank r the error is that of the SVD truncation of the exact sum; at
    rank ≥ Σ ranks the merge is exact (cat). Error norms are compared, not matrices: when
    σ_r = σ_r+1 the best approximation is not unique."""
    adapters, weights = case
    merged = merge_factors(adapters, weights, method, rank=rank)
    assert merged.modules.keys() == union(adapters)
    for name, f in merged.modules.items():
        expected, size = exact_sum(adapters, weights, name)
        assert f.rank == rank
        error = float((f.delta().double() - expected).norm())
        if rank >= sum(a.modules[name].rank for a in adapters if name in a.modules):
            assert error <= 1e-5 * size
        else:
            S = torch.linalg.svdvals(expected)
            best = float(S[rank:].norm())
            assert abs(error - best) <= 1e-5 * size


@PROPERTY
@given(adapter_sets(same_modules=True, equal_ranks=True))
def test_linear_is_the_weighted_sum_of_the_factors(case):
    adapters, weights = case
    merged = merge_factors(adapters, weights, "linear")
    for name, f in merged.modules.items():
        factors = [a.modules[name] for a in adapters]
        scale = factors[0].scale
        # A_i enters at its own scale relative to the output's (equal alphas: plain Σ w·A_i).
        a_terms = [w * g.scale / scale * g.A.double() for g, w in zip(factors, weights, strict=True)]
        b_terms = [w * g.B.double() for g, w in zip(factors, weights, strict=True)]
        assert f.scale == scale
        for got, terms in ((f.A, a_terms), (f.B, b_terms)):
            # float32 rounding of each term is all that may differ: bound it by the terms' size
            size = sum(float(t.abs().max()) for t in terms)
            assert float((got.double() - sum(terms)).abs().max()) <= 1e-6 * size


# --------------------------------------------------------------------------- TIES, pruning, DARE


def _one_sign(gen: torch.Generator, r: int, out: int, in_: int, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive A, B of one sign: every entry of ΔW = scale·B·A has that sign."""
    return torch.rand(r, in_, generator=gen) + 0.1, sign * (torch.rand(out, r, generator=gen) + 0.1)


@pytest.mark.filterwarnings("ignore:The density 1.0 is greater than or equal to 1")
@PROPERTY
@given(st.data(), st.sampled_from(merging.SIGN_METHODS), st.sampled_from([1.0, -1.0]))
def test_ties_of_agreeing_tasks_is_the_mean_over_the_adapters_present(data, sign_method, sign):
    adapters, weights = data.draw(adapter_sets(make=lambda g, r, o, i: _one_sign(g, r, o, i, sign)))
    merged = merge_factors(adapters, weights, "ties", density=1.0, rank=full_rank(adapters),
                           majority_sign_method=sign_method)
    w = torch.tensor(weights)
    for name, f in merged.modules.items():
        tasks = padded_tasks(adapters, name)
        peft = merge_utils.ties(tasks, w, 1.0, sign_method)
        # Every entry of every present task agrees; an absent one (ΔW = 0) has no sign, so it
        # neither votes nor counts in the mean.
        present = sum(name in a.modules for a in adapters)
        terms = [wi * t for wi, t in zip(weights, tasks, strict=True)]
        by_hand = sum(terms) / present
        size = sum(float(t.norm()) for t in terms)  # weights of both signs may cancel
        assert float((peft - by_hand).norm()) <= 1e-6 * size
        assert float((f.delta() - peft).norm()) <= 1e-5 * size


@st.composite
def sparse_adapter_sets(draw: Draw) -> tuple[list[LoraAdapter], list[float], dict[str, torch.Tensor]]:
    """Adapters whose ΔW are all zero on some rows and columns (zero B rows, zero A columns)."""
    adapters, weights = _adapters(draw)
    zero = {}
    for name in union(adapters):
        f = next(a.modules[name] for a in adapters if name in a.modules)
        rows = torch.tensor(draw(st.lists(st.booleans(), min_size=f.B.shape[0], max_size=f.B.shape[0])))
        cols = torch.tensor(draw(st.lists(st.booleans(), min_size=f.A.shape[1], max_size=f.A.shape[1])))
        for a in adapters:
            if name in a.modules:
                g = a.modules[name]
                a.modules[name] = LoraFactors(g.A * ~cols, g.B * ~rows[:, None], g.scale)
        zero[name] = rows[:, None] | cols[None, :]
    return adapters, weights, zero


# TSV-M and Iso-CTS replace concatenated bases by their nearest orthonormal matrix: when two
# tasks share a direction (these sets often do: one-column modules), that matrix adds
# directions no task has, as the papers' dense definitions do; their own properties are below.
ZERO_PRESERVING = [m for m in LOW_RANK_METHODS if m not in ("tsv_m", "iso_cts")]


@PROPERTY
@given(sparse_adapter_sets(), st.sampled_from([*DENSE_METHODS, *ZERO_PRESERVING, "cat_svd"]),
       st.floats(0.05, 1.0), st.sampled_from(merging.SIGN_METHODS))
def test_merges_are_zero_where_every_task_is_zero(case, method, density, sign_method):
    adapters, weights, zero = case
    spec = merging.MERGE_METHODS[method]
    assume(not spec.random or drops_keep_something(adapters, density))
    options = {"density": density} if spec.uses_density else {}
    if spec.uses_sign:
        options["majority_sign_method"] = sign_method
    if spec.truncates:
        options["rank"] = full_rank(adapters)
    try:
        merged = merge_factors(adapters, weights, method, **options)
    except MergeConfigError as exc:  # a core/aligned matrix smaller than the module
        assert spec.random and "random drops would erase" in str(exc)
        return
    for name, f in merged.modules.items():
        delta = f.delta()
        # Exact before the SVD; after it, zero up to the SVD's rounding.
        assert float((delta * zero[name]).abs().max()) <= 1e-5 * float(delta.norm()) + 1e-7


@PROPERTY
@given(adapter_sets(), st.floats(1e-3, 1.0), st.integers(1, 64))
def test_magnitude_prune_keeps_int_density_numel_entries_per_task_and_at_least_one(case, density,
                                                                                   block_bytes):
    """Counted on the blocks the combine step receives, with blocks of a few rows: the global
    threshold per task must survive the row blocking."""
    adapters, weights = case
    for name in union(adapters):
        for t in padded_tasks(adapters, name):
            values = t.abs().flatten()
            # No ties, and no zeros in a present task: the top-k set is then unique.
            assume(t.count_nonzero() == 0 or values.unique().numel() == values.numel() > 0
                   and bool((values > 0).all()))
    received: list[list[torch.Tensor]] = []
    real = elementwise.combine

    def spy(tasks: list[torch.Tensor], w, **options) -> torch.Tensor:
        received.append([t.clone() for t in tasks])
        return real(tasks, w, **options)

    with mock.patch.object(merging, "BLOCK_BYTES", 4 * block_bytes), \
            mock.patch.object(merging.elementwise, "combine", spy):
        merged = merge_factors(adapters, weights, "magnitude_prune", density=density)
    at = 0
    for name in merged.modules:  # blocks arrive module by module, rows in order
        tasks = padded_tasks(adapters, name)
        rows, numel = tasks[0].shape[0], tasks[0].numel()
        blocks = []
        while sum(b[0].shape[0] for b in blocks) < rows:
            blocks.append(received[at])
            at += 1
        for i, a in enumerate(adapters):
            kept = int(torch.cat([b[i] for b in blocks]).count_nonzero())
            assert kept == (max(1, int(density * numel)) if name in a.modules else 0)
    assert at == len(received)


@PROPERTY
@given(adapter_sets(), st.sampled_from(["dare_linear", "dare_ties"]), st.floats(0.05, 1.0),
       st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_dare_is_a_function_of_its_seed_and_leaves_the_global_rng_alone(case, method, density, seed, outer):
    adapters, weights = case
    assume(drops_keep_something(adapters, density))
    torch.manual_seed(outer)
    before = torch.random.get_rng_state()
    first = merge_factors(adapters, weights, method, density=density, seed=seed)
    assert torch.equal(torch.random.get_rng_state(), before)
    second = merge_factors(adapters, weights, method, density=density, seed=seed)
    for name, f in first.modules.items():
        assert torch.equal(f.A, second.modules[name].A) and torch.equal(f.B, second.modules[name].B)


# --------------------------------------------------------------------------- low-rank spaces and spectra


def _largest(values: torch.Tensor) -> float:
    return float(values.max()) if values.numel() else 0.0


def _updates(adapters: list[LoraAdapter], name: str) -> list[torch.Tensor]:
    f = next(a.modules[name] for a in adapters if name in a.modules)
    return [a.modules[name].scale * a.modules[name].B.double() @ a.modules[name].A.double()
            if name in a.modules else torch.zeros(f.B.shape[0], f.A.shape[1], dtype=torch.float64)
            for a in adapters]


@PROPERTY
@given(adapter_sets())
def test_core_space_and_knots_alignment_hold_every_update_exactly(case):
    """U_B·M_i·V_A = ΔW_i (core space is lossless) and U·S·V_i = ΔW_i (KnOTS), for any ranks
    and target modules; so core task arithmetic at rank Σr is the exact weighted sum."""
    adapters, weights = case
    merged = merge_factors(adapters, weights, "core_task_arithmetic", rank=14)
    for name in union(adapters):
        factors = merging.module_factors(adapters, name)
        space = lowrank.CoreSpace.of(factors)
        aligned = lowrank.KnotsAlignment.of(factors)
        for f, update, v in zip(factors, _updates(adapters, name), aligned.V, strict=True):
            size = float(update.norm()) + 1e-12
            assert float((space.U_B @ space.core(f) @ space.V_A - update).norm()) <= 1e-9 * size
            assert float(((aligned.U * aligned.S) @ v - update).norm()) <= 1e-9 * size
        expected, size = exact_sum(adapters, weights, name)
        assert float((merged.modules[name].delta().double() - expected).norm()) <= 1e-5 * size


@PROPERTY
@given(adapter_sets())
def test_tsv_m_keeps_each_tasks_singular_values_on_orthonormal_bases(case):
    """U_⊥ and V_⊥ are orthonormal, so the merge's singular values are exactly the tasks'
    kept ones: each task's top ⌊min(out, in)/T⌋ (here all of its non-zero ones or fewer)."""
    adapters, weights = case
    merged = merge_factors(adapters, weights, "tsv_m", rank=28)
    for name in union(adapters):
        tasks = [w * d for w, d in zip(weights, _updates(adapters, name), strict=True)]
        present = [t for t in tasks if t.abs().sum()]
        share = min(present[0].shape) // len(present)
        kept = torch.cat([torch.linalg.svdvals(t)[:share] for t in present])
        got = torch.linalg.svdvals(merged.modules[name].delta().double())
        if not kept.numel() or float(kept.max()) == 0:  # a share of ⌊min(out, in)/T⌋ = 0
            assert float(got.max()) == 0
            continue
        kept = kept[kept > lowrank.RANK_TOL * kept.max()].sort(descending=True).values
        assert float((got[:kept.numel()] - kept).abs().max()) <= 1e-5 * float(kept.max())
        assert _largest(got[kept.numel():]) <= 1e-5 * float(kept.max())


@PROPERTY
@given(adapter_sets(), st.sampled_from(["iso_c", "iso_cts"]), st.floats(0.0, 1.0))
def test_iso_flattens_the_spectrum_and_keeps_its_directions_within_the_updates(case, method, fraction):
    adapters, weights = case
    params = {"common_space_fraction": fraction} if method == "iso_cts" else {}
    merged = merge_factors(adapters, weights, method, params=params)
    for name in union(adapters):
        total = sum(w * d for w, d in zip(weights, _updates(adapters, name), strict=True))
        S_sum = torch.linalg.svdvals(total)
        k = int((S_sum > lowrank.RANK_TOL * S_sum[0]).sum()) if S_sum[0] > 0 else 0
        delta = merged.modules[name].delta().double()
        S = torch.linalg.svdvals(delta)
        if k == 0:
            continue
        top = S[: int((1e-6 * S[0] < S).sum())]
        assert float(top.max() - top.min()) <= 1e-5 * float(top.max())  # flat
        if method == "iso_c":  # the mean of the sum's spectrum, over its own directions
            assert top.numel() == k
            assert float(top[0]) == pytest.approx(float(S_sum[:k].mean()), rel=1e-5)
        # every direction lies in the span of the updates' columns
        cols = torch.linalg.svd(torch.cat(_updates(adapters, name), 1), full_matrices=False)[0]
        cols = cols[:, : int((torch.linalg.svdvals(torch.cat(_updates(adapters, name), 1)) > 1e-9).sum())]
        assert float((delta - cols @ cols.T @ delta).norm()) <= 1e-5 * float(delta.norm())


# --------------------------------------------------------------------------- entry-wise conventions

finite_tensor = st.integers(0, 2**31 - 1).map(
    lambda seed: torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(seed)))


@PROPERTY
@given(finite_tensor, st.sampled_from(merging.SIGN_METHODS), st.floats(0.1, 3.0))
def test_ties_conventions_agree_at_equal_weights_and_differ_in_how_weights_scale(tasks, sign, c):
    """With every weight 1, PEFT's disjoint mean (count) and mergekit's (Σ agreeing weights)
    are the same. Scaling all weights by c scales PEFT's result by c and leaves mergekit's."""
    ones = [1.0, 1.0, 1.0]
    count = elementwise.combine(list(tasks), ones, elect_sign=True, normalize="count",
                                majority_sign_method=sign)
    by_weight = elementwise.combine(list(tasks), ones, elect_sign=True, normalize=True,
                                    majority_sign_method=sign)
    torch.testing.assert_close(count, by_weight, rtol=1e-6, atol=1e-6)
    scaled = [c] * 3
    torch.testing.assert_close(elementwise.combine(list(tasks), scaled, elect_sign=True, normalize="count",
                                                   majority_sign_method=sign), c * count, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(elementwise.combine(list(tasks), scaled, elect_sign=True, normalize=True,
                                                   majority_sign_method=sign), by_weight, rtol=1e-5, atol=1e-5)


@PROPERTY
@given(finite_tensor, st.floats(1e-4, 1.0), st.floats(0.0, 0.5))
def test_deterministic_pruning_keeps_its_count_and_l1_rescale_keeps_the_norm(x, density, gamma):
    x = x[0]
    keep = elementwise.kept_count(x.numel(), density)
    top = elementwise.keep_top_magnitude(x, density)
    assert int(top.count_nonzero()) == (x.numel() if density >= 1 else keep)
    if density < 1:  # what it keeps is the largest: no dropped entry beats a kept one
        assert _largest(x[top == 0].abs()) <= float(x[top != 0].abs().min())
    band = elementwise.keep_between_outliers(x, density, gamma)
    assert int(band.count_nonzero()) == (x.numel() if density >= 1 else keep)
    rescaled = elementwise.keep_top_magnitude(x, density, True)
    assert float(rescaled.abs().sum()) == pytest.approx(float(x.abs().sum()), rel=1e-5)


@PROPERTY
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_interpolations_meet_their_endpoints_and_averages_of_one_model_are_it(seed, t):
    gen = torch.Generator().manual_seed(seed)
    base, other = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    slerp = full_methods.slerp
    at = lambda t: slerp([other.clone()], base.clone(), {"t": t}, None)  # noqa: E731
    torch.testing.assert_close(at(0.0), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(at(1.0), other, rtol=1e-5, atol=1e-5)
    # slerp keeps the endpoints' norm when they have the same one
    unit_a, unit_b = base / base.norm(), other / other.norm()
    assert float(slerp([unit_b], unit_a, {"t": t}, None).norm()) == pytest.approx(1.0, rel=1e-4)
    same = [other.clone() for _ in range(3)]
    linear = full_methods.linear([x.clone() for x in same], None,
                                 {"weight": [0.2, 0.3, 0.5], "normalize": True}, None)
    torch.testing.assert_close(linear, other, rtol=1e-6, atol=1e-6)
    karcher = full_methods.karcher([x.clone() for x in same], None, {"max_iter": 10, "tol": 1e-5}, None)
    torch.testing.assert_close(karcher, other, rtol=1e-5, atol=1e-5)
    stock = full_methods.model_stock([x.clone() for x in same], base.clone(), {"filter_wise": False}, None)
    torch.testing.assert_close(stock, other, rtol=1e-5, atol=1e-5)  # cos θ = 1: t = 1
    multi = full_methods.multislerp([x.clone() for x in same], base.clone(),
                                    {"weight": [1.0, 2.0, 3.0], "normalize_weights": True, "eps": 1e-8}, None)
    torch.testing.assert_close(multi, other, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- training to parity

steps_st = st.lists(st.integers(1, 50), min_size=1, max_size=7)  # gaps between evaluations
acc_st = st.integers(0, 100).map(lambda k: k / 100)  # accuracies as correct / n


@st.composite
def monotone_curve(draw: Draw) -> list[tuple[float, float]]:
    """(step, accuracy) from step 0 to a step > 0, never decreasing, at integer steps."""
    gaps = draw(steps_st)
    steps = np.concatenate([[0], np.cumsum(gaps)])
    accs = sorted(draw(st.lists(acc_st, min_size=len(steps), max_size=len(steps))))
    return [(float(s), a) for s, a in zip(steps, accs, strict=True)]


def brute_first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """Bisection on the piecewise-linear interpolant (np.interp): the least x it reaches target."""
    xs, ys = np.array([p[0] for p in curve]), np.array([p[1] for p in curve])
    if ys.max() < target:
        return None
    lo, hi = xs[0], xs[-1]
    if np.interp(lo, xs, ys) >= target:
        return float(lo)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if np.interp(mid, xs, ys) >= target else (mid, hi)
    return float(hi)


@PROPERTY
@given(monotone_curve(), monotone_curve())
def test_parity_is_where_the_mashup_curve_first_reaches_the_scratch_final_accuracy(scratch, mashup):
    total, target = scratch[-1]
    reached = brute_first_reach(mashup, target)
    if reached is None:
        assert first_reach(mashup, target) is None
        assert training_to_parity(scratch, mashup) == 1.0
        assert training_to_parity(scratch, mashup, "strict") is None
    else:
        assert first_reach(mashup, target) == pytest.approx(reached, abs=1e-9)
        for mode in ("normal", "strict"):
            assert training_to_parity(scratch, mashup, mode) == pytest.approx(reached / total, abs=1e-9)


@PROPERTY
@given(monotone_curve(), monotone_curve(), st.floats(1e-3, 1e3), st.sampled_from(["normal", "strict"]))
def test_parity_does_not_depend_on_the_unit_of_steps(scratch, mashup, c, mode):
    scaled = training_to_parity([(c * s, a) for s, a in scratch], [(c * s, a) for s, a in mashup], mode)
    plain = training_to_parity(scratch, mashup, mode)
    assert scaled is None if plain is None else scaled == pytest.approx(plain, rel=1e-9, abs=1e-12)


@PROPERTY
@given(monotone_curve(), st.data(), st.lists(st.tuples(st.integers(1, 200), acc_st), max_size=6))
def test_a_merge_already_at_the_target_has_parity_zero(scratch, data, later):
    start = data.draw(st.integers(round(100 * scratch[-1][1]), 100)) / 100  # at or above target
    mashup = [(0.0, start), *[(float(s), a) for s, a in later]]  # any curve after step 0
    assert training_to_parity(scratch, mashup) == 0.0
    assert training_to_parity(scratch, mashup, "strict") == 0.0


# --------------------------------------------------------------------------- gaps found by mutation testing


def test_kth_largest_is_exact_on_the_sampled_path_and_on_its_fallback():
    """`_kth_largest` samples only above 16·sample entries (1M by default): a small `sample`
    takes that path here, with brackets that hold (k near the middle) and that miss (k = 1, n)."""
    values = torch.randn(4000, generator=torch.Generator().manual_seed(3))
    ordered = values.sort(descending=True).values
    for k in (1, 2, 7, 1000, 2000, 3999, 4000):
        for sample in (16, 200):
            assert merging._kth_largest(values, k, sample=sample) == float(ordered[k - 1])


@PROPERTY
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_randomized_truncated_svd_finds_a_low_rank_matrix_and_keeps_the_global_rng(rank, extra, seed):
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(40, rank, generator=gen, dtype=torch.float64) @ torch.randn(
        rank, 30, generator=gen, dtype=torch.float64)
    before = torch.random.get_rng_state()
    U, S, Vh = merging.truncated_svd(matrix, rank + extra, randomized=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert U.shape == (40, rank + extra) and S.shape == (rank + extra,) and Vh.shape == (rank + extra, 30)
    assert float(((U * S) @ Vh - matrix).norm()) <= 1e-8 * float(matrix.norm())
    exact = torch.linalg.svdvals(matrix)[: rank + extra]
    assert float((S - exact).abs().max()) <= 1e-8 * float(exact[0])


def test_truncated_svd_goes_randomized_only_above_the_exact_limit():
    calls = []
    real = torch.svd_lowrank

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    gen = torch.Generator().manual_seed(0)
    with mock.patch.object(merging, "EXACT_SVD_MAX_DIM", 4), mock.patch.object(torch, "svd_lowrank", spy):
        merging.truncated_svd(torch.randn(4, 9, generator=gen), 2)  # at the limit: exact
        assert calls == []
        merging.truncated_svd(torch.randn(5, 9, generator=gen), 2)  # above it: randomized
        assert calls == [(5, 9)]
        merging.truncated_svd(torch.randn(5, 9, generator=gen), 2, randomized=False)
        merging.truncated_svd(torch.randn(3, 9, generator=gen), 2, randomized=True)
        assert calls == [(5, 9), (3, 9)]


def test_row_blocks_cover_the_rows_in_blocks_of_block_bytes():
    blocks = lambda rows: [(s.start, s.stop) for s in merging._row_blocks(rows, 10, 3)]  # noqa: E731
    with mock.patch.object(merging, "BLOCK_BYTES", 4 * 10 * 3 * 2):  # two rows of three tasks
        assert blocks(5) == [(0, 2), (2, 4), (4, 5)]
        assert blocks(2) == [(0, 2)]
    with mock.patch.object(merging, "BLOCK_BYTES", 1):  # less than a row: one row at a time
        assert blocks(3) == [(0, 1), (1, 2), (2, 3)]


@PROPERTY
@given(adapter_sets(same_modules=True, equal_ranks=True), st.integers(0, 2**31 - 1))
def test_merge_defaults_and_what_a_merge_keeps(case, seed):
    adapters, weights = case
    default, linear = merge_factors(adapters, weights), merge_factors(adapters, weights, "linear")
    assert default.method == linear.method == "linear" and default.weights == linear.weights == weights
    assert default.mixed_targets is False
    for name, f in default.modules.items():
        assert torch.equal(f.A, linear.modules[name].A) and torch.equal(f.B, linear.modules[name].B)
    assume(drops_keep_something(adapters, 0.5))
    dare = merge_factors(adapters, weights, "dare_linear", density=0.5)  # seed 0 by default
    zero = merge_factors(adapters, weights, "dare_linear", density=0.5, seed=0)
    assert all(torch.equal(f.A, zero.modules[n].A) for n, f in dare.modules.items())
    assert merge_factors(adapters, weights, "dare_linear", density=0.5, seed=seed).params.seed == seed


def test_mixed_targets_and_the_density_one_warning_is_silenced():
    gen = torch.Generator().manual_seed(0)
    names = [f"{merging.PEFT_PREFIX}layers.{i}.proj" for i in range(2)]
    factors = {n: LoraFactors(torch.randn(2, 5, generator=gen), torch.randn(4, 2, generator=gen), 1.0) for n in names}
    one = LoraAdapter(Path("a"), {}, factors, torch.float32, "", None)
    part = LoraAdapter(Path("b"), {}, {names[0]: factors[names[0]]}, torch.float32, "", None)
    assert merge_factors([one, part], [1.0, 1.0], "cat").mixed_targets is True
    assert merge_factors([one, one], [1.0, 1.0], "cat").mixed_targets is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("dare_linear", "dare_ties", "magnitude_prune"):
            merge_factors([one, one], [0.5, 0.5], method, density=1.0)


# --------------------------------------------------------------------------- comparing two runs


def test_compare_runs_reports_every_field_from_records_and_timings():
    # Records without a phase are evaluations; train records (even with an accuracy) are not.
    scratch = [{"phase": "eval", "step": 0, "acc": 0.2, "seconds": 0.0},
               {"phase": "eval", "step": 10, "acc": None, "seconds": 30.0},
               {"step": 20, "acc": 0.6, "seconds": 50.0}, {"phase": "train", "step": 25, "acc": 0.99}]
    mashup = [{"phase": "eval", "step": 0, "acc": 0.3, "seconds": 0.0},
              {"phase": "eval", "step": 10, "acc": 0.5, "seconds": 10.0},
              {"phase": "eval", "step": 20, "acc": 0.7, "seconds": 30.0},
              {"phase": "eval", "step": 30, "acc": 0.8, "seconds": 35.0}]
    timings = {"scoring_s": 2.0, "weight_search_s": 3.0, "merging_s": 1.0, "training_s": 40.0}
    result = compare_runs(scratch, mashup, timings, {"training_s": 100.0})
    # 0.6 at step 15 of 20; on the clock at 20 s of the scratch run's 50 s.
    assert result["metric"] == "acc"
    assert {k: v for k, v in result.items() if k not in ("seconds", "metric")} == pytest.approx({
        "target_acc": 0.6, "scratch_final_acc": 0.6, "mashup_final_acc": 0.8, "mashup_init_acc": 0.3,
        "delta_final_acc": 0.2, "parity": 0.75, "parity_strict": 0.75, "parity_step": 15.0,
        "wallclock_ratio": (6 + 40 * 0.75) / 100, "wallclock_ratio_strict": (6 + 40 * 0.75) / 100,
        "wallclock_ratio_timed": (6 + 20) / 50})
    assert result["seconds"] == {"scratch_training_s": 100.0, "mashup_training_s": 40.0,
                                 "scoring_s": 2.0, "weight_search_s": 3.0, "merging_s": 1.0}
    # Never reached: strict drops out; no clock on either run: no timed ratio; times from records.
    low = [{"phase": "eval", "step": s, "acc": 0.1} for s in (0, 5, 10)]
    plain = [{**r, "seconds": None} for r in scratch]
    result = compare_runs(plain, low, {"training_s": 40.0}, {"training_s": 80.0})
    assert result["parity"] == 1.0 and result["parity_strict"] is None
    assert result["wallclock_ratio"] == pytest.approx(0.5) and result["wallclock_ratio_strict"] is None
    assert result["wallclock_ratio_timed"] is None
    assert compare_runs(scratch, low, {"training_s": 40.0})["wallclock_ratio_timed"] is None
    assert compare_runs(scratch, mashup, {})["seconds"] == {
        "scratch_training_s": 50.0, "mashup_training_s": 35.0,
        "scoring_s": 0.0, "weight_search_s": 0.0, "merging_s": 0.0}
    with pytest.raises(ComparisonError, match=r"^no training time: neither timings nor a 'seconds' "
                                              r"column in the metrics$"):
        compare_runs(plain, low, {})


def test_wallclock_ratios_at_their_edges():
    assert wallclock_ratio(0.5, 1.0, 0.5) == pytest.approx(1.0)  # under a second is still time
    scratch = [(0.0, 0.2), (100.0, 0.8)]
    assert wallclock_ratio_timed(scratch, [(0.0, 0.6), (40.0, 1.0)]) == pytest.approx(20 / 100)
    never = [(0.0, 0.1), (60.0, 0.3), (120.0, 0.5)]  # the whole run counts: its last time
    assert wallclock_ratio_timed(scratch, never) == pytest.approx(120 / 100)
    with pytest.raises(ComparisonError, match="^the scratch curve has no evaluations"):
        wallclock_ratio_timed([], never)
    with pytest.raises(ComparisonError, match=r"^the scratch curve ends at step 0; it needs at least "
                                              r"one trained step$"):
        training_to_parity([(0, 0.5)], [(0, 1.0)])
