"""When to warm, keep and release backends.

A cold backend (a model not loaded, a tool container not started) makes the request that needs
it wait its warm-up time. Every planner here answers one question — which backends it wants warm,
most wanted first — and the base class turns that into decisions under a budget:

1. backends with running or waiting requests stay or become warm (demand is never refused);
2. pinned backends (e.g. the main LLM engine) stay warm;
3. the planner's wanted list fills what is left of the budget `max_warm`, in order;
4. every other warm or warming backend with no work is released.

Hermesflow's planner (`pdgraph`) follows the Hermes rule: warm a backend when the PDGraphs of the
live applications say it will be needed within its warm-up time. For an application in stage s
that has run for e seconds, P(needs b within h) = P(e < T_b <= e + h) / P(T_b > e), where T_b is
the Monte-Carlo time from the start of s until b is first needed (`DemandEstimator`). Over all
live applications, and over new arrivals at rate Lambda_b = sum_c lambda_c * P(class c uses b),

    P_b(h) = 1 - prod_apps (1 - p_app) * exp(-Lambda_b * h),   h = warm-up(b) + slack.

It warms b when P_b >= warm_threshold and keeps a warm b while P_b >= keep_threshold
(hysteresis, so a backend does not flap). Baselines: load on demand, LRU keep-alive with a TTL,
and warm-on-queue (warm whatever a live application's class can use).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.schedulers.interface import AppRecord, BackendPhase


@dataclass(slots=True)
class BackendStatus:
    """What a planner sees of one backend."""

    name: str
    phase: BackendPhase
    warmup_s: float
    busy: int = 0
    queued: int = 0
    last_used_s: float = -math.inf

    @property
    def idle(self) -> bool:
        return self.busy == 0 and self.queued == 0

    @property
    def warm_or_warming(self) -> bool:
        return self.phase in (BackendPhase.WARMING, BackendPhase.WARM)


@dataclass(frozen=True, slots=True)
class PrewarmDecision:
    """Backends to start warming (now cold) and to release (now warm or warming, idle)."""

    warm: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


class PrewarmPlanner(ABC):
    """Decides warmth under a budget; subclasses say what they want warm (`wanted`)."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(
        self,
        demand: DemandEstimator,
        max_warm: int | None = None,
        pinned: Iterable[str] = (),
    ) -> None:
        if max_warm is not None and max_warm < 1:
            raise ValueError(f"max_warm is {max_warm}; give at least 1 warm backend, or None for no budget")
        self.demand = demand
        self.max_warm = max_warm
        self.pinned = tuple(pinned)

    def plan(
        self,
        now: float,
        apps: Sequence[AppRecord],
        backends: Mapping[str, BackendStatus],
        arrival_rates: Mapping[str, float],
    ) -> PrewarmDecision:
        """Called on every event that changes demand for a backend and on a timer.

        Only the backends that rules 1-2 leave undecided are offered to `wanted`: a busy or
        pinned backend is kept whatever the planner thinks of it, so asking about it would
        only cost time (a timer plan asks of every live application)."""
        keep = [name for name, b in backends.items() if not b.idle]
        keep += [name for name in self.pinned if name in backends]
        kept = set(keep)
        undecided = self.undecided(backends)
        budget = math.inf if self.max_warm is None else self.max_warm
        if undecided and len(kept) < budget:
            for name in self.wanted(now, apps, undecided, arrival_rates):
                if len(dict.fromkeys(keep)) >= budget:
                    break
                keep.append(name)
        chosen = set(keep)
        return PrewarmDecision(
            warm=tuple(n for n in dict.fromkeys(keep) if backends[n].phase is BackendPhase.COLD),
            release=tuple(
                n for n, b in backends.items() if n not in chosen and b.warm_or_warming and b.idle
            ),
        )

    def undecided(self, backends: Mapping[str, BackendStatus]) -> dict[str, BackendStatus]:
        """The backends rules 1-2 leave to the planner: idle and not pinned."""
        return {name: b for name, b in backends.items() if b.idle and name not in self.pinned}

    def quiet_until(
        self,
        now: float,
        apps: Sequence[AppRecord],
        backends: Mapping[str, BackendStatus],
        arrival_rates_at: Callable[[float], Mapping[str, float]],
    ) -> float:
        """Until when a plan would decide nothing if only time passes: no application,
        request or backend changes and nothing is admitted. Asked right after a plan's decision
        is applied; the engine skips its timer's plans before then (and any change ends the
        quiet), so a skipped plan is one that would have warmed and released nothing.
        `arrival_rates_at(t)` is the admission rate per class at t with no new admissions.
        Default: `now`, that is, plan on every tick."""
        return now

    def may_warm_for(self, app: AppRecord, cold: Mapping[str, float]) -> bool:
        """Whether `app`, which has just begun a stage, may on its own make this planner warm
        one of the `cold` backends (name -> warm-up seconds). The engine then plans at once
        rather than at its next timer tick: a warm-up started at the stage's start instead of up
        to `planner_interval_s` later is what prewarming is for. A full plan reads every live
        application, so this question is asked of the one that moved. Default: no (planners
        that warm only for queued requests, which the engine handles itself)."""
        return False

    @abstractmethod
    def wanted(
        self,
        now: float,
        apps: Sequence[AppRecord],
        backends: Mapping[str, BackendStatus],
        arrival_rates: Mapping[str, float],
    ) -> list[str]:
        """Backends of `backends` (those not already kept for their work or pinned) this
        planner wants warm, most wanted first."""


