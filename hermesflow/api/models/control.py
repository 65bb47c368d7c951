"""The bodies of the control API (`hermesflow.api.control`): submit application runs and single
steps (held until their result is in, or named and read back later), read their state and
event stream, record how an application's tasks ended (`TaskOutcome`, in
`hermesflow.client_records`: the scheduler reads it too), finish or fail an open application,
declare an open class's PDGraph, and read backends and counters.

Pydantic only — no FastAPI, no Ray — so HTTP clients (the CLI's `submit`, the Airflow hook and
triggers) validate what they send and read with the same models the server declares in its
OpenAPI schema. The limits an operator may change (body size, labels) are `ApiLimits` settings
(`hermesflow.config`), checked by the API.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hermesflow.backends.calls import Call, CallResult
from hermesflow.client_records import (
    MAX_APP_ID_CHARS,
    TERMINAL_APP_PHASES,
    TERMINAL_STEP_STATES,
    AppClassName,
    AppViewPhase,
    Name,
    StepState,
)

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


class AppView(BaseModel):
    """One application run as the scheduler sees it (live) or the store recorded it (ended)."""

    app_id: str
    app_class: str
    phase: AppViewPhase
    submitted_at: float = Field(description="Unix time of admission")
    finished_at: float | None = None
    act_s: float | None = Field(default=None, description="application completion time, seconds")
    cold_start_s: float | None = Field(
        default=None, description="seconds spent waiting for cold backends"
    )
    attained_s: float | None = Field(default=None, description="backend-seconds of service so far")
    stage: str | None = None
    step: int | None = None
    result: Any = None
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.phase in TERMINAL_APP_PHASES


class AppEvent(BaseModel):
    """One scheduling decision about a run (admit, step, dispatch, complete, retry, finish, fail)."""

    id: int
    at_s: float
    kind: str
    backend: str | None = None
    detail: JSON | None = None


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


class StepView(BaseModel):
    """One client-named step of an open application (`PUT /v1/apps/{app_id}/steps/{step_id}`),
    read from the store, so it survives a scheduler restart and the end of its application.

    `attempt` counts submissions of this `step_id` that ran: a failed step submitted again
    becomes attempt 2, and so on. `result` is set once the step is done (a failed tool call also
    has one, with its `error`); `error` says why a step failed.
    """

    app_id: str
    step_id: str
    stage: str
    state: StepState
    attempt: int = Field(ge=1)
    result: CallResult | None = None
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STEP_STATES


class ClassDeclaration(BaseModel):
    """The answer to declaring an open class's PDGraph (`PUT /v1/classes/{name}/graph`).

    `changed` is false when the class's last declared graph had the same structure (stages,
    kinds, backends, entry and successors): then nothing was stored and the distributions the
    scheduler learned from the class's runs are kept. `version` is the store's snapshot version
    of the declaration in force (the new one, or the earlier one of the same structure).
    """

    name: str
    version: int = Field(ge=1)
    changed: bool


class FinishRequest(BaseModel):
    """The optional body of `POST /v1/apps/{app_id}/finish`: how the application ended.

    `failed` ends the application at once, even with steps still running (they fail with it), and
    stores it FAILED with `error`; `finished` (the default) needs its steps to be over.
    """

    model_config = ConfigDict(extra="forbid")

    state: Literal[AppViewPhase.FINISHED, AppViewPhase.FAILED] = AppViewPhase.FINISHED
    error: Annotated[str | None, Field(max_length=10_000)] = None


class BackendViewPhase(StrEnum):
    """A backend's lifecycle phase as clients read it (`BackendView.phase`): the scheduler's
    `BackendPhase` by its lower-case name."""

    COLD = "cold"
    WARMING = "warming"
    WARM = "warm"


class BackendView(BaseModel):
    """One backend's lifecycle phase, capacity and load."""

    name: str
    type: str
    phase: BackendViewPhase
    pinned: bool = Field(
        default=False, description="kept warm from the start (`--warm`); `/readyz` waits for it"
    )
    warmup_s: float
    capacity: int
    in_flight: int
    queued: int
    last_error: str | None = None
    warm_since: float | None = Field(
        default=None, description="Unix time it became warm; None while no actor is loaded"
    )
    warmups: int = Field(
        default=0, ge=0, description="completed warm-ups since the scheduler started"
    )
    last_warmup_s: float | None = Field(
        default=None, description="measured seconds of the last completed warm-up"
    )


class SchedulerStats(BaseModel):
    """The scheduler's counters; `overhead_ms_per_step` is its own time per completed call."""

    policy: str
    planner: str
    live_apps: int
    completed_calls: int
    busy_s: float
    overhead_ms_per_step: float
    classes: list[str]
    ray_dashboard_url: str | None = Field(
        default=None, description="the Ray dashboard of the scheduler's cluster, if it runs one"
    )


class StepDelta(BaseModel):
    """A piece of a streamed step's text (`stream: true`), in order."""

    delta: str


class StepEnd(BaseModel):
    """The last event of a streamed step: its call's result."""

    result: CallResult


StepEvent = StepDelta | StepEnd
"""One Server-Sent Event of a streamed step."""
