"""Belady's MIN, the offline ceiling (Belady, "A study of replacement algorithms for a
virtual-storage computer", IBM Systems Journal 5(2), 1966).

Knowing the whole future, evict the item whose next demand use is farthest away. With the
freedom to bypass, the incoming item is a candidate too: if it is needed later than everything
it would displace (or never again), it is not admitted. For items of one size this is optimal:
no replacement policy, online or offline, gets more demand hits on the same trace (the test
checks it against an exhaustive search). The other baselines always admit; IGTCache may bypass,
so the ceiling must be allowed to as well.

For items of different sizes, optimal caching is NP-hard, and farthest-next-use is the
standard heuristic ceiling (libCacheSim's Belady, for example): usually above every online
policy, but not a proof of optimality. The admission rule then compares the incoming item with
every resident item it would displace and admits it only if it is needed sooner than all of
them.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Sequence

from hermesflow.cache.replacement import AccessResult, Key, ReplacementCache

_HEAP_SLACK = 4
"""Stale heap entries (superseded next uses) are dropped when they outnumber live ones this
many times over: amortised O(log n) per access with a bounded heap."""


class Belady(ReplacementCache):
    """MIN with bypass over a known sequence of demand keys.

    `future` is every demand access's key, in the order `access` will be called; prefetches are
    not in it (they are not uses). A heap orders the resident items by next use, farthest
    first, with lazy deletion: a hit pushes the item's new next use and leaves the old entry to
    be recognised as stale when it surfaces.
    """

    def __init__(self, capacity: int, future: Sequence[Key]) -> None:
        super().__init__(capacity)
        self._future = tuple(future)
        self._never = len(self._future)  # the next use of an item not needed again
        self._uses: dict[Key, list[int]] = {}
        for position, key in enumerate(self._future):
            self._uses.setdefault(key, []).append(position)
        self._position = 0  # the index of the next demand access
        self._live: dict[Key, int] = {}  # resident key -> push order of its live heap entry
        self._heap: list[tuple[int, int, Key]] = []  # (-next use, push order, key)
        self._pushes = 0

    def access(self, key: Key, size: int) -> AccessResult:
        """A demand access; it must be the next key of `future`."""
        position = self._position
        if position >= self._never or self._future[position] != key:
            expected = (
                repr(self._future[position]) if position < self._never else "no more accesses"
            )
            raise ValueError(
                f"demand access #{position} is {key!r} but Belady's future has {expected} "
                "there: build it from the trace you replay (make_cache(..., trace=records))"
            )
        self._position = position + 1
        try:
            return super().access(key, size)
        except ValueError:  # a refused call (a bad size) is not an access: stay in place
            self._position = position
            raise

    def _touch(self, key: Key) -> None:
        self._schedule(key)

    def _insert(self, key: Key, size: int) -> None:
        self._schedule(key)

    def _admits(self, key: Key, size: int) -> bool:
        """Admit an item needed again and sooner than every item it would displace.

        The displaced items are the farthest-needed ones, popped until their bytes make room,
        then pushed back: `_victim` pops the same ones if the item is admitted."""
        next_use = self._upcoming_use(key)
        if next_use == self._never:
            return False
        shortfall = self._used + size - self._capacity
        displaced = []
        while shortfall > 0:
            entry = self._pop_farthest()
            displaced.append(entry)
            shortfall -= self._sizes[entry[2]]
        for entry in displaced:
            heapq.heappush(self._heap, entry)
        return all(-negated_use > next_use for negated_use, _, _ in displaced)

    def _victim(self, incoming: Key | None) -> Key:
        key = self._pop_farthest()[2]
        del self._live[key]
        return key

    def _forget(self, key: Key) -> None:
        del self._live[key]

    def _upcoming_use(self, key: Key) -> int:
        """The position of `key`'s next demand access at or after the current position."""
        uses = self._uses.get(key)
        if uses is None:
            return self._never
        index = bisect_left(uses, self._position)
        return uses[index] if index < len(uses) else self._never

    def _schedule(self, key: Key) -> None:
        self._pushes += 1
        self._live[key] = self._pushes
        heapq.heappush(self._heap, (-self._upcoming_use(key), self._pushes, key))
        if len(self._heap) > _HEAP_SLACK * (len(self._live) + 1):
            self._heap = [entry for entry in self._heap if self._is_live(entry)]
            heapq.heapify(self._heap)

    def _pop_farthest(self) -> tuple[int, int, Key]:
        """Pop the live heap entry of the resident item needed farthest ahead."""
        while True:
            entry = heapq.heappop(self._heap)
            if self._is_live(entry):
                return entry

    def _is_live(self, entry: tuple[int, int, Key]) -> bool:
        """Whether `entry` is its key's latest push and the key is still resident."""
        return self._live.get(entry[2]) == entry[1]
