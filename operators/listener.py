"""An Airflow listener that tells Hermesflow how each task of a Hermesflow DAG run ended, and
when the run — the application — is over, so the class's PDGraph learns from history: which
branch a run took, how often tasks retried, what a run cost end to end.

Where the hooks run (Airflow 3.3): the task-instance hooks in the task's own process, when it
ends (`success`, `failed` — also for a try that will be retried — and `skipped` when the task
skipped itself); the DAG-run hooks in the scheduler (or in `airflow dags test`'s process).
Tasks the scheduler skips without running them (the branches not taken) get no task hook, so
at the end of the run every task instance's final state is reported again; the server records
each (task, map index, try, state) once, so the overlap is harmless.

Only DAGs with a Hermesflow step are reported (the others are not applications). A listener
must never fail or stall Airflow: requests have short timeouts, errors are logged and dropped,
the end-of-run reports are sent from a thread so the scheduler loop does not wait on them,
and the task instances are read in the scheduler's own session, never committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from airflow.listeners import hookimpl
from airflow.sdk.exceptions import AirflowException
from sqlalchemy.orm import object_session

from hermesflow import client
from hermesflow.api.models.control import FinishRequest
from hermesflow.client import HermesApiError
from hermesflow.client_records import AppViewPhase, TaskOutcome, TaskState
from hermesflow.operators import naming
from hermesflow.operators.dag_graph import argument, is_step
from hermesflow.operators.hook import DEFAULT_CONN_ID, HermesHook

log = logging.getLogger(__name__)

REPORT_TIMEOUT_S = 5.0
"""Per request: a listener that waits longer delays the task's exit or the scheduler's loop."""
REPORT_ERRORS = (HermesApiError, AirflowException, ValueError)
"""What a report may raise (API refusals, a missing connection, an id the API refuses): logged,
never raised into Airflow."""


def _state_name(state: Any) -> str:
    return str(getattr(state, "value", state))


def _hermes_dag(dag: Any) -> bool:
    return dag is not None and any(is_step(task) for task in dag.tasks)


def _hook(dag: Any) -> HermesHook:
    """The connection of the DAG's first Hermesflow step (the default when the task objects
    carry no operator arguments, as in the scheduler's deserialized DAG)."""
    steps = (task for task in dag.tasks if is_step(task))
    conn_id = next((argument(t, "hermes_conn_id") for t in steps), None)
    return HermesHook(conn_id if isinstance(conn_id, str) else DEFAULT_CONN_ID, REPORT_TIMEOUT_S)


def _outcome(ti: Any, dag: Any) -> TaskOutcome | None:
    """How the task instance ended, or None for a state that is not an ending."""
    state = _state_name(ti.state)
    if state not in TaskState.__members__.values():
        return None
    task = dag.task_dict.get(ti.task_id)
    duration = getattr(ti, "duration", None)
    if duration is None and getattr(ti, "end_date", None) and getattr(ti, "start_date", None):
        duration = (ti.end_date - ti.start_date).total_seconds()
    return TaskOutcome(
        app_class=dag.dag_id,
        task_id=ti.task_id,
        map_index=ti.map_index,
        try_number=max(ti.try_number or 0, 1),  # a task skipped before it ran has try 0
        state=TaskState(state),
        duration_s=max(duration, 0.0) if duration is not None else None,
        step_id=naming.step_id(ti.task_id, ti.map_index)
        if task is not None and is_step(task)
        else None,
    )


def _send(
    hook: HermesHook, app_id: str, outcomes: Iterable[TaskOutcome], finish: FinishRequest | None
) -> None:
    """Report outcomes (then the run's end); stop at the first error, which is logged."""
    try:
        for outcome in outcomes:
            hook.run(client.record_task_outcome(app_id, outcome))
        if finish is not None:
            hook.run(client.finish_app(app_id, finish))
    except HermesApiError as error:
        if finish is not None and error.status == 404:
            return  # the run never reached a Hermesflow step (a branch skipped them all)
        log.warning("Hermesflow listener: %s", error)
    except REPORT_ERRORS as error:
        log.warning("Hermesflow listener: could not report application %r: %s", app_id, error)


def _report_task(task_instance: Any) -> None:
    task = getattr(task_instance, "task", None)
    dag = getattr(task, "dag", None)
    if not _hermes_dag(dag):
        return
    try:
        outcome = _outcome(task_instance, dag)
        app_id = naming.app_id(dag.dag_id, task_instance.run_id)
    except REPORT_ERRORS as error:
        log.warning("Hermesflow listener: task %r not reported: %s", task_instance.task_id, error)
        return
    if outcome is not None:
        _send(_hook(dag), app_id, [outcome], None)


def _end_run(dag_run: Any, finish: FinishRequest) -> None:
    """Report every task's final state and end the application, from a thread. The task
    instances are read here, in the session the DAG run is bound to (the scheduler's: a session
    of the listener's own would commit inside its transaction, which breaks its locks); a
    detached DAG run (`airflow dags test`) is read in a session of its own."""
    dag = getattr(dag_run, "dag", None)
    if not _hermes_dag(dag):
        return
    session = object_session(dag_run)
    try:
        app_id = naming.app_id(dag.dag_id, dag_run.run_id)
        tis = dag_run.get_task_instances(**({"session": session} if session else {}))
        outcomes = [o for ti in tis if (o := _outcome(ti, dag)) is not None]
    except REPORT_ERRORS as error:
        log.warning("Hermesflow listener: run %r not reported: %s", dag_run.run_id, error)
        return
    threading.Thread(
        target=_send,
        args=(_hook(dag), app_id, outcomes, finish),
        name=f"hermesflow-report-{app_id}",
    ).start()


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    _report_task(task_instance)


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    _report_task(task_instance)


@hookimpl
def on_task_instance_skipped(previous_state: Any, task_instance: Any) -> None:
    _report_task(task_instance)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _end_run(dag_run, FinishRequest(state=AppViewPhase.FINISHED))


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _end_run(dag_run, FinishRequest(state=AppViewPhase.FAILED, error=msg or "the DAG run failed"))
