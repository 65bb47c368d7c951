"""`hermesflow serve`, `stop` and `submit`: the serve command as a real subprocess joining the
session's Ray cluster (and once starting its own), `submit` as an HTTP client of a gateway."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from hermesflow.cli import app

HERMESFLOW = str(Path(sys.executable).parent / "hermesflow")
TOKEN = f"cli-token-{uuid.uuid4().hex}"
STARTUP_S = 120.0


def test_cli_and_api_models_import_without_ray_or_web_framework() -> None:
    """The CLI and the API models are used by clients (Airflow's hook, scripts) that have no
    Ray driver: importing them must not pull in Ray, FastAPI or uvicorn."""
    probe = (
        "import json, sys, hermesflow.cli, hermesflow.ray_cluster; "
        "import hermesflow.api.models.control, hermesflow.api.models.monitor; "
        "import hermesflow.api.models.openai, hermesflow.api.models.lifecycle; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'fastapi', 'uvicorn', 'starlette'})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_serve_refuses_detach_without_a_cluster_and_unknown_names() -> None:
    runner = CliRunner()
    detached = runner.invoke(app, ["serve", "--detach"])
    assert detached.exit_code == 2 and "--address" in detached.output
    policy = runner.invoke(app, ["serve", "--policy", "nope"])
    assert policy.exit_code == 2 and "gittins" in policy.output
    warm = runner.invoke(app, ["serve", "--warm", "llm,gpu"])
    assert warm.exit_code == 2 and "gpu" in warm.output


def test_serve_checks_each_program_before_starting_ray() -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--program", "no_such_module:program"])
    assert missing.exit_code == 2 and "PYTHONPATH" in missing.output
    not_program = runner.invoke(app, ["serve", "--program", "hermesflow.apps.suite:suite_backends"])
    assert not_program.exit_code == 2 and "no `app_class`" in not_program.output
    from hermesflow.cli import _program_classes

    path = "hermesflow.apps.react:ReActToolLoop"
    assert _program_classes([path]) == {"react": path}


# -- submit: an HTTP client of a running gateway --------------------------------------------------

CLI_SCHEDULER = f"cli-scheduler-{uuid.uuid4().hex[:8]}"
CLI_GATEWAY = f"cli-gateway-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def gateway_url(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A light scheduler (the tool pool and the test program `sleep_chain`) behind a gateway."""
    import ray

    from hermesflow.api.deployment import start_gateway, stop_gateway
    from hermesflow.backends.base import BackendSpec
    from hermesflow.schedulers.runtime import start_scheduler
    from hermesflow.schedulers.runtime_config import RuntimeConfig

    config = RuntimeConfig(
        db_url=f"sqlite:///{tmp_path_factory.mktemp('cli') / 'hermes.db'}",
        backends=[BackendSpec(name="tools", type="python-tools", expected_warmup_s=2.0)],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=("tools",),
    )
    scheduler = start_scheduler(config, name=CLI_SCHEDULER)
    try:
        yield start_gateway(port=0, token=TOKEN, scheduler_name=CLI_SCHEDULER, name=CLI_GATEWAY)
    finally:
        stop_gateway(CLI_GATEWAY)
        ray.get(scheduler.shutdown.remote())
        ray.kill(scheduler, no_restart=True)


def test_submit_waits_and_prints_the_final_state(gateway_url: str) -> None:
    arguments = ["submit", "sleep_chain", "--inputs", '{"steps": 2, "seconds": 0.05}', "--wait"]
    result = CliRunner().invoke(
        app, [*arguments, "--url", gateway_url, "--token", TOKEN, "--app-id", "cli-run-1"]
    )
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["app_id"] == "cli-run-1" and view["phase"] == "finished"
    assert view["result"]["steps"] == 2


def test_submit_reads_url_and_token_from_the_environment(gateway_url: str) -> None:
    env = {"HERMES_API_URL": gateway_url, "HERMES_API_TOKEN": TOKEN}
    result = CliRunner().invoke(
        app, ["submit", "sleep_chain", "--inputs", '{"steps": 1, "seconds": 0}'], env=env
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["phase"] in ("admitted", "running", "finished")


@pytest.mark.parametrize(
    ("arguments", "exit_code", "message"),
    [
        (
            ["sleep_chain", "--inputs", '{"steps": 0, "seconds": 0}'],
            1,
            "invalid inputs for class 'sleep_chain'",
        ),
        (["no_such_class"], 1, "unknown application class"),
        (["sleep_chain", "--inputs", "{not json"], 2, "not JSON"),
        (["sleep_chain", "--inputs", "[1, 2]"], 2, "JSON object"),
    ],
)
def test_submit_reports_refusals(
    gateway_url: str, arguments: list[str], exit_code: int, message: str
) -> None:
    result = CliRunner().invoke(app, ["submit", *arguments, "--url", gateway_url, "--token", TOKEN])
    assert result.exit_code == exit_code
    assert message in " ".join(result.output.split())


def test_submit_without_the_token_is_refused(gateway_url: str) -> None:
    result = CliRunner().invoke(
        app, ["submit", "sleep_chain", "--url", gateway_url], env={"HERMES_API_TOKEN": ""}
    )
    assert result.exit_code == 1 and "401" in result.output


def test_submit_to_nothing_says_so() -> None:
    result = CliRunner().invoke(app, ["submit", "sleep_chain", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "hermesflow serve" in result.output


# -- serve as a subprocess -------------------------------------------------------------------------


class ServeProcess:
    """`hermesflow serve` in a subprocess. Its stdout and stderr go to files, not pipes: a pipe
    that nobody reads while the process runs fills up (Ray's warnings on a loaded machine are
    enough) and blocks the process at its next write, which looked like a serve that did not
    exit after Ctrl-C."""

    def __init__(self, folder: Path, *arguments: str, env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "serve.stdout", folder / "serve.stderr"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [HERMESFLOW, "serve", "--port", "0", *arguments],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(
        self, pattern: str, *, stream: str = "stdout", timeout_s: float = STARTUP_S
    ) -> re.Match:
        """The first match of `pattern` in stdout (or stderr); fails with stderr if the process
        exits or the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stdout if stream == "stdout" else self.stderr)
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(
            f"`hermesflow serve` printed no {pattern!r} on {stream} (exit {self.process.poll()}):\n"
            f"{self.stderr}"
        )

    def url(self, timeout_s: float = STARTUP_S) -> str:
        """The first stdout line: the URL, printed once the API is ready."""
        return self.wait_for(r"^(\S+)\n", timeout_s=timeout_s).group(1)

    def wait(self, timeout_s: float) -> int:
        """The exit code; if the process hangs, fail with where its threads are and its stderr."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            py_spy = Path(sys.executable).parent / "py-spy"
            stacks = (
                subprocess.run(
                    [str(py_spy), "dump", "--pid", str(self.process.pid)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout
                if py_spy.exists()
                else "(py-spy is not installed)"
            )
            self.process.kill()
            pytest.fail(
                f"`hermesflow serve` still ran {timeout_s:.0f} s on.\n"
                f"stacks:\n{stacks}\nstderr:\n{self.stderr}"
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _actor_exists(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace="hermesflow")
    except ValueError:
        return False
    return True


def _names() -> list[str]:
    return [
        "--scheduler-name",
        f"serve-s-{uuid.uuid4().hex[:6]}",
        "--gateway-name",
        f"serve-g-{uuid.uuid4().hex[:6]}",
    ]


@pytest.fixture(scope="module")
def cluster_address(ray_cluster: None) -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_serve_detached_on_a_cluster_then_stop(cluster_address: str, tmp_path: Path) -> None:
    """`--detach` returns once its pinned backend (here the light tool pool) is warm."""
    names = _names()
    serve = ServeProcess(
        tmp_path,
        "--warm",
        "tools",
        "--address",
        cluster_address,
        "--detach",
        "--db-url",
        f"sqlite:///{tmp_path / 'h.db'}",
        *names,
    )
    url = serve.url()
    assert serve.wait(timeout_s=60) == 0
    assert url.startswith("http://127.0.0.1:")
    backends = httpx.get(f"{url}/v1/backends", timeout=30).json()  # no token: the API is open
    assert {b["name"]: b["phase"] for b in backends} == {
        "llm": "cold", "search": "cold", "code": "cold", "tools": "warm"
    }
    assert {"fact_check", "react", "code_gen", "map_reduce"} <= set(
        httpx.get(f"{url}/v1/stats").json()["classes"]
    )
    assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["llm"]
    stopped = subprocess.run(
        [HERMESFLOW, "stop", "--address", cluster_address, *names],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert not _actor_exists(names[1]) and not _actor_exists(names[3])
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)


def test_a_serve_that_cannot_start_says_why_in_one_line_and_leaves_others_alone(
    gateway_url: str, cluster_address: str, tmp_path: Path
) -> None:
    """The names of a running scheduler and gateway, but another token: the gateway refuses to
    change its settings; `serve` says so in one line, and stops nothing it did not start."""
    names = ["--scheduler-name", CLI_SCHEDULER, "--gateway-name", CLI_GATEWAY]
    serve = ServeProcess(
        tmp_path, "--warm", "", "--address", cluster_address, "--token", "other", *names
    )
    assert serve.wait(timeout_s=STARTUP_S) == 1
    (reason,) = [line for line in serve.stderr.splitlines() if "could not start" in line]
    assert "already runs at" in reason and "token_sha256" in reason
    assert "Traceback" not in serve.stderr
    assert "left running as found" in serve.stderr
    still = httpx.get(f"{gateway_url}/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert still.status_code == 200


def test_a_detached_serve_that_is_not_ready_in_time_says_so(
    cluster_address: str, tmp_path: Path
) -> None:
    names = _names()
    serve = ServeProcess(
        tmp_path,
        "--warm",
        "llm",
        "--ready-timeout",
        "0.5",
        "--address",
        cluster_address,
        "--detach",
        "--db-url",
        f"sqlite:///{tmp_path / 'h.db'}",
        *names,
    )
    try:
        assert serve.wait(timeout_s=STARTUP_S) == 1
        assert serve.stdout == ""  # no URL: it never was ready
        message = serve.stderr
        assert "not ready after 0.5 s" in message and "llm" in message
        assert "it keeps warming, detached; stop it with `hermesflow stop" in message
        assert "Traceback" not in message
    finally:
        subprocess.run(
            [HERMESFLOW, "stop", "--address", cluster_address, "--grace-period", "0", *names],
            check=False,
            capture_output=True,
            timeout=120,
        )
    assert not _actor_exists(names[1]) and not _actor_exists(names[3])


def test_a_foreground_serve_exits_when_stopped_from_another_shell(
    cluster_address: str, tmp_path: Path
) -> None:
    names = _names()
    database = f"sqlite:///{tmp_path / 'h.db'}"
    serve = ServeProcess(
        tmp_path, "--warm", "", "--address", cluster_address, "--db-url", database, *names
    )
    try:
        url = serve.url()
        stopped = subprocess.run(
            [HERMESFLOW, "stop", "--address", cluster_address, *names],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert stopped.returncode == 0, stopped.stderr
        assert serve.wait(timeout_s=60) == 0, serve.stderr
    finally:
        serve.kill()
    assert "stopped from elsewhere" in serve.stderr
    assert not _actor_exists(names[1]) and not _actor_exists(names[3])
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)


# -- readiness and drain: one serve with the CPU LLM pinned warm ---------------------------------

GRACE_S = 20.0
"""The drain test's grace period: a 12-token answer finishes within it on a loaded machine, a
1,500-token one does not (at most about 100 tokens/s on 2 cores)."""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class WarmingServe:
    """A foreground serve with `--warm llm`, and what the test saw while it warmed."""

    serve: ServeProcess
    url: str
    names: list[str]
    early_url: str
    printed_at: float
    """When its URL appeared on stdout (Unix time)."""
    readiness_before: list[tuple[float, int, dict[str, Any]]]
    """`/readyz` answers (time, status, body) seen before the URL appeared on stdout."""
    backends_then: list[dict[str, Any]]
    readiness_then: httpx.Response


@pytest.fixture(scope="module")
def warming_serve(
    cluster_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WarmingServe]:
    folder = tmp_path_factory.mktemp("warming-serve")
    names = _names()
    serve = ServeProcess(
        folder,
        "--warm",
        "llm",
        "--address",
        cluster_address,
        "--token",
        TOKEN,
        "--grace-period",
        str(GRACE_S),
        "--db-url",
        f"sqlite:///{folder / 'h.db'}",
        *names,
    )
    try:
        early_url = serve.wait_for(r"the API listens at (\S+);", stream="stderr").group(1)
        readiness_before = []
        deadline = time.monotonic() + STARTUP_S
        while not serve.stdout and serve.process.poll() is None and time.monotonic() < deadline:
            answer = httpx.get(f"{early_url}/readyz", timeout=30)
            readiness_before.append((time.time(), answer.status_code, answer.json()))
            time.sleep(0.2)
        url = serve.url(timeout_s=1)
        printed_at = time.time()
        backends = httpx.get(f"{url}/v1/backends", headers=AUTH, timeout=30).json()
        readiness = httpx.get(f"{url}/readyz", timeout=30)
        yield WarmingServe(
            serve, url, names, early_url, printed_at, readiness_before, backends, readiness
        )
    finally:
        serve.kill()


def test_serve_prints_its_url_only_once_the_pinned_llm_is_warm(warming_serve: WarmingServe) -> None:
    seen = warming_serve
    assert seen.url == seen.early_url
    llm = next(b for b in seen.backends_then if b["name"] == "llm")
    assert llm["pinned"] and llm["phase"] == "warm"
    assert llm["warm_since"] <= seen.printed_at
    assert seen.readiness_then.status_code == 200
    assert seen.readiness_then.json()["status"] == "ready"
    for at, status, body in seen.readiness_before:
        if at < llm["warm_since"]:  # answers before the LLM was warm said so
            assert status == 503, body
            assert [b["name"] for b in body["pending"]] == ["llm"]
    assert f"ready: {seen.url}" in seen.serve.stderr
    assert httpx.get(f"{seen.url}/v1/stats", headers=AUTH).status_code == 200
    assert httpx.get(f"{seen.url}/v1/stats").status_code == 401
    assert httpx.get(f"{seen.url}/readyz").status_code == 200  # probes need no token


class Chat(threading.Thread):
    """One streamed chat completion in a thread: its `data:` documents as they arrive."""

    def __init__(self, url: str, content: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.request = {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "stream": True,
        }
        self.url = url
        self.documents: list[Any] = []
        self.error: BaseException | None = None
        self.answering = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{self.url}/v1/chat/completions",
                json=self.request,
                headers=AUTH,
                timeout=300,
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        text = line.removeprefix("data: ")
                        self.documents.append(text if text == "[DONE]" else json.loads(text))
                        if any(_content(d) for d in self.documents):
                            self.answering.set()
        except httpx.HTTPError as error:  # a stream cut off: what the drain must prevent
            self.error = error


def _content(document: Any) -> str:
    if not isinstance(document, dict) or not document.get("choices"):
        return ""
    return document["choices"][0]["delta"].get("content") or ""


@pytest.mark.slow
def test_ctrl_c_drains_streams_in_flight_then_stops_everything(warming_serve: WarmingServe) -> None:
    """At SIGINT a short stream finishes normally within the grace period, a long one ends with
    an error chunk and `[DONE]` at its end, and new requests get 503 meanwhile."""
    seen = warming_serve
    short = Chat(seen.url, "Say hello.", max_tokens=12)
    long = Chat(seen.url, "Write the numbers from 1 to 1000 separated by commas.", max_tokens=1500)
    assert short.answering.wait(STARTUP_S) and long.answering.wait(STARTUP_S)
    seen.serve.process.send_signal(signal.SIGINT)
    refused = _first_refusal(seen.url)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_shutting_down"
    assert httpx.get(f"{seen.url}/readyz", timeout=30).json()["status"] == "draining"
    assert seen.serve.wait(timeout_s=GRACE_S + 90) == 0, seen.serve.stderr
    short.join(timeout=30)
    long.join(timeout=30)
    assert short.error is None and long.error is None
    assert short.documents[-1] == "[DONE]"
    assert "choices" in short.documents[-2], (short.documents[-2], seen.serve.stderr)
    assert short.documents[-2]["choices"][0]["finish_reason"] == "length"
    assert long.documents[-1] == "[DONE]"
    assert long.documents[-2]["error"]["code"] == "server_shutting_down", long.documents[-2]
    assert all(isinstance(d, dict) and "error" not in d for d in long.documents[:-2])
    assert "1 ended with an error at the grace period's end" in seen.serve.stderr
    assert not _actor_exists(seen.names[1]) and not _actor_exists(seen.names[3])


def _first_refusal(url: str, timeout_s: float = 30.0) -> httpx.Response:
    """The first answer to a new chat once the drain has begun (200 before that)."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        if answer.status_code != 200:
            return answer
        time.sleep(0.05)
    pytest.fail(f"no request was refused within {timeout_s:.0f} s of SIGINT")


@pytest.mark.slow
def test_serve_starts_a_loopback_cluster_of_its_own(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HERMES_HOME"] = str(tmp_path)
    serve = ServeProcess(tmp_path / "serve", "--warm", "", "--num-cpus", "2", env=env)
    try:
        url = serve.url()
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/healthz").status_code == 200
        serve.process.send_signal(signal.SIGTERM)  # drains and stops, like Ctrl-C
        assert serve.wait(timeout_s=90) == 0, serve.stderr
    finally:
        serve.kill()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)
