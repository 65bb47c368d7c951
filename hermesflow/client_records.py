"""What a client of open applications names and reports, and the states and decision kinds it
reads back, as the store, the scheduler and the HTTP API all read them.

The scheduler validates a reported task outcome and decides when a named step has ended; the
store keeps both, and the scheduler's decisions; the HTTP API takes and answers them. These
records therefore live below the scheduler, not among the HTTP API's models
(`hermesflow.api.models`), which sit above it and import from here.

Names a client creates (application ids, step ids, class, stage and backend names) have fixed
length limits: they are keys of the store's tables and of Airflow's ids. Pydantic only — no
FastAPI, no Ray — so HTTP clients (the Airflow provider) use them too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_APP_ID_CHARS = 128
"""Longest application id: the store's run key column."""
MAX_STEP_ID_CHARS = 200
"""Longest client-named step id: the store's step id column."""
MAX_CLASS_CHARS = 250
"""Longest application-class name: Airflow's dag_id limit (a DAG is an application class)."""
MAX_NAME_CHARS = 200
"""Longest stage, backend or model name."""
MAX_TASK_ID_CHARS = 250
"""Longest Airflow task id (Airflow's own limit)."""

AppClassName = Annotated[str, Field(min_length=1, max_length=MAX_CLASS_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


class StepState(StrEnum):
    """Where a client-named step is, in order (a failed step is submitted again as a new
    attempt, not resumed)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


TERMINAL_STEP_STATES = frozenset({StepState.DONE, StepState.FAILED})
"""States a step never leaves: a client stops waiting once it sees one."""


class AppViewPhase(StrEnum):
    """Where an application is, as a client reads it (`AppView.phase`): the store's `RunPhase`
    by its lower-case name, in the same order. A client ends an open application as FINISHED or
    FAILED (`FinishRequest.state`)."""

    ADMITTED = "admitted"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


TERMINAL_APP_PHASES = frozenset({AppViewPhase.FINISHED, AppViewPhase.FAILED})
"""Phases an application never leaves: a client stops waiting once it sees one."""


class DecisionKind(StrEnum):
    """What a scheduling decision (or an event the scheduler was told of) is. One vocabulary for
    the engine's log (`schedulers/engine.py`), the journal's `decisions` table and the events
    API (`AppEvent.kind`); the values are what the table stores and what clients read."""

    ADMIT = "admit"
    STEP = "step"
    QUEUE = "queue"
    DISPATCH = "dispatch"
    COMPLETE = "complete"
    RETRY = "retry"
    GIVE_UP = "give-up"
    WARM = "warm"
    WARMED = "warmed"
    WARM_FAILED = "warm-failed"
    RELEASE = "release"
    LOST = "lost"
    FINISH = "finish"
    FAIL = "fail"
    RECOVER = "recover"


class TaskState(StrEnum):
    """The Airflow task states a client reports (Airflow's own names, recorded verbatim)."""

    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    UP_FOR_RETRY = "up_for_retry"
    UPSTREAM_FAILED = "upstream_failed"


class TaskOutcome(BaseModel):
    """How one try of one task of an application ended (`POST /v1/apps/{app_id}/tasks`).

    Airflow reports every task of a DAG run, native Python tasks included, so the store holds the
    whole run, not only the steps Hermesflow served; the application need not have a step yet.
    Reporting the same (task, map index, try, state) again records nothing: the answer echoes
    the outcome with `recorded` false, so a retried report is harmless.
    """

    model_config = ConfigDict(extra="forbid")

    app_class: AppClassName = Field(description="the application's class (dag_id)")
    task_id: Annotated[str, Field(min_length=1, max_length=MAX_TASK_ID_CHARS)]
    map_index: Annotated[int, Field(ge=-1, description="-1 for a task that is not mapped")] = -1
    try_number: Annotated[int, Field(ge=1)]
    state: TaskState
    duration_s: Annotated[float | None, Field(ge=0)] = None
    step_id: Annotated[str | None, Field(min_length=1, max_length=MAX_STEP_ID_CHARS)] = Field(
        default=None, description="the Hermesflow step this task ran, if any"
    )
    recorded: bool | None = Field(
        default=None,
        description="in answers: false when this outcome had been recorded before; ignored in requests",
    )
