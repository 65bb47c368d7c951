"""The read path of `igtcache`: byte ranges of an object version, memory → disk → origin.

Each block of a read is looked up in the memory tier, then (on a miss there) in the disk tier;
a block found on disk is copied into memory. The blocks no tier holds are fetched from the
origin in runs of adjacent blocks (one GET per run, at most `MAX_RUN_BLOCKS` blocks), then
stored in every tier that admitted them. A failed fetch withdraws those admissions and raises:
a read returns all its bytes or an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from hermesflow.cache.blocks import BlockKey, BlockLayout, ObjectVersion
from hermesflow.cache.disk_tier import DiskTier
from hermesflow.cache.memory_tier import MemoryTier
from hermesflow.cache.origin import Origin
from hermesflow.cache.tier import Tier

MAX_RUN_BLOCKS = 16
"""Most blocks fetched by one GET: long sequential misses cost few requests (one per 64 MiB at
the default block size) without holding an unbounded buffer for one huge read."""


class TieredReader:
    """Reads through `memory`, then `disk` (None: no disk tier), then `origin`."""

    def __init__(
        self, layout: BlockLayout, memory: MemoryTier, disk: DiskTier | None, origin: Origin
    ) -> None:
        self.layout = layout
        self.memory = memory
        self.disk = disk
        self.origin = origin
        self._tiers: tuple[Tier, ...] = (memory,) if disk is None else (memory, disk)

    def read(self, obj: ObjectVersion, start: int, end: int) -> bytes:
        """Bytes [start, end) of version `obj` (a range inside the object)."""
        keys = self.layout.blocks(obj, start, end)
        found: dict[BlockKey, bytes] = {}
        missing: list[BlockKey] = []
        for key in keys:
            data = self._cached(key)
            if data is None:
                missing.append(key)
            else:
                found[key] = data
        try:
            for run in _runs(missing):
                first = run[0].start
                blob = self.origin.read(obj, first, run[-1].end)
                for key in run:
                    found[key] = piece = blob[key.start - first : key.end - first]
                    for tier in self._tiers:
                        tier.fill(key, piece)
        finally:
            for key in missing:
                if key not in found:
                    for tier in self._tiers:
                        tier.abandon(key)
        return b"".join(
            memoryview(found[key])[
                max(start, key.start) - key.start : min(end, key.end) - key.start
            ]
            for key in keys
        )

    def discard_stale(self, obj: ObjectVersion) -> None:
        """`obj` is the current version of its object: drop the blocks of any other."""
        for tier in self._tiers:
            tier.discard_stale(obj)

    def _cached(self, key: BlockKey) -> bytes | None:
        data = self.memory.lookup(key)
        if data is None and self.disk is not None:
            data = self.disk.lookup(key)
            if data is not None:
                self.memory.fill(key, data)
        return data


def _runs(keys: Sequence[BlockKey]) -> Iterator[list[BlockKey]]:
    """`keys` (in order) grouped into runs of adjacent blocks of at most MAX_RUN_BLOCKS."""
    run: list[BlockKey] = []
    for key in keys:
        if run and (run[-1].end != key.start or len(run) == MAX_RUN_BLOCKS):
            yield run
            run = []
        run.append(key)
    if run:
        yield run
