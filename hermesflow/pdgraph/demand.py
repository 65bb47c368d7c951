"""Remaining demand of an application from where it is now, and its Gittins index.

`GraphState` is what the scheduler knows about a live application: its class, its current stage,
how often each stage has started, and how many requests of the current stage are unfinished.
`DemandEstimator` turns a state into Monte-Carlo draws of the remaining backend-seconds
(`CompiledGraph.remaining`) and caches what decisions need from them: the Gittins index, the
mean, and when each backend is next needed.

States are canonicalised before caching: visit counts only matter for stages whose loop exit
follows observed loop counts, and only up to one past the longest observed loop (beyond it the
successor choice is memoryless). So a decision is a dictionary look-up after the first time a
state is seen, and a state's draws do not depend on the order states are asked in (each key
seeds its own generator), which keeps simulations reproducible.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.gittins import GittinsRankCache, gittins_rank, gittins_rank_conditioned
from hermesflow.pdgraph.model import PDGraph
from hermesflow.pdgraph.sampler import CompiledGraph, RemainingDraws

DEFAULT_DRAWS = 512


@dataclass(frozen=True, slots=True)
class GraphState:
    """Where a live application is in its PDGraph.

    `stage` is None before the first stage starts; `visits[i]` counts the starts of stage i
    (in the class's stage order), the current one included; `pending` counts the current
    stage's requests that have not finished.
    """

    app_class: str
    stage: str | None
    visits: tuple[int, ...]
    pending: int = 0


class DemandEstimator:
    """Monte-Carlo remaining demand per PDGraph state, with cached summaries.

    One estimator serves every application of every class; the caller updates the graphs with
    `replace_graph` after a refit (which drops that class's cached answers).
    """

    def __init__(
        self,
        graphs: Mapping[str, PDGraph],
        costs: CostModel,
        draws: int = DEFAULT_DRAWS,
        seed: int = 0,
        cache_size: int = 200_000,
    ) -> None:
        self.costs = costs
        self.draws = draws
        self.seed = seed
        self._cache_size = cache_size
        self._compiled: dict[str, CompiledGraph] = {}
        self._draws: dict[tuple, RemainingDraws] = {}
        self._uses: dict[str, dict[str, float]] = {}
        self.ranks = GittinsRankCache(maxsize=cache_size)
        for graph in graphs.values():
            self.replace_graph(graph)

    # -- graphs -------------------------------------------------------------------------------

    def replace_graph(self, graph: PDGraph) -> None:
        """Install (or refit) a class; its cached answers are dropped."""
        self._compiled[graph.name] = CompiledGraph(graph, self.costs)
        self._draws = {k: v for k, v in self._draws.items() if k[0] != graph.name}
        self._uses.pop(graph.name, None)
        self.ranks = GittinsRankCache(maxsize=self._cache_size)

    def compiled(self, app_class: str) -> CompiledGraph:
        try:
            return self._compiled[app_class]
        except KeyError:
            raise KeyError(
                f"unknown application class {app_class!r}; known: {sorted(self._compiled)} "
                "(declare its PDGraph or load it from a workload file)"
            ) from None

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self._compiled)

    def initial_state(self, app_class: str) -> GraphState:
        return GraphState(app_class, None, (0,) * self.compiled(app_class).end, 0)

    # -- draws ----------------------------------------------------------------------------------

    def key(self, state: GraphState) -> tuple:
        """The canonical cache key of a state (see the module docstring)."""
        caps = self.compiled(state.app_class).visit_caps
        visits = tuple(min(v, cap) for v, cap in zip(state.visits, caps, strict=True))
        return (state.app_class, state.stage, visits, state.pending)

    def draws_for(self, state: GraphState) -> RemainingDraws:
        key = self.key(state)
        found = self._draws.get(key)
        if found is None:
            if len(self._draws) >= self._cache_size:
                self._draws.clear()
            graph = self.compiled(state.app_class)
            rng = np.random.default_rng([self.seed, zlib.crc32(repr(key).encode())])
            stage = None if state.stage is None else graph.index[state.stage]
            found = graph.remaining(stage, state.visits, state.pending, self.draws, rng)
            self._draws[key] = found
        return found

    def total_demand(self, app_class: str) -> np.ndarray:
        """Draws of a whole run's backend-seconds: the class's size distribution."""
        return self.draws_for(self.initial_state(app_class)).work_s

    # -- summaries used by policies ------------------------------------------------------------

    def mean_remaining(self, state: GraphState) -> float:
        return float(self.draws_for(state).work_s.mean())

    def gittins(self, state: GraphState) -> float:
        """Gittins index of the remaining demand conditioned on the PDGraph state."""
        key = ("state", *self.key(state))
        return self.ranks.get_or_compute(key, lambda: gittins_rank(self.draws_for(state).work_s))

    def gittins_attained(self, app_class: str, attained_s: float, *, simplified: bool) -> float:
        """Gittins index from the class's total demand and the scalar attained service only
        (the Hermes paper's index). Attained service is bucketed to 1 ms for caching."""
        bucket = round(attained_s, 3)
        key = ("attained", app_class, bucket, simplified)
        return self.ranks.get_or_compute(
            key,
            lambda: gittins_rank_conditioned(
                self.total_demand(app_class), bucket, simplified=simplified
            ),
        )

    def need_probabilities(self, state: GraphState, elapsed_s: float, horizons_s: Mapping[str, float]) -> dict[str, float]:
        """P(the application needs backend b within `horizons_s[b]` | its current stage has run
        for `elapsed_s` and has not finished), for each b: the ratio of the first-need CDF at
        elapsed + horizon minus that at elapsed, to the mass beyond elapsed. When no draw lasts
        beyond elapsed, the need is certain (the stage has outrun its history, so its successor
        is due). The state's draws are looked up once for all backends: a prewarm plan asks this
        of every live application."""
        first_need = self.draws_for(state).first_need_s
        out = {}
        for backend, horizon_s in horizons_s.items():
            times = first_need.get(backend)  # sorted ascending
            if times is None:
                out[backend] = 0.0
                continue
            start = int(np.searchsorted(times, elapsed_s, side="right")) if elapsed_s > 0 else 0
            later = times.size - start
            if later == 0:
                out[backend] = 1.0  # every draw needs it by now: the stage is overdue or uses it itself
                continue
            out[backend] = float(np.searchsorted(times, elapsed_s + horizon_s, side="right") - start) / later
        return out

    def backend_use_probabilities(self, app_class: str) -> Mapping[str, float]:
        """P(a new application of the class ever needs b), for each backend b its graph has
        (one dict per class, kept until the class is refitted: the planner weighs expected
        arrivals by it on every plan)."""
        found = self._uses.get(app_class)
        if found is None:
            first_need = self.draws_for(self.initial_state(app_class)).first_need_s
            found = self._uses[app_class] = {b: float(np.isfinite(t).mean()) for b, t in first_need.items()}
        return found
