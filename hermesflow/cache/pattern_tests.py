"""The hypothesis tests that classify an access stream, and the re-testing that follows it.

Hermesflow's design: IGTCache (arXiv 2506.12370) classifies streams by hypothesis tests but
publishes neither the tests nor their thresholds, so these are ours; `docs/cache.md` states
them with their reasons. A stream's window of recent accesses (`WindowSample`) is one of

- `SEQUENTIAL`: the accesses move forward through the stream's order (byte offsets within an
  object, keys then offsets across a prefix's objects): prefetch ahead, evict behind;
- `SKEWED`: some items are read far more often than others: keep the hot ones;
- `RANDOM`: neither, i.e. uniform over the set of items read: cache the set only if it fits;
- `UNKNOWN`: fewer than `MIN_SAMPLES` accesses, too few to test.

**Sequential test** (one-sided binomial). Of the window's n - 1 consecutive pairs, count the
*ascents* a (the later access's position is greater). If the accesses are exchangeable (any
order of a random epoch, i.i.d. draws with or without skew), P(ascent) <= 1/2: exactly 1/2
without ties, less with repeated items. The p-value is P(Bin(n - 1, 1/2) >= a). Ascents of an
exchangeable sequence are negatively correlated (the Eulerian distribution has variance
(n + 1)/12, not the binomial's (n - 1)/4), so the test is conservative: its false-positive rate
is at most `ALPHA_SEQUENTIAL`, and a forward scan (a ~ n - 1) is still found with p ~ 2^-(n-1).

**Skew test** (Pearson chi-square goodness of fit against uniform over the k observed items).
With n accesses and counts c_i, X^2 = (k / n) * sum(c_i^2) - n with k - 1 degrees of freedom;
the p-value is the chi-square survival function. Uniform over a larger set than the window saw
leaves the counts zero-truncated, whose dispersion is below Poisson's, and a random epoch
(sampling without replacement) is under-dispersed too: both make the test conservative. The
chi-square approximation holds for equiprobable cells when k >= 3 and n^2 / k >= 10 (Koehler &
Larntz, JASA 1980); n >= `MIN_SAMPLES` and k <= n give n^2 / k >= 32. With k = 2 the exact
two-sided binomial test is used instead; k = 1 is no evidence of skew (p = 1).

A window is SEQUENTIAL if the sequential test rejects, else SKEWED if the skew test rejects,
else RANDOM: two tests at level alpha each, so the chance that a uniform random stream is given
any structure is at most 2 * alpha (Bonferroni).

**Re-testing** (`PatternTracker`): see its docstring. The distribution functions are written
here with `math` (scipy is not a dependency): the chi-square survival function is the
regularized upper incomplete gamma Q(df/2, x/2), the binomial tail the regularized incomplete
beta I_p(k, n - k + 1), both by the series and continued fractions of Numerical Recipes
(Press et al., 3rd ed., sections 6.2 and 6.4).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterator, Mapping
from enum import Enum
from types import MappingProxyType
from typing import NamedTuple

MIN_SAMPLES = 32
"""Accesses a window needs before it is tested: a forward scan of 32 accesses has p = 2^-31,
and the chi-square approximation's n^2/k >= 10 holds for any k <= n."""
ALPHA_SEQUENTIAL = 1e-3
"""Level of the sequential test on the full window."""
ALPHA_SKEW = 1e-3
"""Level of the skew test on the full window."""
ALPHA_CHANGE = 1e-4
"""Level of both tests on the recent window, which is tested every `TEST_INTERVAL` accesses
for a change of pattern: stricter, because a false change discards the older window."""
TEST_INTERVAL = 16
"""Accesses to a stream between two tests. The statistics are kept incrementally, so a test
costs two special-function evaluations, not a pass over the window."""
CONFIRMATIONS = 2
"""Consecutive tests that must propose the same new pattern before the stream switches."""

_EPSILON = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 10_000


class StreamPattern(Enum):
    """How a stream reads its items, as the tests classify its window."""

    UNKNOWN = "unknown"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    SKEWED = "skewed"


# ---- distribution functions ----------------------------------------------------------------


def _not_converged(function: str, **arguments: float) -> ArithmeticError:
    values = ", ".join(f"{name}={value!r}" for name, value in arguments.items())
    return ArithmeticError(
        f"{function}({values}) did not converge in {_MAX_ITERATIONS} iterations; "
        "this is a bug in hermesflow.cache.pattern_tests, please report these arguments"
    )


