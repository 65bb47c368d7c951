"""The contract of an application program: how a run advances through its class's graph.

A program is a pure state machine over JSON. `start` turns validated inputs into the first
step; `advance` reads the results of the step that just finished and returns the next step or
the final result. The scheduler stores the state and the step's calls before dispatching them
and the results as they arrive, so after a crash a run resumes exactly where it was: no call
that finished is run again, no finished run is finished twice. Programs must therefore be
deterministic given their inputs, state and results (LLM calls are greedy by default).

Each step names the stage of the class's PDGraph it executes (`StepPlan.stage`) and issues one
call per request of the stage's fan-out; the branch a run takes is whatever the program returns
next, decided by real model and tool outputs. The scheduler records each step as a
`StageObservation`, which is what the PDGraph refit learns from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hermesflow.backends.calls import Call, CallResult
from hermesflow.pdgraph.model import PDGraph

ProgramState = dict[str, Any]
"""A program's own memory between steps; must be JSON-serialisable."""


class StepPlan(BaseModel):
    """The next step: a stage of the class's graph, its backend, and its calls (the fan-out)."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    backend: str
    calls: list[Call] = Field(min_length=1)


class Finished(BaseModel):
    """The run's final result (JSON)."""

    model_config = ConfigDict(extra="forbid")

    result: Any = None


class Transition(BaseModel):
    """What `start` and `advance` return: the new state and what happens next."""

    model_config = ConfigDict(extra="forbid")

    state: ProgramState = Field(default_factory=dict)
    next: StepPlan | Finished


class AppProgram(ABC):
    """One application class. Subclasses set `app_class` and `Inputs` and implement the rest.

    `prior` is the declared PDGraph the scheduler starts from before the class has history; its
    stage names and backends must be those the program's steps use. `sample_inputs` draws
    realistic inputs for the demo and benchmarks.
    """

    app_class: ClassVar[str]
    Inputs: ClassVar[type[BaseModel]]

    @abstractmethod
    def prior(self) -> PDGraph:
        """The declared demand graph of this class."""

    @abstractmethod
    def start(self, inputs: BaseModel) -> Transition:
        """The first step of a run with validated `inputs`."""

    @abstractmethod
    def advance(
        self, inputs: BaseModel, state: ProgramState, step: StepPlan, results: list[CallResult]
    ) -> Transition:
        """The step after `step`, given its results (one per call, in call order)."""

    @abstractmethod
    def sample_inputs(self, rng: np.random.Generator) -> BaseModel:
        """Inputs of one realistic run, for the demo and benchmarks."""

    def validate_inputs(self, inputs: dict[str, Any]) -> BaseModel:
        """Inputs checked at the boundary; the error names the class and the field."""
        return self.Inputs.model_validate(inputs)
