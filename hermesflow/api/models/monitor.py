"""The bodies of the monitoring routes of the control API (`hermesflow.api.monitor`: `GET
/v1/apps`, `/v1/classes`, `/v1/act`): the live applications in the policy's order with their
ranks and remaining-demand estimates, the classes, and the completion-time history of finished
runs, for dashboards (the Airflow page), and the bounds of the routes' parameters.

The scheduler builds and returns the bodies, so they are declared in `hermesflow.views`, below
it, and re-exported here. Pydantic only, like every module of `hermesflow.api.models`.
"""

from __future__ import annotations

from hermesflow.client_records import MAX_CLASS_CHARS
from hermesflow.views import (
    ActHistory,
    ActPoint,
    ActSeries,
    ActTotal,
    ClassKind,
    ClassSummary,
    LiveAppPhase,
    LiveAppView,
    RemainingEstimate,
)

__all__ = [
    "MAX_ACT_BUCKETS",
    "MAX_ACT_WINDOW_S",
    "MAX_CLASS_FILTER",
    "MAX_LIVE_APPS",
    "MIN_ACT_WINDOW_S",
    "ActHistory",
    "ActPoint",
    "ActSeries",
    "ActTotal",
    "ClassKind",
    "ClassSummary",
    "LiveAppPhase",
    "LiveAppView",
    "RemainingEstimate",
]

MAX_LIVE_APPS = 1000
"""Most live applications one `GET /v1/apps` answers."""
MIN_ACT_WINDOW_S = 60.0
MAX_ACT_WINDOW_S = 30 * 86400.0
MAX_ACT_BUCKETS = 200
MAX_CLASS_FILTER = MAX_CLASS_CHARS
"""Longest application-class name a monitoring filter accepts."""
