"""Fixtures of the Airflow plugin's tests: a real Hermesflow API and a real Airflow api-server
that loads the plugin from the installed package and reads Hermesflow through its connection.

* `hermes` — a Gittins scheduler with the tool pool (warm) and the test program `sleep_chain`,
  behind the gateway with a token, on the session's Ray cluster.
* `airflow_api` — `airflow api-server` alone over a throwaway AIRFLOW_HOME (SQLite,
  SimpleAuthManager with a known admin password): the plugin app lives in the api-server, so the
  scheduler, dag-processor and triggerer of a full deployment (`support.airflow_services`) would
  only cost time here. Its `hermesflow_default` connection is created through Airflow's REST API,
  as an admin would in the UI — stored in Airflow's database, not an environment variable — so a
  test can edit it and see the plugin follow.

Nothing here imports Airflow: the tests talk to the api-server over HTTP only.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from plugin_support import CONN_ID, AirflowApi, Hermes
from support.airflow_services import free_port

ADMIN = "admin"
BACKENDS = ("tools",)
"""The served backends: `sleep_chain` needs only the tool pool."""
STARTUP_TIMEOUT_S = 120.0
"""The api-server answers in about 4 s on 2 cores; this is a broken start."""
STOP_GRACE_S = 20.0
WARM_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def hermes(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hermes]:
    from hermesflow.schedulers.runtime_config import RuntimeConfig
    from support.serving import serving, wait_warm

    from hermesflow.apps.suite import suite_backends

    token = f"airflow-plugin-{uuid.uuid4().hex}"
    config = RuntimeConfig(
        db_url=f"sqlite:///{tmp_path_factory.mktemp('hermes') / 'hermes.db'}",
        backends=[b for b in suite_backends() if b.name in BACKENDS],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=BACKENDS,
    )
    with serving(config, token, "af-plugin") as api:
        served = Hermes(api.url, token)
        wait_warm(api.url, token, BACKENDS, WARM_TIMEOUT_S)
        yield served




@pytest.fixture(scope="session")
def airflow_api(hermes: Hermes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowApi]:
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    password = secrets.token_urlsafe(16)
    # SimpleAuthManager keeps the passwords it finds in this file (STACK §2).
    (home / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({ADMIN: password})
    )
    env = _environment(home)
    log = home / "api-server.log"
    airflow = str(Path(sys.executable).parent / "airflow")
    migrated = subprocess.run(
        [airflow, "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if migrated.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{migrated.stdout[-3000:]}{migrated.stderr}")
    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [airflow, "api-server", "-H", "127.0.0.1", "-p", port, "-w", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_up(server, url, log)
        login = httpx.post(
            f"{url}/auth/token", json={"username": ADMIN, "password": password}, timeout=30
        )
        assert login.status_code == 201, login.text
        api = AirflowApi(url, password, login.json()["access_token"], log)
        _create_connection(api, hermes)
        yield api
    finally:
        _stop(server)


def _environment(home: Path) -> dict[str, str]:
    """The api-server's configuration; inherited `AIRFLOW_*` variables are dropped."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_")}
    return {
        **inherited,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
    }


def _wait_up(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"api-server exited {server.returncode}:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(f"{url}/api/v2/version", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"api-server not up after {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()[-5000:]}")


def _create_connection(api: AirflowApi, hermes: Hermes) -> None:
    with api.client() as client:
        created = client.post(
            "/api/v2/connections", json={"connection_id": CONN_ID, **hermes.connection()}
        )
    assert created.status_code == 201, created.text


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the api-server's process group (uvicorn and its worker), then SIGKILL."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass
