"""Arrivals of applications: Poisson, bursty, or replayed from a trace; and load to rate.

Load is defined on the LLM engines, the bottleneck of an LLM application mix:

    L = lambda * E[LLM work per application] / engine capacity,

where an engine's capacity is one engine-second of work per second at full batch (see
`hermesflow.pdgraph.costs`). `arrival_rate_for_load` inverts this for the busiest engine.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import StageKind


@dataclass(frozen=True, slots=True)
class Arrival:
    """One application arriving at `time_s`."""

    time_s: float
    app_class: str


def normalise_mix(classes: Sequence[str], mix: Mapping[str, float] | None) -> dict[str, float]:
    """Class weights summing to 1; a uniform mix when `mix` is None."""
    weights = {c: 1.0 for c in classes} if mix is None else dict(mix)
    unknown = sorted(set(weights) - set(classes))
    if unknown:
        raise ValueError(f"mix names unknown classes {unknown}; known: {sorted(classes)}")
    total = sum(weights.values())
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError("mix weights must be >= 0 with a positive sum")
    return {c: w / total for c, w in weights.items() if w > 0}


def mean_work_by_backend(demand: DemandEstimator, mix: Mapping[str, float]) -> dict[str, float]:
    """E[backend-seconds per application] on each backend, for the mix."""
    totals: dict[str, float] = {}
    for app_class, weight in mix.items():
        draws = demand.draws_for(demand.initial_state(app_class))
        for backend, work in draws.work_by_backend_s.items():
            totals[backend] = totals.get(backend, 0.0) + weight * float(work.mean())
    return totals


def llm_backends(demand: DemandEstimator, mix: Mapping[str, float]) -> set[str]:
    names: set[str] = set()
    for app_class in mix:
        graph = demand.compiled(app_class).graph
        names.update(graph.backend_of(s) for s, st in graph.stages.items() if st.kind is StageKind.LLM)
    return names


def arrival_rate_for_load(load: float, demand: DemandEstimator, mix: Mapping[str, float]) -> float:
    """Applications per second that put the busiest LLM engine at utilisation `load`."""
    if load <= 0:
        raise ValueError(f"load is {load}; give a positive load (0.9 = 90 % of LLM capacity)")
    work = mean_work_by_backend(demand, mix)
    busiest = max((work[b] for b in llm_backends(demand, mix)), default=0.0)
    if busiest <= 0:
        raise ValueError("the mix has no LLM work, so load (defined on the LLM engines) is undefined")
    return load / busiest


def _classes(mix: Mapping[str, float], n: int, rng: np.random.Generator) -> list[str]:
    names = list(mix)
    return [names[i] for i in rng.choice(len(names), size=n, p=list(mix.values()))]


def poisson_arrivals(rate: float, n: int, mix: Mapping[str, float], seed: int) -> list[Arrival]:
    """`n` arrivals of a Poisson process with `rate` per second, classes drawn from `mix`."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, size=n))
    return [Arrival(float(t), c) for t, c in zip(times, _classes(mix, n, rng), strict=True)]


def bursty_arrivals(
    rate: float,
    n: int,
    mix: Mapping[str, float],
    seed: int,
    burst_factor: float = 4.0,
    mean_period_s: float = 60.0,
) -> list[Arrival]:
    """A two-state Markov-modulated Poisson process with the same mean `rate`.

    Bursts arrive `burst_factor` times faster than calm periods; the two states alternate with
    exponential durations of mean `mean_period_s` each, so the long-run rate is `rate`.
    """
    if burst_factor < 1:
        raise ValueError("burst_factor must be >= 1 (1 gives a Poisson process)")
    rng = np.random.default_rng(seed)
    calm, burst = 2 * rate / (1 + burst_factor), 2 * rate * burst_factor / (1 + burst_factor)
    times: list[float] = []
    t, state_end, bursting = 0.0, rng.exponential(mean_period_s), False
    while len(times) < n:
        t_next = t + rng.exponential(1.0 / (burst if bursting else calm))
        if t_next > state_end:
            t, bursting = state_end, not bursting
            state_end = t + rng.exponential(mean_period_s)
            continue
        t = t_next
        times.append(t)
    return [Arrival(t, c) for t, c in zip(times, _classes(mix, n, rng), strict=True)]


def _class_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"app_class is {value!r}")
    return value


def read_trace(path: str | Path) -> list[Arrival]:
    """Replay arrivals from a CSV (`time_s,app_class` header) or JSON-lines file."""
    path = Path(path)
    try:
        with path.open() as handle:
            if path.suffix == ".csv":
                rows = [(r["time_s"], r["app_class"]) for r in csv.DictReader(handle)]
            else:
                rows = [(d["time_s"], d["app_class"]) for d in map(json.loads, filter(str.strip, handle))]
        arrivals = [Arrival(float(t), _class_name(c)) for t, c in rows]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: each row needs a numeric time_s and an app_class name ({err!r})"
        ) from None
    arrivals.sort(key=lambda a: a.time_s)
    return arrivals
