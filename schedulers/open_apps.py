"""PDGraphs of open application classes: classes whose steps arrive one by one from a client
(OpenAI-compatible requests grouped by application id, Airflow tasks), with no program that
declares their stages.

Such a class starts from the graph its client declares (an Airflow DAG compiles to one; the
snapshot's source is `DECLARED_SOURCE`), or else from a deliberately vague prior — one stage that
repeats with probability one half. Either way it grows as it runs: every stage name a client
uses becomes a stage of the graph, with the sizes and successors observed so far, and the regular sliding-window refit
(`hermesflow.pdgraph.refit`) takes over from there. So a new class learns its distribution
from its own history, and the Gittins index sharpens as runs finish.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind
from hermesflow.pdgraph.priors import (
    PRIOR_EXEC_S,
    PRIOR_INPUT_TOKENS,
    PRIOR_OUTPUT_TOKENS,
    prior_sizes,
)
from hermesflow.pdgraph.refit import StageObservation

PRIOR_REPEAT = 0.5
"""The vague prior: a typical chat turn, repeated a geometric number of times (mean 2)."""
DECLARED_SOURCE = "declared"
"""The snapshot source of a graph a client declared for its open class."""

Structure = tuple[frozenset[str], dict[str, tuple[StageKind, str, frozenset[str]]]]


def _stage(kind: StageKind, backend: str, next_stage: dict[str, float], sizes: dict[str, Empirical]) -> Stage:
    return Stage(kind=kind, backend=backend, next=next_stage, **sizes)


def open_class_prior(app_class: str, stage: str, backend: str, kind: StageKind) -> PDGraph:
    """The prior of a new open class whose first step is `stage` on `backend`."""
    return PDGraph(
        name=app_class,
        entry={stage: 1.0},
        stages={stage: _stage(kind, backend, {stage: PRIOR_REPEAT, END: 1 - PRIOR_REPEAT}, prior_sizes(kind))},
    )


def structure_of(graph: PDGraph) -> Structure:
    """What a declaration fixes: the entry stages and each stage's kind, backend and successor
    set. Not the distributions or probabilities — those the refit learns — so declaring an
    unchanged DAG again keeps what its runs taught the scheduler."""
    stages = {
        name: (stage.kind, graph.backend_of(name), frozenset(stage.next))
        for name, stage in graph.stages.items()
    }
    return frozenset(graph.entry), stages


def grow_open_graph(
    graph: PDGraph, observations: Sequence[StageObservation], kind_of: Callable[[str], StageKind]
) -> PDGraph:
    """`graph` with a stage for every stage name the observations use and it lacks.

    A new stage gets the observed sizes (tokens for LLM backends, seconds otherwise), the
    observed successor frequencies, and `kind_of(backend)`; successors that are themselves
    unknown are added the same way. Stages already in the graph are left to `refit`.
    """
    by_stage: defaultdict[str, list[StageObservation]] = defaultdict(list)
    for obs in observations:
        if obs.app_class == graph.name:
            by_stage[obs.stage].append(obs)
    missing = [name for name in by_stage if name not in graph.stages]
    if not missing:
        return graph
    stages = dict(graph.stages)
    for name in missing:
        seen = by_stage[name]
        kind = kind_of(seen[-1].backend or "")
        successors = Counter(o.next_stage for o in seen)
        next_stage = {s: n / len(seen) for s, n in successors.items()}
        if kind is StageKind.LLM:
            sizes = {
                "input_tokens": Empirical(samples=tuple(t for o in seen for t in o.input_tokens) or (PRIOR_INPUT_TOKENS,), unit="tokens"),
                "output_tokens": Empirical(samples=tuple(t for o in seen for t in o.output_tokens) or (PRIOR_OUTPUT_TOKENS,), unit="tokens"),
            }
        else:
            sizes = {"exec_s": Empirical(samples=tuple(s for o in seen for s in o.exec_s) or (PRIOR_EXEC_S,), unit="s")}
        stages[name] = _stage(kind, seen[-1].backend or name, next_stage, sizes)
    for name, stage in list(stages.items()):  # successors nobody has run yet end the run
        for succ in stage.next:
            if succ != END and succ not in stages:
                stages[succ] = _stage(StageKind.LLM, graph.stages[next(iter(graph.entry))].backend or "llm", {END: 1.0}, prior_sizes(StageKind.LLM))
    return PDGraph(name=graph.name, entry=graph.entry, stages=stages)
