"""Tracing a Semantic-Variable program into its data flow, and the analysis into an `AppGraph`.

A program is a Python function run once, when it is defined, with *symbolic* inputs. Calling a
semantic, tool or native function inside it runs nothing: it records a call and returns a
`SemanticVariable`, a future of the call's output, which later calls take as inputs. So the
service sees the whole data flow before any request runs — which requests depend on which,
which share a prompt prefix, which are fanned out, which repeat — as in Parrot (PAPERS.md §2),
where the same information comes from Semantic Variables shared between requests.

Cycles cannot be written: a variable exists only once the call producing it has been recorded,
so every recorded call depends on earlier ones. Repetition is explicit (`loop`): its body is
traced once, and the loop is recorded as the body's calls, the variables carried from one
iteration to the next, and a native predicate that ends it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from types import UnionType
from typing import Any, Union, get_args, get_origin

from hermesflow.apps.app_graph import AppGraph, AppNode, LoopSpec, NodeKind
from hermesflow.apps.semantic_template import ProgramDefinitionError
from hermesflow.backends.calls import Call, CallResult

INPUT = "in:"
NODE = "node:"
CARRY = "carry:"
"""Prefixes of variable keys: a program input, a node's output, a loop-carried variable."""


@dataclass(frozen=True)
class Ref:
    """A variable, by the key its value has in a run's state."""

    key: str


@dataclass(frozen=True)
class Const:
    """A plain Python value passed where a variable could be."""

    value: Any


Arg = Ref | Const
Outputs = Ref | tuple[Ref, ...] | dict[str, Ref]
"""What a program returns: one variable, a tuple of them, or a dict of them by name."""


class SemanticVariable:
    """A Semantic Variable: the future output of a call (or an input) of a program being built.

    It has no value while the program is traced; pass it to other functions, `.map` over it
    (when it holds a list), return it from the program, and read it from a submitted run."""

    __slots__ = ("_tracer", "deps", "label", "ref", "type")

    def __init__(
        self, tracer: Tracer, ref: Ref, type_: Any, deps: frozenset[str], label: str
    ) -> None:
        self._tracer = tracer
        self.ref = ref
        self.type = type_
        self.deps = deps
        """The nodes whose outputs this variable's value comes from."""
        self.label = label

    def get(self) -> Any:
        raise RuntimeError(
            f"variable {self.label!r} has no value yet: variables are futures while a program is "
            "being built; return them, or read them after run(...) — program.submit(...) returns "
            "a run whose outputs have .get()"
        )

    def __bool__(self) -> bool:
        raise TypeError(
            f"variable {self.label!r} is a future, so Python cannot branch on it while the program "
            "is built; decide in a @native_function, or repeat steps with loop(..., until=...)"
        )

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(
            f"variable {self.label!r} is a future and cannot be iterated while the program is "
            "built; call a function once per element with fn.map(...)"
        )

    def __repr__(self) -> str:
        return f"SemanticVariable({self.label!r})"


class Accepts(Enum):
    """Whether a parameter takes a whole list (so `.map` does not iterate a list passed to it)."""

    LIST = "list"
    SCALAR = "scalar"
    ANY = "any"


def accepts(annotation: Any) -> Accepts:
    """LIST for list/tuple/sequence annotations, SCALAR for other concrete types, ANY when the
    annotation is missing, `Any` or a union of both kinds."""
    if annotation in (inspect.Parameter.empty, Any, object):
        return Accepts.ANY
    origin = get_origin(annotation) or annotation
    if origin in (Union, UnionType):
        kinds = {accepts(member) for member in get_args(annotation) if member is not type(None)}
        return kinds.pop() if len(kinds) == 1 else Accepts.ANY
    if (
        isinstance(origin, type)
        and issubclass(origin, Iterable)
        and not issubclass(origin, (str, bytes, Mapping))
    ):
        return Accepts.LIST
    return Accepts.SCALAR


def holds_list(annotation: Any) -> bool:
    """Whether a variable of this type holds a list (what `.map` iterates)."""
    return (get_origin(annotation) or annotation) in (list, tuple)


