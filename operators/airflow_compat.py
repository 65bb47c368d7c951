"""The few Airflow internals the provider needs, imported in one place so an Airflow upgrade
that moves them breaks one module (checked against Airflow 3.3.2 / task SDK 1.3.2).

* `DagContext` — the DAG a `with DAG(...)` block or `@dag` function is building: `partial()` of
  a mapped operator runs no `__init__`, so its parse-time checks look the DAG up here.
* `SET_DURING_EXECUTION` — the sentinel TaskFlow decorators pass for an argument their function
  computes when the task runs (as Airflow's own `@task.bash` does).
* `OperatorPartial` — the type `BaseOperator.partial()` returns.
* `DependencyMixin` — what `>>` and `<<` accept; its `update_relative` is called on the far
  side of an edge before Airflow adds it (the parse-time cycle check hooks in there).
"""

from __future__ import annotations

from airflow.sdk.definitions._internal.contextmanager import DagContext
from airflow.sdk.definitions._internal.mixins import DependencyMixin
from airflow.sdk.definitions._internal.types import SET_DURING_EXECUTION, ArgNotSet
from airflow.sdk.definitions.mappedoperator import OperatorPartial

__all__ = ["SET_DURING_EXECUTION", "ArgNotSet", "DagContext", "DependencyMixin", "OperatorPartial"]
