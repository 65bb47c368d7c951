"""Learning a PDGraph from observed runs over a bounded sliding window.

Demand drifts: prompts get longer, a tool gets slower, a ReAct agent needs more rounds after a
model update. Hermes therefore refits each class from a *sliding window* of its most recent
observations instead of accumulating all history, so the distributions follow the current
workload and old behaviour ages out after `window` stage executions. Within the window the
refit is exact, with no smoothing: every quantity becomes the empirical distribution of what was
observed (see `distributions.py`), every successor probability an observed frequency.

A stage is refitted only when the window holds at least `min_samples` executions of it; rarer
stages keep their prior (declared or previously learned) description, because a handful of
samples would replace a reasonable prior by noise.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, AttentionMethod, PDGraph, Stage, StageKind


@dataclass(frozen=True, slots=True)
class StageObservation:
    """One execution of one stage in one run: what the refit learns from.

    `step` is the 0-based position of this execution in its run (0 = the run's entry stage) and
    `visit` the 1-based count of this stage's starts in the run, so both the entry and the loop
    counts are exact even when the window cuts a run in half. The per-request tuples hold one
    value per request of the stage's fan-out: tokens for LLM stages, seconds for the others.
    `next_stage` is the successor the run took (`END` when the run finished). `attention`
    holds, for an LLM stage, the attention method each request ran (empty when not recorded);
    the refit learns the stage's share of each. `backend`, `work_s` (backend-seconds, priced by
    each request's method) and the timestamps are recorded for accounting, not refitted.
    """

    app_class: str
    run_id: int
    stage: str
    step: int
    visit: int
    next_stage: str
    fanout: int = 1
    input_tokens: tuple[int, ...] = ()
    output_tokens: tuple[int, ...] = ()
    exec_s: tuple[float, ...] = ()
    attention: tuple[AttentionMethod, ...] = ()
    backend: str | None = None
    work_s: float | None = None
    started_s: float | None = None
    finished_s: float | None = None

    def __post_init__(self) -> None:
        where = f"observation of class {self.app_class!r}, run {self.run_id}, stage {self.stage!r}"
        if self.step < 0 or self.visit < 1 or self.fanout < 1:
            raise ValueError(
                f"{where}: step={self.step}, visit={self.visit}, fanout={self.fanout}; step "
                "counts from 0, visit from 1 and a stage issues at least 1 request"
            )
        if self.attention and len(self.attention) != self.fanout:
            raise ValueError(
                f"{where}: {len(self.attention)} attention methods for {self.fanout} requests; "
                "record one method per request, or none"
            )


def refit(
    graph: PDGraph,
    observations: Sequence[StageObservation],
    window: int = 500,
    min_samples: int = 5,
) -> PDGraph:
    """A new PDGraph for `graph`'s class from its newest `window` observations.

    `observations` are oldest first (as `Store.observations` returns them); those of other
    classes are ignored. For each stage with at least `min_samples` executions in the window,
    its sizes (tokens flattened over requests for LLM stages, `exec_s` for the others, fan-out),
    its successors, its share of requests per attention method (LLM stages whose observations
    record it) and, from runs that ended inside the window, its loop counts `visits` are
    replaced by the observed ones; `entry` is replaced by the observed first stages when the
    window holds at least `min_samples` run starts. Everything else keeps the prior.

    Raises ValueError when an observation names a stage the class does not have, or when the
    observed transitions leave a stage with no path to the end.
    """
    if window < 1 or min_samples < 1:
        raise ValueError(f"window={window}, min_samples={min_samples}: both must be >= 1")
    recent = [o for o in observations if o.app_class == graph.name][-window:]
    _check_stage_names(graph, recent)
    executions: defaultdict[str, list[StageObservation]] = defaultdict(list)
    for obs in recent:
        executions[obs.stage].append(obs)
    loop_counts = _loop_counts(recent)
    stages = {
        name: _refit_stage(prior, executions[name], loop_counts.get(name, []), min_samples)
        for name, prior in graph.stages.items()
    }
    starts = [o.stage for o in recent if o.step == 0]
    entry = _frequencies(starts) if len(starts) >= min_samples else graph.entry
    try:
        return PDGraph(name=graph.name, entry=entry, stages=stages)
    except ValidationError as err:
        raise ValueError(
            f"refit of class {graph.name!r} from its last {len(recent)} observations gives an "
            f"invalid graph; widen the window or wait until more runs have finished: {err}"
        ) from None


def _check_stage_names(graph: PDGraph, observations: Iterable[StageObservation]) -> None:
    for obs in observations:
        for name in (obs.stage, obs.next_stage):
            if name != END and name not in graph.stages:
                raise ValueError(
                    f"class {graph.name!r}: run {obs.run_id} observed unknown stage {name!r}; "
                    f"known stages: {sorted(graph.stages)}. Save a PDGraph that declares it "
                    "before refitting from these observations"
                )


def _loop_counts(observations: Sequence[StageObservation]) -> dict[str, list[int]]:
    """Per stage, how often each run that ended inside the window executed it.

    Runs still going (or failed) are left out: their counts are not final and would bias the
    loop counts low. Visit numbers are absolute, so a run whose start lies before the window
    still counts exactly.
    """
    ended = {o.run_id for o in observations if o.next_stage == END}
    most: dict[tuple[int, str], int] = {}
    for obs in observations:
        if obs.run_id in ended:
            key = (obs.run_id, obs.stage)
            most[key] = max(most.get(key, 0), obs.visit)
    counts: defaultdict[str, list[int]] = defaultdict(list)
    for (_, stage), count in most.items():
        counts[stage].append(count)
    return counts


def _refit_stage(
    prior: Stage, seen: Sequence[StageObservation], loop_counts: Sequence[int], min_samples: int
) -> Stage:
    if len(seen) < min_samples:
        return prior
    updates: dict[str, object] = {
        "next": _frequencies(o.next_stage for o in seen),
        "fanout": _observed(prior.fanout, [o.fanout for o in seen], "requests"),
    }
    if prior.kind is StageKind.LLM:
        for field in ("input_tokens", "output_tokens"):
            values = [t for o in seen for t in getattr(o, field)]
            updates[field] = _observed(getattr(prior, field), values, "tokens")
        methods = [m for o in seen for m in o.attention]
        if methods:
            shares = _frequencies(methods)
            updates["attention"] = None if set(shares) == {AttentionMethod.DENSE} else shares
    else:
        updates["exec_s"] = _observed(prior.exec_s, [s for o in seen for s in o.exec_s], "seconds")
    if loop_counts:
        looped = any(count != 1 for count in loop_counts)
        updates["visits"] = Empirical.of(loop_counts, unit="visits") if looped else None
    return prior.model_copy(update=updates)


def _observed(prior: Empirical | None, values: Sequence[float], unit: str) -> Empirical | None:
    """The observed values in the prior's unit, or the prior when nothing was measured."""
    if not values:
        return prior
    return Empirical.of(values, unit=prior.unit if prior is not None else unit)


def _frequencies(names: Iterable[str]) -> dict[str, float]:
    counts = Counter(names)
    total = sum(counts.values())
    return {name: counts[name] / total for name in sorted(counts)}
