"""What the memory and the disk tier share: a replacement policy deciding, a store applying.

A tier is asked in two steps, because the bytes of a miss arrive later and from elsewhere:
`lookup` is the demand access (the policy counts it and, on a miss, admits or bypasses the
block, naming its victims at once), then `fill` stores the fetched bytes of an admitted block,
or `abandon` withdraws the admission when the fetch failed. Between the two the block is
*pending*: the policy counts its bytes, the store has none yet. A pending block evicted or
discarded before its bytes arrive is simply not stored.

The policy (`ReplacementCache`) holds keys and sizes only; it is per process and guarded by
the tier's lock, as its contract requires. The hits, misses and byte counts of a tier are its
policy's `CacheStats`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable

from hermesflow.cache.blocks import BlockKey, ObjectVersion
from hermesflow.cache.replacement import CacheStats, Key, Outcome, ReplacementCache


class Tier(ABC):
    """A byte-budgeted store of blocks whose admission and eviction `policy` decides."""

    def __init__(self, policy: ReplacementCache) -> None:
        self._policy = policy
        self._lock = threading.Lock()
        self._pending: set[Key] = set()

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return self._policy.stats

    @abstractmethod
    def lookup(self, key: BlockKey) -> bytes | None:
        """A demand read of `key`: its bytes on a hit, None on a miss (then `fill` or
        `abandon` it once the bytes are fetched or the fetch failed)."""

    @abstractmethod
    def fill(self, key: BlockKey, data: bytes) -> None:
        """Store the fetched bytes of `key` if this tier admitted it and still holds it."""

    @abstractmethod
    def discard_stale(self, obj: ObjectVersion) -> None:
        """Drop every block of `obj.url` of a version other than `obj.version`: they can
        never be read again, so their bytes are freed now rather than when they age out."""

    def abandon(self, key: BlockKey) -> None:
        """The fetch of pending `key` failed: withdraw its admission (no bytes to delete)."""
        with self._lock:
            if key in self._pending:
                self._pending.remove(key)
                self._policy.discard(key)

    def _access(self, key: BlockKey) -> tuple[bool, tuple[Key, ...]]:
        """Under the lock: tell the policy of a demand read of `key`; whether it was resident,
        and the keys evicted to admit it (the caller deletes their bytes)."""
        result = self._policy.access(key, key.length)
        if result.outcome is Outcome.ADMITTED:
            self._pending.add(key)
        self._pending.difference_update(result.evicted)
        return result.outcome is Outcome.RESIDENT, result.evicted

    def _discard(self, keys: Iterable[Key]) -> None:
        """Under the lock: the policy forgets `keys` (invalid bytes, not evictions)."""
        for key in keys:
            self._pending.discard(key)
            self._policy.discard(key)