class LoadOnDemand(PrewarmPlanner):
    name = "on-demand"
    description = "warm a backend when a request waits for it, release it as soon as it idles"

    def wanted(self, now, apps, backends, arrival_rates) -> list[str]:
        return []

    def quiet_until(self, now, apps, backends, arrival_rates_at) -> float:
        """Never by time alone: it reads only what backends are doing."""
        return math.inf


class LRUKeepAlive(PrewarmPlanner):
    """Serverless-style keep-alive: an idle backend stays warm for `ttl_s` after its last use;
    under the budget the least recently used goes first."""

    name = "lru"
    description = "warm on demand, keep idle backends for a TTL, evict least recently used"

    def __init__(self, demand: DemandEstimator, max_warm: int | None = None, pinned: Iterable[str] = (), ttl_s: float = 60.0) -> None:
        super().__init__(demand, max_warm, pinned)
        self.ttl_s = ttl_s

    def wanted(self, now, apps, backends, arrival_rates) -> list[str]:
        recent = [b for b in backends.values() if b.warm_or_warming and now - b.last_used_s <= self.ttl_s]
        return [b.name for b in sorted(recent, key=lambda b: b.last_used_s, reverse=True)]

    def quiet_until(self, now, apps, backends, arrival_rates_at) -> float:
        """When the first idle warm backend's keep-alive runs out."""
        return min(
            (b.last_used_s + self.ttl_s for b in self.undecided(backends).values() if b.warm_or_warming),
            default=math.inf,
        )


class WarmOnQueue(PrewarmPlanner):
    """Prefetch for the waiting queue: warm every backend some live application's class can use,
    most-used first; release it when no live application can use it."""

    name = "warm-on-queue"
    description = "warm every backend a live application's class can use"

    def wanted(self, now, apps, backends, arrival_rates) -> list[str]:
        users: Counter[str] = Counter()
        for app in apps:
            users.update(self.demand.compiled(app.app_class).graph.backends)
        return [name for name, _ in users.most_common() if name in backends]

    def quiet_until(self, now, apps, backends, arrival_rates_at) -> float:
        """Never by time alone: it reads only the live applications' classes."""
        return math.inf

    def may_warm_for(self, app: AppRecord, cold: Mapping[str, float]) -> bool:
        """Yes when the application's class can use a cold backend."""
        return any(name in cold for name in self.demand.compiled(app.app_class).graph.backends)


