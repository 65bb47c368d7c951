"""Building policies by name, and replaying traces through them."""

from __future__ import annotations

import pytest
from cache_support import random_records, run, unit_records

from hermesflow.cache.lru import LRU
from hermesflow.cache.registry import CachePolicyKind, make_cache
from hermesflow.cache.trace import TraceRecord, demand_keys, replay


def test_kinds_are_the_benchmark_result_names() -> None:
    assert {kind.value for kind in CachePolicyKind} == {
        "lru", "s3fifo", "sieve", "arc", "fsspec-lru", "belady"
    }


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown cache policy 'lfu'; known policies: lru, "):
        make_cache("lfu", 10)


def test_belady_needs_the_trace() -> None:
    with pytest.raises(ValueError, match="trace="):
        make_cache(CachePolicyKind.BELADY, 10)


def test_names_and_members_build_the_same_policy() -> None:
    records = random_records(3, 500, distinct=40, max_size=5)
    for kind in CachePolicyKind:
        by_name = replay(make_cache(kind.value, 30, trace=records), records)
        by_member = replay(make_cache(kind, 30, trace=records), records)
        assert by_name == by_member, kind


def test_fsspec_lru_is_lru_over_block_keys() -> None:
    cache = make_cache(CachePolicyKind.FSSPEC_LRU, 10)
    assert type(cache) is LRU


def test_replay_routes_prefetches_and_matches_a_step_by_step_run() -> None:
    records = random_records(7, 2000, distinct=50, max_size=8, prefetch_share=0.2)
    for kind in CachePolicyKind:
        replayed = replay(make_cache(kind, 60, trace=records), records)
        stepped = make_cache(kind, 60, trace=records)
        run(stepped, records)
        assert replayed == stepped.stats, kind
        assert replayed.accesses == len(demand_keys(records))
        assert replayed.prefetches > 0


def test_replays_chain_on_the_same_cache() -> None:
    cache = LRU(2)
    replay(cache, unit_records("ab"))
    stats = replay(cache, [TraceRecord("a", 1), TraceRecord("b", 1)])
    assert (stats.misses, stats.hits) == (2, 2)
