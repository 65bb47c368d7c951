"""The options of the `igtcache` filesystem, checked once when it is built.

They arrive as keyword arguments (`fsspec.open("igtcache::s3://...", igtcache={...})` or
`IGTCacheFileSystem(target_protocol=..., **options)`); a misspelt or ill-typed option is an
error naming the option and the fix, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hermesflow.cache.registry import CachePolicyKind, parse_kind

MiB = 2**20

DEFAULT_BLOCK_SIZE = 4 * MiB
"""An S3 GET costs a request (money, and 10-50 ms to the first byte) whatever its size; at
4 MiB the transfer, not the request, dominates a miss, while a reader of scattered small
records fetches at most 4 MiB per miss (JuiceFS and fsspec's S3 files use similar sizes)."""
DEFAULT_MEMORY_BYTES = 256 * MiB


@dataclass(frozen=True, slots=True)
class IGTCacheOptions:
    """What a user may set; every field has a default but the disk tier's (off by default)."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    """Budget of the memory tier, per process (0: no memory caching)."""
    disk_dir: str | None = None
    """Directory of the disk tier (created if missing; shared safely by the processes of a
    node); None: no disk tier."""
    disk_bytes: int = 0
    """Budget of the disk tier; required (> 0) with `disk_dir`."""
    block_size: int = DEFAULT_BLOCK_SIZE
    """Bytes per cached block of a large object."""
    small_object_bytes: int | None = None
    """Objects of at most this many bytes are read and cached whole; larger ones by block.
    None: `block_size` (an object that fits one block is one item anyway)."""
    etag_ttl_s: float = 0.0
    """How long a version check (a HEAD on S3) is trusted. 0: every `open`, `info` and
    `cat_file` checks, so an overwrite is seen at once; above 0, reads may serve the old
    version for up to that long after an overwrite, and keep working from the cache while
    the origin is down."""
    memory_policy: CachePolicyKind = CachePolicyKind.LRU
    disk_policy: CachePolicyKind = CachePolicyKind.LRU

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> IGTCacheOptions:
        """The options in `options`, checked (see the module docstring)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"unknown igtcache option(s) {', '.join(map(repr, unknown))}; "
                f"the options are: {', '.join(sorted(known))}"
            )
        checked = {name: _CHECKS[name](name, value) for name, value in options.items()}
        parsed = cls(**checked)
        if (parsed.disk_dir is None) != (parsed.disk_bytes == 0):
            raise ValueError(
                "igtcache's disk tier needs both disk_dir and disk_bytes > 0 "
                f"(got disk_dir={parsed.disk_dir!r}, disk_bytes={parsed.disk_bytes}); "
                "give both, or neither for a memory-only cache"
            )
        if parsed.small_object_bytes is None:
            return dataclasses.replace(parsed, small_object_bytes=parsed.block_size)
        if parsed.small_object_bytes < parsed.block_size:
            raise ValueError(
                f"igtcache option small_object_bytes ({parsed.small_object_bytes}) is below "
                f"block_size ({parsed.block_size}): an object that fits one block is always "
                "read whole; leave it unset or give at least block_size"
            )
        return parsed


def _byte_count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"igtcache option {name} must be a whole number of bytes >= {minimum}, got {value!r}"
        )
    return value


def _positive_bytes(name: str, value: Any) -> int:
    return _byte_count(name, value, minimum=1)


def _optional_positive_bytes(name: str, value: Any) -> int | None:
    return None if value is None else _positive_bytes(name, value)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"igtcache option {name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _directory(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | os.PathLike) and os.fspath(value):
        return os.fspath(value)
    raise ValueError(
        f"igtcache option {name} must be a directory path (a non-empty string), got {value!r}"
    )


def _online_policy(name: str, value: Any) -> CachePolicyKind:
    try:
        kind = parse_kind(value)
    except ValueError as error:
        raise ValueError(f"igtcache option {name}: {error}") from None
    if kind is CachePolicyKind.BELADY:
        online = ", ".join(k.value for k in CachePolicyKind if k is not CachePolicyKind.BELADY)
        raise ValueError(
            f"igtcache option {name}: belady needs the future accesses and only runs in trace "
            f"replays; choose one of {online}"
        )
    return kind


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "memory_bytes": _byte_count,
    "disk_dir": _directory,
    "disk_bytes": _byte_count,
    "block_size": _positive_bytes,
    "small_object_bytes": _optional_positive_bytes,
    "etag_ttl_s": _seconds,
    "memory_policy": _online_policy,
    "disk_policy": _online_policy,
}