def bind(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any], where: str
) -> dict[str, Any]:
    """Arguments by parameter name, defaults filled in; a wrong call fails the definition."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise ProgramDefinitionError(f"{where}: {error}; its parameters: {signature}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


ROLES = {NodeKind.LLM: "semantic", NodeKind.TOOL: "tool", NodeKind.NATIVE: "native"}
"""How errors name the function of each kind of node."""


class StepFunction(ABC):
    """A function a program calls: a semantic function, a tool, or a native Python step.

    Calling it while a program is traced records a node and returns its output variable;
    `.map(...)` records one node that runs once per element of its list-valued arguments."""

    kind: NodeKind
    backend: str | None = None
    prefix: str | None = None
    max_tokens: int | None = None

    def __init__(self, name: str, signature: inspect.Signature, output_type: Any) -> None:
        self.name = name
        self.signature = signature
        self.output_type = output_type

    @property
    def where(self) -> str:
        """How errors name this function."""
        return f"{ROLES[self.kind]} function {self.name!r}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return current_tracer(self.where).record(self, self._bind(args, kwargs), mapped=False)

    def map(self, *args: Any, **kwargs: Any) -> SemanticVariable:
        """Fan-out: one request per element of the list variables passed to parameters that are
        not lists themselves (several are zipped); other arguments are passed to every request.
        The output is the list of the outputs."""
        return current_tracer(self.where).record(self, self._bind(args, kwargs), mapped=True)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return bind(self.signature, args, kwargs, self.where)

    def param_accepts(self, name: str) -> Accepts:
        parameter = self.signature.parameters.get(name)
        return accepts(parameter.annotation if parameter is not None else Any)


class ServedFunction(StepFunction):
    """A step a Hermesflow backend runs: one call per request."""

    @abstractmethod
    def call(self, args: Mapping[str, Any]) -> Call:
        """The backend call for these argument values."""

    @abstractmethod
    def read(self, result: CallResult) -> Any:
        """The output value (JSON) from the call's result."""


class NativeStep(StepFunction):
    """A Python step evaluated by the program itself, between served steps."""

    kind = NodeKind.NATIVE

    @abstractmethod
    def evaluate(self, args: Mapping[str, Any]) -> Any:
        """The output value for these argument values."""


@dataclass(frozen=True)
class TracedCall:
    """One recorded call: a node of the application graph."""

    name: str
    function: StepFunction
    args: dict[str, Arg]
    mapped: frozenset[str]
    deps: frozenset[str]


@dataclass(frozen=True)
class TracedLoop:
    """A loop: its body's nodes (in trace order), the carried variables with their initial and
    next values, the native node deciding the end, and the most iterations."""

    name: str
    body: tuple[str, ...]
    carries: tuple[Ref, ...]
    inits: tuple[Arg, ...]
    outs: tuple[Ref, ...]
    until: str
    max_iters: int


@dataclass(frozen=True)
class Trace:
    """Everything a program records: its calls in trace order, its loops and its outputs."""

    name: str
    calls: dict[str, TracedCall]
    loops: tuple[TracedLoop, ...]
    outputs: Outputs


class Tracer:
    """Records the calls of the program being traced (one per `trace` call)."""

    def __init__(self) -> None:
        self.calls: dict[str, TracedCall] = {}
        self.loops: list[TracedLoop] = []
        self._body: list[str] | None = None
        """Names of the calls recorded in the loop body being traced."""

    def variable(self, ref: Ref, type_: Any, deps: frozenset[str], label: str) -> SemanticVariable:
        return SemanticVariable(self, ref, type_, deps, label)

    def arg(self, value: Any, where: str) -> Arg:
        """A variable of this program as a `Ref`, any other value as a `Const`."""
        if isinstance(value, SemanticVariable):
            if value._tracer is not self:
                raise ProgramDefinitionError(
                    f"{where}: variable {value.label!r} belongs to another program; a program can "
                    "only use its own inputs and the outputs of calls made inside it"
                )
            return value.ref
        members = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list | tuple) and any(
            isinstance(member, SemanticVariable) for member in members
        ):
            raise ProgramDefinitionError(
                f"{where}: a list or dict of variables is not a variable; pass each variable as "
                "its own argument, or build the collection in a @native_function"
            )
        return Const(value)

    def record(
        self, function: StepFunction, arguments: dict[str, Any], *, mapped: bool
    ) -> SemanticVariable:
        """Record a call of `function` and return its output variable (module docstring)."""
        name = self._unique(function.name)
        where = f"{function.where} (node {name!r})"
        args = {param: self.arg(value, where) for param, value in arguments.items()}
        variables = {p: v for p, v in arguments.items() if isinstance(v, SemanticVariable)}
        iterated = frozenset(
            p for p, v in variables.items()
            if holds_list(v.type) and function.param_accepts(p) is not Accepts.LIST
        )  # fmt: skip
        if mapped and not iterated:
            raise ProgramDefinitionError(
                f"{where}: .map(...) needs a list variable to map over, passed to a parameter that "
                "is not a list; call the function directly to pass every argument whole"
            )
        for param, variable in variables.items():
            if (
                not mapped
                and holds_list(variable.type)
                and function.param_accepts(param) is Accepts.SCALAR
            ):
                raise ProgramDefinitionError(
                    f"{where}: parameter {param!r} takes one value but gets the list variable "
                    f"{variable.label!r}; call {function.name}.map(...) to run once per element"
                )
        deps = frozenset().union(*(v.deps for v in variables.values()))
        self.calls[name] = TracedCall(
            name, function, args, iterated if mapped else frozenset(), deps
        )
        if self._body is not None:
            self._body.append(name)
        output_type = list[function.output_type] if mapped else function.output_type
        return self.variable(Ref(NODE + name), output_type, frozenset({name}), name)

    def _unique(self, name: str) -> str:
        """The function's name, suffixed _2, _3 ... when it is called again."""
        candidate, n = name, 1
        while candidate in self.calls:
            n += 1
            candidate = f"{name}_{n}"
        return candidate

    def trace_loop(
        self,
        name: str,
        body: Callable[..., Any],
        inits: dict[str, Any],
        until: NativeStep,
        max_iters: int,
    ) -> Any:
        """Record a loop (module docstring): `body` is traced once with one carried variable per
        parameter (`inits` gives their first values); it returns their next values, in the same
        order, which `until` then reads. Returns what `body` returned."""
        where = f"loop {name!r}"
        if self._body is not None:
            raise ProgramDefinitionError(
                f"{where} is inside another loop; loops do not nest — put the inner steps in the "
                "outer loop's body, or run the inner repetition in a tool"
            )
        index = len(self.loops)
        inits_args = tuple(self.arg(value, where) for value in inits.values())
        carries: list[SemanticVariable] = []
        for i, (param, value) in enumerate(inits.items()):
            if isinstance(value, SemanticVariable):
                type_, deps = value.type, value.deps
            else:
                type_, deps = type(value), frozenset()
            carries.append(
                self.variable(Ref(f"{CARRY}{index}:{i}"), type_, deps, f"{name}.{param}")
            )
        self._body = []
        try:
            returned = body(*carries)
            nexts = returned if isinstance(returned, tuple) else (returned,)
            if len(nexts) != len(carries):
                raise ProgramDefinitionError(
                    f"{where}: the body takes {len(carries)} carried variable(s) but returns "
                    f"{len(nexts)}; return the next value of each parameter, in order"
                )
            outs = tuple(_output_ref(self, value, where) for value in nexts)
            until(*nexts)
            body_names = tuple(self._body)
        finally:
            self._body = None
        self.loops.append(
            TracedLoop(
                name,
                body_names,
                tuple(v.ref for v in carries),
                inits_args,
                outs,
                body_names[-1],
                max_iters,
            )
        )
        return returned


