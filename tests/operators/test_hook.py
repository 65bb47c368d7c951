"""`HermesHook` against the real Hermesflow API, and the messages of a bad connection: each names
the connection and says how to fix it."""

from __future__ import annotations

import asyncio
import uuid

import pytest

pytest.importorskip("airflow")
pytest.importorskip("ray")

from airflow.sdk import Connection
from provider_support import Hermes, free_conn_uri

from hermesflow import client
from hermesflow.api.models.control import StepSubmission
from hermesflow.backends.calls import ToolCall
from hermesflow.client import HermesApiError
from hermesflow.operators.hook import HermesConnectionError, HermesHook, connection_endpoint
from hermesflow.operators.provider import get_provider_info


def _calculation(expression: str) -> StepSubmission:
    call = ToolCall(tool="calculator", args={"expression": expression})
    return StepSubmission(app_class="hook_tests", stage="calculate", backend="tools", call=call)


def test_the_default_connection_reaches_the_api(hermes: Hermes) -> None:
    hook = HermesHook()
    assert hook.endpoint().base_url == hermes.url
    ok, message = hook.test_connection()
    assert ok, message
    assert "policy gittins" in message


def test_a_step_put_twice_is_one_step(hermes: Hermes) -> None:
    hook, app_id = HermesHook(), f"hook-tests:{uuid.uuid4().hex[:12]}"
    first = hook.run(client.put_step(app_id, "calc", _calculation("2 + 3")))
    second = hook.run(client.put_step(app_id, "calc", _calculation("2 + 3")))
    assert (first.app_id, first.step_id, first.attempt) == (second.app_id, second.step_id, 1)
    done = hook.run(client.get_step(app_id, "calc", wait_s=30))
    assert done.state == "done" and done.result is not None and done.result.value == 5.0
    assert hermes.calls(app_id) == [("calculate", "tools")]


def test_the_async_client_reads_the_same_step(hermes: Hermes) -> None:
    hook, app_id = HermesHook(), f"hook-tests:{uuid.uuid4().hex[:12]}"
    hook.run(client.put_step(app_id, "calc", _calculation("6 * 7")))
    view = asyncio.run(HermesHook().arun(client.get_step(app_id, "calc", wait_s=30)))
    assert view.state == "done" and view.result is not None and view.result.value == 42.0


def test_a_wrong_token_says_which_password_to_set(
    hermes: Hermes, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_port = hermes.url.removeprefix("http://")
    monkeypatch.setenv("AIRFLOW_CONN_HERMES_WRONG_TOKEN", f"hermesflow://:not-it@{host_port}")
    ok, message = HermesHook("hermes_wrong_token").test_connection()
    assert not ok
    assert "401" in message and "password" in message and "--token" in message


def test_an_unreachable_server_is_a_transient_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_HERMES_DOWN", free_conn_uri())
    with pytest.raises(HermesApiError) as raised:
        HermesHook("hermes_down").run(client.health())
    assert raised.value.transient and raised.value.status == client.NO_ANSWER
    assert "`hermesflow serve` runs at the connection's host" in str(raised.value)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "http://127.0.0.1:8000",
            "has type 'http'; Hermesflow needs a connection of type 'hermesflow'",
        ),
        ("hermesflow://:token@", "has no host"),
        ("hermesflow://127.0.0.1:8000/ftp", "has schema 'ftp'"),
        (
            "hermesflow://%5B%3A%3A1:8000",
            "holds an invalid address 'http://[::1:8000' (Invalid port: ':1:8000')",
        ),
    ],
)
def test_a_bad_connection_names_itself_and_the_fix(uri: str, message: str) -> None:
    with pytest.raises(HermesConnectionError) as raised:
        connection_endpoint(Connection(conn_id="hermes_bad", uri=uri))
    assert message in str(raised.value)
    assert "'hermes_bad'" in str(raised.value)


def test_an_undefined_connection_says_how_to_define_it() -> None:
    with pytest.raises(HermesConnectionError) as raised:
        HermesHook("hermes_nowhere").endpoint()
    text = str(raised.value)
    assert "'hermes_nowhere' is not defined" in text
    assert "AIRFLOW_CONN_HERMES_NOWHERE=" in text and "Admin" in text


@pytest.mark.parametrize(
    ("uri", "url", "token"),
    [
        ("hermesflow://:s3cret@10.0.0.5:8123", "http://10.0.0.5:8123", "s3cret"),
        ("hermesflow://api.example.org/https", "https://api.example.org", None),
    ],
)
def test_connection_fields_make_the_endpoint(uri: str, url: str, token: str | None) -> None:
    endpoint = connection_endpoint(Connection(conn_id="c", uri=uri))
    assert (endpoint.base_url, endpoint.token) == (url, token)


def test_the_provider_registers_the_connection_type_and_decorators() -> None:
    info = get_provider_info()
    assert {"package-name", "name", "description"} <= set(info)
    (connection,) = info["connection-types"]
    assert connection["connection-type"] == HermesHook.conn_type
    assert connection["hook-class-name"] == "hermesflow.operators.hook.HermesHook"
    assert {d["name"] for d in info["task-decorators"]} == {"hermes_llm", "hermes_tool"}
