"""A scheduler and the HTTP gateway in front of it, for tests that talk to the real API.

Every module that serves gets names no other module uses, so module- and session-scoped
servers can live side by side on the one shared Ray cluster; leaving the context stops both.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


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

    from hermesflow.gateway import start_gateway, stop_gateway
    from hermesflow.schedulers.runtime import start_scheduler

    suffix = uuid.uuid4().hex[:8]
    scheduler_name, gateway_name = f"{prefix}-scheduler-{suffix}", f"{prefix}-gateway-{suffix}"
    scheduler = start_scheduler(config, name=scheduler_name)
    try:
        url = start_gateway(port=0, token=token, scheduler_name=scheduler_name, name=gateway_name)
        yield Serving(url, scheduler, scheduler_name, gateway_name)
    finally:
        stop_gateway(gateway_name)
        ray.get(scheduler.shutdown.remote())
        ray.kill(scheduler, no_restart=True)
