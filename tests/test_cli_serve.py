"""`hermesflow serve`, `stop` and `submit`: the serve command as a real subprocess joining the
session's Ray cluster (and once starting its own), `submit` as an HTTP client of a gateway."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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
        "import json, sys, hermesflow.cli, hermesflow.api_models, hermesflow.ray_cluster; "
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


@pytest.fixture(scope="module")
def gateway_url(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A light scheduler (the tool pool and the test program `sleep_chain`) behind a gateway."""
    import ray
    from hermesflow.schedulers.runtime import start_scheduler
    from hermesflow.schedulers.runtime_config import RuntimeConfig

    from hermesflow.backends.base import BackendSpec
    from hermesflow.gateway import start_gateway, stop_gateway

    suffix = uuid.uuid4().hex[:8]
    config = RuntimeConfig(
        db_url=f"sqlite:///{tmp_path_factory.mktemp('cli') / 'hermes.db'}",
        backends=[BackendSpec(name="tools", type="python-tools", expected_warmup_s=2.0)],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=("tools",),
    )
    scheduler = start_scheduler(config, name=f"cli-scheduler-{suffix}")
    try:
        yield start_gateway(
            port=0,
            token=TOKEN,
            scheduler_name=f"cli-scheduler-{suffix}",
            name=f"cli-gateway-{suffix}",
        )
    finally:
        stop_gateway(f"cli-gateway-{suffix}")
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


def _read_url(process: subprocess.Popen, timeout_s: float = STARTUP_S) -> str:
    """The first stdout line of `serve` (its URL); fails with its stderr if it exits first."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            if line:
                return line.strip()
        if process.poll() is not None:
            break
    process.kill()
    pytest.fail(
        f"`hermesflow serve` printed no URL (exit {process.poll()}):\n{process.stderr.read()}"
    )


def _serve(*arguments: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [HERMESFLOW, "serve", "--port", "0", "--warm", "", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_or_explain(process: subprocess.Popen, timeout_s: float) -> int:
    """The exit code; if the process hangs, fail with where its threads are and its stderr."""
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        py_spy = Path(sys.executable).parent / "py-spy"
        stacks = (
            subprocess.run(
                [str(py_spy), "dump", "--pid", str(process.pid)],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            if py_spy.exists()
            else "(py-spy is not installed)"
        )
        process.kill()
        pytest.fail(
            f"`hermesflow serve` still ran {timeout_s:.0f} s after the signal.\n"
            f"stacks:\n{stacks}\nstderr:\n{process.stderr.read()}"
        )


def _actor_exists(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace="hermesflow")
    except ValueError:
        return False
    return True


@pytest.fixture
def cluster_address(ray_cluster: None) -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_serve_detached_on_a_cluster_then_stop(cluster_address: str, tmp_path: Path) -> None:
    names = [
        "--scheduler-name",
        f"serve-s-{uuid.uuid4().hex[:6]}",
        "--gateway-name",
        f"serve-g-{uuid.uuid4().hex[:6]}",
    ]
    process = _serve(
        "--address",
        cluster_address,
        "--detach",
        "--db-url",
        f"sqlite:///{tmp_path / 'h.db'}",
        *names,
    )
    url = _read_url(process)
    assert process.wait(timeout=60) == 0
    assert url.startswith("http://127.0.0.1:")
    backends = httpx.get(f"{url}/v1/backends", timeout=30).json()  # no token: the API is open
    assert {b["name"] for b in backends} == {"llm", "search", "code", "tools"}
    assert {b["phase"] for b in backends} == {"cold"}
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


def test_serve_in_the_foreground_stops_everything_on_ctrl_c(
    cluster_address: str, tmp_path: Path
) -> None:
    names = [
        "--scheduler-name",
        f"serve-s-{uuid.uuid4().hex[:6]}",
        "--gateway-name",
        f"serve-g-{uuid.uuid4().hex[:6]}",
    ]
    process = _serve(
        "--address",
        cluster_address,
        "--token",
        TOKEN,
        "--db-url",
        f"sqlite:///{tmp_path / 'h.db'}",
        *names,
    )
    try:
        url = _read_url(process)
        assert (
            httpx.get(f"{url}/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code
            == 200
        )
        assert httpx.get(f"{url}/v1/stats").status_code == 401
        process.send_signal(signal.SIGINT)
        assert _wait_or_explain(process, timeout_s=90) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert not _actor_exists(names[1]) and not _actor_exists(names[3])


def test_serve_starts_a_loopback_cluster_of_its_own(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HERMES_HOME"] = str(tmp_path)
    process = _serve("--num-cpus", "2", env=env)
    try:
        url = _read_url(process)
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/healthz").status_code == 200
        process.send_signal(signal.SIGTERM)  # Ray's driver handler turns it into an orderly exit
        process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)
