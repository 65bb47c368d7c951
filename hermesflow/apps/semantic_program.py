"""`@semantic_program`: a traced Semantic-Variable program as an application class.

The decorated function is traced once, when it is defined (`semantic_trace`); the data-flow
analysis turns the trace into its `AppGraph`, whose PDGraph is the class's prior — stage names
are node names, so the runtime's refit learns the class's real demand from its runs — and the
`ProgramRunner` runs it as the `AppProgram` the scheduler drives. The result is one object:
register it with the runtime as `module:attribute` (an `AppProgram` instance), and submit runs
of it with `submit`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from hermesflow.apps.app_graph import AppGraph
from hermesflow.apps.program import AppProgram, ProgramState, StepPlan, Transition
from hermesflow.apps.semantic_client import SemanticRun, client_for
from hermesflow.apps.semantic_runner import ProgramRunner
from hermesflow.apps.semantic_template import ProgramDefinitionError
from hermesflow.apps.semantic_trace import Trace, analyse, trace
from hermesflow.apps.suite_steps import CODE_BACKEND, SEARCH_BACKEND, expect_inputs
from hermesflow.backends.calls import CallResult
from hermesflow.pdgraph.model import PDGraph, StageKind

TOOL_STAGE_KINDS: Mapping[str, StageKind] = {
    SEARCH_BACKEND: StageKind.SEARCH,
    CODE_BACKEND: StageKind.CODE,
}
"""Stage kinds of the default server's tool backends; a tool node on any other is a TOOL stage."""


def default_backends() -> tuple[str, ...]:
    """The backends of the default server (`hermesflow serve`)."""
    from hermesflow.apps.suite import suite_backends  # the suite imports every reference program

    return tuple(spec.name for spec in suite_backends())


class SemanticProgram(AppProgram):
    """A Semantic-Variable program (module docstring); built by `@semantic_program`."""

    def __init__(
        self,
        body: Callable[..., Any],
        *,
        app_class: str,
        inputs: type[BaseModel],
        backends: Collection[str],
        examples: Iterable[Mapping[str, Any]],
    ) -> None:
        self.app_class = app_class
        self.Inputs = inputs
        where = f"program {app_class!r}"
        fields = inputs.model_fields
        params = list(inspect.signature(body).parameters)
        missing = [p for p in params if p not in fields]
        if missing:
            raise ProgramDefinitionError(
                f"{where}: parameter(s) {missing} are not fields of {inputs.__name__} (fields: "
                f"{list(fields)}); name the parameters after the input fields they read"
            )
        self.trace: Trace = trace(app_class, body, {p: fields[p].annotation for p in params})
        self.graph: AppGraph = analyse(self.trace)
        for node in self.graph.nodes.values():
            if node.served and node.backend not in backends:
                raise ProgramDefinitionError(
                    f"{where}, node {node.name!r}: unknown backend {node.backend!r}; known "
                    f"backends: {sorted(backends)} — fix the backend, or pass backends=[...] to "
                    "@semantic_program if your server has others"
                )
        try:
            self.prior()
        except ValueError as error:  # e.g. only native steps: nothing for Hermesflow to serve
            raise ProgramDefinitionError(f"{where}: {error}") from None
        self.runner = ProgramRunner(self.trace, self.graph)
        try:
            self.examples = tuple(inputs.model_validate(example) for example in examples)
        except ValidationError as error:
            raise ProgramDefinitionError(
                f"{where}: an example is not valid input: {error}"
            ) from None

    def prior(self) -> PDGraph:
        """The graph's PDGraph (`AppGraph.to_pdgraph`): stages named after the served nodes."""
        return self.graph.to_pdgraph(lambda backend: TOOL_STAGE_KINDS.get(backend, StageKind.TOOL))

    def start(self, inputs: BaseModel) -> Transition:
        return self.runner.start(expect_inputs(inputs, self.Inputs, self.app_class))

    def advance(
        self, inputs: BaseModel, state: ProgramState, step: StepPlan, results: list[CallResult]
    ) -> Transition:
        own = expect_inputs(inputs, self.Inputs, self.app_class)
        return self.runner.advance(own, state, step, results)

    def sample_inputs(self, rng: np.random.Generator) -> BaseModel:
        if not self.examples:
            raise NotImplementedError(
                f"program {self.app_class!r} has no examples; pass examples=[...] to "
                "@semantic_program to use it in the demo and benchmarks"
            )
        return self.examples[int(rng.integers(len(self.examples)))]

    def submit(self, target: Any, /, *, app_id: str | None = None, **inputs: Any) -> SemanticRun:
        """Start a run on a scheduler — `target` is the HTTP API's URL, the scheduler actor
        (in-cluster code) or a client — with these inputs (checked here first); `app_id` makes
        the submission idempotent. The run's `outputs` mirror what the program returns."""
        validated = self.validate_inputs(inputs)
        client = client_for(target)
        view = client.submit(self.app_class, validated.model_dump(mode="json"), app_id)
        return SemanticRun(client, view, self.trace.outputs)

    def __repr__(self) -> str:
        return f"SemanticProgram({self.app_class!r}, nodes={list(self.graph.nodes)})"


def semantic_program(
    *,
    inputs: type[BaseModel],
    app_class: str | None = None,
    backends: Collection[str] | None = None,
    examples: Iterable[Mapping[str, Any]] = (),
) -> Callable[[Callable[..., Any]], SemanticProgram]:
    """Make a function composing semantic, tool and native functions an application class.

    The function's parameters are fields of `inputs` (a pydantic model); it is traced at once,
    so a malformed program fails here. `app_class` defaults to the function's name; `backends`
    are the backend names nodes may use (default: the default server's); `examples` are inputs
    `sample_inputs` draws from."""

    def decorate(body: Callable[..., Any]) -> SemanticProgram:
        if "app_id" in inputs.model_fields:
            raise ProgramDefinitionError(
                f"program {app_class or body.__name__!r}: input field 'app_id' clashes with "
                "submit(app_id=...); rename the field"
            )
        return SemanticProgram(
            body,
            app_class=app_class or body.__name__,
            inputs=inputs,
            backends=default_backends() if backends is None else tuple(backends),
            examples=examples,
        )

    return decorate
