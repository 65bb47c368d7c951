"""docker-compose.yml describes the same deployment as `make up` (deploy/local.py): the same
services by name, the same Airflow components and commands, Hermesflow's API with token auth
on the Ray cluster's head, the `hermesflow_default` connection pointing at it, only loopback
ports published, secrets and ports only from `.env`, one image built offline. No Docker engine
is needed for these checks; where Compose (v2 or Debian's 1.29) is installed, `config`
validates the file too. `make compose-check` runs it for real (tests/deploy/test_compose_up.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import fields
from typing import Any

import pytest
import yaml

from deploy import airflow, images
from deploy.compose_check import PORTS as PORT_SETTINGS_BY_NAME
from deploy.local import REPO, SERVICES
from deploy.state import Ports

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy" / "compose.env.example"
HERMESFLOW_PORT = 8000
PORT_SETTINGS = {setting: name for name, setting in PORT_SETTINGS_BY_NAME.items()}
"""The port variables of docker-compose.yml -> the `make up` port each one's default mirrors."""


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
    # `=`: a generated token may start with "-", which argparse would take for an option.
    assert '--conn-password="$$HERMES_API_TOKEN"' in init


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


def test_every_setting_comes_from_the_env_file() -> None:
    """Every variable the file reads is in the example `.env`: secrets are required (`:?`, no
    default in the file), published ports have the defaults `make up` uses."""
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    defined = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert used == set(defined) - {"COMPOSE_PROJECT_NAME"}
    defaults = dict(re.findall(r"\$\{(\w+):-(\w+)\}", text))
    assert set(defaults) == {name for name in used if name.endswith("_PORT")}
    assert all(defined[name] == value for name, value in defaults.items())
    ports = {f.name: f.default for f in fields(Ports)}
    assert {PORT_SETTINGS[name]: int(value) for name, value in defaults.items()} == {
        name: ports[name] for name in PORT_SETTINGS.values()
    }
    assert {name for name in used if name not in defaults} == {
        name for name in set(re.findall(r"\$\{(\w+):\?", text))
    }


def test_image_builds_offline_from_the_prepared_wheels() -> None:
    """No registry and no package index while building: the base image is the locally
    imported one, pip only installs files (the wheelhouse resolved with torch 2.13.0 CPU
    first, deploy/images.py), and the build context lets in only what the image copies."""
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE={images.BASE_IMAGE}" in dockerfile
    assert {line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")} == {
        "${BASE_IMAGE}"
    }
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and all("--no-index --no-deps" in line for line in installs), installs
    assert images.PYTHON_REQUIREMENTS[0] == "torch==2.13.0"
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE)
    allowed = (REPO / ".dockerignore").read_text().split("\n!")[1:]
    for source in " ".join(copied).split():
        assert any(pattern.strip().startswith(source.rstrip("/")) for pattern in allowed), source


def test_every_service_runs_the_one_image(services: dict[str, dict[str, Any]]) -> None:
    """One image for all services, PostgreSQL included (no registry to pull postgres:15)."""
    assert {service["image"] for service in services.values()} == {images.IMAGE}
    assert services["postgres"]["command"] == ["/opt/hermesflow/deploy/postgres-entrypoint.sh"]


@pytest.mark.parametrize("compose", [["docker", "compose"], ["docker-compose"]], ids=" ".join)
def test_compose_config_accepts_the_file(compose: list[str]) -> None:
    """Compose v2 (the docker CLI's plugin) and Debian's Compose 1.29 both accept the file,
    where they are installed (`make compose-check` runs it for real)."""
    if shutil.which(compose[0]) is None:
        pytest.skip(f"{compose[0]} is not installed on this machine; the file was checked as YAML")
    version = subprocess.run([*compose, "version"], capture_output=True, timeout=60, check=False)
    if version.returncode != 0:
        pytest.skip(f"`{' '.join(compose)}` is not available; the file was checked as YAML")
    done = subprocess.run(
        [*compose, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
