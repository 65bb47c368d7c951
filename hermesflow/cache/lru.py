"""Least-recently-used replacement, by bytes.

The baseline every cache paper measures against, and what most caching layers ship. It is also
the fsspec-style block cache: fsspec's `BlockCache` (`fsspec/caching.py`) splits a file into
fixed-size blocks and keeps the last `maxblocks` of them in a `functools.lru_cache`. Bounded by
bytes instead of a block count, that is exactly this class fed with block keys; the block
splitting belongs to whoever builds the keys (the filesystem, or the benchmark's trace), so
`CachePolicyKind.FSSPEC_LRU` is a name for this class, not a second implementation.
"""

from __future__ import annotations

from collections import OrderedDict

from hermesflow.cache.replacement import Key, ReplacementCache


class LRU(ReplacementCache):
    """Evict the item whose last demand access is the oldest.

    One ordered dict from least to most recently used: a hit moves the key to the end, an
    eviction pops the front. Prefetched items enter at the most-recent end, as a demand miss
    would, but a prefetch of a resident item does not refresh it (see `ReplacementCache`).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._order: OrderedDict[Key, None] = OrderedDict()

    def _touch(self, key: Key) -> None:
        self._order.move_to_end(key)

    def _insert(self, key: Key, size: int) -> None:
        self._order[key] = None

    def _victim(self, incoming: Key | None) -> Key:
        return self._order.popitem(last=False)[0]

    def _forget(self, key: Key) -> None:
        del self._order[key]
