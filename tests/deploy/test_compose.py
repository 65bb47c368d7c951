"""docker-compose.yml describes the same deployment as `make up` (deploy/local.py): the same
services by name, the same Airflow components and commands, Hermesflow's API with token auth
on the Ray cluster's head, the `hermesflow_default` connection pointing at it, only loopback
ports published, and secrets only from `.env`. No Docker engine is needed for these checks;
where `docker` is installed, `docker compose config` validates the file too."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import airflow
from deploy.local import REPO, SERVICES

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy" / "compose.env.example"
HERMESFLOW_PORT = 8000


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_same_services_as_make_up(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == set(SERVICES)


def test_airflow_components_run_as_make_up_runs_them(services: dict[str, dict[str, Any]]) -> None:
    for name in airflow.COMPONENTS:
        service = services[f"airflow-{name}"]
        local = airflow.component_command(name, 8080)[1:]  # without the venv's script path
        command = service["command"]
        assert command[0] == "airflow" and command[1] == name
        if name != "api-server":  # the container listens on 0.0.0.0 instead of loopback
            assert command[1:] == local
        env = service["environment"]
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/hermesflow/dags"
        assert "./dags:/opt/hermesflow/dags:ro" in service["volumes"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-api-server:8080/execution/"
        )
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        for key, value in airflow.DEFERRAL_RACE_RETRY.items():
            assert env[key] == value
        assert services[f"airflow-{name}"]["depends_on"]["airflow-init"] == {
            "condition": "service_completed_successfully"
        }


def test_hermesflow_serves_on_the_ray_cluster_with_a_token(
    services: dict[str, dict[str, Any]],
) -> None:
    serve = _command(services["hermesflow"])
    assert "ray start --address=ray-head:6379" in serve
    assert f"hermesflow serve --address=auto --host=0.0.0.0 --port={HERMESFLOW_PORT}" in serve
    assert services["hermesflow"]["environment"]["HERMES_API_TOKEN"].startswith(
        "${HERMES_API_TOKEN"
    )
    assert "--head" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    for name in ("ray-head", "ray-worker", "hermesflow"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${")
        assert env["HERMES_DB_URL"].endswith("@postgres:5432/hermesflow")


def test_connection_points_at_hermesflow(services: dict[str, dict[str, Any]]) -> None:
    init = _command(services["airflow-init"])
    assert "airflow db migrate" in init
    assert "airflow connections add hermesflow_default --conn-type hermesflow" in init
    assert f"--conn-host hermesflow --conn-port {HERMESFLOW_PORT}" in init
    assert '--conn-password "$$HERMES_API_TOKEN"' in init


def test_dependencies_exist_and_have_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    graph = {name: set(service.get("depends_on", {})) for name, service in services.items()}
    assert all(needed <= set(services) for needed in graph.values()), graph
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {n for n, needs in graph.items() if n not in done and needs <= done}
        assert ready, f"dependency cycle among {set(graph) - done}"
        done |= ready


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published


def test_every_secret_comes_from_the_env_file() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    defined = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used == defined


def test_image_installs_cpu_torch_before_the_project() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    torch = dockerfile.index(
        'pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu'
    )
    assert torch < dockerfile.index('".[airflow]"')


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed on this machine; the file was checked as YAML only")
    plugin = subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=60, check=False
    )
    if plugin.returncode != 0:
        pytest.skip("this docker CLI has no compose plugin; the file was checked as YAML only")
    done = subprocess.run(
        [docker, "compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
