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

The first time costs about a millisecond of Monte-Carlo per state, and it falls on a request's
path: the admission or stage start that reaches the state. A long-running scheduler therefore
*prepares* each graph it installs (`prepare`, then `install`): it walks sampled runs of the
class and draws every state they pass through (its first states, each stage's start and each
request count down to its end), ahead of the requests. Preparing reads nothing the estimator
changes, so the Ray scheduler does it in a worker thread at start and after each refit, and
installs the result on its event loop; the draws are the ones the first look-up would have
made.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.gittins import GittinsRankCache, gittins_rank, gittins_rank_conditioned
from hermesflow.pdgraph.model import PDGraph
from hermesflow.pdgraph.sampler import CompiledGraph, RemainingDraws

DEFAULT_DRAWS = 512

COMMON_STATE_RUNS = 100
"""Sampled runs whose states a prepared graph draws ahead (`DemandEstimator.prepare`): enough
to reach every stage, fan-out count and loop visit a class commonly has; a state they miss is
drawn at its first look-up, as without preparing."""


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


@dataclass(frozen=True, slots=True)
class PreparedGraph:
    """A class's graph compiled, with the draws and Gittins ranks of the states its runs
    commonly pass through, ready for `DemandEstimator.install` (module docstring)."""

    compiled: CompiledGraph
    draws: Mapping[tuple, RemainingDraws]
    ranks: Mapping[tuple, float]

    @property
    def graph(self) -> PDGraph:
        return self.compiled.graph


