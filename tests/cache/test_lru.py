"""LRU on textbook traces and with mixed sizes."""

from __future__ import annotations

from cache_support import evictions, run, unit_records

from hermesflow.cache.lru import LRU
from hermesflow.cache.replacement import Outcome
from hermesflow.cache.trace import TraceRecord, replay

# Silberschatz et al., Operating System Concepts, ch. 10: with 3 frames this reference string
# takes 15 faults under FIFO, 12 under LRU and 9 under OPT.
TEXTBOOK = [str(page) for page in "70120304230321201701"]


def test_textbook_string_takes_twelve_faults_with_three_frames() -> None:
    stats = replay(LRU(3), unit_records(TEXTBOOK))
    assert (stats.misses, stats.hits) == (12, 8)


def test_evicts_least_recently_used_first() -> None:
    results = run(LRU(3), unit_records("abcadbe"))
    # a's hit makes b the oldest; then c, then a.
    assert evictions(results) == [(), (), (), (), ("b",), ("c",), ("a",)]


def test_byte_budget_evicts_as_many_items_as_the_incoming_one_needs() -> None:
    cache = LRU(10)
    records = [TraceRecord("a", 4), TraceRecord("b", 4), TraceRecord("c", 4),
               TraceRecord("b", 4), TraceRecord("d", 8), TraceRecord("e", 2)]
    results = run(cache, records)
    assert evictions(results) == [(), (), ("a",), (), ("c", "b"), ()]
    assert results[3].outcome is Outcome.RESIDENT
    assert (cache.used, len(cache)) == (10, 2)
    assert cache.stats.evicted_bytes == 12
