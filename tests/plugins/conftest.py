"""Fixtures of the Airflow plugin's tests: a real Hermesflow API and a real Airflow api-server
that loads the plugin from the installed package and reads Hermesflow through its connection.

* `hermes` — a Gittins scheduler with the tool pool (warm) and the test program `sleep_chain`,
  behind the gateway with a token, on the session's Ray cluster.
* `airflow_api` — `airflow api-server` alone over a throwaway AIRFLOW_HOME (SQLite,
  SimpleAuthManager with a known admin password): the plugin app lives in the api-server, so the
  scheduler, dag-processor and triggerer of a full deployment (`support.airflow_services`) would
  only cost time here. It is configured and initialised as `make up` does it (`deploy.airflow`);
  its `hermesflow_default` connection is stored in Airflow's database (`airflow connections
  import`), not in an environment variable, so a test can edit it through the REST API and see
  the plugin follow.

Nothing here imports Airflow: the tests talk to the api-server over HTTP only.
"""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from plugin_support import CONN_ID, AirflowApi, Hermes
from support.airflow_services import free_port

from deploy.airflow import ADMIN, airflow_environment, component_command, initialize
from deploy.processes import stop_group

BACKENDS = ("tools",)
"""The served backends: `sleep_chain` needs only the tool pool."""
STARTUP_TIMEOUT_S = 120.0
"""The api-server answers in about 4 s on 2 cores; this is a broken start."""
STOP_GRACE_S = 20.0
WARM_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def hermes(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hermes]:
    from support.serving import serving, wait_warm

    from hermesflow.apps.suite import suite_backends
    from hermesflow.schedulers.runtime_config import RuntimeConfig

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
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = airflow_environment(
        home=home,
        dags_folder=home / "dags",
        url=url,
        db_url=f"sqlite:///{home / 'airflow.db'}",
        jwt_secret=secrets.token_urlsafe(64),
    )
    log = home / "api-server.log"
    try:
        initialize(
            env,
            admin_password=password,
            connection=hermes.connection(),
            connections_file=home / "connections.json",
            log=home / "init.log",
            conn_id=CONN_ID,
        )
    except RuntimeError as error:
        pytest.fail(str(error))
    with log.open("wb") as out:
        server = subprocess.Popen(
            component_command("api-server", port),
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
        yield AirflowApi(url, password, login.json()["access_token"], log)
    finally:
        stop_group(psutil.Process(server.pid), STOP_GRACE_S, server.wait)


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
