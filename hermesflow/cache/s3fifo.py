"""S3-FIFO replacement (Yang, Zhang, Qiu, Yue, Rashmi: "FIFO queues are all you need for cache
eviction", SOSP'23), by bytes.

Three FIFO queues. A *small* queue (10 % of the bytes) takes new items; a *main* queue (the
rest) keeps the items that proved themselves; a *ghost* queue remembers the keys, not the
bytes, of items recently evicted from the small queue. Each resident item has a 2-bit access
counter (0..3), raised by hits and never moved by them.

- A miss whose key is in the ghost goes straight to main (it was evicted too early); any other
  miss enters small. The counter starts at 0.
- Evicting from small (when small holds at least its share): the oldest item moves to main if
  it was hit while in small, with its counter reset; otherwise it is evicted and its key enters
  the ghost. Most items are read once ("one-hit wonders"): they leave through small after a
  short stay, never touching main.
- Evicting from main: the oldest item with a counter above 0 is reinserted at main's head with
  the counter lowered by one (a 2-bit CLOCK); the first one at 0 is evicted.

Where the paper's pseudo-code evicts from main as a side effect of a promotion that overfills
it, `S3FIFO._victim` returns that main victim as the eviction: each call frees exactly one item,
and the base class calls again while room is still short. The ghost holds at most the main
queue's share of bytes (libCacheSim's default ghost size, 90 % of the cache).
"""

from __future__ import annotations

from collections import OrderedDict

from hermesflow.cache.replacement import Key, ReplacementCache

SMALL_QUEUE_SHARE = 0.10
"""The paper's small-queue size: 10 % of the cache, which it found robust across traces."""
MAX_FREQUENCY = 3
"""A 2-bit counter saturates at 3: at most three extra trips through main."""


class S3FIFO(ReplacementCache):
    """S3-FIFO with byte-sized queues; `small_share` is the small queue's fraction of bytes."""

    def __init__(self, capacity: int, small_share: float = SMALL_QUEUE_SHARE) -> None:
        if not 0.0 <= small_share < 1.0:
            raise ValueError(f"small_share is {small_share}; give a fraction in [0, 1)")
        super().__init__(capacity)
        self._small_share = small_share
        self._small: OrderedDict[Key, int] = OrderedDict()  # key -> size, oldest first
        self._main: OrderedDict[Key, int] = OrderedDict()
        self._ghost: OrderedDict[Key, int] = OrderedDict()
        self._small_bytes = 0
        self._main_bytes = 0
        self._ghost_bytes = 0
        self._frequency: dict[Key, int] = {}

    @property
    def _small_target(self) -> int:
        return int(self.capacity * self._small_share)

    def _touch(self, key: Key) -> None:
        frequency = self._frequency[key]
        if frequency < MAX_FREQUENCY:
            self._frequency[key] = frequency + 1

    def _insert(self, key: Key, size: int) -> None:
        # The ghost is trimmed only here, after the incoming key was looked up, so the
        # evictions that made room for it cannot push its own ghost entry out first.
        self._frequency[key] = 0
        ghost_size = self._ghost.pop(key, None)
        if ghost_size is None:
            self._small[key] = size
            self._small_bytes += size
        else:
            self._ghost_bytes -= ghost_size
            self._main[key] = size
            self._main_bytes += size
        ghost_limit = self.capacity - self._small_target
        while self._ghost_bytes > ghost_limit:
            self._ghost_bytes -= self._ghost.popitem(last=False)[1]

    def _victim(self, incoming: Key | None) -> Key:
        if self._small and (self._small_bytes >= self._small_target or not self._main):
            victim = self._evict_small()
            if victim is not None:
                return victim
        return self._evict_main()

    def _forget(self, key: Key) -> None:
        del self._frequency[key]
        size = self._small.pop(key, None)
        if size is not None:
            self._small_bytes -= size
        else:
            self._main_bytes -= self._main.pop(key)

    def _evict_small(self) -> Key | None:
        """Promote hit items to main until an unhit one leaves for the ghost, or main overflows
        (then main's victim is the eviction). None when small emptied into a main with room."""
        main_share = self.capacity - self._small_target
        while self._small:
            key, size = self._small.popitem(last=False)
            self._small_bytes -= size
            if self._frequency[key] > 0:
                self._frequency[key] = 0
                self._main[key] = size
                self._main_bytes += size
                if self._main_bytes > main_share:
                    return self._evict_main()
            else:
                del self._frequency[key]
                self._ghost[key] = size
                self._ghost_bytes += size
                return key
        return None

    def _evict_main(self) -> Key:
        while True:
            key, size = self._main.popitem(last=False)
            frequency = self._frequency[key]
            if frequency > 0:
                self._frequency[key] = frequency - 1
                self._main[key] = size
            else:
                del self._frequency[key]
                self._main_bytes -= size
                return key
