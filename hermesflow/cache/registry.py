"""The replacement policies by name, and the one way to build them.

The names are the ones the benchmark reports (`bench/cache.py --json`), so a result's name is
the policy's `CachePolicyKind` value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType

from hermesflow.cache.arc import ARC
from hermesflow.cache.belady import Belady
from hermesflow.cache.lru import LRU
from hermesflow.cache.replacement import ReplacementCache
from hermesflow.cache.s3fifo import S3FIFO
from hermesflow.cache.sieve import Sieve
from hermesflow.cache.trace import TraceRecord, demand_keys


class CachePolicyKind(StrEnum):
    """A replacement policy, named as the benchmark reports it."""

    LRU = "lru"
    S3FIFO = "s3fifo"
    SIEVE = "sieve"
    ARC = "arc"
    FSSPEC_LRU = "fsspec-lru"
    """fsspec's `BlockCache` bounded by bytes: LRU over block keys (see `hermesflow.cache.lru`)."""
    BELADY = "belady"
    """The offline ceiling; needs the trace it will replay."""


_ONLINE: Mapping[CachePolicyKind, Callable[[int], ReplacementCache]] = MappingProxyType(
    {
        CachePolicyKind.LRU: LRU,
        CachePolicyKind.S3FIFO: S3FIFO,
        CachePolicyKind.SIEVE: Sieve,
        CachePolicyKind.ARC: ARC,
        CachePolicyKind.FSSPEC_LRU: LRU,
    }
)


def parse_kind(name: CachePolicyKind | str) -> CachePolicyKind:
    """The kind called `name`; the error lists the known names."""
    try:
        return CachePolicyKind(name)
    except ValueError:
        known = ", ".join(kind.value for kind in CachePolicyKind)
        raise ValueError(f"unknown cache policy {name!r}; known policies: {known}") from None


def make_cache(
    kind: CachePolicyKind | str,
    capacity: int,
    *,
    trace: Sequence[TraceRecord] | None = None,
) -> ReplacementCache:
    """A new empty cache of `capacity` bytes run by policy `kind`.

    `trace` is the sequence that will be replayed through it; only Belady reads it (the
    online policies ignore it, so a benchmark can pass it to every kind alike).
    """
    kind = parse_kind(kind)
    if kind is CachePolicyKind.BELADY:
        if trace is None:
            raise ValueError(
                "the belady policy needs the future: pass trace=<the records you will replay>"
            )
        return Belady(capacity, demand_keys(trace))
    return _ONLINE[kind](capacity)
