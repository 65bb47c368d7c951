"""`hermesflow.client` against real servers: a Hermesflow gateway (a scheduler with the tool pool,
the test program `sleep_chain`, and a pinned backend that never warms, so `/readyz` stays 503),
a plain HTTP server that is not Hermesflow (a proxy's error page, a stranger on the port), and
a port where nothing listens. Every refusal must say what to change, in the caller's words."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from support.serving import UNREADY_TOKEN

from deploy.processes import free_port
from hermesflow import client
from hermesflow.api.models.control import AppSubmission, StepSubmission
from hermesflow.api.models.lifecycle import ReadinessStatus
from hermesflow.backends.calls import ToolCall
from hermesflow.client import ApiClient, ApiEndpoint, HermesApiError, InvalidAddress

TOKEN = UNREADY_TOKEN


@pytest.fixture
def url(unready_gateway: str) -> str:
    """The URL of the session's never-ready gateway (module docstring; root conftest)."""
    return unready_gateway


@pytest.fixture
def api(url: str) -> ApiClient:
    return ApiClient(ApiEndpoint(url, TOKEN))


def _calculation(expression: str) -> StepSubmission:
    call = ToolCall(tool="calculator", args={"expression": expression})
    return StepSubmission(app_class="client_tests", stage="calculate", backend="tools", call=call)


# -- a Hermesflow gateway ---------------------------------------------------------------------------


def test_the_blocking_and_the_async_sender_read_the_same_step(api: ApiClient) -> None:
    app_id, step_id = f"client-tests:{uuid.uuid4().hex[:8]}+1", "calc[0]"  # ':', '+', '[' quoted
    queued = api.send(client.put_step(app_id, step_id, _calculation("6 * 7")))
    assert (queued.app_id, queued.step_id, queued.attempt) == (app_id, step_id, 1)
    done = asyncio.run(api.asend(client.get_step(app_id, step_id, wait_s=60)))
    assert done.state == "done" and done.result is not None and done.result.value == 42.0
    again = api.send(client.put_step(app_id, step_id, _calculation("6 * 7")))
    assert again.state == "done" and again.attempt == 1  # the same step, not a second one


def test_a_long_poll_may_outlast_the_read_timeout(api: ApiClient, url: str) -> None:
    """The read timeout of a long poll grows by the wait it asks for: a client with a 1 s
    timeout waits for a 3 s run in one request."""
    submission = AppSubmission(app_class="sleep_chain", inputs={"steps": 1, "seconds": 3.0})
    submitted = api.send(client.submit_app(submission))
    short = ApiClient(ApiEndpoint(url, TOKEN), timeout_s=1.0)
    started = time.monotonic()
    view = short.send(client.get_app(submitted.app_id, wait_s=client.MAX_POLL_S))
    assert time.monotonic() - started > short.timeout_s
    assert view.phase == "finished" and view.result == {"steps": 1, "calls": 1}


def test_a_refused_token_says_where_to_set_it(url: str) -> None:
    wrong = ApiClient(ApiEndpoint(url, "not-it", token_setting="--token"))
    with pytest.raises(HermesApiError) as raised:
        wrong.send(client.stats())
    error = raised.value
    assert error.status == HTTPStatus.UNAUTHORIZED and not error.transient
    assert str(error).startswith("Hermesflow API GET /v1/stats: HTTP 401: ")
    assert error.explanation.endswith(
        "; set --token to the token the server was started with (`hermesflow serve --token`)"
    )
    assert "not-it" not in str(error)


@pytest.mark.parametrize(
    "route",
    [client.class_graph("no_such_class"), client.get_app("client-tests:no_such_class")],
    ids=str,
)
def test_a_missing_thing_is_a_404_with_the_servers_detail(
    api: ApiClient, route: client.Route[object]
) -> None:
    with pytest.raises(HermesApiError) as raised:
        api.send(route)
    assert raised.value.status == HTTPStatus.NOT_FOUND and not raised.value.transient
    assert "no_such_class" in raised.value.detail


def test_readiness_reads_the_503_that_says_why(api: ApiClient) -> None:
    readiness = api.send(client.readiness())
    assert not readiness.ready and readiness.status is ReadinessStatus.WARMING
    assert [b.name for b in readiness.pending] == ["broken"]
    backends = {b.name: b.pinned for b in api.send(client.backends()).root}
    assert backends == {"tools": False, "broken": True}


