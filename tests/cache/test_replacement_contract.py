"""The contract every policy keeps, checked on each of them (the fsspec.caching habit: every
test parametrized over every implementation)."""

from __future__ import annotations

import pickle
import random

import pytest
from cache_support import random_records, run, unit_records

from hermesflow.cache.registry import CachePolicyKind, make_cache
from hermesflow.cache.replacement import Outcome, ReplacementCache
from hermesflow.cache.trace import TraceRecord

ALL_KINDS = list(CachePolicyKind)
ONLINE_KINDS = [kind for kind in CachePolicyKind if kind is not CachePolicyKind.BELADY]


def build(kind: CachePolicyKind, capacity: int, records: list[TraceRecord]) -> ReplacementCache:
    return make_cache(kind, capacity, trace=records)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_oversize_item_is_bypassed_without_touching_the_cache(kind: CachePolicyKind) -> None:
    records = [TraceRecord("a", 4), TraceRecord("b", 4), TraceRecord("big", 11),
               TraceRecord("big", 11, prefetch=True), TraceRecord("a", 4), TraceRecord("b", 4)]
    cache = build(kind, 10, records)
    results = run(cache, records)
    assert [r.outcome for r in results] == [
        Outcome.ADMITTED, Outcome.ADMITTED, Outcome.BYPASSED, Outcome.BYPASSED,
        Outcome.RESIDENT, Outcome.RESIDENT,
    ]
    assert all(result.evicted == () for result in results)
    assert "big" not in cache
    stats = cache.stats
    assert (stats.misses, stats.bypasses, stats.miss_bytes, stats.hits) == (3, 1, 19, 2)
    assert (stats.prefetches, stats.admitted_bytes) == (0, 8)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_invariants_hold_on_random_mixed_size_traces(kind: CachePolicyKind, seed: int) -> None:
    """After every step: the budget holds, outcomes agree with membership, evicted and
    discarded keys are gone, and the resident set is exactly what the results imply."""
    records = random_records(seed, 2500, distinct=60, max_size=30, prefetch_share=0.15)
    rng = random.Random(seed)
    cache = build(kind, 200, records)
    resident: dict[str, int] = {}
    for record in records:
        if rng.random() < 0.02 and resident:
            victim = rng.choice(sorted(resident))
            assert cache.discard(victim)
            del resident[victim]
        if rng.random() < 0.01:
            for key in cache.resize(rng.randint(60, 300)):
                del resident[key]
        was_resident = record.key in resident
        result = (cache.prefetch if record.prefetch else cache.access)(record.key, record.size)
        assert (result.outcome is Outcome.RESIDENT) == was_resident
        for key in result.evicted:
            assert key != record.key and key not in cache
            del resident[key]
        if result.outcome is Outcome.ADMITTED:
            resident[record.key] = record.size
        assert cache.used == sum(resident.values()) <= cache.capacity
        assert len(cache) == len(resident)
        assert all(key in cache for key in resident)
    stats = cache.stats
    assert stats.admitted_bytes - stats.evicted_bytes - stats.discarded_bytes == cache.used
    assert stats.accesses == sum(not record.prefetch for record in records)
    assert stats.hits > 0 and stats.evictions > 0


@pytest.mark.parametrize("kind", ONLINE_KINDS)
def test_prefetch_hits_and_wasted_prefetch_bytes(kind: CachePolicyKind) -> None:
    cache = make_cache(kind, 4)
    assert cache.prefetch("a", 1).outcome is Outcome.ADMITTED
    assert cache.prefetch("a", 1).outcome is Outcome.RESIDENT
    cache.access("a", 1)
    cache.access("a", 1)
    stats = cache.stats
    assert (stats.prefetches, stats.prefetched_bytes) == (1, 1)
    assert (stats.prefetch_hits, stats.prefetch_hit_bytes, stats.hits) == (1, 1, 1)
    assert stats.hit_ratio == stats.prefetch_hit_ratio == 0.5

    assert cache.prefetch("w", 2).outcome is Outcome.ADMITTED
    evicted = [key for i in range(20) for key in cache.access(f"s{i}", 1).evicted]
    assert "w" in evicted  # never used: every policy lets it go under a scan
    assert cache.stats.wasted_prefetch_bytes == 2


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_discard_forgets_the_item_and_is_not_an_eviction(kind: CachePolicyKind) -> None:
    records = [*unit_records("abc"), TraceRecord("p", 1, prefetch=True),
               *unit_records("dabcdefghabp")]
    cache = build(kind, 3, records)
    run(cache, records[:3])
    assert cache.discard("b") and "b" not in cache
    assert not cache.discard("b") and not cache.discard("never-seen")
    assert cache.prefetch("p", 1).outcome is Outcome.ADMITTED
    assert cache.discard("p")
    assert cache.access("d", 1).evicted == ()  # the bytes of b and p are free again
    run(cache, records[5:])  # the policy must not offer b or p as victims any more
    stats = cache.stats
    assert (stats.discarded_bytes, stats.wasted_prefetch_bytes) == (2, 0)
    assert stats.admitted_bytes - stats.evicted_bytes - stats.discarded_bytes == cache.used


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_resize_shrink_evicts_and_growth_does_not(kind: CachePolicyKind) -> None:
    keys = [f"k{i}" for i in range(10)]
    records = unit_records([*keys, *keys, "k0"])
    cache = build(kind, 10, records)
    run(cache, records[:10])
    evicted = cache.resize(4)
    assert len(set(evicted)) == 6 and set(evicted) <= set(keys)
    assert not any(key in cache for key in evicted)
    assert (cache.used, len(cache), cache.stats.evictions) == (4, 4, 6)
    assert cache.resize(20) == ()
    run(cache, records[10:20])
    assert cache.stats.evictions == 6
    resident = len(cache)
    assert len(cache.resize(0)) == resident and cache.used == 0
    assert cache.access("k0", 1).outcome is Outcome.BYPASSED


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_pickled_copy_carries_on_identically(kind: CachePolicyKind) -> None:
    """Ray ships caches to workers by pickling: a copy taken mid-trace must behave the same."""
    records = random_records(11, 1200, distinct=40, max_size=6, prefetch_share=0.1)
    cache = build(kind, 40, records)
    run(cache, records[:600])
    copy = pickle.loads(pickle.dumps(cache))
    assert run(copy, records[600:]) == run(cache, records[600:])
    assert copy.stats == cache.stats


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bad_arguments_say_what_to_give(kind: CachePolicyKind) -> None:
    with pytest.raises(ValueError, match="byte budget >= 0"):
        make_cache(kind, -1, trace=[])
    cache = make_cache(kind, 10, trace=unit_records("aa"))
    with pytest.raises(ValueError, match="sizes are byte counts >= 0"):
        cache.prefetch("a", -1)
    with pytest.raises(ValueError, match="sizes are byte counts >= 0"):
        cache.access("a", -1)
    assert cache.stats.misses == 0  # a refused call counts nothing and moves nothing on
    assert cache.access("a", 1).outcome is Outcome.ADMITTED
    with pytest.raises(ValueError, match="None is not a valid cache key"):
        cache.prefetch(None, 1)
    with pytest.raises(ValueError, match="byte budget >= 0"):
        cache.resize(-5)
