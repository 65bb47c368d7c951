"""How the `igtcache` filesystem names the bytes it caches: objects by version, ranges by block.

A cached item is a `BlockKey`: one run of bytes of one *version* of one object. The version (an
ETag, a version id, or what else the origin reports, see `origin.object_version`) is part of
the key, so an overwritten object never matches the keys of its old bytes: staleness is ruled
out by construction rather than by invalidation, and invalidation (dropping the old version's
blocks) only frees space early.

Blocks are named by their byte offset and length, not by an index, so a cache directory written
with one block size is never misread by a process configured with another: a different layout
simply finds no matching keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One object as the origin described it at a version check."""

    path: str
    """The path the target filesystem understands (e.g. `bucket/key` for s3fs)."""
    url: str
    """The path with the target's protocol (e.g. `s3://bucket/key`): the cache identity, so
    that one cache directory can serve several origins without collisions."""
    version: str
    size: int


@dataclass(frozen=True, slots=True)
class BlockKey:
    """The bytes [start, start + length) of one version of the object at `url`."""

    url: str
    version: str
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """How an object is cut into cached items.

    An object of at most `small_object_bytes` is one item read whole: small files (images,
    shards of a training set) are read entirely anyway, and one GET per object is the cheapest
    way to fetch them. A larger object is cut into aligned blocks of `block_size` (the last one
    shorter), so a reader of a few ranges fetches and stores only the blocks it touches.
    """

    block_size: int
    small_object_bytes: int

    def blocks(self, obj: ObjectVersion, start: int, end: int) -> list[BlockKey]:
        """The items that hold bytes [start, end) of `obj`, in order (none for an empty range)."""
        if end <= start:
            return []
        if obj.size <= self.small_object_bytes:
            return [BlockKey(obj.url, obj.version, 0, obj.size)]
        size = self.block_size
        return [
            BlockKey(obj.url, obj.version, offset, min(size, obj.size - offset))
            for offset in range(start - start % size, end, size)
        ]


def slice_bounds(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    """[start, end) of an object of `size` bytes, read like a Python slice (None for an open
    end, negative counts from the end), clamped to the object; fsspec's `cat_file` contract."""
    first, stop, _ = slice(start, end).indices(size)
    return first, max(first, stop)