def regularized_upper_gamma(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), for a > 0 and x >= 0.

    The series of P = 1 - Q where it converges fast (x < a + 1), else Legendre's continued
    fraction for Q by the modified Lentz method (Numerical Recipes 6.2).
    """
    if a <= 0.0 or x < 0.0:
        raise ValueError(f"regularized_upper_gamma needs a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0.0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        denominator = a
        for _ in range(_MAX_ITERATIONS):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _EPSILON:
                return max(0.0, 1.0 - total * math.exp(log_front))
        raise _not_converged("regularized_upper_gamma", a=a, x=x)
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    fraction = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        fraction *= delta
        if abs(delta - 1.0) < _EPSILON:
            return math.exp(log_front) * fraction
    raise _not_converged("regularized_upper_gamma", a=a, x=x)


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X chi-square with `df` degrees of freedom: Q(df/2, statistic/2)."""
    if df < 1:
        raise ValueError(f"chi2_sf needs df >= 1, got {df}")
    return regularized_upper_gamma(df / 2.0, max(statistic, 0.0) / 2.0)


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes 6.4), by modified Lentz."""
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (_TINY if abs(d) < _TINY else d)
    fraction = d
    for m in range(1, _MAX_ITERATIONS):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (_TINY if abs(d) < _TINY else d)
            c = 1.0 + numerator / c
            c = _TINY if abs(c) < _TINY else c
            delta = c * d
            fraction *= delta
        if abs(delta - 1.0) < _EPSILON:
            return fraction
    raise _not_converged("regularized_beta", x=x, a=a, b=b)


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if a <= 0.0 or b <= 0.0 or not 0.0 <= x <= 1.0:
        raise ValueError(f"regularized_beta needs a, b > 0 and 0 <= x <= 1, got {x}, {a}, {b}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def binomial_sf(successes: int, trials: int, p: float) -> float:
    """P(X >= successes) for X ~ Bin(trials, p): I_p(successes, trials - successes + 1)."""
    if successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    return regularized_beta(p, successes, trials - successes + 1)


# ---- the window the tests read -------------------------------------------------------------


class WindowEntry(NamedTuple):
    """One access as a window keeps it."""

    item: Hashable
    """What the skew test counts: a block index within an object, an object across a prefix."""
    ascent: bool
    """Whether its position is greater than the stream's previous access's position."""
    time: float
    nbytes: int
    """The bytes of `item` (a block, or the whole object) as known when it was read."""


class WindowSample:
    """The last `capacity` entries of a stream and the sufficient statistics of both tests.

    Counts per item, the sum of squared counts and the number of ascents are kept up to date
    on every push and drop, so a test never scans the window. `ascents` counts the pairs inside
    the window: the first entry's flag compares it with an access that has already left.
    """

    __slots__ = ("_ascents", "_capacity", "_counts", "_entries", "_sum_of_squares")

    def __init__(self, capacity: int) -> None:
        if capacity < MIN_SAMPLES:
            raise ValueError(
                f"a window of {capacity} entries can never be tested; give at least {MIN_SAMPLES}"
            )
        self._capacity = capacity
        self._entries: deque[WindowEntry] = deque()
        self._counts: dict[Hashable, int] = {}
        self._sum_of_squares = 0
        self._ascents = 0

    def push(self, entry: WindowEntry) -> WindowEntry | None:
        """Append the newest entry; return the oldest one if it had to leave, else None."""
        entries = self._entries
        if entries:
            self._ascents += entry.ascent
        entries.append(entry)
        count = self._counts.get(entry.item, 0)
        self._counts[entry.item] = count + 1
        self._sum_of_squares += 2 * count + 1
        return self._drop_oldest() if len(entries) > self._capacity else None

    def truncate(self, keep: int) -> list[WindowEntry]:
        """Keep only the newest `keep` entries; return the dropped ones, oldest first."""
        return [self._drop_oldest() for _ in range(len(self._entries) - keep)]

    def _drop_oldest(self) -> WindowEntry:
        entries = self._entries
        oldest = entries.popleft()
        count = self._counts[oldest.item]
        if count == 1:
            del self._counts[oldest.item]
        else:
            self._counts[oldest.item] = count - 1
        self._sum_of_squares -= 2 * count - 1
        if entries:
            self._ascents -= entries[0].ascent  # its pair with the dropped entry left
        return oldest

    def __iter__(self) -> Iterator[WindowEntry]:
        return iter(self._entries)

    @property
    def accesses(self) -> int:
        """n: the entries in the window."""
        return len(self._entries)

    @property
    def ascents(self) -> int:
        return self._ascents

    @property
    def distinct(self) -> int:
        """k: the distinct items in the window."""
        return len(self._counts)

    @property
    def sum_of_squares(self) -> int:
        return self._sum_of_squares

    @property
    def counts(self) -> Mapping[Hashable, int]:
        """Accesses per item in the window (a read-only view)."""
        return MappingProxyType(self._counts)

    @property
    def first(self) -> WindowEntry:
        return self._entries[0]

    @property
    def last(self) -> WindowEntry:
        return self._entries[-1]


# ---- the tests -----------------------------------------------------------------------------


def sequential_p_value(sample: WindowSample) -> float:
    """P(Bin(n - 1, 1/2) >= ascents): small when the stream moves forward (module docstring)."""
    return binomial_sf(sample.ascents, max(sample.accesses - 1, 0), 0.5)


def skew_p_value(sample: WindowSample) -> float:
    """The p-value of uniform over the observed items: Pearson's chi-square for k >= 3 items,
    the exact two-sided binomial test for k = 2, 1 for a single item (module docstring)."""
    n, k = sample.accesses, sample.distinct
    if k <= 1:
        return 1.0
    if k == 2:
        # c1 + c2 = n and c1^2 + c2^2 = S give the larger count exactly.
        larger = (n + math.isqrt(2 * sample.sum_of_squares - n * n)) // 2
        return min(1.0, 2.0 * binomial_sf(larger, n, 0.5))
    return chi2_sf(k * sample.sum_of_squares / n - n, k - 1)


def classify(
    sample: WindowSample,
    alpha_sequential: float = ALPHA_SEQUENTIAL,
    alpha_skew: float = ALPHA_SKEW,
) -> StreamPattern:
    """SEQUENTIAL if the sequential test rejects, else SKEWED if the skew test does, else
    RANDOM; UNKNOWN below `MIN_SAMPLES` accesses."""
    if sample.accesses < MIN_SAMPLES:
        return StreamPattern.UNKNOWN
    if sequential_p_value(sample) < alpha_sequential:
        return StreamPattern.SEQUENTIAL
    if skew_p_value(sample) < alpha_skew:
        return StreamPattern.SKEWED
    return StreamPattern.RANDOM


_FINDINGS = frozenset({StreamPattern.SEQUENTIAL, StreamPattern.SKEWED})
"""The verdicts that are rejections of the null, i.e. evidence; RANDOM is its absence."""


class PatternTracker:
    """A stream's current pattern, re-tested as accesses arrive and switched with hysteresis.

    The caller keeps two windows of the stream: the full one (`window` accesses, for power) and
    a recent one (its newest `recent_window` accesses, to see a change quickly), and calls
    `update` every `TEST_INTERVAL` accesses. Each update classifies both (the recent one at the
    stricter `ALPHA_CHANGE`) and proposes a new pattern:

    - the recent verdict, when it differs from the current pattern and is either a finding
      (SEQUENTIAL or SKEWED at `ALPHA_CHANGE`) or the end of a sequential run (a scan fails the
      ascent test on a recent window only if it has stopped: its p-value is ~2^-(n-1));
    - otherwise the full verdict, when it differs from the current pattern.

    A stream switches only when `CONFIRMATIONS` consecutive updates propose the same pattern,
    so one unlucky window does not flip it. A switch proposed by the recent window means the
    older accesses belong to the previous regime: `update` returns True and the caller must
    truncate the full window to the recent one, or the old regime would keep voting (a scan's
    ascents stay significant in a 1,024-access window for ~900 accesses after it stops). A
    RANDOM recent verdict never overrides a SKEWED stream: absence of evidence in a small window
    is expected of a mildly skewed stream; the full window has to stop finding the skew.

    Hence a switch away from SEQUENTIAL, or to SEQUENTIAL or SKEWED, takes at most about
    `recent_window + CONFIRMATIONS * TEST_INTERVAL` accesses, and SKEWED to RANDOM at most
    about `window + CONFIRMATIONS * TEST_INTERVAL`. The first verdict after UNKNOWN is adopted
    at once: there is no earlier claim to protect.
    """

    __slots__ = ("_candidate", "_pattern", "_streak")

    def __init__(self) -> None:
        self._pattern = StreamPattern.UNKNOWN
        self._candidate = StreamPattern.UNKNOWN
        self._streak = 0

    @property
    def pattern(self) -> StreamPattern:
        return self._pattern

    def update(self, full: WindowSample, recent: WindowSample) -> bool:
        """Re-test the stream; True when the full window must be cut to the recent one."""
        current = self._pattern
        full_verdict = classify(full)
        if current is StreamPattern.UNKNOWN:
            self._pattern = full_verdict
            return False
        recent_verdict = classify(recent, ALPHA_CHANGE, ALPHA_CHANGE)
        if recent_verdict not in (StreamPattern.UNKNOWN, current) and (
            recent_verdict in _FINDINGS or current is StreamPattern.SEQUENTIAL
        ):
            proposal, from_recent = recent_verdict, True
        elif full_verdict not in (StreamPattern.UNKNOWN, current):
            proposal, from_recent = full_verdict, False
        else:
            self._streak = 0
            return False
        if proposal is self._candidate and self._streak:
            self._streak += 1
        else:
            self._candidate, self._streak = proposal, 1
        if self._streak < CONFIRMATIONS:
            return False
        self._pattern, self._streak = proposal, 0
        return from_recent
