"""The Probabilistic Demand Graph (PDGraph) of one application class.

An application class is a graph of stages. Each stage runs on one backend (an LLM engine, a
tool, a DNN, ...), issues `fanout` parallel requests, and hands over to a successor drawn from
`next` (branches and loops are successor probabilities, `__end__` finishes the run). Every size
is an empirical distribution (see `distributions.py`).

Loops get one refinement over a memoryless Markov chain: when a stage carries `visits` (how many
times it ran per observed run), the decision to go round the loop again at visit v uses the
empirical hazard P(L > v | L >= v) of those counts, so a ReAct loop that always runs at least
twice is not modelled as a coin flip. This is what lets the scheduler condition on loop counts.

An LLM stage may also carry `attention`: the share of its requests that ran each long-context
attention method. The cost model prices a request by its method (`costs.py`), so a stage whose
prompts run sparse prefill is seen to need less work than the same stage run dense.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hermesflow.pdgraph.distributions import Empirical

END = "__end__"
"""The successor name that finishes an application run."""

LLM_BACKEND = "llm"
"""Default backend of LLM stages: the shared serving engine."""

_PROBABILITY_TOLERANCE = 1e-6


class AttentionMethod(StrEnum):
    """How an LLM request's prompt and generation attend: an option of an LLM backend and of a
    call, recorded with each observed request and priced by the cost model. Only the CPU
    transformers backend runs the long-context methods; the others refuse a call that asks for
    one rather than run it dense unasked."""

    DENSE = "dense"
    """Every query attends to every earlier key (the model's own SDPA)."""
    MINFERENCE = "minference"
    """Sparse prefill with each head's offline pattern (MInference), dense below the prompt
    length from which it pays on the device; decoding is dense."""
    RETRIEVAL = "retrieval"
    """Dense prefill; each decode step attends to the first and the most recent tokens exactly
    and to the rest through a nearest-neighbour index over the keys (RetrievalAttention)."""


class StageKind(StrEnum):
    """What a stage runs on. `docker` in Hermes workload files is code execution."""

    LLM = "llm"
    TOOL = "tool"
    SEARCH = "search"
    CODE = "code"
    DNN = "dnn"
    SPEECH = "speech"
    SR = "sr"
    DATA = "data"


class Stage(BaseModel):
    """One stage: its backend, its sizes and its successors."""

    model_config = ConfigDict(extra="forbid")

    kind: StageKind
    next: dict[str, float]
    backend: str | None = None
    input_tokens: Empirical | None = None
    output_tokens: Empirical | None = None
    fanout: Empirical | None = None
    exec_s: Empirical | None = None
    visits: Empirical | None = None
    attention: dict[AttentionMethod, float] | None = None
    """LLM stages: the share of requests that ran each attention method (None: all dense)."""


class PDGraph(BaseModel):
    """The demand graph of one application class.

    Validation names the class, the stage and the field of every problem, because a workload
    file with nine classes and forty stages is otherwise hard to fix.
    """

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1)]
    entry: dict[str, float]
    stages: Annotated[dict[str, Stage], Field(min_length=1)]

    @model_validator(mode="after")
    def _check_graph(self) -> PDGraph:
        where = f"class {self.name!r}"
        if END in self.stages:
            raise ValueError(f"{where}: {END!r} is reserved for the end of a run; rename that stage")
        _check_probabilities(self.entry, f"{where}, field 'entry'")
        for succ in self.entry:
            if succ not in self.stages:
                raise ValueError(
                    f"{where}, field 'entry': unknown stage {succ!r}; known stages: "
                    f"{sorted(self.stages)}"
                )
        for name, stage in self.stages.items():
            here = f"{where}, stage {name!r}"
            _check_probabilities(stage.next, f"{here}, field 'next'")
            for succ in stage.next:
                if succ != END and succ not in self.stages:
                    raise ValueError(
                        f"{here}, field 'next': unknown successor {succ!r}; use a stage of this "
                        f"class or {END!r}"
                    )
            _check_sizes(stage, here)
        self._check_every_stage_can_end(where)
        return self

    def _check_every_stage_can_end(self, where: str) -> None:
        can_end = {END}
        changed = True
        while changed:
            changed = False
            for name, stage in self.stages.items():
                if name not in can_end and any(
                    p > 0 and succ in can_end for succ, p in stage.next.items()
                ):
                    can_end.add(name)
                    changed = True
        stuck = sorted(set(self.reachable) - can_end)
        if stuck:
            raise ValueError(
                f"{where}: no path to {END!r} from stage(s) {stuck}; give one of them a successor "
                "that leads to the end, or runs of this class never finish"
            )

    @cached_property
    def reachable(self) -> tuple[str, ...]:
        """Stages reachable from the entry, in discovery order."""
        seen: list[str] = []
        frontier = [s for s, p in self.entry.items() if p > 0]
        while frontier:
            name = frontier.pop(0)
            if name in seen:
                continue
            seen.append(name)
            frontier.extend(s for s, p in self.stages[name].next.items() if p > 0 and s != END)
        return tuple(seen)

    @cached_property
    def loop_successors(self) -> dict[str, frozenset[str]]:
        """For each stage, the successors from which it can be reached again (its loop edges)."""
        reach = {name: self._reachable_from(name) for name in self.stages}
        return {
            name: frozenset(s for s in stage.next if s != END and name in reach[s] | {s})
            for name, stage in self.stages.items()
        }

    def _reachable_from(self, start: str) -> set[str]:
        seen: set[str] = set()
        frontier = [start]
        while frontier:
            for succ, p in self.stages[frontier.pop()].next.items():
                if p > 0 and succ != END and succ not in seen:
                    seen.add(succ)
                    frontier.append(succ)
        return seen

    def backend_of(self, stage: str) -> str:
        """The backend a stage runs on: its declared one, else the shared LLM engine for LLM
        stages and one backend per class and kind for the others (`code:factool_code`)."""
        declared = self.stages[stage].backend
        if declared:
            return declared
        kind = self.stages[stage].kind
        return LLM_BACKEND if kind is StageKind.LLM else f"{kind.value}:{self.name}"

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.backend_of(s) for s in self.reachable))


