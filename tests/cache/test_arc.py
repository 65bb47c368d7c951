"""ARC on hand-worked traces: scan resistance, and the target p moving on ghost hits."""

from __future__ import annotations

from cache_support import evictions, run, unit_records

from hermesflow.cache.arc import ARC
from hermesflow.cache.lru import LRU
from hermesflow.cache.replacement import Outcome
from hermesflow.cache.trace import replay

SCAN = "ababcdefghab"


def test_a_scan_cycles_through_t1_and_leaves_t2_alone() -> None:
    cache = ARC(4)
    results = run(cache, unit_records(SCAN))
    # a and b are hit, so they sit in T2; with p = 0 every eviction takes T1's oldest.
    assert evictions(results) == [(), (), (), (), (), (), ("c",), ("d",), ("e",), ("f",), (), ()]
    assert {key for key in "abcdefgh" if key in cache} == {"a", "b", "g", "h"}


def test_scan_resistance_against_lru() -> None:
    arc = replay(ARC(4), unit_records(SCAN))
    lru = replay(LRU(4), unit_records(SCAN))
    assert (arc.hits, lru.hits) == (4, 2)


def test_ghost_hits_move_the_target_both_ways() -> None:
    cache = ARC(2)
    results = run(cache, unit_records("aabcbdae"))
    # c: T1=[b] is above p=0: b goes to B1.  b (in B1): p rises to 1, T1=[c] is not above it,
    # so T2's a goes to B2; b enters T2.  d: T1=[c] is still not above p=1: T2's b goes.
    # a (in B2): p falls back to 0: T1's c goes.  e: T1=[d] is above p=0: d goes (with p
    # left at 1, T2's a would have gone instead).
    assert evictions(results) == [(), (), (), ("b",), ("a",), ("b",), ("c",), ("d",)]
    assert results[1].outcome is Outcome.RESIDENT
    assert cache.stats.hits == 1
    assert {key for key in "abcde" if key in cache} == {"a", "e"}