class DemandEstimator:
    """Monte-Carlo remaining demand per PDGraph state, with cached summaries.

    One estimator serves every application of every class; the caller updates the graphs with
    `replace_graph` after a refit, or with `prepare` and `install` to draw the class's common
    states ahead (either drops that class's cached answers).
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
        self._by_state: dict[GraphState, RemainingDraws] = {}
        """The same draws by the state as asked: a planner asks of every live state each pass,
        and looking a state up is cheaper than canonicalising it."""
        self._uses: dict[str, dict[str, float]] = {}
        self.ranks = GittinsRankCache(maxsize=cache_size)
        """Ranks keyed ("state", *state key) or ("attained", class, ...): index 1 is the class."""
        for graph in graphs.values():
            self.replace_graph(graph)

    # -- graphs -------------------------------------------------------------------------------

    def replace_graph(self, graph: PDGraph) -> None:
        """Install (or refit) a class; its cached answers are dropped."""
        self.install(self.prepare(graph))

    def prepare(self, graph: PDGraph, sample_runs: int = 0) -> PreparedGraph:
        """`graph` compiled, with the draws and ranks of every state `sample_runs` sampled runs
        of it pass through (none by default). Changes nothing here, so it may run in another
        thread than the estimator's user (module docstring)."""
        compiled = CompiledGraph(graph, self.costs)
        draws: dict[tuple, RemainingDraws] = {}
        ranks: dict[tuple, float] = {}
        rng = np.random.default_rng([self.seed, zlib.crc32(graph.name.encode())])
        for state in _common_states(compiled, sample_runs, rng):
            key = _key(compiled, state)
            if key not in draws:
                draws[key] = self._draw(compiled, state, key)
                ranks[("state", *key)] = gittins_rank(draws[key].work_s)
        return PreparedGraph(compiled, draws, ranks)

    def install(self, prepared: PreparedGraph) -> None:
        """Rank and plan a class by a prepared graph from now on; the class's earlier cached
        answers are dropped."""
        name = prepared.graph.name
        self._compiled[name] = prepared.compiled
        self._draws = {k: v for k, v in self._draws.items() if k[0] != name}
        self._draws.update(prepared.draws)
        self._by_state = {s: v for s, v in self._by_state.items() if s.app_class != name}
        self._uses.pop(name, None)
        self.ranks.discard(lambda key: key[1] == name)  # ("state" | "attained", class, ...)
        self.ranks.update(prepared.ranks)

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
        return _key(self.compiled(state.app_class), state)

    def draws_for(self, state: GraphState) -> RemainingDraws:
        found = self._by_state.get(state)
        if found is not None:
            return found
        key = self.key(state)
        found = self._draws.get(key)
        if found is None:
            if len(self._draws) >= self._cache_size:
                self._draws.clear()
            found = self._draws[key] = self._draw(self.compiled(state.app_class), state, key)
        if len(self._by_state) >= self._cache_size:
            self._by_state.clear()
        self._by_state[state] = found
        return found

    def _draw(self, graph: CompiledGraph, state: GraphState, key: tuple) -> RemainingDraws:
        """The draws of `state` (canonical `key`), from a generator seeded by the key alone."""
        rng = np.random.default_rng([self.seed, zlib.crc32(repr(key).encode())])
        stage = None if state.stage is None else graph.index[state.stage]
        return graph.remaining(stage, state.visits, state.pending, self.draws, rng)

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
            start = int(times.searchsorted(elapsed_s, side="right")) if elapsed_s > 0 else 0
            later = times.size - start
            if later == 0:
                out[backend] = 1.0  # every draw needs it by now: the stage is overdue or uses it itself
                continue
            out[backend] = float(times.searchsorted(elapsed_s + horizon_s, side="right") - start) / later
        return out

    def need_bounds(
        self,
        state: GraphState,
        elapsed_s: float,
        horizons_s: Mapping[str, float],
        lookaheads_s: np.ndarray,
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Bounds on `need_probabilities` while the stage runs on: for each backend b, the
        least and the greatest P(needs b within `horizons_s[b]`) over elapsed times e in
        [e0, e0 + d], for each d of `lookaheads_s` (arrays in its order), e0 = `elapsed_s`.

        With C(x) the draws needing b by x and S(e) = C(e) for e > 0, 0 at e = 0 (as
        `need_probabilities` counts), p(e) = (C(e + h) - S(e)) / (N - S(e)); C and S only grow,
        so with e1 = e0 + d, p(e) >= max(C(e0 + h) - S(e1), 0) / (N - S(e0)) and
        p(e) <= (C(e1 + h) - S(e0)) / (N - S(e1)), and p = 1 once S reaches N. What lets a
        planner tell that only time passing cannot change its answer for a while."""
        first_need = self.draws_for(state).first_need_s
        ends = elapsed_s + lookaheads_s
        none = np.zeros(lookaheads_s.size)
        out = {}
        for backend, horizon_s in horizons_s.items():
            times = first_need.get(backend)
            if times is None:
                out[backend] = (none, none)
                continue
            n = times.size
            started = int(times.searchsorted(elapsed_s, side="right")) if elapsed_s > 0 else 0
            started_by_end = np.where(ends > 0, times.searchsorted(ends, side="right"), 0)
            reached = int(times.searchsorted(elapsed_s + horizon_s, side="right"))
            reached_by_end = times.searchsorted(ends + horizon_s, side="right")
            if started == n:
                ones = np.ones(lookaheads_s.size)
                out[backend] = (ones, ones)
                continue
            low = np.maximum(reached - started_by_end, 0) / (n - started)
            left = n - started_by_end
            high = np.where(left > 0, (reached_by_end - started) / np.maximum(left, 1), 1.0)
            out[backend] = (low, np.minimum(high, 1.0))
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


def _key(graph: CompiledGraph, state: GraphState) -> tuple:
    visits = tuple(min(v, cap) for v, cap in zip(state.visits, graph.visit_caps, strict=True))
    return (state.app_class, state.stage, visits, state.pending)


def _common_states(graph: CompiledGraph, runs: int, rng: np.random.Generator) -> Iterator[GraphState]:
    """The states `runs` sampled runs of `graph` pass through, as the scheduler states them: the
    run before its first stage, then at each stage start (its visits counted, the current one
    included) with k requests pending, and after each of the k completions."""
    name = graph.graph.name
    for _ in range(runs):
        visits = [0] * graph.end
        yield GraphState(name, None, tuple(visits), 0)
        for stage in graph.sample_run(rng).stages:
            visits[graph.index[stage.stage]] += 1
            for pending in range(len(stage.requests), -1, -1):
                yield GraphState(name, stage.stage, tuple(visits), pending)
