"""Vectorised sampling of runs through a PDGraph.

One object, `CompiledGraph`, turns a PDGraph and a cost model into arrays and answers two
questions with the *same* transition code:

* `sample_run` draws one concrete run (path, fan-outs, tokens, seconds): the simulator's ground
  truth for an arriving application;
* `remaining` draws many runs at once from a given state and returns their remaining
  backend-seconds (and when each backend is first needed): the Monte-Carlo behind the Gittins
  index and the prewarm planner.

Successor choice: a stage with loop-count samples `visits` decides "around the loop again" at
visit v with the empirical hazard h(v) = #{L > v} / #{L >= v}, then picks among loop (or exit)
successors in proportion to `next`; past the longest observed loop, or without `visits`, the
choice is the memoryless `next` distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.model import END, AttentionMethod, PDGraph, StageKind

MAX_STAGES_PER_RUN = 10_000
"""A run longer than this means the loop probabilities never let it end."""


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request of a stage: its tokens and attention method (LLM) and its work in
    backend-seconds."""

    work_s: float
    input_tokens: int = 0
    output_tokens: int = 0
    attention: AttentionMethod = AttentionMethod.DENSE


@dataclass(frozen=True, slots=True)
class PlannedStage:
    stage: str
    backend: str
    requests: tuple[PlannedRequest, ...]

    @property
    def work_s(self) -> float:
        return sum(r.work_s for r in self.requests)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """A concrete run: what a clairvoyant scheduler would know about an application."""

    app_class: str
    stages: tuple[PlannedStage, ...]

    @property
    def work_s(self) -> float:
        return sum(s.work_s for s in self.stages)


@dataclass(frozen=True, slots=True)
class RemainingDraws:
    """Monte-Carlo draws of what remains from a state.

    `work_by_backend_s[b][i]` is the remaining backend-seconds of draw i on backend b, `work_s`
    their sum. `first_need_s[b]` holds, for each draw, the nominal time from the start of the
    current stage until backend b is first needed again (inf when the draw never uses b), sorted
    ascending: only its distribution is read, and sorted it answers P(t1 < T <= t2) by two
    binary searches (`DemandEstimator.need_probabilities`).
    """

    work_by_backend_s: dict[str, np.ndarray]
    work_s: np.ndarray
    first_need_s: dict[str, np.ndarray]


_METHODS: tuple[AttentionMethod, ...] = tuple(AttentionMethod)
"""Attention methods by the index the sampler's arrays hold."""
_DENSE = _METHODS.index(AttentionMethod.DENSE)


@dataclass(frozen=True, slots=True)
class _Requests:
    """Drawn requests of one stage as arrays: work and solo latency (seconds), tokens, and each
    request's attention method as an index into `_METHODS` (dense for non-LLM stages)."""

    work_s: np.ndarray
    latency_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    methods: np.ndarray


