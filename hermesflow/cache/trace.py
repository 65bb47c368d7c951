"""Exact replay of an access trace through a replacement policy.

A trace is the sequence of reads a workload makes, each a `TraceRecord`: the item's key, its
size and whether the read is a prefetch. Replaying it through a `ReplacementCache` gives the
statistics a tier would have seen, with no bytes moved: this is how the benchmark scores the
baselines and Belady on one trace, and how the simulated-time mode of `bench/cache.py` gets its
hits and misses. The replay is a plain loop over the cache's own `access` and `prefetch`, so it
measures exactly what a real tier would do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from hermesflow.cache.replacement import CacheStats, Key, ReplacementCache


class TraceRecord(NamedTuple):
    """One read: a demand access, or a prefetch when `prefetch` is True."""

    key: Key
    size: int
    prefetch: bool = False


def demand_keys(records: Iterable[TraceRecord]) -> list[Key]:
    """The keys of the demand accesses, in order: the future an offline policy is built from."""
    return [record.key for record in records if not record.prefetch]


def replay(cache: ReplacementCache, records: Iterable[TraceRecord]) -> CacheStats:
    """Run every record through `cache` in order and return its statistics afterwards.

    The cache keeps its state, so replays can be chained (a warm-up, then the measured part).
    """
    access, prefetch = cache.access, cache.prefetch
    for key, size, is_prefetch in records:
        if is_prefetch:
            prefetch(key, size)
        else:
            access(key, size)
    return cache.stats