def _check_probabilities(
    probs: dict[str, float], where: str, missing: str = "successor, e.g. '__end__'"
) -> None:
    """`probs` is a distribution; `missing` names what a user adds when it sums to less than 1."""
    if not probs:
        raise ValueError(f"{where}: empty; give at least one {missing.split(',')[0]} with probability 1")
    for succ, p in probs.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{where}: probability of {succ!r} is {p}; it must lie in [0, 1]")
    total = sum(probs.values())
    if abs(total - 1.0) > _PROBABILITY_TOLERANCE:
        raise ValueError(
            f"{where}: probabilities sum to {total:.6g}; they must sum to 1 "
            f"(add the missing {missing}, or normalise)"
        )


def _check_sizes(stage: Stage, where: str) -> None:
    if stage.kind is StageKind.LLM:
        for field in ("input_tokens", "output_tokens"):
            if getattr(stage, field) is None:
                raise ValueError(f"{where}, field {field!r}: required for an LLM stage")
        if stage.exec_s is not None:
            raise ValueError(
                f"{where}, field 'exec_s': an LLM stage's cost comes from its tokens; remove "
                "exec_s or change the kind"
            )
        if stage.attention is not None:
            _check_probabilities(stage.attention, f"{where}, field 'attention'", "method, e.g. 'dense'")
    elif stage.exec_s is None:
        raise ValueError(f"{where}, field 'exec_s': required for a {stage.kind.value} stage")
    if stage.attention is not None and stage.kind is not StageKind.LLM:
        raise ValueError(
            f"{where}, field 'attention': only an LLM stage has an attention method; remove it "
            "or change the kind"
        )
    if stage.fanout is not None and float(stage.fanout.values.min()) < 1:
        raise ValueError(f"{where}, field 'fanout': every sample must be >= 1 request")
