"""`make up` / `make down` for real: the launcher behind them (`python -m deploy.local`, what the
Makefile runs) brings the whole topology up on free ports in a throwaway state folder; an
example DAG triggered through Airflow's REST API succeeds; Hermesflow's API, its PostgreSQL
store, the Airflow plugin's JSON API (with a logged-in user's token) and the Hermesflow page in
Airflow's UI (headless Chromium, logged in through Airflow's form) all show the run; the
Ray cluster has its two nodes and S3 its bucket; a second `up` changes nothing; `down` stops
everything and no process of the deployment is left.

Slow (about 4-5 minutes on 2 cores, most of it Airflow's start and the CPU LLM's answer).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pytest

pytest.importorskip("airflow")
pytest.importorskip("moto")

from support.browser import chromium, log_in, needs_chromium

from deploy.local import REPO, SERVICES
from deploy.postgres import POSTGRES_ROOT
from deploy.processes import alive
from deploy.state import StateDir

pytestmark = pytest.mark.slow

DAG_ID = "rag_answer"
CONF = {"question": "When was smallpox declared eradicated?"}
UP_TIMEOUT_S = 600
RUN_TIMEOUT_S = 420.0
PAGE_TIMEOUT_MS = 30_000
"""The page polls every 2 s; what the API shows must be on it well within this."""
APP_END_WAIT_S = 30.0
"""The listener ends the application from Airflow's scheduler just after the run succeeds."""


@dataclass
class Up:
    """A running deployment: its state folder, ports, secrets and `up`'s timing."""

    state: Path
    ports: dict[str, int]
    secrets: dict[str, str]
    up_s: float
    output: str

    @property
    def airflow(self) -> str:
        return f"http://127.0.0.1:{self.ports['airflow']}"

    def hermes(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.ports['hermesflow']}",
            headers={"Authorization": f"Bearer {self.secrets['hermesflow_token']}"},
            timeout=60,
        )

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name} ==\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
            for p in sorted((self.state / "logs").glob("*.log"))
        )