_TRACER: ContextVar[Tracer | None] = ContextVar("hermesflow_semantic_tracer", default=None)


def current_tracer(where: str) -> Tracer:
    """The tracer of the program being defined; calling a function outside one is an error."""
    tracer = _TRACER.get()
    if tracer is None:
        raise ProgramDefinitionError(
            f"{where} was called outside a program; call it inside a function decorated with "
            "@semantic_program, where it returns a variable (a future)"
        )
    return tracer


def tracing_now() -> bool:
    return _TRACER.get() is not None


def trace(name: str, body: Callable[..., Any], inputs: Mapping[str, Any]) -> Trace:
    """Run `body` with one symbolic variable per input (name → type) and record its calls."""
    tracer = Tracer()
    variables = {
        field: tracer.variable(Ref(INPUT + field), t, frozenset(), field)
        for field, t in inputs.items()
    }
    token = _TRACER.set(tracer)
    try:
        returned = body(**variables)
    finally:
        _TRACER.reset(token)
    return Trace(name, dict(tracer.calls), tuple(tracer.loops), _outputs(tracer, returned, name))


def _outputs(tracer: Tracer, returned: Any, name: str) -> Outputs:
    where = f"program {name!r}"
    if isinstance(returned, dict):
        return {str(key): _output_ref(tracer, value, where) for key, value in returned.items()}
    if isinstance(returned, tuple | list):
        return tuple(_output_ref(tracer, value, where) for value in returned)
    return _output_ref(tracer, returned, where)


def _output_ref(tracer: Tracer, value: Any, where: str) -> Ref:
    arg = tracer.arg(value, where)
    if not isinstance(arg, Ref):
        raise ProgramDefinitionError(
            f"{where} returns {value!r}, which is not a variable; return the variables to read "
            "(one, a tuple of them, or a dict of them by name)"
        )
    return arg


def analyse(trace: Trace) -> AppGraph:
    """The data-flow analysis: the application graph of a traced program. Node names are the
    function names (suffixed when reused), deps come from the variables each call reads, a call
    with mapped arguments fans out, and each loop's body repeats at most `max_iters` times."""
    nodes = {
        name: AppNode(
            name=name,
            kind=call.function.kind,
            backend=call.function.backend,
            deps=tuple(call.deps),
            fanout="map" if call.mapped else "one",
            prefix=call.function.prefix,
            max_tokens=call.function.max_tokens,
        )
        for name, call in trace.calls.items()
    }
    loops = tuple(LoopSpec(body=loop.body, max_iters=loop.max_iters) for loop in trace.loops)
    return AppGraph(name=trace.name, nodes=nodes, loops=loops)
