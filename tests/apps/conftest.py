"""Fixtures for the reference application programs: drive a program as a pure state machine.

A program is a pure function of its inputs, state and call results, so a test plays the
backends itself: a `Responder` turns each step into the results of its calls. `drive` checks on
every step what the scheduler relies on — the state survives a JSON round trip (and the
round-tripped state is what the next step sees, as after a restart), the step and the final
result serialise, there is one result per call — and records the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from hermesflow.apps.program import AppProgram, Finished, ProgramState, StepPlan
from hermesflow.backends.calls import CallResult

Responder = Callable[[StepPlan], list[CallResult]]

MAX_STEPS = 64
"""No reference run takes more steps than this (react: 2 * 5 rounds, code_gen: 2 * 3 tries)."""


@dataclass
class Run:
    """What a driven run did: its steps, the state after each transition, the final result."""

    steps: list[StepPlan] = field(default_factory=list)
    states: list[ProgramState] = field(default_factory=list)
    result: Any = None

    @property
    def stages(self) -> list[str]:
        return [step.stage for step in self.steps]

    def fanouts(self, stage: str) -> list[int]:
        return [len(step.calls) for step in self.steps if step.stage == stage]

    def record(self) -> list[Any]:
        """A comparable record of everything observable (for determinism checks)."""
        return [s.model_dump(mode="json") for s in self.steps] + [self.states, self.result]


def _round_trip(state: ProgramState) -> ProgramState:
    text = json.dumps(state)  # fails on anything not JSON
    again = json.loads(text)
    assert again == state, "state changes in a JSON round trip (tuples? non-string keys?)"
    return again


def drive(program: AppProgram, inputs: BaseModel, respond: Responder) -> Run:
    """Run `program` to its end, answering each step with `respond`."""
    run = Run()
    transition = program.start(inputs)
    for _ in range(MAX_STEPS):
        state = _round_trip(transition.state)
        run.states.append(state)
        if isinstance(transition.next, Finished):
            json.dumps(transition.next.result)
            run.result = transition.next.result
            return run
        step = StepPlan.model_validate_json(transition.next.model_dump_json())
        assert step == transition.next
        run.steps.append(step)
        results = respond(step)
        assert len(results) == len(step.calls), "the responder must answer every call"
        transition = program.advance(inputs, state, step, results)
    raise AssertionError(f"{program.app_class}: no end after {MAX_STEPS} steps: {run.stages}")


@pytest.fixture
def drive_app() -> Callable[[AppProgram, BaseModel, Responder], Run]:
    return drive


def script(*per_step: list[CallResult] | Callable[[StepPlan], list[CallResult]]) -> Responder:
    """A responder that answers the n-th step with the n-th entry (a list, or a function)."""
    pending = list(per_step)

    def respond(step: StepPlan) -> list[CallResult]:
        assert pending, f"the program asked for an unscripted step {step.stage!r}"
        entry = pending.pop(0)
        return entry(step) if callable(entry) else entry

    return respond


@pytest.fixture
def scripted() -> Callable[..., Responder]:
    return script
