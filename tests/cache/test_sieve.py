"""SIEVE on a hand-worked trace (3 slots): the hand, the visited bits and the wrap-around."""

from __future__ import annotations

from cache_support import evictions, run, unit_records

from hermesflow.cache.lru import LRU
from hermesflow.cache.replacement import Outcome
from hermesflow.cache.sieve import Sieve
from hermesflow.cache.trace import replay

# Queue tail -> head, * = visited, ^ = hand.
#   a b c, a hits -> a* b c
#   d: hand at a*: clear, move; b unvisited: evict b          -> a c d, hand at c
#   b: c unvisited: evict c                                    -> a d b, hand at d
#   e: evict d                                                 -> a b e, hand at b
#   a hits -> a* b e
#   c: evict b                                                 -> a* e c, hand at e
#   e hits -> a* e* c
#   f: e*: clear; c unvisited: evict c; the hand passes the head and wraps to the tail
#   g: hand at a*: clear; e (cleared at f): evict e            -> a f g
# An implementation that put f under the hand instead of wrapping would evict f at g.
TRACE = "abcadbeacefg"


def test_hand_clears_visited_bits_and_wraps_to_the_tail() -> None:
    cache = Sieve(3)
    results = run(cache, unit_records(TRACE))
    assert evictions(results) == [
        (), (), (), (), ("b",), ("c",), ("d",), (), ("b",), (), ("c",), ("e",)
    ]
    assert [i for i, result in enumerate(results) if result.outcome is Outcome.RESIDENT] == [3, 7, 9]
    assert {key for key in "abcdefg" if key in cache} == {"a", "f", "g"}


def test_keeps_the_popular_item_where_lru_loses_it() -> None:
    sieve = replay(Sieve(3), unit_records(TRACE))
    lru = replay(LRU(3), unit_records(TRACE))
    assert (sieve.hits, lru.hits) == (3, 2)
