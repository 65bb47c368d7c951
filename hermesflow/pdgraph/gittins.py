"""Gittins index (rank) of a job whose remaining size is a discrete distribution.

Let the remaining size R take the sorted support values r_1 < ... < r_n with
probabilities p_1, ..., p_n (built from observed samples, optionally weighted).
If the scheduler serves the job for a quantum Δ > 0, the expected service it
spends is E[min(R, Δ)] and the job completes with probability P(R ≤ Δ). The
Gittins *rank* is the best achievable service spent per unit of completion
probability:

    rank(R) = min_{Δ > 0}  E[min(R, Δ)] / P(R ≤ Δ)

Lower rank = serve first. (The classical Gittins *index* is 1 / rank.)

Why the minimum is attained at a support point: for Δ < r_1 the denominator
is 0, so the ratio is +inf. For Δ in [r_j, r_{j+1}) the denominator stays at
Σ_{i≤j} p_i while the numerator Σ_{i≤j} p_i r_i + Δ Σ_{i>j} p_i grows linearly
in Δ, so the ratio is smallest at the left end Δ = r_j. For Δ ≥ r_n the ratio
is the mean. Hence

    rank = min_j ( Σ_{i≤j} p_i r_i + r_j Σ_{i>j} p_i ) / Σ_{i≤j} p_i,

which one sort and a few cumulative sums evaluate in O(n log n).

Two bounds follow at once: rank ≤ E[R] (take Δ = r_n) and rank ≥ r_1 (every
r_i in the numerator is at least r_1). If 0 is in the support the rank is 0:
part of the class finishes immediately.

Textbook limits (Gittins policy = serve the lowest rank at each instant):

* Deterministic size c: only Δ = c exists, rank = c; conditioning on attained
  service a gives c − a, so ranking by Gittins is SRPT.
* Exponential size with rate μ: E[min(R, Δ)] = P(R ≤ Δ) / μ for every Δ, so
  rank = 1/μ at any attained service (memorylessness): a constant index, every
  order is equally good.
* Decreasing hazard rate (e.g. hyperexponential, Pareto): surviving longer
  makes a long job more likely, the rank grows with attained service, and the
  policy becomes least-attained-service (LAS / foreground-background).
* NBUE (new better than used in expectation; includes increasing hazard such as
  uniform): a fresh job's rank is its mean E[S], while a started job's rank is
  at most its mean residual E[S − a | S > a] ≤ E[S] (take Δ = ∞), so arrivals
  never preempt a started job and the policy is FCFS. Under increasing hazard
  the rank is exactly the mean residual and falls as the job is served.

Estimation caveat: ranks are exact for the empirical distribution given. With
n continuous-valued samples the Δ = r_1 term is r_1 / p_1 = n · min(samples),
which is itself random (for exponential samples it is Exp-distributed around
the true rank), so the minimum over j is biased low however large n is.
Quantise sizes to the scheduling unit (tokens, time slices) before ranking.

Ablation (``simplified=True``): the Hermes authors' released code replaces the
expected service spent E[min(R, Δ)] by the conditional mean E[R | R ≤ Δ],
i.e. it drops the ``r_j Σ_{i>j} p_i`` term (service spent on jobs still running
at Δ) and renormalises what is left:

    rank_simplified = min_j ( Σ_{i≤j} p_i r_i / Σ_{i≤j} p_i ) / Σ_{i≤j} p_i.

It differs from the exact form at Δ = r_j by (1 − P)/P · (E[R | R ≤ r_j] − r_j)
≤ 0 with P = Σ_{i≤j} p_i, so it never exceeds the exact rank and agrees with it
at j = 1, at j = n and for deterministic sizes. Keep it only to reproduce
their numbers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["GittinsRankCache", "gittins_rank", "gittins_rank_conditioned"]


def _as_checked_1d(name: str, values: ArrayLike) -> NDArray[np.float64]:
    """Return ``values`` as a 1-D float array of finite, non-negative numbers."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers: pass a 1-D sequence of floats") from exc
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D, got shape {array.shape}: pass a flat sequence of floats"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf: drop or repair those entries")
    if (array < 0).any():
        raise ValueError(f"{name} contains negative values: sizes and weights must be >= 0")
    return array


