"""A scheduler and the HTTP gateway in front of it, for tests that talk to the real API.

Every module that serves gets names no other module uses, so module- and session-scoped
servers can live side by side on the one shared Ray cluster; leaving the context stops both.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

TEARDOWN_GRACE_S = 2.0
"""How long a test's gateway lets requests still open at teardown finish (a test's own work is
over by then; the default grace period is for users)."""


@dataclass(frozen=True)
class Serving:
    url: str
    scheduler: Any
    scheduler_name: str
    gateway_name: str


@contextmanager
def serving(config: Any, token: str | None, prefix: str) -> Iterator[Serving]:
    """Start a scheduler from `config` (a RuntimeConfig) and a gateway on a free port with
    `token`, named `{prefix}-scheduler-…` / `{prefix}-gateway-…`; stop both on exit."""
    import ray

    from hermesflow.api.deployment import start_gateway, stop_gateway
    from hermesflow.schedulers.runtime import start_scheduler

    suffix = uuid.uuid4().hex[:8]
    scheduler_name, gateway_name = f"{prefix}-scheduler-{suffix}", f"{prefix}-gateway-{suffix}"
    scheduler = start_scheduler(config, name=scheduler_name)
    try:
        url = start_gateway(port=0, token=token, scheduler_name=scheduler_name, name=gateway_name)
        yield Serving(url, scheduler, scheduler_name, gateway_name)
    finally:
        stop_gateway(gateway_name, grace_s=TEARDOWN_GRACE_S)
        ray.get(scheduler.shutdown.remote())
        ray.kill(scheduler, no_restart=True)


def wait_warm(url: str, token: str | None, backends: Iterable[str], timeout_s: float) -> None:
    """Until every backend in `backends` reports warm on the API at `url`, so what a test times
    is its own work, not model loading; fails the test with the phases seen at the deadline."""
    wanted = tuple(backends)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    phases: dict[str, str] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as api:
        while time.monotonic() < deadline:
            phases = {b["name"]: b["phase"] for b in api.get("/v1/backends").json()}
            if all(phases.get(name) == "warm" for name in wanted):
                return
            time.sleep(0.5)
    pytest.fail(f"backends not warm after {timeout_s:.0f} s: {phases}")


UNREADY_TOKEN = f"unready-{uuid.uuid4().hex}"
"""The token of the session's never-ready gateway (the root conftest's `unready_gateway`)."""