def launcher(command: str, state: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m deploy.local COMMAND` from the checkout, as the Makefile runs it."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "deploy.local", command, "--state-dir", str(state), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        check=False,
    )
    return done, time.monotonic() - started


def deployment_processes(state: Path) -> list[psutil.Process]:
    """Every process the PID files (and PostgreSQL's postmaster.pid) name, with descendants."""
    roots = [json.loads(p.read_text())["pid"] for p in (state / "pids").glob("*.json")]
    postmaster = state / "postgres" / "data" / "postmaster.pid"
    if postmaster.exists():
        roots.append(int(postmaster.read_text().split("\n", 1)[0]))
    found: list[psutil.Process] = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            found += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="module")
def up() -> Iterator[Up]:
    if not list(POSTGRES_ROOT.glob("*/bin/initdb")):
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql")
    state = Path(tempfile.mkdtemp(prefix="hfup-"))  # /tmp: reachable by the postgres user
    try:
        done, up_s = launcher("up", state, "--free-ports")
        print(f"make up: {up_s:.1f} s\n{done.stdout}")
        deployment = Up(
            state,
            json.loads((state / "ports.json").read_text()),
            json.loads((state / "secrets.json").read_text()),
            up_s,
            done.stdout,
        )
        if done.returncode != 0:
            pytest.fail(f"up failed:\n{done.stdout}\n{done.stderr}\n{deployment.logs()}")
        yield deployment
    finally:
        processes = deployment_processes(state)
        stopped, down_s = launcher("down", state)
        print(f"make down: {down_s:.1f} s\n{stopped.stdout}")
        left = [p.pid for p in processes if alive(p)]
        shutil.rmtree(StateDir(state).ray_temp, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr
        assert not left, f"processes left after down: {left}"


def test_up_again_changes_nothing(up: Up) -> None:
    done, seconds = launcher("up", up.state)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("already") == len(SERVICES) - 1, done.stdout  # all but airflow-init
    assert "started" not in done.stdout, done.stdout
    status, _ = launcher("status", up.state)
    assert status.stdout.count("running (pid") == len(SERVICES) - 2, status.stdout
    print(f"second up: {seconds:.1f} s")


@needs_chromium
def test_dag_through_airflow_reaches_hermesflow_and_the_page(up: Up) -> None:
    token = httpx.post(
        f"{up.airflow}/auth/token",
        json={"username": "admin", "password": up.secrets["airflow_admin_password"]},
        timeout=30,
    )
    assert token.status_code == 201, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    with httpx.Client(base_url=up.airflow, headers=headers, timeout=30) as api:
        connection = api.get("/api/v2/connections/hermesflow_default").json()
        assert connection["conn_type"] == "hermesflow"
        assert connection["port"] == up.ports["hermesflow"]
        check_dag_reaches_hermesflow(api, up)
    _check_page(up)


def check_dag_reaches_hermesflow(api: httpx.Client, up: Up) -> float:
    """Trigger the DAG through Airflow's REST API; it must succeed, its application must be
    finished in Hermesflow's API (whose token is required) and its store, and the plugin's API
    must show it. Returns the seconds from trigger to success."""
    run_id, state, seconds = _run_dag(api, up)
    if state != "success":
        pytest.fail(f"{DAG_ID} ended {state}\n{up.logs()}")
    print(f"{DAG_ID}: trigger to success in {seconds:.1f} s")
    app_id = f"{DAG_ID}:{run_id}"
    with up.hermes() as hermes:
        app = hermes.get(f"/v1/apps/{quote(app_id, safe='')}", params={"wait": APP_END_WAIT_S})
        assert app.status_code == 200, app.text
        assert (app.json()["app_class"], app.json()["phase"]) == (DAG_ID, "finished")
    assert httpx.get(f"{hermes.base_url}/v1/stats", timeout=30).status_code == 401
    assert _store_has_run(up, app_id)
    _check_plugin(api, up)
    return seconds


def _run_dag(api: httpx.Client, up: Up) -> tuple[str, str, float]:
    deadline = time.monotonic() + 120
    while api.get(f"/api/v2/dags/{DAG_ID}").status_code != 200:
        assert time.monotonic() < deadline, f"{DAG_ID} never parsed\n{up.logs()}"
        time.sleep(1)
    assert api.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
    started = time.monotonic()
    run = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": CONF})
    assert run.status_code == 200, run.text
    run_id = run.json()["dag_run_id"]
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
    while time.monotonic() - started < RUN_TIMEOUT_S:
        state = api.get(path).json()["state"]
        if state in ("success", "failed"):
            return run_id, state, time.monotonic() - started
        time.sleep(1)
    return run_id, "timed out", time.monotonic() - started


def _check_plugin(api: httpx.Client, up: Up) -> None:
    """The Airflow page's JSON API shows the class with its finished run, only to a user."""
    classes = api.get("/hermesflow/api/classes")
    assert classes.status_code == 200, classes.text
    rag = next(c for c in classes.json() if c["name"] == DAG_ID)
    assert rag["finished_runs"] >= 1, rag
    stats = api.get("/hermesflow/api/stats").json()
    assert DAG_ID in stats["classes"]
    assert httpx.get(f"{up.airflow}/hermesflow/api/classes", timeout=30).status_code == 401


def _check_page(up: Up) -> None:
    """Logged in through Airflow's form, the Hermesflow page in Airflow's navigation shows the
    DAG's class with its finished run."""
    with chromium() as browser:
        page = browser.new_page()
        log_in(page, up.airflow, "admin", up.secrets["airflow_admin_password"])
        page.goto(f"{up.airflow}/plugin/hermesflow")
        frame = page.frame_locator("iframe")
        card = frame.locator(f".class-card[data-class='{DAG_ID}']")
        card.wait_for(timeout=PAGE_TIMEOUT_MS)
        deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
        while not re.search(r"\b[1-9]\d* finished runs?\b", card.inner_text()):
            assert time.monotonic() < deadline, card.inner_text()
            time.sleep(0.5)
        ray = frame.locator("#ray-dashboard")  # the page links to the cluster's Ray dashboard
        assert ray.is_visible() and f":{up.ports['ray_dashboard']}" in ray.get_attribute("href")


def _store_has_run(up: Up, app_id: str) -> bool:
    """The run is in Hermesflow's store, the PostgreSQL database `hermesflow`."""
    from sqlalchemy import select

    from hermesflow.store import Run, Store

    url = (
        f"postgresql+psycopg://hermes:{up.secrets['postgres_password']}"
        f"@127.0.0.1:{up.ports['postgres']}/hermesflow"
    )
    store = Store(url)
    try:
        with store.session() as session:
            return session.scalar(select(Run.app_class).where(Run.key == app_id)) == DAG_ID
    finally:
        store.engine.dispose()


def test_ray_has_two_nodes_and_s3_its_bucket(up: Up) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(up.state / "ray-auth-token"),
    }
    ray = str(Path(sys.executable).parent / "ray")
    status = subprocess.run(
        [ray, "status", "--address", f"127.0.0.1:{up.ports['ray_gcs']}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    active = status.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
    assert active.count("node_") == 2, status.stdout
    bucket = httpx.get(f"http://127.0.0.1:{up.ports['s3']}/hermesflow", timeout=30)
    assert bucket.status_code == 200, bucket.text
