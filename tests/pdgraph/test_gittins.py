"""Tests for hermesflow.pdgraph.gittins: exact Gittins rank of discrete size distributions."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermesflow.pdgraph.gittins import (
    GittinsRankCache,
    gittins_rank,
    gittins_rank_conditioned,
)

# Small integers as well as arbitrary floats, so equal sample values (to be merged) occur often.
# Positive values start at a nanosecond: a value near the smallest normal float (2.2e-308, which
# hypothesis found) times a weight is subnormal, and the 1e-12 relative tolerances below do not
# hold at that precision; no duration is that short.
_values = st.one_of(
    st.just(0.0),
    st.floats(1e-9, 1000.0, allow_nan=False, allow_infinity=False),
    st.integers(0, 20).map(float),
)
_weights = st.one_of(st.just(0.0), st.floats(0.001, 10.0))


@st.composite
def _distributions(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """1-30 (value, weight) pairs with at least one positive weight."""
    pairs = draw(st.lists(st.tuples(_values, _weights), min_size=1, max_size=30))
    values = [v for v, _ in pairs]
    weights = [w for _, w in pairs]
    if sum(weights) == 0.0:
        weights[0] = 1.0
    return values, weights


def _ratio_at(values: list[float], weights: list[float], delta: float) -> float:
    """E[min(R, Δ)] / P(R ≤ Δ) by explicit loops over the raw (unmerged) samples."""
    total = sum(weights)
    expected_service = 0.0
    completion = 0.0
    for value, weight in zip(values, weights):
        expected_service += weight / total * min(value, delta)
        if value <= delta:
            completion += weight / total
    return math.inf if completion == 0.0 else expected_service / completion


def _support(values: list[float], weights: list[float]) -> list[float]:
    return sorted({v for v, w in zip(values, weights) if w > 0})


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(_distributions())
def test_rank_equals_brute_force_over_grid_with_support_points(
    dist: tuple[list[float], list[float]],
) -> None:
    values, weights = dist
    support = _support(values, weights)
    grid = set(support) | set(np.linspace(support[0], support[-1], 200).tolist())
    grid.discard(0.0)  # Δ > 0; a zero sample is covered by Δ just above 0
    candidates = [_ratio_at(values, weights, d) for d in grid]
    if support[0] == 0.0:
        candidates.append(0.0)  # lim Δ→0+ of the ratio when P(R = 0) > 0
    brute = min(candidates)
    assert math.isclose(gittins_rank(values, weights), brute, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(_distributions(), st.randoms(use_true_random=False))
def test_no_quantum_beats_the_rank(dist: tuple[list[float], list[float]], rnd: random.Random) -> None:
    """The minimum over all Δ > 0 is attained at a support point."""
    values, weights = dist
    rank = gittins_rank(values, weights)
    top = max(_support(values, weights))
    for _ in range(200):
        delta = top * (1.0 - rnd.random())  # uniform in (0, top]
        if delta > 0.0:
            assert _ratio_at(values, weights, delta) >= rank * (1.0 - 1e-12)


@settings(max_examples=200, deadline=None)
@given(_distributions())
def test_rank_between_smallest_support_point_and_mean(
    dist: tuple[list[float], list[float]],
) -> None:
    values, weights = dist
    rank = gittins_rank(values, weights)
    mean = float(np.average(values, weights=weights))
    smallest = _support(values, weights)[0]
    assert smallest * (1.0 - 1e-12) <= rank <= mean * (1.0 + 1e-12)


@settings(max_examples=200, deadline=None)
@given(_distributions())
def test_simplified_never_exceeds_exact(dist: tuple[list[float], list[float]]) -> None:
    values, weights = dist
    exact = gittins_rank(values, weights)
    simplified = gittins_rank(values, weights, simplified=True)
    assert _support(values, weights)[0] * (1.0 - 1e-12) <= simplified
    assert simplified <= exact * (1.0 + 1e-12)


@settings(max_examples=100, deadline=None)
@given(_distributions(), st.floats(0.0, 1000.0))
def test_conditioned_matches_shifted_tail(
    dist: tuple[list[float], list[float]], attained: float
) -> None:
    values, weights = dist
    tail = [(v - attained, w) for v, w in zip(values, weights) if v > attained and w > 0]
    expected = (
        gittins_rank([v for v, _ in tail], [w for _, w in tail])
        if tail
        else gittins_rank(values, weights)
    )
    assert gittins_rank_conditioned(values, attained, weights) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- hand examples


def test_two_point_example_by_hand() -> None:
    # R = 1 or 4 with prob 1/2. Δ=1: (0.5·1 + 1·0.5)/0.5 = 2. Δ=4: mean 2.5. rank = 2.
    assert gittins_rank([1.0, 4.0]) == pytest.approx(2.0)
    # The ablation agrees at j = 1 and j = n, so any two-point distribution ties.
    assert gittins_rank([1.0, 4.0], simplified=True) == pytest.approx(2.0)


def test_three_point_example_where_ablation_differs() -> None:
    # R ∈ {1, 2, 10}, prob 1/3 each.
    # exact:      Δ=1: (1/3)/(1/3)=3; Δ=2: (1/3 + 2/3 + 2·1/3)/(2/3) = 2.5; Δ=10: 13/3.
    # simplified: Δ=1: 3;             Δ=2: (1/3 + 2/3)/(2/3)^2 = 2.25;       Δ=10: 13/3.
    assert gittins_rank([1.0, 2.0, 10.0]) == pytest.approx(2.5)
    assert gittins_rank([1.0, 2.0, 10.0], simplified=True) == pytest.approx(2.25)


def test_duplicates_merge_like_weights() -> None:
    assert gittins_rank([1.0, 1.0, 1.0, 5.0]) == pytest.approx(
        gittins_rank([1.0, 5.0], [3.0, 1.0])
    )
    assert gittins_rank([1.0, 5.0], [3.0, 1.0]) == pytest.approx(gittins_rank([1.0, 5.0], [6, 2]))


def test_zero_sizes() -> None:
    assert gittins_rank([0.0, 0.0]) == 0.0
    assert gittins_rank([0.0, 7.0, 9.0]) == 0.0  # part of the class finishes at once
    assert gittins_rank([0.0, 7.0], [0.0, 1.0]) == 7.0  # zero-weight samples are ignored


# --------------------------------------------------------------------------- textbook cases


def test_deterministic_sizes_give_srpt_order() -> None:
    sizes = [7.0, 3.0, 12.5, 0.5, 9.0]
    ranks = [gittins_rank([s, s, s]) for s in sizes]
    assert ranks == sizes
    assert sorted(range(len(sizes)), key=ranks.__getitem__) == sorted(
        range(len(sizes)), key=sizes.__getitem__
    )
    assert gittins_rank_conditioned([12.5], 10.0) == pytest.approx(2.5)  # remaining size


def test_memoryless_exact_geometric_has_constant_index() -> None:
    """Geometric on multiples of h is the discrete exponential: rank = mean = h/(1-q)."""
    h, q = 1 / 32, math.exp(-1 / 32)
    k = np.arange(1, 2049)  # sizes up to 64; dropped tail mass q^2048 ≈ e^-64
    sizes, pmf = k * h, (1 - q) * q ** (k - 1)
    for attained in (0.0, 1.0, 2.0, 5.0):
        assert gittins_rank_conditioned(sizes, attained, pmf) == pytest.approx(h / (1 - q), rel=1e-9)


def test_memoryless_sampled_geometric_has_nearly_constant_index() -> None:
    samples = np.random.default_rng(0).geometric(0.1, 200_000).astype(float)  # mean 10
    for attained in (0, 1, 2, 5):
        assert gittins_rank_conditioned(samples, attained) == pytest.approx(10.0, rel=0.04)


def test_decreasing_hazard_gives_las_order() -> None:
    k = np.arange(1, 10_001, dtype=float)
    # Hyperexponential-like mixture of geometrics: mean 2 w.p. 0.8, mean 50 w.p. 0.2.
    mixture = 0.8 * 0.5 * 0.5 ** (k - 1) + 0.2 * 0.02 * 0.98 ** (k - 1)
    # Discrete Pareto: P(S = k) = k^-1.5 - (k+1)^-1.5, hazard 1 - (k/(k+1))^1.5 decreasing.
    pareto = k**-1.5 - (k + 1) ** -1.5
    for pmf in (mixture, pareto):
        ranks = [gittins_rank_conditioned(k, a, pmf) for a in (0, 1, 2, 5, 10, 20)]
        assert all(a < b for a, b in zip(ranks, ranks[1:])), ranks


def test_increasing_hazard_gives_fcfs_order() -> None:
    sizes = np.arange(1, 101, dtype=float)  # uniform on 1..100: rank = mean remaining
    attained = (0, 10, 50, 90)
    ranks = [gittins_rank_conditioned(sizes, a) for a in attained]
    assert ranks == pytest.approx([(101 - a) / 2 for a in attained])
    assert all(a > b for a, b in zip(ranks, ranks[1:]))
    # A fresh job (rank = mean 50.5) never preempts a started one.
    assert max(ranks[1:]) < gittins_rank(sizes)


def test_job_that_outlived_its_history_ranks_as_a_fresh_job() -> None:
    samples = [2.0, 4.0, 9.0]
    assert gittins_rank_conditioned(samples, 9.0) == gittins_rank(samples)
    assert gittins_rank_conditioned(samples, 50.0) == gittins_rank(samples)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("samples", "weights", "message"),
    [
        ([], None, "empty"),
        ([1.0, -2.0], None, "negative"),
        ([1.0, float("nan")], None, "NaN"),
        ([1.0, float("inf")], None, "inf"),
        ([[1.0, 2.0]], None, "1-D"),
        (["a", "b"], None, "numbers"),
        ([1.0, 2.0], [1.0], "length"),
        ([1.0, 2.0], [0.0, 0.0], "all zero"),
        ([1.0, 2.0], [1.0, -1.0], "weights contains negative"),
        ([1.0, 2.0], [1.0, float("nan")], "weights contains NaN"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(
    samples: list, weights: list | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gittins_rank(samples, weights)
    with pytest.raises(ValueError, match=message):
        gittins_rank_conditioned(samples, 0.0, weights)


@pytest.mark.parametrize("attained", [-1.0, float("nan"), float("inf")])
def test_bad_attained_raises(attained: float) -> None:
    with pytest.raises(ValueError, match="attained"):
        gittins_rank_conditioned([1.0, 2.0], attained)


# --------------------------------------------------------------------------- cache


def test_cache_counts_hits_and_misses_and_computes_once() -> None:
    cache = GittinsRankCache(maxsize=10)
    calls: list[str] = []

    def compute(key: str) -> float:
        calls.append(key)
        return float(len(key))

    assert cache.get_or_compute("ab", lambda: compute("ab")) == 2.0
    assert cache.get_or_compute("ab", lambda: compute("ab")) == 2.0
    assert cache.get_or_compute(("x", 1), lambda: 7) == 7.0
    assert (cache.hits, cache.misses, len(cache), calls) == (1, 2, 2, ["ab"])


def test_cache_evicts_least_recently_used_at_maxsize() -> None:
    cache = GittinsRankCache(maxsize=2)
    cache.get_or_compute("a", lambda: 1.0)
    cache.get_or_compute("b", lambda: 2.0)
    cache.get_or_compute("a", lambda: 99.0)  # hit: "a" becomes most recent
    cache.get_or_compute("c", lambda: 3.0)  # evicts "b"
    assert len(cache) == 2
    assert cache.get_or_compute("a", lambda: 99.0) == 1.0
    assert cache.get_or_compute("b", lambda: 20.0) == 20.0  # recomputed after eviction
    assert (cache.hits, cache.misses) == (2, 4)


def test_cache_default_and_invalid_maxsize() -> None:
    assert GittinsRankCache().maxsize == 100_000
    with pytest.raises(ValueError, match="maxsize"):
        GittinsRankCache(maxsize=0)