# -- no server, and a server that is not Hermesflow --------------------------------------------------


def test_no_server_is_a_transient_error_naming_the_address() -> None:
    nowhere = ApiClient(ApiEndpoint(f"http://127.0.0.1:{free_port()}", TOKEN))
    for send in (nowhere.send, lambda route: asyncio.run(nowhere.asend(route))):
        with pytest.raises(HermesApiError) as raised:
            send(client.health())
        assert raised.value.status == client.NO_ANSWER and raised.value.transient
        assert f"check that `hermesflow serve` runs at {nowhere.endpoint.base_url}" in str(
            raised.value
        )


class _NotHermesflow(BaseHTTPRequestHandler):
    """A web server that happens to be on the port: HTML for the stats, and a proxy's 503 page
    for the backends and the readiness probe."""

    ANSWERS: ClassVar[dict[str, tuple[HTTPStatus, str]]] = {
        "/v1/stats": (HTTPStatus.OK, "<html>a blog</html>"),
        "/v1/backends": (HTTPStatus.SERVICE_UNAVAILABLE, "<html>upstream busy</html>"),
        "/readyz": (HTTPStatus.SERVICE_UNAVAILABLE, "<html>upstream busy</html>"),
    }

    def do_GET(self) -> None:
        status, body = self.ANSWERS.get(self.path, (HTTPStatus.NOT_FOUND, ""))
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads the answers, not the access log."""


@pytest.fixture(scope="module")
def stranger() -> Iterator[ApiClient]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotHermesflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ApiClient(ApiEndpoint(f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_answer_that_is_not_the_model_is_unreadable(stranger: ApiClient) -> None:
    with pytest.raises(HermesApiError) as raised:
        stranger.send(client.stats())
    assert raised.value.status == HTTPStatus.OK and not raised.value.transient
    assert "unreadable answer" in str(raised.value) and "same version" in str(raised.value)


def test_a_proxys_error_page_is_transient_and_quoted(stranger: ApiClient) -> None:
    with pytest.raises(HermesApiError) as raised:
        asyncio.run(stranger.asend(client.backends()))
    assert raised.value.transient and raised.value.detail == "<html>upstream busy</html>"


def test_a_readable_error_status_still_needs_the_model(stranger: ApiClient) -> None:
    """The readiness route reads a 503's body (the gateway says why it is not ready); a 503
    page of some proxy is no such body: an error, not a crash and not a readiness."""
    with pytest.raises(HermesApiError) as raised:
        stranger.send(client.readiness())
    assert raised.value.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert raised.value.detail.startswith("unreadable answer")


# -- values -----------------------------------------------------------------------------------------


def test_the_client_imports_no_airflow_ray_or_server() -> None:
    """It sits below the Airflow layer: the CLI and plain programs use it without either, and
    the provider uses it without a Ray driver. Checked in a fresh interpreter."""
    probe = (
        "import json, sys, hermesflow.client; print(json.dumps(sorted({m for m in sys.modules "
        "if m.split('.')[0] in ('airflow', 'ray', 'fastapi', 'uvicorn') "
        "or m.startswith(('hermesflow.operators', 'hermesflow.plugins'))})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1:8000", "it does not start with http:// or https://"),
        ("http://[::1", "Invalid port"),
    ],
)
def test_an_address_that_is_not_a_url_is_refused_before_sending(address: str, reason: str) -> None:
    with pytest.raises(InvalidAddress) as raised:
        ApiEndpoint(address)
    assert raised.value.reason.startswith(reason)
    assert "the address `hermesflow serve` prints" in str(raised.value)


def test_clients_and_errors_pickle_without_showing_the_token() -> None:
    """Run handles and their errors travel into and out of Ray tasks; clients end up in logs."""
    api = ApiClient(ApiEndpoint("http://127.0.0.1:8000", TOKEN))
    assert TOKEN not in repr(api)
    assert pickle.loads(pickle.dumps(api)) == api
    error = HermesApiError(client.stats(), 503, "draining", api.endpoint)
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.status, again.transient) == (str(error), 503, True)
