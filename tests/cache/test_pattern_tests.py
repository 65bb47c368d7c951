"""The pattern tests: their distribution functions against closed forms, their incremental
statistics against a recount, their false-positive rates on the null and their power, and the
tracker's hysteresis. Windows are seeded, so every rate below is the same on every run."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest

from hermesflow.cache.pattern_tests import (
    ALPHA_SEQUENTIAL,
    ALPHA_SKEW,
    CONFIRMATIONS,
    MIN_SAMPLES,
    PatternTracker,
    StreamPattern,
    WindowEntry,
    WindowSample,
    binomial_sf,
    chi2_sf,
    classify,
    regularized_beta,
    regularized_upper_gamma,
    sequential_p_value,
    skew_p_value,
)

WINDOW = 1000
NULL_WINDOWS = 200


def sample_of(items: Sequence[int], capacity: int = WINDOW) -> WindowSample:
    """A window of `items` in order, each item also its position (a block index, say)."""
    sample = WindowSample(capacity)
    previous = None
    for time, item in enumerate(items):
        sample.push(WindowEntry(item, previous is not None and item > previous, time, 1))
        previous = item
    return sample


def zipf(rng: np.random.Generator, items: int, exponent: float, size: int) -> list[int]:
    weights = np.arange(1, items + 1, dtype=float) ** -exponent
    return rng.choice(items, size=size, p=weights / weights.sum()).tolist()


# ---- distribution functions ----------------------------------------------------------------


def _chi2_sf_even(statistic: float, df: int) -> float:
    """exp(-x/2) * sum_{i < df/2} (x/2)^i / i!, summed in logs (the closed form for even df)."""
    half = statistic / 2
    return sum(math.exp(i * math.log(half) - half - math.lgamma(i + 1)) for i in range(df // 2))


@pytest.mark.parametrize("df", [2, 4, 10, 30, 100, 256, 600])
def test_chi2_sf_matches_the_closed_form_for_even_degrees_of_freedom(df: int) -> None:
    for statistic in (0.01, 1.0, df / 2, df - 1.0, float(df), df + 1.0, 1.5 * df, 3.0 * df):
        expected = _chi2_sf_even(statistic, df)
        assert chi2_sf(statistic, df) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_chi2_sf_with_one_degree_of_freedom_is_erfc() -> None:
    for statistic in (1e-4, 0.5, 1.0, 3.841458820694124, 10.0, 50.0, 200.0):
        expected = math.erfc(math.sqrt(statistic / 2))
        assert chi2_sf(statistic, 1) == pytest.approx(expected, rel=1e-9)
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-12)  # the 95 % quantile
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, rel=1e-12)
    assert chi2_sf(0.0, 7) == chi2_sf(-1.0, 7) == 1.0


def test_upper_gamma_special_cases() -> None:
    for x in (0.1, 1.0, 2.5, 20.0):
        assert regularized_upper_gamma(1.0, x) == pytest.approx(math.exp(-x), rel=1e-12)
        assert regularized_upper_gamma(0.5, x) == pytest.approx(math.erfc(math.sqrt(x)), rel=1e-9)


def _exact_binomial_sf(successes: int, trials: int, p: Fraction) -> float:
    """The tail in integers, divided once (Python rounds an int / int division correctly)."""
    hit, miss, whole = p.numerator, p.denominator - p.numerator, p.denominator
    tail = sum(
        math.comb(trials, i) * hit**i * miss ** (trials - i) for i in range(successes, trials + 1)
    )
    return tail / whole**trials


@pytest.mark.parametrize("trials", [1, 7, 31, 200, 1023])
@pytest.mark.parametrize("p", [Fraction(1, 2), Fraction(3, 10)])
def test_binomial_sf_matches_exact_sums(trials: int, p: Fraction) -> None:
    for successes in range(0, trials + 2, max(1, trials // 41)):
        expected = _exact_binomial_sf(successes, trials, p)
        assert binomial_sf(successes, trials, float(p)) == pytest.approx(expected, rel=1e-9), (
            successes
        )


def test_regularized_beta_identities() -> None:
    for x in (0.01, 0.3, 0.5, 0.77, 0.99):
        assert regularized_beta(x, 1.0, 1.0) == pytest.approx(x)
        assert regularized_beta(x, 4.0, 1.0) == pytest.approx(x**4)
        assert regularized_beta(x, 3.5, 40.0) == pytest.approx(
            1 - regularized_beta(1 - x, 40.0, 3.5)
        )


def test_bad_arguments_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match="a > 0 and x >= 0"):
        regularized_upper_gamma(0.0, 1.0)
    with pytest.raises(ValueError, match="df >= 1"):
        chi2_sf(1.0, 0)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        regularized_beta(1.5, 1.0, 1.0)
    with pytest.raises(ValueError, match=f"at least {MIN_SAMPLES}"):
        WindowSample(MIN_SAMPLES - 1)


# ---- the window's statistics ---------------------------------------------------------------


def test_incremental_statistics_equal_a_recount() -> None:
    rng = random.Random(5)
    sample = WindowSample(64)
    previous = None
    for step in range(3000):
        item = rng.randrange(40) if rng.random() < 0.7 else step
        sample.push(WindowEntry(item, previous is not None and item > previous, step, 1))
        previous = item
        if rng.random() < 0.01:
            sample.truncate(rng.randrange(sample.accesses + 1))
        entries = list(sample)
        counts = Counter(entry.item for entry in entries)
        assert sample.accesses == len(entries) <= 64
        assert dict(sample.counts) == counts
        assert sample.distinct == len(counts)
        assert sample.sum_of_squares == sum(c * c for c in counts.values())
        assert sample.ascents == sum(entry.ascent for entry in entries[1:])


# ---- verdicts --------------------------------------------------------------------------------


def test_too_few_samples_are_unknown() -> None:
    assert classify(sample_of(range(MIN_SAMPLES - 1))) is StreamPattern.UNKNOWN
    assert classify(sample_of(range(MIN_SAMPLES))) is StreamPattern.SEQUENTIAL


def test_two_items_use_the_exact_binomial_test() -> None:
    rng = random.Random(2)
    even = [rng.randrange(2) for _ in range(200)]
    lopsided = [0 if rng.random() < 0.8 else 1 for _ in range(200)]
    assert classify(sample_of(even)) is StreamPattern.RANDOM
    assert classify(sample_of(lopsided)) is StreamPattern.SKEWED
    counts = Counter(lopsided)
    expected = min(1.0, 2 * _exact_binomial_sf(max(counts.values()), 200, Fraction(1, 2)))
    assert skew_p_value(sample_of(lopsided)) == pytest.approx(expected, rel=1e-9)


def test_one_item_is_no_evidence_of_skew() -> None:
    assert skew_p_value(sample_of([7] * 100)) == 1.0
    assert classify(sample_of([7] * 100)) is StreamPattern.RANDOM


def _share(windows: Sequence[WindowSample], pattern: StreamPattern) -> float:
    return sum(classify(window) is pattern for window in windows) / len(windows)


def test_false_positive_rates_on_uniform_windows_are_within_twice_alpha() -> None:
    rng = np.random.default_rng(11)
    with_replacement = [
        sample_of(rng.integers(500, size=WINDOW).tolist()) for _ in range(NULL_WINDOWS)
    ]
    epochs = [
        sample_of(np.concatenate([rng.permutation(400) for _ in range(3)])[:WINDOW].tolist())
        for _ in range(NULL_WINDOWS)
    ]
    for windows in (with_replacement, epochs):
        assert _share(windows, StreamPattern.SKEWED) <= 2 * ALPHA_SKEW
        assert _share(windows, StreamPattern.SEQUENTIAL) <= 2 * ALPHA_SEQUENTIAL


def test_tests_hold_their_level_where_it_is_measurable() -> None:
    """At alpha = 0.05 the rates are large enough to count: the skew test, where every item is
    seen (the chi-square's own regime), rejects close to 5 %; the ascent test is conservative."""
    rng = np.random.default_rng(12)
    windows = [sample_of(rng.integers(50, size=WINDOW).tolist()) for _ in range(400)]
    skew_rate = np.mean([skew_p_value(window) < 0.05 for window in windows])
    sequential_rate = np.mean([sequential_p_value(window) < 0.05 for window in windows])
    assert 0.02 <= skew_rate <= 0.10
    assert sequential_rate <= 0.05


def test_zipf_over_500_items_is_found_skewed_in_a_window_of_1000() -> None:
    rng = np.random.default_rng(13)
    for exponent in (1.0, 1.1, 1.2):
        windows = [sample_of(zipf(rng, 500, exponent, WINDOW)) for _ in range(NULL_WINDOWS)]
        assert _share(windows, StreamPattern.SKEWED) >= 0.95, exponent


def test_scans_are_sequential_even_with_some_jumps() -> None:
    rng = random.Random(14)
    for jump_share in (0.0, 0.1, 0.3):
        position, items = 0, []
        for _ in range(256):
            position = rng.randrange(10**6) if rng.random() < jump_share else position + 1
            items.append(position)
        assert classify(sample_of(items)) is StreamPattern.SEQUENTIAL, jump_share


# ---- the tracker ---------------------------------------------------------------------------


def _update(tracker: PatternTracker, items: Sequence[int], recent: int = 128) -> bool:
    return tracker.update(sample_of(items), sample_of(items[-recent:], capacity=recent))


def test_the_first_verdict_is_adopted_and_a_switch_needs_confirmations() -> None:
    rng = random.Random(15)
    tracker = PatternTracker()
    assert not _update(tracker, list(range(500)))
    assert tracker.pattern is StreamPattern.SEQUENTIAL
    shuffled = list(range(500)) + [rng.randrange(10**6) for _ in range(200)]
    for _ in range(CONFIRMATIONS - 1):
        assert not _update(tracker, shuffled)
        assert tracker.pattern is StreamPattern.SEQUENTIAL
    assert _update(tracker, shuffled)  # the recent window ended the scan: cut the old one
    assert tracker.pattern is StreamPattern.RANDOM


def test_a_recent_window_without_skew_does_not_override_a_skewed_stream() -> None:
    rng = np.random.default_rng(16)
    hot = zipf(rng, 500, 1.1, 900)
    uniform_tail = rng.integers(500, size=128).tolist()
    tracker = PatternTracker()
    _update(tracker, hot)
    assert tracker.pattern is StreamPattern.SKEWED
    for _ in range(2 * CONFIRMATIONS):
        assert not _update(tracker, hot + uniform_tail)
    assert tracker.pattern is StreamPattern.SKEWED
