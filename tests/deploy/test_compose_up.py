"""The docker-compose deployment end to end, against a running compose project: what
`make compose-check` (deploy/compose_check.py) runs once it has built the image and brought
docker-compose.yml up. The same checks as the `make up` test, through its helpers: a
`rag_answer` DAG run triggered through Airflow's REST API succeeds; Hermesflow's API, its
PostgreSQL store and the plugin's JSON API show it; the Hermesflow page in headless Chromium
(logged in through Airflow's form) shows the finished run and links to the Ray dashboard; the
Ray cluster has its three nodes (head, worker, and the API's zero-CPU node) and S3 its bucket.

Skipped unless HERMESFLOW_COMPOSE_TARGET names a running deployment (the JSON file the check
writes), so the normal suite never runs it: `make compose-check` is the way in.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.browser import needs_chromium

from deploy.compose_check import TARGET_ENV

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get(TARGET_ENV),
        reason="runs against a compose deployment that `make compose-check` brings up",
    ),
]

pytest.importorskip("airflow")
pytest.importorskip("moto")

# The make-up test's checks, shared instead of copied: both deployments must pass the same ones.
from test_make_up import DAG_ID, Up, _check_page, check_dag_reaches_hermesflow

HERMESFLOW_PORT_INSIDE = 8000
"""The API's port inside the compose network, which the Airflow connection names."""
RAY_NODES = 3


@dataclass
class ComposeUp(Up):
    """A running compose project, in the shape the make-up test's helpers take; its logs are
    the containers' (`compose logs`)."""

    compose: list[str]
    results: Path

    def logs(self) -> str:
        done = subprocess.run(
            [*self.compose, "logs", "--no-color", "--tail", "30"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done.stdout + done.stderr

    def record(self, **values: object) -> None:
        """Add measurements to the results file the check summarizes."""
        found = json.loads(self.results.read_text()) if self.results.exists() else {}
        self.results.write_text(json.dumps({**found, **values}, indent=1))


@pytest.fixture(scope="module")
def up() -> ComposeUp:
    target = json.loads(Path(os.environ[TARGET_ENV]).read_text())
    return ComposeUp(
        state=Path(target["state"]),
        ports=target["ports"],
        secrets=target["secrets"],
        up_s=target["up_s"],
        output="",
        compose=target["compose"],
        results=Path(target["results"]),
    )


@pytest.fixture(scope="module")
def airflow_api(up: ComposeUp) -> httpx.Client:
    token = httpx.post(
        f"{up.airflow}/auth/token",
        json={"username": "admin", "password": up.secrets["airflow_admin_password"]},
        timeout=30,
    )
    assert token.status_code == 201, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    with httpx.Client(base_url=up.airflow, headers=headers, timeout=30) as api:
        yield api


def test_dag_through_airflow_reaches_hermesflow(up: ComposeUp, airflow_api: httpx.Client) -> None:
    connection = airflow_api.get("/api/v2/connections/hermesflow_default").json()
    assert (connection["conn_type"], connection["host"], connection["port"]) == (
        "hermesflow",
        "hermesflow",
        HERMESFLOW_PORT_INSIDE,
    )
    seconds = check_dag_reaches_hermesflow(airflow_api, up)
    up.record(dag=DAG_ID, dag_state="success", dag_run_s=round(seconds, 1))


@needs_chromium
def test_page_shows_the_run(up: ComposeUp, airflow_api: httpx.Client) -> None:
    """After the DAG test: the page shows its class with a finished run."""
    _check_page(up)


def test_ray_has_three_nodes_and_s3_its_bucket(up: ComposeUp) -> None:
    status = subprocess.run(
        [*up.compose, "exec", "-T", "ray-head", "ray", "status", "--address=127.0.0.1:6379"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    active = status.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
    assert active.count("node_") == RAY_NODES, status.stdout
    bucket = httpx.get(f"http://127.0.0.1:{up.ports['s3']}/hermesflow", timeout=30)
    assert bucket.status_code == 200, bucket.text
