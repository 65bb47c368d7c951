"""Checks that run while Airflow parses a DAG file, so a mistake shows up as the DAG's import
error — naming the task and the fix — instead of as a failed task in the middle of a run.

* **backend**: a step must name a backend the Hermesflow deployment serves. The known set is
  the default server's (`hermesflow serve`: the reference suite's backends) plus the names in
  the `HERMES_BACKENDS` environment variable (comma-separated), for deployments that add their
  own; the server checks again when the DAG's graph is declared.
* **template slots**: every variable a prompt template uses must come from somewhere — the
  operator's `inputs`, Airflow's task context (`params`, `ti`, `ds`, ...), or the DAG's
  `user_defined_macros`. A slot nothing provides would fail only when the task renders it.
* **connection**: the id follows Airflow's rule (letters, digits and `_#!()-.:/\\`); a
  connection defined in the environment (`AIRFLOW_CONN_<ID>`, how deployments usually hand it
  out) must be one Hermesflow can use — the right type and a host. Reading an environment
  variable costs nothing; a connection in the metadata database or a secrets backend would cost
  a lookup on every parse, so it is checked when the task starts (`HermesHook`).

* **cycle**: an edge that closes a loop fails where it is set (`a >> b`), naming the loop; a
  DAG cannot loop, so the message says how to write one. Airflow's own check runs only after
  the file is imported and names a single task.

A value that is not known at parse time (an `XComArg`, an expanded argument) is not checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import jinja2
from airflow.sdk import Connection
from airflow.sdk.definitions.context import KNOWN_CONTEXT_KEYS
from jinja2 import meta
from pydantic import BaseModel, ValidationError

from hermesflow.operators.hook import EXAMPLE_URI, HermesConnectionError, connection_endpoint

BACKENDS_ENV = "HERMES_BACKENDS"
"""Extra backend names a DAG may use, comma-separated (the deployment's own backends)."""
CONN_ENV_PREFIX = "AIRFLOW_CONN_"
"""Airflow's environment-variable connections (`EnvironmentVariablesBackend`)."""
CONN_ID_PATTERN = re.compile(r"^[\w#!()\-.:/\\]{1,250}$")
"""Airflow's rule for connection ids (`airflow.models.connection.RE_SANITIZE_CONN_ID`)."""


class HermesDagError(ValueError):
    """A Hermesflow task is misconfigured; the message names the task and the fix."""


@cache
def _default_backends() -> frozenset[str]:
    from hermesflow.apps.suite import suite_backends

    return frozenset(spec.name for spec in suite_backends())


def known_backends() -> frozenset[str]:
    """The backends a step may name (module docstring); read on every call, because a test or a
    deployment sets `HERMES_BACKENDS` after this module is imported."""
    extra = {name.strip() for name in os.environ.get(BACKENDS_ENV, "").split(",") if name.strip()}
    return _default_backends() | extra


def check_backend(where: str, backend: Any) -> None:
    known = known_backends()
    if backend not in known:
        raise HermesDagError(
            f"{where}: unknown backend {backend!r}; use one of {sorted(known)}, or add the "
            f"deployment's backend to the {BACKENDS_ENV} environment variable (comma-separated)"
        )


def check_connection(where: str, conn_id: Any) -> None:
    """Raise for a malformed connection id, or for an environment connection Hermesflow cannot
    use (module docstring)."""
    if not isinstance(conn_id, str) or not CONN_ID_PATTERN.match(conn_id):
        raise HermesDagError(
            f"{where}: {conn_id!r} is not a valid connection id; use letters, digits and "
            "_#!()-.:/\\ only (for example the default 'hermesflow_default')"
        )
    value = os.environ.get(CONN_ENV_PREFIX + conn_id.upper())
    if value is None:
        return
    try:
        conn = (
            Connection.from_json(value, conn_id=conn_id)
            if value.lstrip().startswith("{")
            else Connection.from_uri(value, conn_id=conn_id)
        )
        connection_endpoint(conn)
    except HermesConnectionError as error:
        raise HermesDagError(
            f"{where}: {error} (read from {CONN_ENV_PREFIX}{conn_id.upper()})"
        ) from None
    except (ValueError, TypeError) as error:
        raise HermesDagError(
            f"{where}: {CONN_ENV_PREFIX}{conn_id.upper()} is neither a connection URI nor JSON "
            f"({error}); set it like '{EXAMPLE_URI}'"
        ) from None


def check_template_slots(
    where: str,
    field: str,
    template: Any,
    env: jinja2.Environment,
    inputs: Iterable[str] | None = None,
) -> None:
    """Raise unless every variable of the Jinja strings in `template` is provided: by Airflow's
    context, by the environment's globals (which hold the DAG's user macros), or — for a
    template the operator renders with its `inputs` — by the names in `inputs`."""
    known = KNOWN_CONTEXT_KEYS | set(env.globals) | set(inputs or ())
    for text in _strings(template):
        try:
            names = meta.find_undeclared_variables(env.parse(text))
        except jinja2.TemplateSyntaxError as error:
            raise HermesDagError(
                f"{where}: {field} is not a valid Jinja template ({error.message}, line "
                f"{error.lineno}); fix the template"
            ) from None
        missing = sorted(names - known)
        if not missing:
            continue
        slots = ", ".join(f"{{{{ {name} }}}}" for name in missing)
        example = ", ".join(f"{name!r}: ..." for name in missing)
        fix = (
            f"add {'it' if len(missing) == 1 else 'them'} to the task's inputs, e.g. "
            f"inputs={{{example}}}, or use"
            if inputs is not None
            else "use"
        )
        raise HermesDagError(
            f"{where}: {field} uses {slots} but nothing provides "
            f"{'it' if len(missing) == 1 else 'them'}; {fix} a name of Airflow's task context "
            "(params, ti, ds, ...) or of the DAG's user_defined_macros"
        )


def check_fields(where: str, model: type[BaseModel], values: Mapping[str, Any]) -> None:
    """Validate `values` with the API's own model (e.g. `max_tokens` against `LLMCall`), so the
    limits the server enforces fail the DAG's parse, not its run."""
    try:
        model.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
            for e in error.errors()
        )
        raise HermesDagError(f"{where}: {problems}; change the task's arguments") from None


