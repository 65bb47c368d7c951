"""ARC, the Adaptive Replacement Cache (Megiddo and Modha, "ARC: A Self-Tuning, Low Overhead
Replacement Cache", FAST'03), by bytes.

Four LRU lists. T1 holds items seen once recently, T2 items seen at least twice; B1 and B2 are
their ghosts (keys and sizes of items recently evicted from T1 and T2, no bytes). A target `p`
for T1's bytes moves with the workload: a miss found in B1 means T1 was too small, so `p`
grows; a miss found in B2 means T2 was, so `p` shrinks. Evictions (the paper's REPLACE) take
T1's LRU item when T1 is above its target (or at it, when the incoming key is in B2), else
T2's. A one-pass scan only cycles through T1 and cannot flush T2, which is ARC's scan
resistance.

The paper counts pages; here every count is bytes, with the unit-size rules generalised as:

- adaptation on a ghost hit of an item of `s` bytes: p += s * max(1, |B2| / |B1|) on a B1 hit,
  p -= s * max(1, |B1| / |B2|) on a B2 hit, clamped to [0, capacity] (|X| = bytes of list X);
- the directory bounds |T1| + |B1| <= c and |T1| + |T2| + |B1| + |B2| <= 2c are restored after
  each admission by dropping the oldest ghosts (B1 first for the first, B2 first for the
  second). With unit sizes this drops exactly the ghosts the paper's case IV deletes.
"""

from __future__ import annotations

from collections import OrderedDict

from hermesflow.cache.replacement import Key, ReplacementCache


class ARC(ReplacementCache):
    """ARC with byte sizes. Each list is an ordered dict key -> size, least recent first."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._t1: OrderedDict[Key, int] = OrderedDict()
        self._t2: OrderedDict[Key, int] = OrderedDict()
        self._b1: OrderedDict[Key, int] = OrderedDict()
        self._b2: OrderedDict[Key, int] = OrderedDict()
        self._t1_bytes = 0
        self._t2_bytes = 0
        self._b1_bytes = 0
        self._b2_bytes = 0
        self._target_t1 = 0.0  # the paper's p, in bytes

    def _touch(self, key: Key) -> None:
        size = self._t1.pop(key, None)
        if size is None:
            self._t2.move_to_end(key)
            return
        self._t1_bytes -= size
        self._t2[key] = size
        self._t2_bytes += size

    def _before_admit(self, key: Key, size: int) -> None:
        if key in self._b1:
            step = size * max(1.0, self._b2_bytes / max(self._b1_bytes, 1))
            self._target_t1 = min(float(self.capacity), self._target_t1 + step)
        elif key in self._b2:
            step = size * max(1.0, self._b1_bytes / max(self._b2_bytes, 1))
            self._target_t1 = max(0.0, self._target_t1 - step)

    def _victim(self, incoming: Key | None) -> Key:
        t1_over = self._t1_bytes > self._target_t1 or (
            incoming in self._b2 and self._t1_bytes >= self._target_t1
        )
        if self._t1 and (t1_over or not self._t2):
            key, size = self._t1.popitem(last=False)
            self._t1_bytes -= size
            self._b1[key] = size
            self._b1_bytes += size
        else:
            key, size = self._t2.popitem(last=False)
            self._t2_bytes -= size
            self._b2[key] = size
            self._b2_bytes += size
        return key

    def _insert(self, key: Key, size: int) -> None:
        # A ghost hit is the second sighting of the key: it enters T2. The ghost entry is
        # dropped only now, after REPLACE has seen it.
        if key in self._b1:
            self._b1_bytes -= self._b1.pop(key)
            self._t2[key] = size
            self._t2_bytes += size
        elif key in self._b2:
            self._b2_bytes -= self._b2.pop(key)
            self._t2[key] = size
            self._t2_bytes += size
        else:
            self._t1[key] = size
            self._t1_bytes += size
        self._trim_ghosts()

    def _forget(self, key: Key) -> None:
        size = self._t1.pop(key, None)
        if size is not None:
            self._t1_bytes -= size
        else:
            self._t2_bytes -= self._t2.pop(key)

    def _trim_ghosts(self) -> None:
        """Restore the directory's bounds after an admission.

        The resident bytes are at most c here, so once B1 keeps |T1| + |B1| <= c, dropping B2
        alone brings the directory within 2c (with B2 empty it is at most c + c)."""
        capacity = self.capacity
        while self._t1_bytes + self._b1_bytes > capacity:
            self._b1_bytes -= self._b1.popitem(last=False)[1]
        directory = self._t1_bytes + self._t2_bytes + self._b1_bytes + self._b2_bytes
        while directory > 2 * capacity:
            size = self._b2.popitem(last=False)[1]
            self._b2_bytes -= size
            directory -= size
