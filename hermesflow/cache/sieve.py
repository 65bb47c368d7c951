"""SIEVE replacement (Zhang, Yang, Yue, Vigfusson, Rashmi: "SIEVE is Simpler than LRU: an
Efficient Turn-Key Eviction Algorithm for Web Caches", NSDI'24).

One FIFO queue in insertion order, one *visited* bit per item and a *hand*. A hit only sets the
bit. To evict, the hand walks from the tail (oldest) towards the head (newest): a visited item
has its bit cleared and stays where it is; the first unvisited item is evicted and the hand
stops just past it, where the next eviction resumes. Past the head the hand wraps to the tail.
New items always enter at the head, so they are not mixed with the survivors the hand has
already passed: one-time items are sifted out quickly, popular ones survive without ever being
moved.
"""

from __future__ import annotations

from collections import OrderedDict

from hermesflow.cache.replacement import Key, ReplacementCache


class Sieve(ReplacementCache):
    """SIEVE by bytes: evict unvisited items at the hand until the incoming item fits.

    The queue is kept as two ordered dicts (key -> visited bit), which together read from tail
    to head: `_passed`, the items the hand has already examined in this sweep, and `_ahead`,
    the items from the hand to the head. The hand is the front of `_ahead`; an insertion at the
    head appends to `_ahead`; a retained item moves from the front of `_ahead` to the end of
    `_passed`, which is the same queue position. When `_ahead` runs out the hand wraps: the
    passed items become the items ahead. Every step is O(1), with no linked list of our own.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._passed: OrderedDict[Key, bool] = OrderedDict()
        self._ahead: OrderedDict[Key, bool] = OrderedDict()

    def _touch(self, key: Key) -> None:
        if key in self._ahead:
            self._ahead[key] = True
        else:
            self._passed[key] = True

    def _insert(self, key: Key, size: int) -> None:
        self._ahead[key] = False

    def _victim(self, incoming: Key | None) -> Key:
        while True:
            key, visited = self._ahead.popitem(last=False)
            if visited:
                self._passed[key] = False
            if not self._ahead:
                self._wrap()
            if not visited:
                return key

    def _forget(self, key: Key) -> None:
        if key in self._ahead:
            del self._ahead[key]
            if not self._ahead:
                self._wrap()
        else:
            del self._passed[key]

    def _wrap(self) -> None:
        """The hand went past the head: it restarts at the tail.

        Done as soon as `_ahead` empties, not at the next eviction, so that an item inserted in
        between lands behind the survivors (at the head) rather than under the hand.
        """
        self._ahead, self._passed = self._passed, self._ahead
