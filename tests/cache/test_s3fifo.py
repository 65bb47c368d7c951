"""S3-FIFO on hand-worked traces: 10 one-byte slots, so the small queue's share is 1 byte."""

from __future__ import annotations

import pytest
from cache_support import evictions, run, unit_records

from hermesflow.cache.lru import LRU
from hermesflow.cache.replacement import Outcome
from hermesflow.cache.s3fifo import S3FIFO
from hermesflow.cache.trace import replay

SCANNED = [f"s{i}" for i in range(1, 13)]
LATE_SCAN = [f"s{i}" for i in range(13, 31)]
# a is read twice, then a scan of one-hit wonders s1..s12; s1 comes back once (from the
# ghost), another scan follows, and finally a and s1 are read again.
TRACE = ["a", "a", *SCANNED, "s1", *LATE_SCAN, "a", "s1"]


def test_one_hit_wonders_leave_through_the_small_queue_and_never_reach_main() -> None:
    cache = S3FIFO(10)
    results = run(cache, unit_records(TRACE))
    evicted = [key for keys in evictions(results) for key in keys]
    # s10 pushes a (hit while small) to main and s1 (never hit) out to the ghost; every later
    # eviction takes the small queue's oldest scan item, in FIFO order: main is never touched.
    assert evicted == [f"s{i}" for i in range(1, 23)]
    assert [results[-2].outcome, results[-1].outcome] == [Outcome.RESIDENT, Outcome.RESIDENT]
    assert cache.stats.hits == 3


def test_ghost_hit_enters_main_and_survives_the_scan_that_flushes_lru() -> None:
    s3fifo = replay(S3FIFO(10), unit_records(TRACE))
    lru = replay(LRU(10), unit_records(TRACE))
    assert (s3fifo.hits, lru.hits) == (3, 1)


def test_main_reinserts_items_with_a_nonzero_counter() -> None:
    keys = [f"k{i}" for i in range(1, 11)]
    trace = [key for key in keys for _ in range(2)] + ["n1", "k2", "k3", "n1", "n2"]
    results = run(S3FIFO(10), unit_records(trace))
    # n1: small is full of hit items; all move to main, which overflows at k10, and main
    # evicts its oldest, k1 (its counter was reset on promotion).
    assert results[20].evicted == ("k1",)
    # n2: n1 (hit) moves to a full main; k2 and k3 (hit in main) are reinserted, k4 goes.
    assert results[24].evicted == ("k4",)
    assert sum(result.outcome is Outcome.RESIDENT for result in results) == 13


def test_main_counter_drops_by_one_per_lap() -> None:
    keys = [f"g{i}" for i in range(1, 21)]
    # g1..g20 pass through small; the ghost keeps the last 9 evicted keys (main's share), so
    # g2..g10 come back into main. g2 is hit three times, g3 once. Then g11..g20 return from
    # the ghost: small empties and every eviction comes from main.
    trace = [*keys, *keys[1:10], "g2", "g2", "g2", "g3", *keys[10:]]
    results = run(S3FIFO(10), unit_records(trace))
    # g12: g2 (3 -> 2) and g3 (1 -> 0) go round once, g4 goes; main then loses g5..g11 in
    # order; at g20 the lap reaches g2 (2 -> 1) and g3 (0), and g3 goes.
    assert evictions(results)[-10:] == [
        ("g20",), ("g4",), ("g5",), ("g6",), ("g7",), ("g8",), ("g9",), ("g10",), ("g11",),
        ("g3",),
    ]


def test_small_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        S3FIFO(10, small_share=1.0)
