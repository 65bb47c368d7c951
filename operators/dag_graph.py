"""A DAG as an application: its `AppGraph`, the same graph an equivalent Semantic-Variable
program compiles to, and from it the PDGraph the scheduler ranks the DAG's runs by.

Every task is one node, named by its task id, in the DAG's authoring order, depending on its
upstream tasks:

* a Hermesflow step (`LLMStepOperator`, `ToolStepOperator`, their TaskFlow decorators) is an
  LLM or tool node on its backend; an LLM node carries `max_tokens` and its prompt's static
  prefix (text before the first Jinja tag; none for chat messages or a decorated task, whose
  prompt exists only at run time);
* a mapped task (`expand`, or inside a mapped task group) issues one request per element:
  fan-out `map`;
* a branch operator (`BaseBranchOperator`, `@task.branch`) is a native branch node;
* a task whose trigger rule still runs when a branch upstream skipped some of its inputs
  (`none_failed_min_one_success`, `one_success`, `none_failed`, ...) joins `any` input;
* everything else — Python tasks, sensors, a `ProgramRunOperator` (whose run is an application
  of its own class) — is a native node, which costs no backend time.

An unrolled loop is a chain of nodes: a DAG has no loop construct, so `loops` is empty.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from airflow.sdk import DAG, BranchMixIn

from hermesflow.apps.app_graph import AppGraph, AppNode, NodeKind
from hermesflow.pdgraph.model import PDGraph, StageKind

ANY_INPUT_RULES = frozenset(
    {
        "none_failed_min_one_success",
        "one_success",
        "none_failed",
        "one_done",
        "all_done",
        "all_done_min_one_success",
    }
)
"""Airflow trigger rules under which a task runs after a branch skipped some of its inputs."""


def operator_class(task: Any) -> type:
    """The operator class of a task: the class itself, a mapped task's `operator_class`, or for
    a task deserialized in the scheduler the class its module and type name point to."""
    cls = getattr(task, "operator_class", None)
    if isinstance(cls, type):
        return cls
    module, name = getattr(task, "_task_module", None), getattr(task, "task_type", None)
    if module and name and type(task).__module__.startswith("airflow.serialization"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return type(task)
    return type(task)


def node_kind(cls: type) -> NodeKind:
    """What tasks of an operator class are: a Hermesflow step class declares it (`node_kind`
    of `StepOperator`); any other operator is native."""
    kind = getattr(cls, "node_kind", None)
    return kind if isinstance(kind, NodeKind) else NodeKind.NATIVE


def is_step(task: Any) -> bool:
    """Whether the task is a Hermesflow step (an LLM or tool node)."""
    return node_kind(operator_class(task)) is not NodeKind.NATIVE


def argument(task: Any, name: str) -> Any:
    """An operator argument of a plain or mapped task (a mapped task keeps the arguments given
    to `partial` in `partial_kwargs`); the operator's default when it was not given."""
    if not getattr(task, "is_mapped", False):
        return getattr(task, name, None)
    partial = getattr(task, "partial_kwargs", {})
    return partial[name] if name in partial else _default(operator_class(task), name)


def _default(cls: type, name: str) -> Any:
    """The default of `__init__` argument `name` of the nearest class in `cls`'s MRO that
    declares it (a TaskFlow operator's own `__init__` takes only `**kwargs`)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        parameter = inspect.signature(init).parameters.get(name) if init else None
        if parameter is not None and parameter.kind is not parameter.VAR_KEYWORD:
            return None if parameter.default is parameter.empty else parameter.default
    return None


def _rule(task: Any) -> str:
    rule = task.trigger_rule
    return str(getattr(rule, "value", rule))


def node_of(task: Any) -> AppNode:
    """The node a task compiles to (module docstring)."""
    cls = operator_class(task)
    mapped = (
        bool(getattr(task, "is_mapped", False)) or task.get_closest_mapped_task_group() is not None
    )
    common: dict[str, Any] = {
        "name": task.task_id,
        "deps": tuple(task.upstream_task_ids),
        "fanout": "map" if mapped else "one",
        "join": "any" if _rule(task) in ANY_INPUT_RULES else "all",
    }
    kind = node_kind(cls)
    if kind is NodeKind.NATIVE:
        return AppNode(kind=kind, branch=issubclass(cls, BranchMixIn), **common)
    if kind is NodeKind.LLM:
        return AppNode(
            kind=kind,
            backend=argument(task, "backend"),
            prefix=cls.static_prefix(argument(task, "prompt")),
            max_tokens=argument(task, "max_tokens"),
            **common,
        )
    return AppNode(kind=kind, backend=argument(task, "backend"), **common)


def compile_dag(dag: DAG) -> AppGraph:
    """The DAG's application graph, named by its dag_id."""
    return AppGraph(name=dag.dag_id, nodes={task.task_id: node_of(task) for task in dag.tasks})


def stage_kind(backend: str) -> StageKind:
    """The PDGraph stage kind of a tool backend: `search` and `code` are their own kinds, any
    other tool backend is a generic tool."""
    return StageKind(backend) if backend in (StageKind.SEARCH, StageKind.CODE) else StageKind.TOOL


def dag_pdgraph(dag: DAG) -> PDGraph:
    """The PDGraph prior the DAG's runs are ranked by until the scheduler has learned its own."""
    return compile_dag(dag).to_pdgraph(stage_kind)
