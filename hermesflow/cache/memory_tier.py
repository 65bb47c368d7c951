"""The memory tier: blocks as `bytes` in this process, within a byte budget.

Nothing of it outlives the process or travels in a pickle: a filesystem unpickled in a Ray
worker starts with an empty memory tier and fills it from the disk tier or the origin.
"""

from __future__ import annotations

from collections.abc import Iterable

from hermesflow.cache.blocks import BlockKey, ObjectVersion
from hermesflow.cache.replacement import Key, ReplacementCache
from hermesflow.cache.tier import Tier


class MemoryTier(Tier):
    """Blocks in a dict, with the keys of each object apart so that a new version drops the
    old one's blocks without a scan."""

    def __init__(self, policy: ReplacementCache) -> None:
        super().__init__(policy)
        self._blocks: dict[Key, bytes] = {}
        self._by_url: dict[str, set[BlockKey]] = {}

    def lookup(self, key: BlockKey) -> bytes | None:
        with self._lock:
            resident, evicted = self._access(key)
            self._remove(evicted)
            # resident but without bytes: another thread admitted it and is still fetching
            return self._blocks.get(key) if resident else None

    def fill(self, key: BlockKey, data: bytes) -> None:
        with self._lock:
            if key not in self._pending:
                return
            self._pending.remove(key)
            self._blocks[key] = data
            self._by_url.setdefault(key.url, set()).add(key)

    def discard_stale(self, obj: ObjectVersion) -> None:
        with self._lock:
            stale = [k for k in self._by_url.get(obj.url, ()) if k.version != obj.version]
            self._discard(stale)
            self._remove(stale)

    def _remove(self, keys: Iterable[Key]) -> None:
        """Under the lock: delete the bytes of `keys`."""
        for key in keys:
            if self._blocks.pop(key, None) is None:
                continue
            siblings = self._by_url[key.url]
            siblings.discard(key)
            if not siblings:
                del self._by_url[key.url]
