"""Readiness and drain of the gateway, on the session's Ray cluster: light schedulers (the tool
pool and the test program `sleep_chain`; the session's `unready_gateway`, whose pinned backend can
never warm), real gateway actors, real HTTP."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray")

from support.serving import UNREADY_TOKEN, Serving, serving

from hermesflow.api.deployment import start_gateway, stop_gateway
from hermesflow.api.models.lifecycle import DrainReport
from hermesflow.backends.base import BackendSpec
from hermesflow.schedulers.runtime_config import RuntimeConfig

TOKEN = f"lifecycle-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOOLS = BackendSpec(name="tools", type="python-tools", expected_warmup_s=2.0)
PROGRAMS = {"sleep_chain": "runtime_programs:SleepChain"}


def _config(tmp_path: Path, *backends: BackendSpec, warm: tuple[str, ...]) -> RuntimeConfig:
    return RuntimeConfig(
        db_url=f"sqlite:///{tmp_path / 'hermes.db'}",
        backends=list(backends),
        programs=PROGRAMS,
        warm_at_start=warm,
    )


@pytest.fixture(scope="module")
def served(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """A scheduler with the tool pool pinned warm, behind a gateway with a token."""
    config = _config(tmp_path_factory.mktemp("lifecycle"), TOOLS, warm=("tools",))
    with serving(config, TOKEN, "life") as served:
        yield served


def _readiness(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=30)  # no token: probes carry none


# -- readiness -------------------------------------------------------------------------------------


def test_readyz_is_503_naming_a_pinned_backend_that_is_not_warm(unready_gateway: str) -> None:
    """The session's gateway whose pinned backend `broken` never warms (root conftest)."""
    for _ in range(3):  # while it warms, fails, and warms again
        answer = _readiness(unready_gateway)
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["status"] == "warming"
        assert [b["name"] for b in body["pending"]] == ["broken"]
        assert "broken" in body["message"]
        time.sleep(1.0)
    assert httpx.get(f"{unready_gateway}/healthz", timeout=30).status_code == 200
    unready_auth = {"Authorization": f"Bearer {UNREADY_TOKEN}"}
    backends = httpx.get(f"{unready_gateway}/v1/backends", headers=unready_auth, timeout=30).json()
    assert {b["name"]: b["pinned"] for b in backends} == {"tools": False, "broken": True}


def test_readyz_is_200_once_the_pinned_backends_are_warm(served: Serving) -> None:
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        answer = _readiness(served.url)
        seen.append(answer.json())
        if answer.status_code == 200:
            break
        assert answer.status_code == 503 and answer.json()["pending"][0]["name"] == "tools"
        time.sleep(0.2)
    assert seen[-1] == {
        "status": "ready",
        "pending": [],
        "message": "ready: the pinned backends are warm",
    }, seen
    backends = httpx.get(f"{served.url}/v1/backends", headers=AUTH, timeout=30).json()
    assert [(b["name"], b["phase"], b["pinned"]) for b in backends] == [("tools", "warm", True)]


# -- drain -----------------------------------------------------------------------------------------


class Request(threading.Thread):
    """One HTTP request in a thread: its status, and for an event stream the `data:` lines
    as they arrive (`first_line` is set once one has)."""

    def __init__(self, url: str, *, stream: bool = False) -> None:
        super().__init__(daemon=True)
        self.url, self.stream = url, stream
        self.status: int | None = None
        self.body: Any = None
        self.lines: list[str] = []
        self.first_line = threading.Event()
        self.start()

    def run(self) -> None:
        with httpx.Client(headers=AUTH, timeout=120) as client:
            if not self.stream:
                response = client.get(self.url)
                self.status, self.body = response.status_code, response.json()
                return
            with client.stream("GET", self.url) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line.removeprefix("data: "))
                        self.first_line.set()


def test_a_stopping_gateway_drains_then_ends_what_is_still_open(served: Serving) -> None:
    """Within the grace period a short request finishes; new requests get 503 and `/readyz`
    says draining; at the deadline an event stream ends with an error event and a long poll
    with a 503 — nothing is cut off without a word."""
    name = f"life-drain-{uuid.uuid4().hex[:6]}"
    url = start_gateway(port=0, token=TOKEN, scheduler_name=served.scheduler_name, name=name)
    submitted = httpx.post(
        f"{url}/v1/apps",
        json={"app_class": "sleep_chain", "inputs": {"steps": 1, "seconds": 30}},
        headers=AUTH,
        timeout=30,
    )
    assert submitted.status_code == 201, submitted.text
    app = f"{url}/v1/apps/{submitted.json()['app_id']}"
    events = Request(f"{app}/events?follow=true", stream=True)
    long_poll = Request(f"{app}?wait=60")
    short_poll = Request(f"{app}?wait=2")
    assert events.first_line.wait(60), "the event stream never started"
    time.sleep(0.5)  # the long polls reach the server

    grace_s = 6.0
    outcome: list[DrainReport | None] = []
    started = time.monotonic()
    stopping = threading.Thread(target=lambda: outcome.append(stop_gateway(name, grace_s=grace_s)))
    stopping.start()
    refused = _first_refusal(f"{url}/v1/backends")
    assert refused.status_code == 503
    assert refused.json()["detail"].startswith("this server is shutting down")
    draining = _readiness(url)
    assert draining.status_code == 503 and draining.json()["status"] == "draining"
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200

    stopping.join(timeout=grace_s + 60)
    took = time.monotonic() - started
    for request in (events, long_poll, short_poll):
        request.join(timeout=30)
    assert grace_s <= took < grace_s + 30
    assert short_poll.status == 200 and short_poll.body["phase"] == "running"
    assert long_poll.status == 503, long_poll.body
    assert "shut down before the response was complete" in long_poll.body["detail"]
    assert events.status == 200
    assert json.loads(events.lines[-1])["error"].startswith("this server shut down")
    assert all("error" not in json.loads(line) for line in events.lines[:-1])
    report = outcome[0]
    assert report is not None and report.error is None
    assert report.open_at_start >= 3 and report.ended_at_deadline == 2
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)


def _first_refusal(url: str, timeout_s: float = 30.0) -> httpx.Response:
    """The first answer of a draining gateway to a new request (it answers 200 until the drain
    has begun)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = httpx.get(url, headers=AUTH, timeout=30)
        if answer.status_code != 200:
            return answer
        time.sleep(0.05)
    pytest.fail(f"{url} was not refused within {timeout_s:.0f} s of the drain")


def test_a_gateway_without_open_requests_stops_at_once(served: Serving) -> None:
    name = f"life-idle-{uuid.uuid4().hex[:6]}"
    start_gateway(port=0, token=TOKEN, scheduler_name=served.scheduler_name, name=name)
    started = time.monotonic()
    report = stop_gateway(name, grace_s=60.0)
    assert time.monotonic() - started < 30
    assert report is not None and report.ended_at_deadline == 0
    assert stop_gateway(name) is None
