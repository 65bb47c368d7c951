"""The triggers: they round-trip through `serialize()` (as Airflow stores them), and `run()`
awaits real steps and program runs on the real Hermesflow API — also when the triggerer dies
mid-wait and a new trigger is built from the stored arguments, which must find the same step
(one call in the store) instead of losing it or running it again."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import uuid
from typing import Any

import pytest

pytest.importorskip("airflow")
pytest.importorskip("ray")

from airflow.sdk.serde import deserialize, serialize
from airflow.triggers.base import BaseTrigger
from provider_support import Hermes, free_conn_uri

from hermesflow import client
from hermesflow.api.models.control import AppSubmission, StepSubmission
from hermesflow.backends.calls import ToolCall
from hermesflow.operators.hook import HermesHook
from hermesflow.operators.triggers import HermesAppTrigger, HermesStepTrigger

TRIGGERS = [
    HermesStepTrigger("dag:run", "task[3]", hermes_conn_id="hermes_other", poll_s=5.0),
    HermesAppTrigger("dag:run:program", poll_s=12.5, max_outage_s=60.0),
]


def _rebuilt(trigger: BaseTrigger) -> BaseTrigger:
    """The trigger as a triggerer re-creates it: its class path imported, its kwargs through
    Airflow's serde (what is stored in the database)."""
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**deserialize(serialize(kwargs)))


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
def test_triggers_round_trip_through_serialize(trigger: BaseTrigger) -> None:
    classpath, kwargs = trigger.serialize()
    assert _rebuilt(trigger).serialize() == (classpath, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain JSON: no secrets, no objects


async def _first_event_async(trigger: BaseTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def _first_event(trigger: BaseTrigger) -> dict[str, Any]:
    return asyncio.run(_first_event_async(trigger))


def _submit_sleep(app_id: str, step_id: str, seconds: float) -> None:
    call = ToolCall(tool="sleep", args={"seconds": seconds})
    submission = StepSubmission(app_class="trigger_tests", stage="nap", backend="tools", call=call)
    view = HermesHook().run(client.put_step(app_id, step_id, submission))
    assert view.state in ("queued", "running"), view


def _app_id() -> str:
    return f"trigger-tests:{uuid.uuid4().hex[:12]}"


def test_step_trigger_fires_when_the_step_is_done(hermes: Hermes) -> None:
    app_id = _app_id()
    _submit_sleep(app_id, "nap", 0.5)
    event = _first_event(HermesStepTrigger(app_id, "nap", poll_s=10.0))
    assert event["status"] == "done"
    assert event["step"]["result"]["value"] == 0.5 and event["step"]["attempt"] == 1


def test_a_trigger_rebuilt_after_a_triggerer_restart_finds_the_same_step(hermes: Hermes) -> None:
    app_id = _app_id()
    _submit_sleep(app_id, "nap", 3.0)
    trigger = HermesStepTrigger(app_id, "nap", poll_s=10.0)

    async def die_while_waiting() -> None:
        waiting = asyncio.ensure_future(_first_event_async(trigger))
        await asyncio.sleep(1.0)
        waiting.cancel()  # the triggerer process is gone; its long poll with it
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(die_while_waiting())
    event = _first_event(_rebuilt(trigger))
    assert event["status"] == "done" and event["step"]["attempt"] == 1
    assert hermes.calls(app_id) == [("nap", "tools")]


def test_app_trigger_fires_when_the_program_run_ends(hermes: Hermes) -> None:
    app_id = _app_id()
    submission = AppSubmission(
        app_class="sleep_chain", inputs={"steps": 2, "seconds": 0.2}, app_id=app_id
    )
    HermesHook().run(client.submit_app(submission))
    event = _first_event(HermesAppTrigger(app_id, poll_s=10.0))
    assert event["status"] == "finished"
    assert event["app"]["result"] == {"steps": 2, "calls": 1}


def test_a_step_the_server_does_not_know_fires_an_error_at_once(hermes: Hermes) -> None:
    app_id = _app_id()
    _submit_sleep(app_id, "nap", 0.0)
    event = _first_event(HermesStepTrigger(app_id, "no-such-step", poll_s=10.0))
    assert event["status"] == "error"
    assert "404" in event["message"] and "no-such-step" in event["message"]


def test_an_unreachable_server_is_retried_until_the_outage_budget_is_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_HERMES_DOWN", free_conn_uri())
    started = time.monotonic()
    event = _first_event(
        HermesStepTrigger("app", "step", hermes_conn_id="hermes_down", max_outage_s=2.5)
    )
    assert time.monotonic() - started >= 2.5  # backoff 1 s, 2 s: retried, not given up at once
    assert event["status"] == "error" and "no answer" in event["message"]