def _strings(value: Any) -> Iterator[str]:
    """The strings inside `value` (nested lists, tuples and dict values); other values, such as
    XComArgs resolved at run time, hold no template."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def check_edge(where: str, dag: Any, upstream: str, downstream: str) -> None:
    """Raise if the edge `upstream >> downstream` of `dag` (an Airflow DAG) closes a cycle, that
    is, if `downstream` already reaches `upstream`."""
    path = _path(dag.task_dict, downstream, upstream)
    if path is None:
        return
    loop = " → ".join([upstream, *path])
    raise HermesDagError(
        f"{where}: `{upstream} >> {downstream}` closes the cycle {loop}; a DAG cannot loop. "
        "Unroll the loop into a fixed number of steps with a branch that leaves early (as "
        "dags/react_agent.py does), or write the application as a Semantic-Variable program "
        "with loop()"
    )


def _path(tasks: Mapping[str, Any], source: str, target: str) -> list[str] | None:
    """Task ids from `source` to `target` along downstream edges (breadth first), or None."""
    if source not in tasks or target not in tasks:
        return None
    previous: dict[str, str | None] = {source: None}
    frontier = [source]
    while frontier:
        following: list[str] = []
        for task_id in frontier:
            if task_id == target:
                path = [task_id]
                while (before := previous[path[-1]]) is not None:
                    path.append(before)
                return path[::-1]
            for child in sorted(tasks[task_id].downstream_task_ids):
                if child not in previous and child in tasks:
                    previous[child] = task_id
                    following.append(child)
        frontier = following
    return None


def task_label(task_id: str, dag_id: str | None) -> str:
    """How messages name a task."""
    return f"task {task_id!r}" + (f" of DAG {dag_id!r}" if dag_id else "")
