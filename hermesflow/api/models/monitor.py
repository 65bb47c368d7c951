"""The bodies of the monitoring routes of the control API (`hermesflow.api.monitor`: `GET
/v1/apps`, `/v1/classes`, `/v1/act`): the live applications in the policy's order with their
ranks and remaining-demand estimates, the classes, and the completion-time history of finished
runs, for dashboards (the Airflow page). Pydantic only, like every module of
`hermesflow.api.models`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from hermesflow.client_records import MAX_CLASS_CHARS

MAX_LIVE_APPS = 1000
"""Most live applications one `GET /v1/apps` answers."""
MIN_ACT_WINDOW_S = 60.0
MAX_ACT_WINDOW_S = 30 * 86400.0
MAX_ACT_BUCKETS = 200
MAX_CLASS_FILTER = MAX_CLASS_CHARS
"""Longest application-class name a monitoring filter accepts."""


class RemainingEstimate(BaseModel):
    """Remaining backend-seconds of a live application, from its class's PDGraph conditioned on
    where the application is now: the mean and the central `level` interval of the Monte-Carlo
    draws the scheduler ranks with (`low`/`high` are the (1 - level)/2 and (1 + level)/2
    quantiles: the 10th and 90th percentiles at the default 0.8)."""

    mean: float = Field(ge=0)
    low: float = Field(ge=0)
    high: float = Field(ge=0)
    level: float = Field(default=0.8, gt=0, lt=1)


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
    phase: Literal["admitted", "running"]
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


class ClassSummary(BaseModel):
    """An application class the scheduler ranks (`GET /v1/classes`); its graph is at
    `GET /v1/classes/{name}/graph`. `version` and `source` are the stored snapshot in force
    (`prior`, `open-prior`, `declared`, `refit`); `finished_runs` counts the class's runs that
    finished (not failed), in the store."""

    name: str
    kind: Literal["program", "open"]
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
