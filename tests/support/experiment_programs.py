"""An application program for the experiment tests: one short, greedy reply of the CPU model.

Imported by the scheduler actor inside Ray workers, which find this folder through the
`PYTHONPATH` the `ray_cluster` fixture gives them.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hermesflow.apps.program import AppProgram, Finished, StepPlan, Transition
from hermesflow.backends.calls import ChatMessage, LLMCall
from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, LLM_BACKEND, PDGraph, Stage, StageKind

REPLY_TOKENS = 8


class ReplyInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=200)


class OneReply(AppProgram):
    """One LLM step of at most `REPLY_TOKENS` tokens; the result is the reply's text."""

    app_class = "one_reply"
    Inputs = ReplyInputs

    def prior(self) -> PDGraph:
        reply = Stage(
            kind=StageKind.LLM,
            backend=LLM_BACKEND,
            next={END: 1.0},
            input_tokens=Empirical(samples=(30.0,)),
            output_tokens=Empirical(samples=(float(REPLY_TOKENS),)),
        )
        return PDGraph(name=self.app_class, entry={"reply": 1.0}, stages={"reply": reply})

    def start(self, inputs: ReplyInputs) -> Transition:
        call = LLMCall(messages=[ChatMessage(role="user", content=inputs.question)], max_tokens=REPLY_TOKENS)
        return Transition(state={}, next=StepPlan(stage="reply", backend=LLM_BACKEND, calls=[call]))

    def advance(self, inputs, state, step, results) -> Transition:
        return Transition(state=state, next=Finished(result={"text": results[0].text}))

    def sample_inputs(self, rng: np.random.Generator) -> ReplyInputs:
        return ReplyInputs(question="Name a prime number.")
