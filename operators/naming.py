"""How Airflow's identities map onto Hermesflow's: one DAG run is one application of the class
named by the dag_id, one task is one stage, one task instance is one step.

The operators, the triggers and the listener all derive the ids here, so a retried task, a
resumed trigger and the listener's reports name the same application and step.
"""

from __future__ import annotations

from typing import Any

from hermesflow.client_records import MAX_APP_ID_CHARS, MAX_STEP_ID_CHARS


class HermesNameError(ValueError):
    """An Airflow id that cannot name a Hermesflow application or step."""


def _checked(kind: str, value: str, fix: str) -> str:
    limit = MAX_APP_ID_CHARS if kind == "application" else MAX_STEP_ID_CHARS
    if len(value) > limit:
        raise HermesNameError(
            f"the Hermesflow {kind} id {value[:60]!r}... has {len(value)} characters; the API "
            f"takes at most {limit}: {fix}"
        )
    return value


def app_id(dag_id: str, run_id: str) -> str:
    """The application of one DAG run: `dag_id:run_id` (both are unique together in Airflow)."""
    return _checked("application", f"{dag_id}:{run_id}", "use a shorter dag_id or run_id")


def program_app_id(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The application a `ProgramRunOperator` task submits: its own run of a program class,
    one per task instance."""
    return _checked(
        "application", f"{app_id(dag_id, run_id)}:{step_id(task_id, map_index)}", "use shorter ids"
    )


def step_id(task_id: str, map_index: int = -1) -> str:
    """The step of one task instance: the task id, with `[i]` for the i-th mapped instance."""
    name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
    return _checked("step", name, "use a shorter task_id")


def labels(dag_id: str, run_id: str) -> dict[str, Any]:
    """The labels an application submitted from Airflow carries: where it came from."""
    return {"airflow_dag": dag_id, "airflow_run": run_id}
