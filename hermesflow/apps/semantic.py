"""Semantic Variables: write an LLM application as Python functions, serve it as a graph.

Parrot's programming model (PAPERS.md §2) on Hermesflow's runtime:

* `@semantic_function` — a prompt template whose `{{name}}` slots are the function's typed
  parameters (inputs) plus one last slot, the output the model writes;
* `@native_function` — a Python step between requests (parse, split, decide);
* `tool_function(name)` — a call of a tool on a tool backend;
* `loop(until=..., max_iters=...)` — a body of steps repeated until a native predicate holds;
* `@semantic_program` — a function composing them, traced once into its data flow (see
  `semantic_trace`): calls return `SemanticVariable` futures, `.map(...)` fans a call out over
  a list. The program is an `AppProgram` the Ray scheduler runs (`semantic_program`).

    @semantic_function(max_tokens=48)
    def summarize(passage: str) -> str:
        '''Summarise this passage in one sentence.

        Passage: {{passage}}
        Summary: {{summary}}'''

Mistakes are found when the program is defined, not when it runs: a slot with no parameter, a
parameter no slot uses, a missing or misplaced output slot, an unsupported output type, a list
passed where one value is expected, an unknown backend — each a `ProgramDefinitionError` naming
the function or node and the fix.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, overload

from pydantic import ValidationError

from hermesflow.apps.app_graph import NodeKind
from hermesflow.apps.semantic_program import SemanticProgram, semantic_program
from hermesflow.apps.semantic_template import (
    ProgramDefinitionError,
    Template,
    read_reply,
    reader_for,
)
from hermesflow.apps.semantic_trace import (
    NativeStep,
    SemanticVariable,
    ServedFunction,
    bind,
    current_tracer,
    tracing_now,
)
from hermesflow.apps.suite_steps import TOOLS_BACKEND
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.pdgraph.model import LLM_BACKEND

__all__ = [
    "NativeFunction",
    "ProgramDefinitionError",
    "SemanticFunction",
    "SemanticProgram",
    "SemanticVariable",
    "ToolFunction",
    "loop",
    "native_function",
    "semantic_function",
    "semantic_program",
    "tool_function",
]


def _signature(fn: Callable[..., Any], where: str) -> inspect.Signature:
    """The signature with annotations resolved; every parameter must be passable by name."""
    signature = inspect.signature(fn, eval_str=True)
    for parameter in signature.parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise ProgramDefinitionError(
                f"{where}: parameter {parameter.name!r} is {parameter.kind.description}; give "
                "each input its own named parameter"
            )
    return signature


class SemanticFunction(ServedFunction):
    """A prompt template served by an LLM backend (`@semantic_function`)."""

    kind = NodeKind.LLM

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        backend: str,
        max_tokens: int,
        temperature: float,
        template: str | None,
    ) -> None:
        where = f"semantic function {fn.__name__!r}"
        signature = _signature(fn, where)
        for parameter in signature.parameters.values():
            if parameter.annotation is parameter.empty:
                raise ProgramDefinitionError(
                    f"{where}: parameter {parameter.name!r} has no type; annotate it (str, "
                    "list[str], int ...) so its slot is filled correctly"
                )
        text = template if template is not None else inspect.cleandoc(fn.__doc__ or "")
        if not text.strip():
            raise ProgramDefinitionError(
                f"{where} has no template; write it as the docstring or pass template='...'"
            )
        output_type = (
            str if signature.return_annotation is signature.empty else signature.return_annotation
        )
        super().__init__(fn.__name__, signature, output_type)
        self.template = Template.parse(text, list(signature.parameters), where)
        reader_for(output_type, where)
        try:
            LLMCall(prompt=text, max_tokens=max_tokens, temperature=temperature)
        except ValidationError as error:
            raise ProgramDefinitionError(f"{where}: {error}") from None
        self.backend = backend
        self.prefix = self.template.prefix
        self.max_tokens = max_tokens
        self.temperature = temperature
        functools.update_wrapper(self, fn)

    def call(self, args: Mapping[str, Any]) -> LLMCall:
        """A completion of the prompt: the template up to its output slot (Parrot's form, so
        every request of this function starts with the same static prefix)."""
        return LLMCall(
            prompt=self.template.prompt(args),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )

    def read(self, result: CallResult) -> Any:
        return read_reply(result.text, self.output_type, self.where)


@overload
def semantic_function(fn: Callable[..., Any], /) -> SemanticFunction: ...
@overload
def semantic_function(
    *,
    backend: str = ...,
    max_tokens: int = ...,
    temperature: float = ...,
    template: str | None = ...,
) -> Callable[[Callable[..., Any]], SemanticFunction]: ...
def semantic_function(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    backend: str = LLM_BACKEND,
    max_tokens: int = 64,
    temperature: float = 0.0,
    template: str | None = None,
) -> Any:
    """Make a prompt template a function of a program (module docstring). The template is
    `template` or the docstring; the parameters are its inputs, the last slot its output, read
    as the return annotation (str by default; int, float, bool, list[str], dict). Temperature 0
    (greedy) keeps runs replayable after a scheduler restart."""

    def decorate(f: Callable[..., Any]) -> SemanticFunction:
        return SemanticFunction(
            f, backend=backend, max_tokens=max_tokens, temperature=temperature, template=template
        )

    return decorate if fn is None else decorate(fn)


class NativeFunction(NativeStep):
    """A Python step of a program (`@native_function`). Called outside a program it is the
    plain function; inside, it records a step that the program runs between served steps."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        where = f"native function {fn.__name__!r}"
        signature = _signature(fn, where)
        output_type = (
            Any if signature.return_annotation is signature.empty else signature.return_annotation
        )
        super().__init__(fn.__name__, signature, output_type)
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not tracing_now():
            return self.fn(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def evaluate(self, args: Mapping[str, Any]) -> Any:
        return self.fn(**args)


def native_function(fn: Callable[..., Any]) -> NativeFunction:
    """A Python step of a program. It runs inside the scheduler, between requests, on every
    run — and again when a run is resumed after a restart — so it must be deterministic and
    cheap (parsing, splitting, deciding). Heavy or blocking work (I/O, a model, a sandbox)
    belongs on a tool backend (`tool_function`), where it is queued, scheduled and observed.
    Its return value must be JSON (str, numbers, lists, dicts)."""
    return NativeFunction(fn)


class ToolFunction(ServedFunction):
    """A tool of a tool backend; called with keyword arguments, which become the tool's."""

    kind = NodeKind.TOOL

    def __init__(self, tool: str, backend: str, timeout_s: float) -> None:
        super().__init__(tool, inspect.Signature(), Any)
        try:
            ToolCall(tool=tool, timeout_s=timeout_s)
        except ValidationError as error:
            raise ProgramDefinitionError(f"{self.where}: {error}") from None
        self.backend = backend
        self.timeout_s = timeout_s

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise ProgramDefinitionError(
                f"{self.where}: tool arguments are passed by name; call {self.name}(name=value, ...)"
            )
        return kwargs

    def call(self, args: Mapping[str, Any]) -> ToolCall:
        return ToolCall(tool=self.name, args=dict(args), timeout_s=self.timeout_s)

    def read(self, result: CallResult) -> Any:
        """The tool's JSON value, or its text output when it returned none."""
        return result.text if result.value is None else result.value


def tool_function(
    tool: str, *, backend: str = TOOLS_BACKEND, timeout_s: float = 30.0
) -> ToolFunction:
    """The tool `tool` of the tool backend `backend` as a function of a program, e.g.
    `load = tool_function("load_document")`; its node is named after the tool."""
    return ToolFunction(tool, backend, timeout_s)


class Loop:
    """A body of steps repeated until a predicate holds (`loop`)."""

    def __init__(self, body: Callable[..., Any], until: NativeFunction, max_iters: int) -> None:
        where = f"loop {body.__name__!r}"
        if not isinstance(until, NativeFunction):
            raise ProgramDefinitionError(
                f"{where}: until= must be a @native_function returning bool, not {until!r}"
            )
        if until.output_type is not bool:
            raise ProgramDefinitionError(
                f"{where}: the predicate {until.name!r} must be annotated '-> bool' (True ends the loop)"
            )
        if max_iters < 1:
            raise ProgramDefinitionError(f"{where}: max_iters is {max_iters}; give at least 1")
        self.signature = _signature(body, where)
        self.body, self.until, self.max_iters = body, until, max_iters
        self.where = where
        functools.update_wrapper(self, body)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Trace the loop with these first values of its carried variables; returns the body's
        outputs, which after the loop hold the last iteration's values."""
        inits = bind(self.signature, args, kwargs, self.where)
        return current_tracer(self.where).trace_loop(
            self.body.__name__, self.body, inits, self.until, self.max_iters
        )


def loop(*, until: NativeFunction, max_iters: int) -> Callable[[Callable[..., Any]], Loop]:
    """Repeat a body of steps (do-while): the decorated function's parameters are the variables
    carried from one iteration to the next, it returns their next values (in order), and the
    loop ends once `until(*next values)` is True or after `max_iters` iterations. The body's
    steps form a `LoopSpec` of the application graph — in the PDGraph, a back edge whose visit
    counts the runtime learns (Hermes, PAPERS.md §1). Loops do not nest."""

    def decorate(body: Callable[..., Any]) -> Loop:
        return Loop(body, until, max_iters)

    return decorate
