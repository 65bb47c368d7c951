"""Running a traced Semantic-Variable program as an `AppProgram` state machine.

The runner interprets the trace (`semantic_trace`) one instruction at a time. A served node —
a semantic or tool function — is one step of the run: one `StepPlan` whose calls are the node's
requests (a mapped node's fan-out), named after the node, so the scheduler's observations and
the PDGraph refit learn each node's sizes under the stage name the prior declared. Native nodes
are evaluated inline between steps; loops are entered, and at the end of each iteration either
left or restarted with the carried variables advanced.

The instructions are the graph's topological order (`AppGraph.order`, so the steps follow the
prior's stage chain) with every loop body kept contiguous. The state is JSON: the position in
the instructions, the value of every variable computed so far, and each loop's iteration count
— which is all a restarted scheduler needs to resume a run where it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from hermesflow.apps.app_graph import AppGraph, AppNode, NodeKind
from hermesflow.apps.program import Finished, ProgramState, StepPlan, Transition
from hermesflow.apps.semantic_trace import (
    INPUT,
    NODE,
    Arg,
    Const,
    NativeStep,
    Ref,
    ServedFunction,
    Trace,
    TracedCall,
)
from hermesflow.apps.suite_steps import check_results, failed
from hermesflow.backends.calls import CallResult


@dataclass(frozen=True)
class Node:
    """Run a node: a step for a served node, inline for a native one."""

    name: str


@dataclass(frozen=True)
class Enter:
    """Start a loop: its carried variables take their first values."""

    loop: int


@dataclass(frozen=True)
class Exit:
    """End of a loop's iteration: leave, or go round with the carried variables advanced."""

    loop: int


Instruction = Node | Enter | Exit

_LOOP_UNIT = "loop:"
"""Name of a contracted loop in `instructions` (no node name has a colon)."""


def instructions(trace: Trace, graph: AppGraph) -> tuple[Instruction, ...]:
    """The graph's order with each loop contracted into one unit (module docstring): the units
    are ordered by the same algorithm as `AppGraph.order`, so a program without loops runs its
    nodes exactly in that order."""
    loop_of = {name: i for i, loop in enumerate(trace.loops) for name in loop.body}

    def unit(name: str) -> str:
        return f"{_LOOP_UNIT}{loop_of[name]}" if name in loop_of else name

    deps: dict[str, set[str]] = {}
    for name, call in trace.calls.items():
        deps.setdefault(unit(name), set()).update(unit(dep) for dep in call.deps)
    contracted = AppGraph(
        name=graph.name,
        nodes={
            u: AppNode(name=u, kind=NodeKind.NATIVE, deps=tuple(d - {u})) for u, d in deps.items()
        },
    )
    order = graph.order()
    out: list[Instruction] = []
    for u in contracted.order():
        if not u.startswith(_LOOP_UNIT):
            out.append(Node(u))
            continue
        index = int(u.removeprefix(_LOOP_UNIT))
        body = trace.loops[index].body
        out += [Enter(index), *(Node(name) for name in order if name in body), Exit(index)]
    return tuple(out)


