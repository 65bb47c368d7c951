"""Helpers shared by the cache tests: unit-size traces, step-by-step runs, seeded random traces."""

from __future__ import annotations

import random
from collections.abc import Sequence

from hermesflow.cache.replacement import AccessResult, ReplacementCache
from hermesflow.cache.trace import TraceRecord


def unit_records(keys: Sequence[str]) -> list[TraceRecord]:
    """Demand reads of one byte each; `keys` may be a string of one-letter keys or a list."""
    return [TraceRecord(key, 1) for key in keys]


def run(cache: ReplacementCache, records: Sequence[TraceRecord]) -> list[AccessResult]:
    """Each record's result, in order."""
    return [
        (cache.prefetch if record.prefetch else cache.access)(record.key, record.size)
        for record in records
    ]


def evictions(results: Sequence[AccessResult]) -> list[tuple[str, ...]]:
    """The keys each access evicted (an empty tuple for none)."""
    return [result.evicted for result in results]


def random_records(
    seed: int,
    count: int,
    distinct: int,
    *,
    max_size: int = 1,
    prefetch_share: float = 0.0,
) -> list[TraceRecord]:
    """A skewed random trace: key i has a fixed size in [1, max_size]; low keys are hotter
    (the index is distinct * u**2 for uniform u), so every policy sees reuse."""
    rng = random.Random(seed)
    sizes = [rng.randint(1, max_size) for _ in range(distinct)]
    records = []
    for _ in range(count):
        index = int(distinct * rng.random() ** 2)
        records.append(TraceRecord(f"k{index}", sizes[index], rng.random() < prefetch_share))
    return records
