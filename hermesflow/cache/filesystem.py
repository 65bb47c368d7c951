"""`igtcache`: an fsspec filesystem that caches any other one in memory and on local disk.

    fsspec.open("igtcache::s3://bucket/key", igtcache={"disk_dir": "/cache", "disk_bytes": 2**34},
                s3={"endpoint_url": ...})

chains over the filesystem after `::` (s3fs, memory://, file://, any fsspec filesystem), or
`IGTCacheFileSystem(fs=<filesystem>, **options)` wraps an instance. The protocol is registered
through the `fsspec.specs` entry point (pyproject), so a fresh interpreter resolves it. The
options are `options.IGTCacheOptions`.

Reads (`open(..., "rb")`, `cat_file`, `cat_ranges`) go through `tiered.TieredReader`: memory,
then disk, then the origin, filling the tiers on the way. Listings (`ls`, `find`, `glob`) are
the target's, not cached.

**Versions.** Every `open`, `info`, `cat_file` and `cat_ranges` checks the object's current
version (a HEAD on S3) unless a check younger than `etag_ttl_s` is remembered (default 0:
always). The version is part of every block key, so an overwritten object is never served from
its old blocks; a check that finds a new version drops the old version's blocks from both
tiers. An open file keeps the version it was opened at: if the object changes under it, its
cached blocks still read consistently and an uncached block raises `ObjectChangedError` (S3
refuses the conditional GET) instead of mixing versions.

**Writes are refused** (`ReadOnlyError`): the cache is a read path shared by many readers, and
writing through it would make it a second, partial writer of the origin with its own failure
modes. Write to the target URL (`s3://...`) directly; the next version check here sees it.

**Pickling** (Ray workers): fsspec pickles a filesystem as its constructor arguments
(`AbstractFileSystem.__reduce__`), so an unpickled copy is built afresh in the new process
with its own locks, an empty memory tier and the same disk directory; nothing unpicklable
travels. In one process fsspec's instance cache returns the existing instance instead.

**Statistics**: `stats` gives each tier's `CacheStats` (hits, misses, bytes, evictions) and
the origin's GETs, bytes and version checks.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import AbstractBufferedFile

from hermesflow.cache.blocks import BlockLayout, ObjectVersion, slice_bounds
from hermesflow.cache.disk_tier import DiskTier
from hermesflow.cache.memory_tier import MemoryTier
from hermesflow.cache.options import IGTCacheOptions
from hermesflow.cache.origin import ObjectChangedError, OriginStats, origin_for
from hermesflow.cache.registry import make_cache
from hermesflow.cache.replacement import CacheStats
from hermesflow.cache.tiered import TieredReader

REMEMBERED_CHECKS = 65536
"""Most version checks remembered for `etag_ttl_s` (least recently checked forgotten first)."""
_REOPEN_ARGUMENTS = frozenset({"cache_type", "size"})
"""What fsspec passes to `open` when it unpickles an open file: the tiers do the caching and the
version check gives the size, so both are accepted and not used."""


class ReadOnlyError(PermissionError):
    """A write through `igtcache` (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class IGTCacheStats:
    """The cache's counters since the filesystem was built (in this process)."""

    memory: CacheStats
    disk: CacheStats | None
    """None without a disk tier. First hits on blocks another process (or an earlier
    instance) stored count as `prefetch_hits` (see `disk_tier`)."""
    origin: OriginStats
    corrupt_blocks: int
    """Disk blocks dropped because their checksum did not match."""


@dataclass(frozen=True, slots=True)
class _Check:
    info: dict[str, Any]
    at: float


class IGTCacheFileSystem(ChainedFileSystem):
    """A read-through cache over the target filesystem (see the module docstring)."""

    protocol: ClassVar[str] = "igtcache"
    _strip_tokenize_options = ("fo",)  # one instance for every path, as fsspec's own caches

    def __init__(
        self,
        fs: AbstractFileSystem | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fo: str | None = None,
        **options: Any,
    ) -> None:
        """Cache `fs`, or the filesystem `target_protocol` with `target_options` (what fsspec
        passes for a chained URL, with the chained path as `fo`, which each call repeats
        anyway). `options` are `IGTCacheOptions`' fields."""
        super().__init__()
        self.options = IGTCacheOptions.parse(options)
        self.target = _target(fs, target_protocol, target_options)
        opts = self.options
        disk = None
        if opts.disk_dir is not None:
            disk = DiskTier(Path(opts.disk_dir), make_cache(opts.disk_policy, opts.disk_bytes))
        self._reader = TieredReader(
            BlockLayout(opts.block_size, opts.small_object_bytes),
            MemoryTier(make_cache(opts.memory_policy, opts.memory_bytes)),
            disk,
            origin_for(self.target),
        )
        self._checks: OrderedDict[str, _Check] = OrderedDict()
        self._checks_lock = threading.Lock()

    @property
    def stats(self) -> IGTCacheStats:
        reader = self._reader
        return IGTCacheStats(
            memory=reader.memory.stats,
            disk=None if reader.disk is None else reader.disk.stats,
            origin=reader.origin.stats,
            corrupt_blocks=0 if reader.disk is None else reader.disk.corrupt_blocks,
        )

    # ---- reads ----------------------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """The target's `info`, from a version check (see the module docstring)."""
        _no_arguments("info", kwargs)
        return dict(self._check(self._target_path(path)).info)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        return self.target.ls(self._target_path(path), detail=detail, **kwargs)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        _no_arguments("cat_file", kwargs)
        obj = self._object(self._target_path(path))
        return self._read(obj, *slice_bounds(start, end, obj.size))

    def cat_ranges(
        self,
        paths: list[str],
        starts: int | None | list[int | None],
        ends: int | None | list[int | None],
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[bytes | Exception]:
        """fsspec's `cat_ranges`, checking each distinct path's version once per call.
        `max_gap` is not supported: adjacent missing blocks already share one GET."""
        _no_arguments("cat_ranges", kwargs)
        if max_gap is not None:
            raise ValueError(
                f"max_gap={max_gap}: igtcache's cat_ranges does not merge ranges, because adjacent "
                "missing blocks already share one GET; leave max_gap out"
            )
        count = len(paths)
        starts = starts if isinstance(starts, list) else [starts] * count
        ends = ends if isinstance(ends, list) else [ends] * count
        if not len(starts) == len(ends) == count:
            raise ValueError(f"{count} paths but {len(starts)} starts and {len(ends)} ends")
        objects: dict[str, ObjectVersion] = {}
        out: list[bytes | Exception] = []
        for path, start, end in zip(paths, starts, ends, strict=True):
            try:
                target_path = self._target_path(path)
                if target_path not in objects:
                    objects[target_path] = self._object(target_path)
                obj = objects[target_path]
                out.append(self._read(obj, *slice_bounds(start, end, obj.size)))
            except Exception as error:  # fsspec's contract: on_error="return" returns them
                if on_error != "return":
                    raise
                out.append(error)
        return out

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> IGTCacheFile:
        """A file reading through the tiers. `block_size` and `cache_options` are fsspec's
        per-file buffering, which the tiers replace: set the `block_size` option instead."""
        if mode != "rb":
            self._refuse(f"open files in mode {mode!r}", path)
        _no_arguments("open", {k: v for k, v in kwargs.items() if k not in _REOPEN_ARGUMENTS})
        target_path = self._target_path(path)
        check = self._check(target_path)
        return IGTCacheFile(self, path, self._version(target_path, check.info), check.info)

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget remembered version checks (of `path`, or all) and the target's listings:
        the next read checks the version again whatever `etag_ttl_s` says."""
        with self._checks_lock:
            if path is None:
                self._checks.clear()
            else:
                self._checks.pop(self._target_path(path), None)
        self.target.invalidate_cache(None if path is None else self._target_path(path))

    def _read(self, obj: ObjectVersion, start: int, end: int) -> bytes:
        try:
            return self._reader.read(obj, start, end)
        except ObjectChangedError:
            with self._checks_lock:
                self._checks.pop(obj.path, None)
            raise

    # ---- versions -------------------------------------------------------------------------

    def _object(self, target_path: str) -> ObjectVersion:
        return self._version(target_path, self._check(target_path).info)

    def _version(self, target_path: str, info: dict[str, Any]) -> ObjectVersion:
        if info["type"] != "file":
            raise IsADirectoryError(f"{target_path!r} is a {info['type']}, not a file")
        return self._reader.origin.describe(info)

    def _check(self, target_path: str) -> _Check:
        """The remembered check of `target_path` if younger than `etag_ttl_s`, else a new one
        (which drops the blocks of any other version)."""
        ttl = self.options.etag_ttl_s
        now = time.monotonic()
        with self._checks_lock:
            check = self._checks.get(target_path)
            if check is not None and now - check.at < ttl:
                self._checks.move_to_end(target_path)
                return check
        info = self._reader.origin.info(target_path)
        if info["type"] == "file":
            self._reader.discard_stale(self._reader.origin.describe(info))
        check = _Check(info, now)
        if ttl > 0:
            with self._checks_lock:
                self._checks[target_path] = check
                self._checks.move_to_end(target_path)
                if len(self._checks) > REMEMBERED_CHECKS:
                    self._checks.popitem(last=False)
        return check

    def _target_path(self, path: str) -> str:
        return self.target._strip_protocol(self._strip_protocol(path))

    # ---- writes: refused ------------------------------------------------------------------

    def _refuse(self, action: str, path: Any) -> None:
        raise ReadOnlyError(
            f"igtcache is a read cache and does not {action} ({path}); write to the target "
            f"filesystem directly (e.g. fsspec.open('{self.target.unstrip_protocol('...')}', "
            f"'wb')): igtcache reads the new version at its next version check "
            f"(etag_ttl_s={self.options.etag_ttl_s})"
        )

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self._refuse("create directories", path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self._refuse("create directories", path)

    def rmdir(self, path: str) -> None:
        self._refuse("remove directories", path)

    def rm_file(self, path: str) -> None:
        self._refuse("remove files", path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        self._refuse("remove files", path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        self._refuse("copy files", path2)


class IGTCacheFile(AbstractBufferedFile):
    """A file of one version of an object whose reads go through the tiers.

    fsspec's per-file cache is off (`cache_type="none"`): every read asks the tiers, which
    already keep what a file-level cache would.
    """

    def __init__(
        self, fs: IGTCacheFileSystem, path: str, obj: ObjectVersion, details: dict[str, Any]
    ) -> None:
        super().__init__(
            fs, path, mode="rb", block_size=fs.options.block_size, cache_type="none", size=obj.size
        )
        self.details = details
        self.version = obj

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs._read(self.version, start, end)


def _target(
    fs: AbstractFileSystem | None, protocol: str | None, options: dict[str, Any] | None
) -> AbstractFileSystem:
    """The filesystem to cache: `fs`, or the one `protocol` and `options` build."""
    if (fs is None) == (protocol is None):
        raise ValueError(
            "igtcache caches one filesystem: give target_protocol (with target_options), as "
            "fsspec.open('igtcache::s3://bucket/key', igtcache={...}, s3={...}) does, or "
            "fs=<a filesystem instance>, not both"
        )
    if fs is None:
        return fsspec.filesystem(protocol, **(options or {}))
    if options:
        raise ValueError("target_options only apply with target_protocol; configure fs= yourself")
    return fs


def _no_arguments(method: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(
            f"igtcache's {method} takes no argument(s) {', '.join(map(repr, sorted(kwargs)))}; "
            "set igtcache's options on the filesystem instead"
        )