class ProgramRunner:
    """`start` and `advance` of a traced program (module docstring)."""

    def __init__(self, trace: Trace, graph: AppGraph) -> None:
        self.trace = trace
        self.program = graph.name
        self.instructions = instructions(trace, graph)

    def start(self, inputs: BaseModel) -> Transition:
        return self._run(inputs, {"pos": 0, "values": {}, "iters": {}})

    def advance(
        self, inputs: BaseModel, state: ProgramState, step: StepPlan, results: list[CallResult]
    ) -> Transition:
        """Store the outputs of the step that finished, then run on to the next step."""
        check_results(self.program, step, results)
        pos = state["pos"]
        waiting = self.instructions[pos] if pos < len(self.instructions) else None
        expected = waiting.name if isinstance(waiting, Node) else None
        if expected != step.stage:
            raise ValueError(
                f"{self.program}: got the results of step {step.stage!r} but the run waits for "
                f"{expected!r}; was the run started by another version of this program?"
            )
        call = self.trace.calls[step.stage]
        function = call.function
        assert isinstance(function, ServedFunction)
        for i, result in enumerate(results):
            if failed(result):
                raise RuntimeError(
                    f"{self.program}: node {call.name!r}, request {i} on backend "
                    f"{function.backend!r} failed: {result.error or 'no result'}"
                )
        outputs = [function.read(result) for result in results]
        value = outputs if call.mapped else outputs[0]
        values = {**state["values"], NODE + call.name: _json(value, function.where)}
        return self._run(inputs, {**state, "pos": pos + 1, "values": values})

    def _run(self, inputs: BaseModel, state: ProgramState) -> Transition:
        """Interpret instructions from `state["pos"]` up to the next served step or the end."""
        given = inputs.model_dump(mode="json")
        pos, values, iters = state["pos"], dict(state["values"]), dict(state["iters"])
        while pos < len(self.instructions):
            instruction = self.instructions[pos]
            pos += 1
            if isinstance(instruction, Enter):
                loop = self.trace.loops[instruction.loop]
                for carry, init in zip(loop.carries, loop.inits, strict=True):
                    values[carry.key] = _json(_value(init, given, values), f"loop {loop.name!r}")
                iters[str(instruction.loop)] = 1
            elif isinstance(instruction, Exit):
                pos = self._end_iteration(instruction.loop, pos, values, iters)
            else:
                plan = self._node(self.trace.calls[instruction.name], given, values)
                if plan is not None:
                    state = {"pos": pos - 1, "values": values, "iters": iters}
                    return Transition(state=state, next=plan)
        state = {"pos": pos, "values": values, "iters": iters}
        return Transition(state=state, next=Finished(result=self._outputs(given, values)))

    def _end_iteration(
        self, index: int, pos: int, values: dict[str, Any], iters: dict[str, int]
    ) -> int:
        """Where to go on after an iteration of loop `index`: on (its predicate holds, or it
        has run `max_iters` times), or back to its first node with the carried variables set
        to the iteration's outputs."""
        loop = self.trace.loops[index]
        done = values[NODE + loop.until]
        if not isinstance(done, bool):
            raise TypeError(
                f"{self.program}: the predicate {loop.until!r} of loop {loop.name!r} returned "
                f"{done!r}; it must return True (stop) or False (go round again)"
            )
        count = iters[str(index)]
        if done or count >= loop.max_iters:
            return pos
        nexts = [values[out.key] for out in loop.outs]
        values.update((carry.key, value) for carry, value in zip(loop.carries, nexts, strict=True))
        iters[str(index)] = count + 1
        return self.instructions.index(Enter(index)) + 1

    def _node(
        self, call: TracedCall, given: dict[str, Any], values: dict[str, Any]
    ) -> StepPlan | None:
        """The step of a served node; a native node (or a map over an empty list) is evaluated
        here, its value stored, and None returned."""
        requests = self._requests(call, given, values)
        function = call.function
        if isinstance(function, NativeStep):
            outputs = [self._evaluate(call, function, args) for args in requests]
        elif requests:
            calls = [function.call(args) for args in requests]
            return StepPlan(stage=call.name, backend=function.backend, calls=calls)
        else:
            outputs = []  # a map over an empty list: no request to make
        values[NODE + call.name] = outputs if call.mapped else outputs[0]
        return None

    def _requests(
        self, call: TracedCall, given: dict[str, Any], values: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The argument values of each request of a node: one request, or one per element of
        its mapped arguments (zipped)."""
        args = {param: _value(arg, given, values) for param, arg in call.args.items()}
        if not call.mapped:
            return [args]
        where = f"{self.program}: node {call.name!r}"
        for param in call.mapped:
            if not isinstance(args[param], list):
                raise TypeError(
                    f"{where} maps over {param!r}, which holds {args[param]!r}, not a list"
                )
        lengths = {param: len(args[param]) for param in sorted(call.mapped)}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"{where} maps over lists of different lengths {lengths}; map over lists of one "
                "length, or pair them up in a @native_function first"
            )
        count = next(iter(lengths.values()))
        return [{**args, **{p: args[p][i] for p in call.mapped}} for i in range(count)]

    def _evaluate(self, call: TracedCall, function: NativeStep, args: dict[str, Any]) -> Any:
        try:
            value = function.evaluate(args)
        except Exception as error:
            raise RuntimeError(
                f"{self.program}: native function {function.name!r} (node {call.name!r}) raised "
                f"{type(error).__name__}: {error}"
            ) from error
        return _json(value, function.where)

    def _outputs(self, given: dict[str, Any], values: dict[str, Any]) -> Any:
        outputs = self.trace.outputs
        if isinstance(outputs, dict):
            return {key: _value(ref, given, values) for key, ref in outputs.items()}
        if isinstance(outputs, tuple):
            return [_value(ref, given, values) for ref in outputs]
        return _value(outputs, given, values)


def _value(arg: Arg, given: dict[str, Any], values: dict[str, Any]) -> Any:
    """An argument's value: a constant, an input, or a variable computed earlier in the run."""
    if isinstance(arg, Const):
        return arg.value
    assert isinstance(arg, Ref)
    if arg.key.startswith(INPUT):
        return given[arg.key.removeprefix(INPUT)]
    return values[arg.key]


def _json(value: Any, where: str) -> Any:
    """The value as the run's state stores it (tuples become lists); anything else is an error."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise TypeError(
            f"{where} returned a {type(value).__name__}, which a run's state cannot store; "
            "return JSON values (str, numbers, bools, None, lists, dicts with str keys)"
        ) from None
