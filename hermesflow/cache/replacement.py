"""The contract of a byte-budgeted cache's replacement policy, and the bookkeeping they all share.

A cache tier (memory or disk) holds *items*: keyed runs of bytes of known size (later a whole
small object or one block of a large one, keyed by (object path, ETag or version, block index)).
The tier stores and deletes the bytes; a `ReplacementCache` decides which keys it keeps. It
holds no data, only keys and sizes, so the same object drives a real tier, a trace replay and a
simulation (decide here, apply in the tier).

Every policy (LRU, S3-FIFO, SIEVE, ARC, Belady, and IGTCache's own) subclasses
`ReplacementCache` and writes only the hooks that make it that policy: `_touch` (a demand hit),
`_insert` (a newly admitted item), `_victim` (pick and drop the next item to evict), `_forget`
(an item discarded from outside), and optionally `_admits` (an admission filter) and
`_before_admit` (learning from a miss before evicting). The base class keeps the sizes, the
byte budget and the statistics, so no policy can get them wrong in its own way.

Rules every policy obeys, enforced here:

- the resident bytes never exceed the capacity;
- an item larger than the capacity is never admitted (it is *bypassed*: the caller serves it
  from the origin without storing it), and admitting it would flush the whole cache for nothing;
- an eviction is reported to the caller, which must delete those bytes;
- a prefetch is not a use: it admits a missing item but never promotes a resident one, so a
  prefetcher cannot inflate the recency or frequency of items it only guessed at.

Not thread-safe: a tier serialises its calls (one lock per tier).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias

Key: TypeAlias = Hashable
"""An item's identity. Any hashable value but None; one key always has the same size (an
overwritten object gets a new key, because the key carries its ETag or version)."""


class Outcome(Enum):
    """What a demand access or a prefetch found and did."""

    RESIDENT = "resident"
    """The item was cached: a hit for a demand access; nothing to fetch for a prefetch."""
    ADMITTED = "admitted"
    """It was not cached and now is: fetch it, delete the evicted items, then store it."""
    BYPASSED = "bypassed"
    """It was not cached and is not admitted: serve it from the origin without storing it."""


@dataclass(frozen=True, slots=True)
class AccessResult:
    """The outcome of one access, and the keys evicted to make room, in eviction order."""

    outcome: Outcome
    evicted: tuple[Key, ...] = ()


_RESIDENT = AccessResult(Outcome.RESIDENT)
_ADMITTED = AccessResult(Outcome.ADMITTED)
_BYPASSED = AccessResult(Outcome.BYPASSED)


@dataclass(slots=True)
class CacheStats:
    """Counters of one cache since it was built.

    Demand accesses split three ways: `hits`, `prefetch_hits` (the first demand use of an item
    that a prefetch brought in: the prefetcher's success, reported apart so that the demand hit
    ratio measures the replacement policy alone) and `misses`. Later uses of a prefetched item
    are ordinary hits. `bypasses` counts the misses that were not admitted. Bytes admitted
    minus bytes evicted minus bytes discarded is always the bytes resident.
    """

    hits: int = 0
    prefetch_hits: int = 0
    misses: int = 0
    bypasses: int = 0
    hit_bytes: int = 0
    prefetch_hit_bytes: int = 0
    miss_bytes: int = 0
    prefetches: int = 0
    """Prefetches that admitted an item (those that found it resident or were refused are not
    counted: they fetch nothing)."""
    prefetched_bytes: int = 0
    admitted_bytes: int = 0
    """Bytes stored, by demand misses and prefetches together."""
    evictions: int = 0
    evicted_bytes: int = 0
    """Bytes the policy evicted, to make room or on a shrink; discards are not evictions."""
    wasted_prefetch_bytes: int = 0
    """Prefetched bytes evicted before any demand access used them."""
    discarded_bytes: int = 0

    @property
    def accesses(self) -> int:
        """Demand accesses (prefetches are not accesses)."""
        return self.hits + self.prefetch_hits + self.misses

    @property
    def hit_ratio(self) -> float:
        """Demand hits over demand accesses; prefetch hits are not counted (see the class)."""
        return self.hits / self.accesses if self.accesses else 0.0

    @property
    def prefetch_hit_ratio(self) -> float:
        """Prefetch hits over demand accesses."""
        return self.prefetch_hits / self.accesses if self.accesses else 0.0


def _checked_capacity(capacity: int) -> int:
    if capacity < 0:
        raise ValueError(f"capacity is {capacity} bytes; give a byte budget >= 0")
    return capacity


class ReplacementCache(ABC):
    """A byte-budgeted set of keyed items whose replacement a subclass decides.

    The caller (a tier, or `trace.replay`) calls `access` for each demand read, `prefetch` for
    each speculative read, `discard` when an item becomes invalid and `resize` when its budget
    moves; it deletes the bytes of every key these return as evicted. Subclasses implement the
    hooks below; each is called only in the situation its docstring states, and while a hook
    runs the base class's sizes and byte count still describe the state before the change.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = _checked_capacity(capacity)
        self._sizes: dict[Key, int] = {}
        self._used = 0
        self._unused_prefetches: set[Key] = set()
        self._stats = CacheStats()

    # ---- what callers use ------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The byte budget."""
        return self._capacity

    @property
    def used(self) -> int:
        """Bytes of the resident items; never above `capacity`."""
        return self._used

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters (a copy: later accesses do not change it)."""
        return dataclasses.replace(self._stats)

    def __contains__(self, key: Key) -> bool:
        """Whether `key` is resident; a pure query, not an access."""
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def access(self, key: Key, size: int) -> AccessResult:
        """A demand read of `key`, an item of `size` bytes.

        RESIDENT is a hit (`size` is not checked against the resident size: a key has one size).
        Otherwise the item is admitted, evicting what the policy chooses, or bypassed when it is
        larger than the capacity or the policy's admission filter refuses it.
        """
        resident = self._sizes.get(key)
        stats = self._stats
        if resident is not None:
            self._touch(key)
            if key in self._unused_prefetches:
                self._unused_prefetches.remove(key)
                stats.prefetch_hits += 1
                stats.prefetch_hit_bytes += resident
            else:
                stats.hits += 1
                stats.hit_bytes += resident
            return _RESIDENT
        result = self._store(key, size)
        stats.misses += 1
        stats.miss_bytes += size
        if result.outcome is Outcome.BYPASSED:
            stats.bypasses += 1
        return result

    def prefetch(self, key: Key, size: int) -> AccessResult:
        """A speculative read: admit `key` if it is missing, without counting an access.

        A resident item is left as it is (RESIDENT: do not fetch it). An admitted item is
        remembered as an unused prefetch until a demand access hits it (a prefetch hit) or it is
        evicted (its bytes are wasted).
        """
        if key in self._sizes:
            return _RESIDENT
        result = self._store(key, size)
        if result.outcome is Outcome.ADMITTED:
            self._unused_prefetches.add(key)
            self._stats.prefetches += 1
            self._stats.prefetched_bytes += size
        return result

    def discard(self, key: Key) -> bool:
        """Drop `key` because its bytes are no longer valid; False when it was not resident.

        Not an eviction: the policy forgets the item without recording it as a victim (no ghost
        entry), and an unused prefetch discarded this way is not counted as wasted.
        """
        size = self._sizes.pop(key, None)
        if size is None:
            return False
        self._forget(key)
        self._used -= size
        self._unused_prefetches.discard(key)
        self._stats.discarded_bytes += size
        return True

    def resize(self, capacity: int) -> tuple[Key, ...]:
        """Set a new byte budget; a shrink evicts, by the policy's own order, until it fits."""
        self._capacity = _checked_capacity(capacity)
        return self._evict_down_to(self._capacity, incoming=None)

    # ---- the hooks that make a policy ------------------------------------------------------

    @abstractmethod
    def _touch(self, key: Key) -> None:
        """A demand access hit resident `key`: update recency or frequency."""

    @abstractmethod
    def _insert(self, key: Key, size: int) -> None:
        """Place newly admitted `key`; room has been made (its bytes are not yet in `used`)."""

    @abstractmethod
    def _victim(self, incoming: Key | None) -> Key:
        """Remove the next item to evict from the policy's structures and return its key.

        Called while the resident bytes exceed the budget: at least one item is resident.
        `incoming` is the key about to be admitted (ARC's choice depends on it), None on a
        shrink. Record ghosts here; the base class updates sizes and statistics.
        """

    @abstractmethod
    def _forget(self, key: Key) -> None:
        """Remove discarded `key` from the policy's structures, leaving no ghost."""

    def _admits(self, key: Key, size: int) -> bool:
        """Whether a missing item that fits the capacity is admitted at all (default: yes)."""
        return True

    def _before_admit(self, key: Key, size: int) -> None:
        """A missing item will be admitted and nothing evicted yet: adapt to the miss here."""

    # ---- the shared mechanics --------------------------------------------------------------

    def _store(self, key: Key, size: int) -> AccessResult:
        """Admit a missing item (evicting as needed) or bypass it."""
        if size < 0:
            raise ValueError(f"item {key!r} has size {size}; sizes are byte counts >= 0")
        if key is None:
            raise ValueError("None is not a valid cache key; use the item's (path, version, ...)")
        if size > self._capacity or not self._admits(key, size):
            return _BYPASSED
        self._before_admit(key, size)
        evicted = self._evict_down_to(self._capacity - size, incoming=key)
        self._insert(key, size)
        self._sizes[key] = size
        self._used += size
        self._stats.admitted_bytes += size
        return AccessResult(Outcome.ADMITTED, evicted) if evicted else _ADMITTED

    def _evict_down_to(self, limit: int, incoming: Key | None) -> tuple[Key, ...]:
        """Evict the policy's victims until at most `limit` bytes are resident."""
        if self._used <= limit:
            return ()
        stats = self._stats
        evicted = []
        while self._used > limit:
            victim = self._victim(incoming)
            size = self._sizes.pop(victim)
            self._used -= size
            stats.evictions += 1
            stats.evicted_bytes += size
            if victim in self._unused_prefetches:
                self._unused_prefetches.remove(victim)
                stats.wasted_prefetch_bytes += size
            evicted.append(victim)
        return tuple(evicted)
