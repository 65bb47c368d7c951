"""The bodies of the control API (`hermesflow.api.control`): submit application runs and single
steps (held until their result is in, or named and read back later), read their state and
event stream, record how an application's tasks ended (`TaskOutcome`, in
`hermesflow.client_records`: the scheduler reads it too), finish or fail an open application,
declare an open class's PDGraph, and read backends and counters.

What a client sends is declared here; what the scheduler answers (`AppView`, `StepView`,
`AppEvent`, `BackendView`, `SchedulerStats`, the stream's `StepDelta`/`StepEnd`,
`ClassDeclaration`) is declared in `hermesflow.views`, below the scheduler, which builds and
returns those models, and re-exported here, so clients import every body of this API from one
module.

Pydantic only — no FastAPI, no Ray — so HTTP clients (the CLI's `submit`, the Airflow hook and
triggers) validate what they send and read with the same models the server declares in its
OpenAPI schema. The limits an operator may change (body size, labels) are `ApiLimits` settings
(`hermesflow.config`), checked by the API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hermesflow.backends.calls import Call
from hermesflow.client_records import MAX_APP_ID_CHARS, AppClassName, AppViewPhase, Name
from hermesflow.views import (
    AppEvent,
    AppView,
    BackendView,
    BackendViewPhase,
    ClassDeclaration,
    SchedulerStats,
    StepDelta,
    StepEnd,
    StepEvent,
    StepView,
)

__all__ = [
    "AppEvent",
    "AppSubmission",
    "AppView",
    "BackendView",
    "BackendViewPhase",
    "ClassDeclaration",
    "FinishRequest",
    "SchedulerStats",
    "StepDelta",
    "StepEnd",
    "StepEvent",
    "StepSubmission",
    "StepView",
]

JSON = dict[str, Any]

_LABELS = (
    "the client's own key-value notes on the run, stored with it (limits: `ApiLimits`, "
    "HERMES_API_MAX_LABELS and friends)"
)


class AppSubmission(BaseModel):
    """A run of a program class. Submitting the same `app_id` again returns the same run."""

    model_config = ConfigDict(extra="forbid")

    app_class: AppClassName = Field(description="a program class the scheduler runs")
    inputs: JSON = Field(
        default_factory=dict, description="the class's inputs (validated by its program)"
    )
    app_id: Annotated[str | None, Field(min_length=1, max_length=MAX_APP_ID_CHARS)] = Field(
        default=None, description="client-chosen id that makes the submission idempotent"
    )
    labels: JSON | None = Field(default=None, description=_LABELS)


class StepSubmission(BaseModel):
    """One step of an open application: its call runs on `backend` (default: `llm` for an LLM
    call) and is ranked with the application's other steps. The first step opens the
    application; `POST /v1/apps/{app_id}/finish` closes it."""

    model_config = ConfigDict(extra="forbid")

    app_class: AppClassName = Field(description="an open class (not a program class)")
    stage: Name = Field(description="the step's stage in the class's graph")
    backend: Name | None = None
    call: Call
    labels: JSON | None = Field(default=None, description=_LABELS)
    stream: bool = Field(default=False, description="answer with Server-Sent Events of text deltas")


class FinishRequest(BaseModel):
    """The optional body of `POST /v1/apps/{app_id}/finish`: how the application ended.

    `failed` ends the application at once, even with steps still running (they fail with it), and
    stores it FAILED with `error`; `finished` (the default) needs its steps to be over.
    """

    model_config = ConfigDict(extra="forbid")

    state: Literal[AppViewPhase.FINISHED, AppViewPhase.FAILED] = AppViewPhase.FINISHED
    error: Annotated[str | None, Field(max_length=10_000)] = None
