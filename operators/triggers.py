"""Triggers that await a Hermesflow step or program run in Airflow's triggerer.

A deferred Hermesflow task holds no worker slot: its trigger long-polls the API
(`GET ...?wait=poll_s` — the server answers as soon as the work ends, or after `poll_s`), so one
triggerer awaits thousands of steps with one pending request each and no busy polling. Every
request goes through `HermesHook.arun` (httpx.AsyncClient, async connection lookup): the
triggerer's event loop is never blocked.

The triggers only read: submitting is the operator's job, under an idempotent id. So a
triggerer that restarts re-creates the trigger from `serialize()` and reads the same step again
— nothing is lost and nothing is submitted twice. An unreachable server (a restart, a network
blip) is retried with exponential backoff for up to `max_outage_s`; after that, or on an answer
no retry can change (404, 401), the trigger fires an `error` event and the task fails, and a
retry of the task finds its step again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from airflow.triggers.base import BaseTrigger, TriggerEvent
from pydantic import BaseModel

from hermesflow import client
from hermesflow.api.models.control import AppView, StepView
from hermesflow.client import HermesApiError, Route
from hermesflow.operators.hook import DEFAULT_CONN_ID, HermesConnectionError, HermesHook

M = TypeVar("M", bound=BaseModel)

DEFAULT_POLL_S = 30.0
"""Long-poll window of one request; the server caps it at 60 s."""
DEFAULT_MAX_OUTAGE_S = 600.0
"""How long the trigger keeps retrying an unreachable server before it gives up."""
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
MIN_POLL_INTERVAL_S = 0.5
"""Floor between two polls, should a server answer a long poll early without an ending."""


async def poll_until(
    hook: HermesHook,
    route: Route[M],
    ended: Callable[[M], bool],
    max_outage_s: float,
    log: Any,
) -> M:
    """Send `route` until `ended(answer)`; transient failures are retried with exponential
    backoff while they last less than `max_outage_s` (then the last `HermesApiError` is raised)."""
    outage_since: float | None = None
    delay = BACKOFF_FIRST_S
    while True:
        sent = time.monotonic()
        try:
            answer = await hook.arun(route)
        except HermesApiError as error:
            now = time.monotonic()
            outage_since = outage_since or now
            if not error.transient or now - outage_since > max_outage_s:
                raise
            log.warning("%s; retrying in %.0f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, BACKOFF_MAX_S)
            continue
        outage_since, delay = None, BACKOFF_FIRST_S
        if ended(answer):
            return answer
        await asyncio.sleep(max(0.0, MIN_POLL_INTERVAL_S - (time.monotonic() - sent)))


class _HermesTrigger(BaseTrigger):
    """What both triggers share: the connection, the poll window and the outage budget, and
    their serialisation (the class path and plain keyword arguments — no secrets: the token
    stays in the Airflow connection)."""

    def __init__(
        self,
        *,
        hermes_conn_id: str = DEFAULT_CONN_ID,
        poll_s: float = DEFAULT_POLL_S,
        max_outage_s: float = DEFAULT_MAX_OUTAGE_S,
    ) -> None:
        super().__init__()
        self.hermes_conn_id = hermes_conn_id
        self.poll_s = poll_s
        self.max_outage_s = max_outage_s

    def _kwargs(self) -> dict[str, Any]:
        return {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}", {
            **self._kwargs(),
            "hermes_conn_id": self.hermes_conn_id,
            "poll_s": self.poll_s,
            "max_outage_s": self.max_outage_s,
        }

    def _route(self) -> Route[Any]:
        """The long poll this trigger repeats; its answer has `ended`."""
        raise NotImplementedError

    def _event(self, answer: Any) -> dict[str, Any]:
        """The event payload for the ended answer."""
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = HermesHook(self.hermes_conn_id)
        try:
            answer = await poll_until(
                hook, self._route(), lambda a: a.ended, self.max_outage_s, self.log
            )
        except (HermesApiError, HermesConnectionError) as error:
            yield TriggerEvent({"status": "error", "message": str(error)})
            return
        yield TriggerEvent(self._event(answer))


class HermesStepTrigger(_HermesTrigger):
    """Fires once the step `step_id` of application `app_id` is done or failed.

    Event: `{"status": "done" | "failed", "step": StepView JSON}`, or
    `{"status": "error", "message": ...}` when the step could not be read."""

    def __init__(self, app_id: str, step_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app_id = app_id
        self.step_id = step_id

    def _kwargs(self) -> dict[str, Any]:
        return {"app_id": self.app_id, "step_id": self.step_id}

    def _route(self) -> Route[StepView]:
        return client.get_step(self.app_id, self.step_id, wait_s=self.poll_s)

    def _event(self, answer: StepView) -> dict[str, Any]:
        return {"status": answer.state, "step": answer.model_dump(mode="json")}


class HermesAppTrigger(_HermesTrigger):
    """Fires once the program run `app_id` has finished or failed.

    Event: `{"status": "finished" | "failed", "app": AppView JSON}`, or
    `{"status": "error", "message": ...}`."""

    def __init__(self, app_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app_id = app_id

    def _kwargs(self) -> dict[str, Any]:
        return {"app_id": self.app_id}

    def _route(self) -> Route[AppView]:
        return client.get_app(self.app_id, wait_s=self.poll_s)

    def _event(self, answer: AppView) -> dict[str, Any]:
        return {"status": answer.phase, "app": answer.model_dump(mode="json")}


def step_of(event: dict[str, Any]) -> StepView:
    """The step a `HermesStepTrigger` event carries."""
    return StepView.model_validate(event["step"])
