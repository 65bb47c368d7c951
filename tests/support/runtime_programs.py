"""Application programs used by the runtime tests: small, fast, and with a known outcome.

Imported by the scheduler actor inside Ray workers, which find this folder through the
`PYTHONPATH` the `ray_cluster` fixture gives them.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hermesflow.apps.program import AppProgram, Finished, StepPlan, Transition
from hermesflow.backends.calls import ToolCall
from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind


class ChainInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1, le=20)
    seconds: float = Field(ge=0, le=30)
    fanout: int = Field(default=1, ge=1, le=8)


class SleepChain(AppProgram):
    """`steps` steps, each `fanout` calls of the `sleep` tool; the result counts the steps."""

    app_class = "sleep_chain"
    Inputs = ChainInputs

    def prior(self) -> PDGraph:
        nap = Stage(
            kind=StageKind.TOOL,
            backend="tools",
            next={"nap": 0.6, END: 0.4},
            exec_s=Empirical(samples=(0.2, 0.5)),
        )
        return PDGraph(name=self.app_class, entry={"nap": 1.0}, stages={"nap": nap})

    def _nap(self, inputs: ChainInputs) -> StepPlan:
        call = ToolCall(tool="sleep", args={"seconds": inputs.seconds})
        return StepPlan(stage="nap", backend="tools", calls=[call] * inputs.fanout)

    def start(self, inputs: ChainInputs) -> Transition:
        return Transition(state={"done": 0}, next=self._nap(inputs))

    def advance(self, inputs, state, step, results) -> Transition:
        done = state["done"] + 1
        if any(r.error for r in results):
            return Transition(state={"done": done}, next=Finished(result={"error": results[0].error}))
        if done >= inputs.steps:
            return Transition(state={"done": done}, next=Finished(result={"steps": done, "calls": len(results)}))
        return Transition(state={"done": done}, next=self._nap(inputs))

    def sample_inputs(self, rng: np.random.Generator) -> ChainInputs:
        return ChainInputs(steps=int(rng.integers(1, 4)), seconds=0.05)
