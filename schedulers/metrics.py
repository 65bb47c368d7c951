"""The scheduler's Ray metrics: what Prometheus scrapes from each node's metrics agent.

The names and tags are a contract with the dashboards and alerts built on them:

| metric                       | kind      | tags               | value                          |
|------------------------------|-----------|--------------------|--------------------------------|
| hermesflow_queue_length      | gauge     | backend            | calls waiting in its queue     |
| hermesflow_best_rank         | gauge     | backend            | smallest policy key queued     |
|                              |           |                    | there (NaN, so no sample, while|
|                              |           |                    | it is empty)                   |
| hermesflow_backend_warm      | gauge     | backend            | 1 while an actor is loaded     |
|                              |           |                    | (warm), else 0                 |
| hermesflow_live_apps         | gauge     | app_class          | admitted or running apps       |
| hermesflow_act_seconds       | histogram | app_class, policy  | completion time of each run    |
|                              |           |                    | that finished                  |
| hermesflow_warmup_seconds    | histogram | backend            | each completed warm-up         |

Ray's export prefixes each name with `ray_` (`ray_hermesflow_queue_length`). Tags are bounded
sets — backends, classes, policies — never an application id, so the number of series stays
small however many applications run. A gauge is only written when its value changes, so the
runtime may publish after every dispatch pass at the cost of a dictionary look-up per backend.

Ray is imported when the runtime builds `SchedulerMetrics`, not at import time, so the
scheduling core still imports without Ray (`tests/test_import_isolation.py`).
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from typing import Any

ACT_BOUNDARIES_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""Histogram buckets of application completion times: tool chains take under a second, agent
runs on a CPU model many minutes."""
WARMUP_BOUNDARIES_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500)
"""Histogram buckets of warm-ups: a tool pool starts in about a second, a large model in minutes."""
OVERRIDE_DASHBOARD_URL = "RAY_OVERRIDE_DASHBOARD_URL"
"""Ray's variable for a dashboard reached through a proxy (`ray_constants`)."""


class SchedulerMetrics:
    """The scheduler actor's Ray metrics (module docstring); one instance per scheduler."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge, Histogram

        self._queue_length = Gauge(
            "hermesflow_queue_length", "calls waiting in the backend's queue", ("backend",)
        )
        self._best_rank = Gauge(
            "hermesflow_best_rank",
            "the smallest policy key (rank) waiting in the backend's queue; NaN when it is empty",
            ("backend",),
        )
        self._backend_warm = Gauge(
            "hermesflow_backend_warm",
            "1 while the backend has a loaded actor (warm), else 0",
            ("backend",),
        )
        self._live_apps = Gauge(
            "hermesflow_live_apps", "live (admitted or running) applications", ("app_class",)
        )
        self._act = Histogram(
            "hermesflow_act_seconds",
            "application completion time (admission to finish) of finished runs",
            list(ACT_BOUNDARIES_S),
            ("app_class", "policy"),
        )
        self._warmup = Histogram(
            "hermesflow_warmup_seconds",
            "measured warm-up time of a backend",
            list(WARMUP_BOUNDARIES_S),
            ("backend",),
        )
        self._written: dict[tuple[Any, str], float] = {}
        self._live: Counter[str] = Counter()

    def _set(self, gauge: Any, tag: str, value: str, number: float) -> None:
        """Write the gauge only when its value changed (NaN equals NaN here)."""
        key = (gauge, value)
        last = self._written.get(key)
        if last is not None and (last == number or (math.isnan(last) and math.isnan(number))):
            return
        self._written[key] = number
        gauge.set(number, tags={tag: value})

    # -- backends -------------------------------------------------------------------------------

    def queue(self, backend: str, length: int, best_rank: float | None) -> None:
        """The backend's queue after a change: its length and the key of its head."""
        self._set(self._queue_length, "backend", backend, float(length))
        self._set(self._best_rank, "backend", backend, math.nan if best_rank is None else best_rank)

    def backend_cold(self, backend: str) -> None:
        """The backend has no actor (at start, and after a release or a death)."""
        self._set(self._backend_warm, "backend", backend, 0.0)

    def backend_warmed(self, backend: str, warmup_s: float) -> None:
        """A warm-up completed after `warmup_s` measured seconds."""
        self._set(self._backend_warm, "backend", backend, 1.0)
        self._warmup.observe(warmup_s, tags={"backend": backend})

    # -- applications ---------------------------------------------------------------------------

    def app_admitted(self, app_class: str) -> None:
        self._live[app_class] += 1
        self._set(self._live_apps, "app_class", app_class, float(self._live[app_class]))

    def app_ended(self, app_class: str, policy: str, act_s: float | None) -> None:
        """An application left the scheduler; `act_s` is its completion time if it finished
        (None if it failed: a failure's time says nothing about the schedule)."""
        self._live[app_class] = max(self._live[app_class] - 1, 0)
        self._set(self._live_apps, "app_class", app_class, float(self._live[app_class]))
        if act_s is not None:
            self._act.observe(act_s, tags={"app_class": app_class, "policy": policy})


@functools.cache
def ray_dashboard_url() -> str | None:
    """The Ray dashboard's URL as the cluster's head announced it when the dashboard started
    (`RAY_OVERRIDE_DASHBOARD_URL` wins, as in Ray); None when the cluster runs no dashboard.
    Call it inside a Ray worker or driver; it asks the GCS once per process (the head starts
    its dashboard with the cluster or never). Not `ray._private.worker.get_dashboard_url()`: in a
    worker that answers the default host and port even when no dashboard runs."""
    from ray._private.services import get_webui_url_from_internal_kv  # no public API

    url = os.environ.get(OVERRIDE_DASHBOARD_URL) or get_webui_url_from_internal_kv()
    if not url:
        return None
    return url if "://" in url else f"http://{url}"
