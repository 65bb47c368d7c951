"""What the scheduler answers its clients with: applications, steps, events, backends, counters,
and the monitoring views (live applications, classes, completion-time history).

The scheduler actor builds these models and returns them through Ray (pydantic models pickle);
the HTTP API returns the same objects as its response bodies. They live here, below the
scheduler, because the scheduler layer may not import the HTTP API's models
(`hermesflow.api.models`), which sit above it: those modules import the views from here and
re-export them, so HTTP clients and the OpenAPI schema see the same names and the same JSON.
Pydantic only — no FastAPI, no Ray, no SQLAlchemy — so HTTP clients (the Airflow provider)
import them too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from hermesflow.backends.calls import CallResult
from hermesflow.client_records import (
    TERMINAL_APP_PHASES,
    TERMINAL_STEP_STATES,
    AppViewPhase,
    DecisionKind,
    StepState,
)

# -- applications, steps and events ----------------------------------------------------------


class AppView(BaseModel):
    """One application run as the scheduler sees it (live) or the store recorded it (ended).
    `app_id` is the client's name of the run (its key), never the store's number for it."""

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
    kind: DecisionKind
    backend: str | None = None
    detail: dict[str, Any] | None = None


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


class StepDelta(BaseModel):
    """A piece of a streamed step's text (`stream: true`), in order."""

    delta: str


class StepEnd(BaseModel):
    """The last event of a streamed step: its call's result."""

    result: CallResult


StepEvent = StepDelta | StepEnd
"""One Server-Sent Event of a streamed step."""


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


# -- backends and counters --------------------------------------------------------------------


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


class ActorStats(SchedulerStats):
    """What the scheduler actor answers to `stats`: the published counters (`SchedulerStats`,
    what `GET /v1/stats` returns) and three that only the benchmarks and tests read through
    Ray. The HTTP API declares `SchedulerStats` as its response model, and pydantic serializes
    an instance by the declared model's fields, so these three never reach the wire."""

    overhead_wall_ms_per_step: float = Field(description="wall time per completed call")
    journal_ms_per_step: float = Field(description="journal transactions' wall time per call")
    task_failures: int = Field(ge=0, description="background tasks of the actor that raised")


# -- monitoring -------------------------------------------------------------------------------


class RemainingEstimate(BaseModel):
    """Remaining backend-seconds of a live application, from its class's PDGraph conditioned on
    where the application is now: the mean and the central `level` interval of the Monte-Carlo
    draws the scheduler ranks with (`low`/`high` are the (1 - level)/2 and (1 + level)/2
    quantiles: the 10th and 90th percentiles at the default 0.8)."""

    mean: float = Field(ge=0)
    low: float = Field(ge=0)
    high: float = Field(ge=0)
    level: float = Field(default=0.8, gt=0, lt=1)


LiveAppPhase = Literal[AppViewPhase.ADMITTED, AppViewPhase.RUNNING]
"""The phases of a live application: those an application has before it ends."""


class LiveAppView(BaseModel):
    """A live application (admitted or running) as the scheduler ranks it (`GET /v1/apps`).

    `rank` is the policy's key for the application — smaller is served first; the Gittins index
    of its remaining demand for the Hermes policies. With calls waiting it is the smallest key
    among them, the value their backend's queue orders them by; with none waiting, the key the
    policy would give its next call queued now. `position` is its place in that order among all
    live applications (1 = served next), also when the list is filtered by class; each backend
    serves its own queue in this order.
    """

    app_id: str
    app_class: str
    phase: LiveAppPhase
    stage: str | None = None
    backend: str | None = Field(default=None, description="backend of its current step")
    submitted_at: float = Field(description="Unix time of admission")
    elapsed_s: float = Field(description="wall seconds since admission")
    attained_s: float = Field(description="backend-seconds of service so far")
    policy: str = Field(description="the scheduler's policy")
    rank: float | None = None
    position: int = Field(ge=1)
    remaining_s: RemainingEstimate | None = None
    queued_calls: int = Field(ge=0)
    running_calls: int = Field(ge=0)


class ClassKind(StrEnum):
    """How a class's runs get their steps: from a program the scheduler runs, or one by one
    from their client (an open class: the OpenAI-compatible gateway, Airflow DAGs)."""

    PROGRAM = "program"
    OPEN = "open"


class ClassSummary(BaseModel):
    """An application class the scheduler ranks (`GET /v1/classes`); its graph is at
    `GET /v1/classes/{name}/graph`. `version` and `source` are the stored snapshot in force
    (`prior`, `open-prior`, `declared`, `refit`); `finished_runs` counts the class's runs that
    finished (not failed), in the store."""

    name: str
    kind: ClassKind
    version: int | None = None
    source: str | None = None
    live_apps: int = Field(ge=0)
    finished_runs: int = Field(ge=0)


class ActPoint(BaseModel):
    """Finished runs of one policy whose completion fell in [start, start + bucket_s)."""

    start: float = Field(description="Unix time the bucket starts")
    runs: int = Field(ge=0)
    mean_s: float | None = None
    p95_s: float | None = None


class ActSeries(BaseModel):
    policy: str
    points: list[ActPoint]


class ActTotal(BaseModel):
    """One policy's finished runs over the whole window."""

    policy: str
    runs: int = Field(ge=0)
    mean_s: float | None = None
    p95_s: float | None = None


class ActHistory(BaseModel):
    """Application completion times (ACT: admission to finish) of the runs that finished in the
    last `window_s` seconds, from the store, per policy: `buckets` equal time buckets, oldest
    first, and the totals. The 95th percentile is linearly interpolated."""

    window_s: float
    bucket_s: float
    series: list[ActSeries]
    totals: list[ActTotal]
