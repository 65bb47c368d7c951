"""Belady's MIN with bypass: a textbook trace, an exhaustive optimum, and the ceiling claim."""

from __future__ import annotations

import functools
import random

import pytest
from cache_support import evictions, random_records, run, unit_records

from hermesflow.cache.belady import Belady
from hermesflow.cache.registry import CachePolicyKind, make_cache
from hermesflow.cache.replacement import Outcome
from hermesflow.cache.trace import TraceRecord, replay

TEXTBOOK = [str(page) for page in "70120304230321201701"]


def test_textbook_string_with_bypass() -> None:
    # Forced to admit, OPT takes 9 faults on this string with 3 frames. Free to bypass, MIN
    # refuses 4 (never used again) and 7 at the end, keeping 3 for its reuse: 8 misses.
    cache = make_cache(CachePolicyKind.BELADY, 3, trace=unit_records(TEXTBOOK))
    results = run(cache, unit_records(TEXTBOOK))
    assert [i for i, r in enumerate(results) if r.outcome is Outcome.BYPASSED] == [7, 17]
    assert [key for keys in evictions(results) for key in keys] == ["7", "1", "3"]
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.bypasses) == (12, 8, 2)


def optimal_hits(keys: list[str], capacity: int) -> int:
    """The most demand hits any policy can get on unit-size `keys`, by exhaustive search over
    every choice at every miss: bypass, or admit and evict any one resident item."""

    @functools.cache
    def best(position: int, resident: frozenset[str]) -> int:
        if position == len(keys):
            return 0
        key = keys[position]
        if key in resident:
            return 1 + best(position + 1, resident)
        choices = [best(position + 1, resident)]
        if len(resident) < capacity:
            choices.append(best(position + 1, resident | {key}))
        else:
            choices += [best(position + 1, resident - {old} | {key}) for old in resident]
        return max(choices)

    return best(0, frozenset())


def test_equals_the_exhaustive_optimum_on_tiny_traces() -> None:
    rng = random.Random(15)
    for _ in range(300):
        keys = [rng.choice("abcde") for _ in range(rng.randint(1, 11))]
        capacity = rng.randint(1, 3)
        records = unit_records(keys)
        stats = replay(Belady(capacity, keys), records)
        assert stats.hits == optimal_hits(keys, capacity), (keys, capacity)


@pytest.mark.parametrize("seed", range(6))
def test_no_policy_beats_it_on_uniform_sizes(seed: int) -> None:
    records = random_records(seed, 3000, distinct=80)
    ceiling = replay(make_cache(CachePolicyKind.BELADY, 12, trace=records), records).hits
    for kind in CachePolicyKind:
        assert replay(make_cache(kind, 12, trace=records), records).hits <= ceiling, kind


def test_admits_only_what_is_needed_sooner_than_everything_it_displaces() -> None:
    # A and B fill the cache; C needs both slots and is needed after B but before A. Evicting
    # the farthest item alone is not enough room, and B is wanted sooner: C is bypassed.
    records = [TraceRecord("A", 5), TraceRecord("B", 5), TraceRecord("C", 8),
               TraceRecord("B", 5), TraceRecord("C", 8), TraceRecord("A", 5)]
    stats = replay(make_cache(CachePolicyKind.BELADY, 10, trace=records), records)
    assert (stats.hits, stats.bypasses, stats.evictions) == (2, 2, 0)


def test_prefetch_of_an_item_needed_later_is_admitted_and_may_be_wasted() -> None:
    records = [TraceRecord("z", 1, prefetch=True), TraceRecord("never", 1, prefetch=True),
               TraceRecord("b", 1), TraceRecord("b", 1), TraceRecord("z", 1)]
    cache = make_cache(CachePolicyKind.BELADY, 1, trace=records)
    results = run(cache, records)
    # z is needed (at the last access), so it is prefetched; "never" is refused; b is needed
    # sooner than z, so z makes room for it and its prefetched byte is wasted.
    assert [result.outcome for result in results[:3]] == [
        Outcome.ADMITTED, Outcome.BYPASSED, Outcome.ADMITTED
    ]
    assert results[2].evicted == ("z",)
    stats = cache.stats
    assert (stats.prefetches, stats.wasted_prefetch_bytes, stats.hits, stats.bypasses) == (
        1, 1, 1, 1
    )


def test_replaying_another_trace_is_an_error() -> None:
    cache = Belady(2, ["a", "b"])
    cache.access("a", 1)
    with pytest.raises(ValueError, match=r"access #1 is 'c'.*'b'.*trace=records"):
        cache.access("c", 1)
    cache.access("b", 1)
    with pytest.raises(ValueError, match="no more accesses"):
        cache.access("a", 1)
