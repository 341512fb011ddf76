"""Weight strategies on plain functions: no model needed, so every case is exact and fast."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mashup_core.merging.weights import WEIGHT_STRATEGIES, WeightSearchError, search_weights

TARGET = np.array([0.8, 0.1, 0.4])


def closeness(w: np.ndarray) -> float:
    """Peaks at TARGET (a stand-in for held-out accuracy)."""
    return -float(((w - TARGET) ** 2).sum())


def test_registry_holds_the_four_strategies():
    assert set(WEIGHT_STRATEGIES) == {"equal", "proportional", "cmaes", "lorahub"}


def test_equal_weights_average():
    result = search_weights("equal", 4)
    assert result.weights == [0.25] * 4
    assert result.best_value is None and result.history == []


def test_fixed_strategies_evaluate_a_given_objective_once():
    result = search_weights("equal", 3, objective=closeness)
    assert result.best_value == pytest.approx(closeness(np.full(3, 1 / 3)))
    assert len(result.history) == 1


def test_proportional_normalises_accuracies():
    assert search_weights("proportional", 3, scores=[0.9, 0.3, 0.0]).weights == pytest.approx([0.75, 0.25, 0.0])


def test_proportional_weighs_losses_by_likelihood_so_lower_nll_counts_more():
    weights = search_weights("proportional", 2, scores=[0.5, 1.5], higher_is_better=False).weights
    assert weights[0] > weights[1]
    assert weights[0] / weights[1] == pytest.approx(math.e)  # exp(-0.5) / exp(-1.5)
    assert sum(weights) == pytest.approx(1.0)


def test_proportional_with_all_zero_scores_falls_back_to_equal():
    assert search_weights("proportional", 2, scores=[0.0, 0.0]).weights == [0.5, 0.5]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"strategy": "proportional", "n_items": 3, "scores": [0.5, 0.5]},
     r"needs one relevance score per adapter \(3\), got 2"),
    ({"strategy": "proportional", "n_items": 2, "scores": [0.5, -0.1]}, "non-negative scores"),
    ({"strategy": "proportional", "n_items": 2, "scores": [0.5, math.nan]}, "scores must be finite"),
    ({"strategy": "cmaes", "n_items": 2}, "'cmaes' searches: it needs an objective"),
    ({"strategy": "cmaes", "n_items": 2, "objective": closeness, "budget": 0}, "budget must be at least 1"),
    ({"strategy": "nevergrad", "n_items": 2}, "unknown weight strategy 'nevergrad'; choose from equal"),
    ({"strategy": "equal", "n_items": 0}, "no adapters to weigh"),
])
def test_bad_requests_are_named(kwargs, message):
    strategy = kwargs.pop("strategy")
    with pytest.raises(WeightSearchError, match=message):
        search_weights(strategy, **kwargs)


def test_cmaes_finds_the_optimum_within_bounds_and_budget():
    progress = []
    result = search_weights("cmaes", 3, objective=closeness, budget=60, seed=1,
                            on_progress=lambda i, value, best: progress.append((i, value, best)))
    assert np.allclose(result.weights, TARGET, atol=0.1)
    assert [i for i, _, _ in result.history] == list(range(60))
    assert result.history[0][2] == pytest.approx([1 / 3] * 3)  # starts from equal weights
    assert all(0 <= w <= 1 for _, _, ws in result.history for w in ws)
    assert result.best_value == max(v for _, v, _ in result.history)
    bests = [best for _, _, best in progress]
    assert len(progress) == 60 and bests == sorted(bests)


def test_cmaes_is_deterministic_given_the_seed_and_leaves_numpy_global_rng_alone():
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    a = search_weights("cmaes", 3, objective=closeness, budget=20, seed=3)
    b = search_weights("cmaes", 3, objective=closeness, budget=20, seed=3)
    c = search_weights("cmaes", 3, objective=closeness, budget=20, seed=4)
    assert a.history == b.history and a.weights == b.weights
    assert a.history != c.history
    assert np.array_equal(np.random.get_state()[1], state)


def test_cmaes_keeps_searching_a_flat_objective_until_the_budget():
    assert len(search_weights("cmaes", 2, objective=lambda w: 0.5, budget=25).history) == 25


def test_non_finite_values_are_never_chosen():
    result = search_weights("cmaes", 2, objective=lambda w: math.nan if w[0] > 0.4 else float(w[1]),
                            budget=30, seed=0)
    assert result.weights[0] <= 0.4 and math.isfinite(result.best_value)


def test_one_adapter_is_searched_on_a_grid():
    result = search_weights("cmaes", 1, objective=lambda w: -abs(w[0] - 0.3), budget=21)
    assert result.weights == pytest.approx([0.3], abs=0.05)
    assert len(result.history) == 21


def test_lorahub_minimises_loss_plus_l1_within_its_bounds():
    def loss(w):
        return float(((w - np.array([1.0, -0.5])) ** 2).sum())

    result = search_weights("lorahub", 2, objective=loss, budget=60, seed=0)
    assert result.history[0][2] == [0.0, 0.0]  # LoraHub starts from zero
    assert all(-1.5 <= w <= 1.5 for _, _, ws in result.history for w in ws)
    assert np.allclose(result.weights, [1.0, -0.5], atol=0.15)
    assert result.best_value == pytest.approx(loss(np.array(result.weights)))  # penalty not included


def test_lorahub_penalty_breaks_ties_towards_small_weights():
    result = search_weights("lorahub", 3, objective=lambda w: 1.0, budget=15)
    assert result.weights == [0.0, 0.0, 0.0]


def test_direction_comes_from_the_objective_when_it_says():
    def loss(w):
        return float(((w - TARGET) ** 2).sum())

    loss.maximize = False
    result = search_weights("cmaes", 3, objective=loss, budget=40, seed=0)
    assert result.best_value == min(v for _, v, _ in result.history)
    assert result.best_value < loss(np.full(3, 1 / 3))