class PDGraphPrewarm(PrewarmPlanner):
    """Hermesflow's planner (module docstring): warm what the PDGraphs say is needed within the
    warm-up time."""

    name = "pdgraph"
    description = "warm a backend when live PDGraph states say it is needed within its warm-up"

    def __init__(
        self,
        demand: DemandEstimator,
        max_warm: int | None = None,
        pinned: Iterable[str] = (),
        warm_threshold: float = 0.5,
        keep_threshold: float = 0.2,
        slack_s: float = 1.0,
    ) -> None:
        super().__init__(demand, max_warm, pinned)
        if not 0.0 < keep_threshold <= warm_threshold <= 1.0:
            raise ValueError("need 0 < keep_threshold <= warm_threshold <= 1 (e.g. 0.2 and 0.5)")
        self.warm_threshold = warm_threshold
        self.keep_threshold = keep_threshold
        self.slack_s = slack_s
        self._products: tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]] = (math.nan, {})
        """When the last plan ran, and its need bounds per backend (`need_probabilities`)."""

    def wanted(self, now, apps, backends, arrival_rates) -> list[str]:
        horizons = {name: b.warmup_s + self.slack_s for name, b in backends.items()}
        scores = self.need_probabilities(horizons, now, apps, arrival_rates)
        chosen = [
            name
            for name, p in scores.items()
            if p >= (self.keep_threshold if backends[name].warm_or_warming else self.warm_threshold)
        ]
        return sorted(chosen, key=lambda name: scores[name], reverse=True)

    def may_warm_for(self, app: AppRecord, cold: Mapping[str, float]) -> bool:
        """Yes when the application alone needs a cold backend within its horizon with at least
        `keep_threshold` probability; weaker needs count only combined with other applications',
        and the timer's next plan weighs them."""
        horizons = {name: warmup_s + self.slack_s for name, warmup_s in cold.items()}
        return any(p >= self.keep_threshold for p in self.demand.need_probabilities(app.state, 0.0, horizons).values())

    def need_probabilities(
        self,
        horizons_s: Mapping[str, float],
        now: float,
        apps: Sequence[AppRecord],
        arrival_rates: Mapping[str, float],
    ) -> dict[str, float]:
        """P_b(h_b) of the module docstring for each backend b of `horizons_s`, one pass over
        the live applications. A backend whose P_b is already above 0.999 is not asked about
        the rest (no threshold is that high). The same pass keeps, for `quiet_until`, the
        products over the applications asked of 1 - (the greatest) and 1 - (the least) of each
        one's need over each of `QUIET_LOOKAHEADS_S` (`DemandEstimator.need_bounds`; the first
        lookahead, 0, is the need now)."""
        rates = self._backend_rates(horizons_s, arrival_rates)
        none_needed = {backend: math.exp(-rates[backend] * h) for backend, h in horizons_s.items()}
        products = {b: (np.ones(_LOOKAHEADS_S.size), np.ones(_LOOKAHEADS_S.size)) for b in horizons_s}
        for app in apps:
            open_horizons = {b: h for b, h in horizons_s.items() if none_needed[b] >= 1e-3}
            if not open_horizons:
                break
            since = app.stage_running_since_s
            if since is None:  # its elapsed time stays 0 until a request of it is dispatched
                bounds = self.demand.need_bounds(app.state, 0.0, open_horizons, _NOW_ONLY)
            else:
                bounds = self.demand.need_bounds(app.state, now - since, open_horizons, _LOOKAHEADS_S)
            for backend, (low, high) in bounds.items():
                none_needed[backend] *= 1.0 - low[0]
                fewest, most = products[backend]
                products[backend] = (fewest * (1.0 - high), most * (1.0 - low))
        self._products = (now, products)
        return {backend: 1.0 - none for backend, none in none_needed.items()}

    def _backend_rates(
        self, horizons_s: Mapping[str, float], arrival_rates: Mapping[str, float]
    ) -> dict[str, float]:
        """Lambda_b of the module docstring: expected admissions per second that use b."""
        rates = dict.fromkeys(horizons_s, 0.0)
        for app_class, rate in arrival_rates.items():
            for backend, p in self.demand.backend_use_probabilities(app_class).items():
                if backend in rates:
                    rates[backend] += rate * p
        return rates

    def quiet_until(self, now, apps, backends, arrival_rates_at) -> float:
        """The longest of `QUIET_LOOKAHEADS_S` over which no idle backend's P_b can cross its
        threshold: a cold one stay below `warm_threshold`, a warm one above `keep_threshold`.
        P_b moves with time through each running stage's elapsed time (bounded by
        `DemandEstimator.need_bounds`, kept by this plan's `need_probabilities`) and the
        admission rate, which without admissions only falls as admissions leave the window:
        Lambda_b(now) bounds it above, Lambda_b at the longest lookahead's end below. An application
        the plan did not ask about a backend (its P_b was above 0.999) only loosens the bounds.
        Under a budget (`max_warm`) the order of the wanted backends matters too, so then it
        plans on every tick."""
        idle = self.undecided(backends)
        if not idle:
            return math.inf
        planned_s, products = self._products
        if self.max_warm is not None or planned_s != now or not idle.keys() <= products.keys():
            return now
        horizons = {name: b.warmup_s + self.slack_s for name, b in idle.items()}
        highest_rates = self._backend_rates(horizons, arrival_rates_at(now))
        lowest_rates = self._backend_rates(horizons, arrival_rates_at(now + QUIET_LOOKAHEADS_S[-1]))
        quiet = np.ones(QUIET_LOOKAHEADS_S.size, dtype=bool)
        for backend, status in idle.items():
            fewest, most = products[backend]
            h = horizons[backend]
            if status.phase is BackendPhase.COLD:  # P_b <= 1 - none_fewest
                none_fewest = math.exp(-highest_rates[backend] * h) * fewest[1:]
                quiet &= none_fewest > 1.0 - self.warm_threshold + _MARGIN
            else:  # P_b >= 1 - none_most
                none_most = math.exp(-lowest_rates[backend] * h) * most[1:]
                quiet &= none_most <= 1.0 - self.keep_threshold - _MARGIN
        held = np.flatnonzero(np.logical_and.accumulate(quiet))
        return now + float(QUIET_LOOKAHEADS_S[held[-1]]) if held.size else now


QUIET_LOOKAHEADS_S = np.array([2.0, 4.0, 8.0, 16.0])
"""How far ahead `PDGraphPrewarm.quiet_until` looks: a quiet time is one of these (seconds)."""
_LOOKAHEADS_S = np.concatenate([[0.0], QUIET_LOOKAHEADS_S])
_NOW_ONLY = np.zeros(1)
_MARGIN = 1e-9
"""Keeps a bound off its threshold by more than rounding (a plan compares P_b exactly)."""

PLANNERS: Mapping[str, type[PrewarmPlanner]] = MappingProxyType(
    {cls.name: cls for cls in (LoadOnDemand, LRUKeepAlive, WarmOnQueue, PDGraphPrewarm)}
)


def make_planner(name: str, demand: DemandEstimator, **options: object) -> PrewarmPlanner:
    """Build a planner by its command-line name."""
    try:
        cls = PLANNERS[name]
    except KeyError:
        raise ValueError(f"unknown prewarm planner {name!r}; choose one of: {', '.join(PLANNERS)}") from None
    return cls(demand, **options)
