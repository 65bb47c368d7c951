"""The query parameters of the monitoring routes, declared once for the two APIs that take them:
Hermesflow's control API (`hermesflow.api.monitor`) and the Airflow plugin's API, which proxies it
(`plugins/monitor_api.py`). Same bounds, same defaults, same descriptions, so a value one
accepts the other accepts too, and a bad one is a 422 naming the parameter in both.

FastAPI only (no Ray): the plugin imports this inside Airflow's api-server.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from hermesflow.api.models.monitor import (
    MAX_ACT_BUCKETS,
    MAX_ACT_WINDOW_S,
    MAX_CLASS_FILTER,
    MAX_LIVE_APPS,
    MIN_ACT_WINDOW_S,
)

DEFAULT_LIVE_APPS = 200
DEFAULT_ACT_WINDOW_S = 86400.0
DEFAULT_ACT_BUCKETS = 24

ClassFilter = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=MAX_CLASS_FILTER,
        description="only this application class (all classes if absent)",
    ),
]
LiveAppsLimit = Annotated[
    int, Query(ge=1, le=MAX_LIVE_APPS, description="at most this many applications")
]
ActWindow = Annotated[
    float,
    Query(
        ge=MIN_ACT_WINDOW_S,
        le=MAX_ACT_WINDOW_S,
        description="how far back, in seconds (1 minute to 30 days)",
    ),
]
ActBuckets = Annotated[
    int, Query(ge=1, le=MAX_ACT_BUCKETS, description="equal time buckets in the window")
]