def _method_shares(shares: dict[AttentionMethod, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """A stage's attention methods (indices into `_METHODS`) and their cumulative shares."""
    drawn = {m: p for m, p in (shares or {AttentionMethod.DENSE: 1.0}).items() if p > 0}
    methods = np.array([_METHODS.index(m) for m in drawn], dtype=np.int64)
    cumulative = np.cumsum(list(drawn.values()))
    return methods, cumulative / cumulative[-1]


class _Successors:
    """Arrays for choosing the successor of one stage."""

    def __init__(self, graph: PDGraph, stage: str, index: dict[str, int]) -> None:
        items = [(s, p) for s, p in graph.stages[stage].next.items() if p > 0]
        self.targets = np.array([index[s] for s, _ in items], dtype=np.int64)
        probs = np.array([p for _, p in items])
        self.cdf = np.cumsum(probs) / probs.sum()
        loops = graph.loop_successors[stage]
        is_loop = np.array([s in loops for s, _ in items])
        visits = graph.stages[stage].visits
        self.hazard_counts: np.ndarray | None = None
        if visits is not None and is_loop.any() and (~is_loop).any():
            self.hazard_counts = np.sort(visits.values)
            self.loop_targets, self.loop_cdf = _sub_cdf(self.targets, probs, is_loop)
            self.exit_targets, self.exit_cdf = _sub_cdf(self.targets, probs, ~is_loop)

    def choose(self, visits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Successor indices for runs that just finished visit number `visits` of this stage."""
        u = rng.random(visits.size)
        if self.hazard_counts is None:
            return _pick(self.targets, self.cdf, u)
        counts = self.hazard_counts
        at_least = counts.size - np.searchsorted(counts, visits, side="left")
        beyond = counts.size - np.searchsorted(counts, visits, side="right")
        known = at_least > 0
        result = _pick(self.targets, self.cdf, u)  # memoryless past the observed loops
        if known.any():
            again = rng.random(visits.size) < beyond / np.maximum(at_least, 1)
            loop_pick = _pick(self.loop_targets, self.loop_cdf, u)
            exit_pick = _pick(self.exit_targets, self.exit_cdf, u)
            result = np.where(known, np.where(again, loop_pick, exit_pick), result)
        return result


def _sub_cdf(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sub = probs[mask]
    return targets[mask], np.cumsum(sub) / sub.sum()


def _pick(targets: np.ndarray, cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return targets[np.minimum(np.searchsorted(cdf, u, side="right"), targets.size - 1)]


class CompiledGraph:
    """A PDGraph and a cost model as arrays, for fast sampling."""

    def __init__(self, graph: PDGraph, costs: CostModel) -> None:
        self.graph = graph
        self.stage_names: tuple[str, ...] = tuple(graph.stages)
        self.index = {name: i for i, name in enumerate(self.stage_names)}
        self.end = len(self.stage_names)
        self.index_with_end = {**self.index, END: self.end}
        entry = [(s, p) for s, p in graph.entry.items() if p > 0]
        self._entry_targets = np.array([self.index[s] for s, _ in entry], dtype=np.int64)
        entry_probs = np.array([p for _, p in entry])
        self._entry_cdf = np.cumsum(entry_probs) / entry_probs.sum()
        self._successors = [
            _Successors(graph, name, self.index_with_end) for name in self.stage_names
        ]
        self.backends: tuple[str, ...] = tuple(graph.backend_of(s) for s in self.stage_names)
        self._engines = [
            costs.engine(self.backends[i]) if graph.stages[s].kind is StageKind.LLM else None
            for i, s in enumerate(self.stage_names)
        ]
        self._tool_scale = costs.tool_time_scale
        self._methods = [_method_shares(graph.stages[s].attention) for s in self.stage_names]
        self.visit_caps = tuple(
            int(succ.hazard_counts.max()) + 1 if succ.hazard_counts is not None else 0
            for succ in self._successors
        )

    # -- primitives shared by sample_run and remaining -------------------------------------------

    def entry(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _pick(self._entry_targets, self._entry_cdf, rng.random(n))

    def successors(self, stage: int, visits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._successors[stage].choose(visits, rng)

    def fanout(self, stage: int, n: int, rng: np.random.Generator) -> np.ndarray:
        dist = self.graph.stages[self.stage_names[stage]].fanout
        if dist is None:
            return np.ones(n, dtype=np.int64)
        return np.maximum(np.rint(dist.sample(rng, n)).astype(np.int64), 1)

    def requests(self, stage: int, n: int, rng: np.random.Generator) -> _Requests:
        """`n` requests of a stage. An LLM stage's requests draw their attention method from the
        stage's `attention` shares, independently of their tokens, and are priced by it."""
        spec = self.graph.stages[self.stage_names[stage]]
        engine = self._engines[stage]
        if engine is None:
            seconds = spec.exec_s.sample(rng, n) * self._tool_scale
            zeros = np.zeros(n)
            return _Requests(seconds, seconds, zeros, zeros, np.full(n, _DENSE, dtype=np.int64))
        inputs = np.rint(spec.input_tokens.sample(rng, n))
        outputs = np.maximum(np.rint(spec.output_tokens.sample(rng, n)), 1.0)
        methods, shares = self._methods[stage]
        chosen = _pick(methods, shares, rng.random(n)) if methods.size > 1 else methods.repeat(n)
        prefill = np.empty(n)
        decode = np.empty(n)
        for method in np.unique(chosen):
            rows = chosen == method
            prefill[rows], decode[rows] = engine.rates(_METHODS[method])
        work = inputs * prefill + outputs * decode
        latency = work / engine.work_rate_per_request(engine.max_batch)
        return _Requests(work, latency, inputs, outputs, chosen)

    # -- ground truth ---------------------------------------------------------------------------

    def sample_run(self, rng: np.random.Generator) -> RunPlan:
        """One concrete run from the entry to the end."""
        visits = np.zeros(self.end, dtype=np.int64)
        stage = int(self.entry(1, rng)[0])
        planned: list[PlannedStage] = []
        while stage != self.end:
            self._check_length(len(planned))
            visits[stage] += 1
            k = int(self.fanout(stage, 1, rng)[0])
            drawn = self.requests(stage, k, rng)
            planned.append(
                PlannedStage(
                    stage=self.stage_names[stage],
                    backend=self.backends[stage],
                    requests=tuple(
                        PlannedRequest(float(w), int(i), int(o), _METHODS[m])
                        for w, i, o, m in zip(
                            drawn.work_s, drawn.input_tokens, drawn.output_tokens, drawn.methods, strict=True
                        )
                    ),
                )
            )
            stage = int(self.successors(stage, visits[stage : stage + 1], rng)[0])
        return RunPlan(app_class=self.graph.name, stages=tuple(planned))

    # -- Monte-Carlo from a state ---------------------------------------------------------------

    def remaining(
        self,
        stage: int | None,
        visits: tuple[int, ...],
        pending: int,
        n: int,
        rng: np.random.Generator,
    ) -> RemainingDraws:
        """`n` draws of the remaining work from a state.

        `stage` is the current stage (None before the first), `visits[i]` how often stage i has
        started (the current one included), `pending` the requests of the current stage not yet
        finished.
        """
        backends = tuple(dict.fromkeys(self.backends))
        work = {b: np.zeros(n) for b in backends}
        clock = np.zeros(n)
        first_need = {b: np.full(n, np.inf) for b in backends}
        counts = np.tile(np.asarray(visits, dtype=np.int64), (n, 1))
        if stage is None:
            current = self.entry(n, rng)
        else:
            if pending > 0:
                drawn = self.requests(stage, n * pending, rng)
                work[self.backends[stage]] += drawn.work_s.reshape(n, pending).sum(axis=1)
                clock += drawn.latency_s.reshape(n, pending).max(axis=1)
                first_need[self.backends[stage]][:] = 0.0
            current = self.successors(stage, counts[:, stage], rng)
        for _ in range(MAX_STAGES_PER_RUN):
            active = current != self.end
            if not active.any():
                return RemainingDraws(work, sum(work.values()), {b: np.sort(t) for b, t in first_need.items()})
            for s in np.unique(current[active]):
                rows = np.flatnonzero(current == s)
                counts[rows, s] += 1
                need = first_need[self.backends[s]]
                need[rows] = np.minimum(need[rows], clock[rows])
                k = self.fanout(s, rows.size, rng)
                drawn = self.requests(s, int(k.sum()), rng)
                owner = np.repeat(np.arange(rows.size), k)
                work[self.backends[s]][rows] += np.bincount(owner, weights=drawn.work_s, minlength=rows.size)
                longest = np.zeros(rows.size)
                np.maximum.at(longest, owner, drawn.latency_s)
                clock[rows] += longest
                current[rows] = self.successors(s, counts[rows, s], rng)
        self._check_length(MAX_STAGES_PER_RUN)
        raise AssertionError("unreachable")

    def _check_length(self, length: int) -> None:
        if length >= MAX_STAGES_PER_RUN:
            raise RuntimeError(
                f"class {self.graph.name!r}: a sampled run exceeded {MAX_STAGES_PER_RUN} stages; "
                "its loop probabilities almost never reach '__end__' (check the 'next' fields)"
            )