def _distribution(
    samples: ArrayLike, weights: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate the input; return (sorted distinct support, positive probabilities).

    Equal sample values are merged by summing their weights; support points
    whose total weight is 0 are dropped.
    """
    values = _as_checked_1d("samples", samples)
    if values.size == 0:
        raise ValueError("samples is empty: pass at least one observed size")
    if weights is None:
        mass = np.ones_like(values)
    else:
        mass = _as_checked_1d("weights", weights)
        if mass.size != values.size:
            raise ValueError(
                f"weights has length {mass.size} but samples has length {values.size}: "
                "pass exactly one weight per sample"
            )
    total = float(mass.sum())
    if not total > 0.0:
        raise ValueError("weights are all zero: give at least one sample a positive weight")
    if not np.isfinite(total):
        raise ValueError("weights overflow when summed: rescale them (only ratios matter)")
    support, inverse = np.unique(values, return_inverse=True)
    probs = np.bincount(inverse, weights=mass, minlength=support.size) / total
    keep = probs > 0.0
    return support[keep], probs[keep]


def _rank(support: NDArray[np.float64], probs: NDArray[np.float64], simplified: bool) -> float:
    """min_j of the rank ratio at Δ = r_j over a sorted support with positive probs."""
    cum_p = np.cumsum(probs)
    cum_pr = np.cumsum(probs * support)
    if simplified:
        ratios = cum_pr / (cum_p * cum_p)
    else:
        # Σ_{i>j} p_i as a reversed cumulative sum: no 1 - cum_p cancellation.
        tail_p = np.append(np.cumsum(probs[::-1])[::-1][1:], 0.0)
        ratios = (cum_pr + support * tail_p) / cum_p
    return float(ratios.min())


def gittins_rank(
    samples: ArrayLike, weights: ArrayLike | None = None, *, simplified: bool = False
) -> float:
    """Gittins rank of a fresh job whose size is distributed like ``samples``.

    rank = min_j ( Σ_{i≤j} p_i r_i + r_j Σ_{i>j} p_i ) / Σ_{i≤j} p_i over the
    sorted distinct values r_j with probabilities p_j (duplicates merged,
    ``weights`` normalised). Lower rank = serve first.

    Args:
        samples: 1-D non-negative sizes (e.g. remaining tokens or seconds).
        weights: optional non-negative weight per sample; uniform if omitted.
        simplified: use the Hermes-code ablation
            min_j Σ_{i≤j} p_i r_i / (Σ_{i≤j} p_i)^2 instead (see module doc).

    Raises:
        ValueError: empty input, NaN/inf/negative values, weights of the wrong
            length or all zero.
    """
    support, probs = _distribution(samples, weights)
    return _rank(support, probs, simplified)


def gittins_rank_conditioned(
    samples: ArrayLike,
    attained: float,
    weights: ArrayLike | None = None,
    *,
    simplified: bool = False,
) -> float:
    """Gittins rank of a job that has already received ``attained`` service.

    The remaining size is R = S − a given S > a: samples ≤ a are dropped, a is
    subtracted from the rest, their weights are renormalised, and the rank is
    that of :func:`gittins_rank` on the result.

    If no sample exceeds ``attained`` the job has outlived its whole history.
    It is then ranked as a fresh job of its class (the unconditioned rank): a
    rank of 0 would let a runaway job jump the queue, an infinite one would
    starve it, and restarting its expectation does neither.

    Raises:
        ValueError: as :func:`gittins_rank`, or ``attained`` negative/NaN/inf.
    """
    if not (np.isfinite(attained) and attained >= 0):
        raise ValueError(
            f"attained must be a finite number >= 0, got {attained!r}: "
            "pass the service the job has received so far"
        )
    support, probs = _distribution(samples, weights)
    alive = support > attained
    if not alive.any():
        return _rank(support, probs, simplified)
    return _rank(support[alive] - attained, probs[alive] / probs[alive].sum(), simplified)


class GittinsRankCache:
    """Bounded memo of Gittins ranks, least recently used entry evicted first.

    Keys are whatever hashable state the caller ranks by (e.g. a PDGraph
    state); values are the ranks ``fn`` computed for them.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}: the cache needs room")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._ranks: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ranks)

    def get_or_compute(self, key: Hashable, fn: Callable[[], float]) -> float:
        """Return the cached rank for ``key``, calling ``fn()`` once on a miss."""
        if key in self._ranks:
            self.hits += 1
            self._ranks.move_to_end(key)
            return self._ranks[key]
        self.misses += 1
        rank = float(fn())
        self._store(key, rank)
        return rank

    def discard(self, stale: Callable[[Hashable], bool]) -> None:
        """Forget the ranks whose key `stale` picks (a refitted class's), keeping the rest."""
        for key in [key for key in self._ranks if stale(key)]:
            del self._ranks[key]

    def update(self, ranks: Mapping[Hashable, float]) -> None:
        """Add ranks computed elsewhere (a prepared graph's), as if each had been asked for."""
        for key, rank in ranks.items():
            self._store(key, float(rank))

    def _store(self, key: Hashable, rank: float) -> None:
        self._ranks[key] = rank
        self._ranks.move_to_end(key)
        if len(self._ranks) > self.maxsize:
            self._ranks.popitem(last=False)
