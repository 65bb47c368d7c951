"""A real Airflow 3 deployment for end-to-end tests: `api-server`, `scheduler`, `dag-processor` and
`triggerer` as four separate processes over one AIRFLOW_HOME, driven through the public REST API.

Why separate processes and not `airflow standalone`: standalone ignores SIGINT when started from
a non-interactive shell and its scheduler can hang on a LocalExecutor worker at SIGTERM, so a
test could neither stop it cleanly nor tell which component misbehaved. Here each component has
its own process group and log file; `stop()` sends SIGTERM, waits a grace period, then SIGKILLs
whatever survived, and checks by PID that no process of the deployment is left.

Every failure raises `AssertionError` carrying the tail of each component's log and of the task
logs, so a CI failure is readable without the machine.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import httpx
import psutil

from deploy.airflow import (
    ADMIN,
    COMPONENTS,
    MIGRATE_TIMEOUT_S,
    PASSWORDS_FILE,
    airflow_bin,
    airflow_environment,
    all_healthy,
    component_command,
)
from deploy.processes import free_port, stop_group

__all__ = ["AirflowServices", "free_port"]

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
"""DagRun states a run never leaves."""
STARTUP_TIMEOUT_S = 180.0
"""All four components report healthy in 10-20 s on 2 cores; this is a broken deployment."""
STOP_GRACE_S = 20.0
"""How long a component may take to exit after SIGTERM before it is killed."""
POLL_S = 0.5
"""Pause between two polls of the REST API while waiting for a state."""
LOG_TAIL_LINES = 60
"""Lines of each log shown in a failure message (its tail, and its first error if older)."""
ERROR_MARKS = ("[error", "Traceback (most recent call last)")
"""What starts an error worth showing even far above the tail: an error-level line of
Airflow's console log format, or a Python traceback."""

T = TypeVar("T")


def _excerpt(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The log's last `lines` lines, preceded by its first error when that is older: a
    component that crashes often logs the cause long before the tail (a listener's exception
    in the scheduler, followed by pages of the shutdown it caused)."""
    if not path.exists():
        return "(no log file)"
    text = path.read_text(errors="replace").splitlines()
    tail_start = max(0, len(text) - lines)
    first_error = next(
        (i for i, line in enumerate(text) if any(mark in line for mark in ERROR_MARKS)), None
    )
    # From the line before: what the component was doing when it failed.
    cause_start = tail_start if first_error is None else max(0, first_error - 1)
    cause_end = min(cause_start + lines, tail_start)
    skipped = tail_start - cause_end
    shown = [
        *text[cause_start:cause_end],
        *([f"... ({skipped} lines) ..."] if skipped else []),
        *text[tail_start:],
    ]
    return "\n".join(_readable(line) for line in shown) or "(empty)"


def _readable(line: str) -> str:
    """A task log line (one JSON document in Airflow 3) as `time level event`, with the
    exception's type and message, which the JSON buries in `error_detail`; other lines as is."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or "event" not in record:
        return line
    errors = [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in record.get("error_detail", [])]
    text = f"{record.get('timestamp', '')} {record.get('level', '')} {record['event']}"
    return " | ".join([text, *errors])


@dataclass
class _Component:
    """One running Airflow command; its process leads its own process group."""

    name: str
    process: subprocess.Popen[bytes]


class AirflowServices:
    """An Airflow deployment under `home`, parsing `dags_folder`, with its metadata in `db_url`.

    `start()` it, use the REST helpers, and always `stop()` it (a fixture's finally clause).
    `env` adds variables for every component and task, e.g. `AIRFLOW_CONN_HERMESFLOW_DEFAULT`.
    `db_url` is a SQLAlchemy URL: SQLite (the default, a file in `home`) or
    `postgresql+psycopg://...`; the async URL the api-server needs is derived from it.

    Authentication is SimpleAuthManager's real login: the password file is written before the
    api-server starts (it keeps passwords it finds there), so the token comes from
    `POST /auth/token` with known credentials instead of scraping the generated file.
    """

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        *,
        db_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.dags_folder = dags_folder
        self.db_url = db_url or f"sqlite:///{home / 'airflow.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = home / "component-logs"
        self._password = secrets.token_urlsafe(16)
        self._env = self._environment(env or {})
        self._components: list[_Component] = []
        self._client: httpx.Client | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the metadata DB, start the four components, wait until all are healthy and
        log in. On any failure the components already started are stopped first."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        (self.home / PASSWORDS_FILE).write_text(json.dumps({ADMIN: self._password}))
        try:
            self._migrate()
            for name in COMPONENTS:
                self._components.append(self._spawn(name))
            self._wait_until_healthy()
            self._client = self._login()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, str]:
        """Stop every component: SIGTERM to each process group, a grace period, then SIGKILL.

        Returns how each component ended (`exit <code>` or `killed`). Raises `AssertionError`
        naming the PIDs if any process of the deployment (a component or one of its children,
        e.g. a LocalExecutor worker or a task) is still alive afterwards.
        """
        if self._client is not None:
            self._client.close()
            self._client = None
        outcome: dict[str, str] = {}
        leftover: list[str] = []
        for component in self._components:
            try:
                leader = psutil.Process(component.process.pid)
            except psutil.NoSuchProcess:
                outcome[component.name] = f"exit {component.process.wait()}"
                continue
            try:
                outcome[component.name] = stop_group(
                    leader, STOP_GRACE_S, wait=lambda t, p=component.process: p.wait(timeout=t)
                )
            except RuntimeError as error:
                leftover.append(f"{component.name}: {error}")
        self._components.clear()
        if leftover:
            raise AssertionError(f"Airflow processes survived SIGKILL: {leftover}")
        return outcome

    # -- REST API -----------------------------------------------------------------------------

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """The DAG as the API shows it once the dag-processor has serialized it. A parse error
        fails at once with Airflow's import error instead of waiting out the timeout."""

        def parsed() -> dict[str, Any] | None:
            response = self.api.get(f"/api/v2/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            errors = self.api.get("/api/v2/importErrors").json()["import_errors"]
            if errors:
                self.fail(f"DAG files failed to import: {json.dumps(errors, indent=1)}")
            return None

        return self._wait(parsed, timeout_s, f"DAG {dag_id!r} to be parsed")

    def unpause(self, dag_id: str) -> None:
        """New DAGs start paused (`dags_are_paused_at_creation`); the scheduler ignores them."""
        response = self.api.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        self._expect(response, 200, f"unpause {dag_id}")

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Start a manual run now and return its run id (Airflow generates it). Airflow 3
        requires `logical_date` in the body; null means a run with no logical date."""
        body = {"logical_date": None, "conf": dict(conf or {})}
        response = self.api.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        self._expect(response, 200, f"trigger {dag_id}")
        return response.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 180.0) -> str:
        """The run's terminal state (`success` or `failed`)."""

        def ended() -> str | None:
            response = self.api.get(self._run_path(dag_id, run_id))
            self._expect(response, 200, f"read run {run_id}")
            state = response.json()["state"]
            return state if state in TERMINAL_RUN_STATES else None

        return self._wait(ended, timeout_s, f"run {run_id} of {dag_id} to end")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances (mapped ones once per map index), as the API returns them."""
        response = self.api.get(f"{self._run_path(dag_id, run_id)}/taskInstances")
        self._expect(response, 200, f"read task instances of {run_id}")
        return response.json()["task_instances"]

    def event_log(self, dag_id: str, run_id: str, event: str) -> list[dict[str, Any]]:
        """Airflow's audit-log entries of one kind for a run, e.g. `deferred`: the record that a
        task handed its wait to the triggerer, which the task instances no longer show once
        they have finished."""
        params = {"dag_id": dag_id, "run_id": run_id, "event": event, "limit": 100}
        response = self.api.get("/api/v2/eventLogs", params=params)
        self._expect(response, 200, f"read the {event} events of {run_id}")
        return response.json()["event_logs"]

    @property
    def api(self) -> httpx.Client:
        """An HTTP client of the api-server carrying the admin's bearer token."""
        if self._client is None:
            raise RuntimeError("the deployment is not started; call start() first")
        return self._client

    # -- diagnostics ------------------------------------------------------------------------------

    def diagnostics(self) -> str:
        """The tail of each component's log and of every task log written so far."""
        sections = [f"== {p.stem} ==\n{_excerpt(p)}" for p in sorted(self.logs.glob("*.log"))]
        task_logs = sorted((self.home / "logs").glob("dag_id=*/**/*.log"))
        sections += [f"== task log {p.relative_to(self.home)} ==\n{_excerpt(p)}" for p in task_logs]
        return "\n\n".join(sections)

    def fail(self, message: str) -> NoReturn:
        """Raise `AssertionError` with `message` followed by the deployment's logs."""
        raise AssertionError(f"{message}\n\n{self.diagnostics()}")

    # -- internals --------------------------------------------------------------------------------

    def _environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        """Configuration for every component through `AIRFLOW__*` variables, so no airflow.cfg
        edits are needed. Inherited `AIRFLOW_*` variables (a developer's AIRFLOW_HOME, a test
        fixture's unit-test settings or connections) are dropped: the deployment runs with
        exactly this configuration plus `extra`."""
        return airflow_environment(
            home=self.home,
            dags_folder=self.dags_folder,
            url=self.url,
            db_url=self.db_url,
            jwt_secret=secrets.token_urlsafe(64),
            extra=extra,
        )

    def _migrate(self) -> None:
        log = self.logs / "db-migrate.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [airflow_bin(), "db", "migrate"],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT_S,
                check=False,
            )
        if done.returncode != 0:
            raise AssertionError(f"airflow db migrate failed ({done.returncode}):\n{_excerpt(log)}")

    def _spawn(self, name: str) -> _Component:
        """Start one component in its own session, so signals reach it and only it."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                component_command(name, self.port),
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return _Component(name, process)

    def _wait_until_healthy(self) -> None:
        """Wait until `/api/v2/monitor/health` reports every component healthy (the endpoint
        needs no token); fail at once if a component exits."""

        def healthy() -> bool:
            try:
                response = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=10)
            except httpx.TransportError:
                return False
            if response.status_code != 200:
                return False
            return all_healthy(response.json())

        self._wait(healthy, STARTUP_TIMEOUT_S, "all Airflow components to report healthy")

    def _login(self) -> httpx.Client:
        response = httpx.post(
            f"{self.url}/auth/token",
            json={"username": ADMIN, "password": self._password},
            timeout=30,
        )
        self._expect(response, 201, "log in to the api-server")
        token = response.json()["access_token"]
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def _wait(self, probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Poll `probe` until it returns a truthy value; fail with the logs on timeout or when a
        component has exited (a dead scheduler would otherwise look like a slow one)."""
        deadline = time.monotonic() + timeout_s
        while True:
            exited = [c for c in self._components if c.process.poll() is not None]
            if exited:
                codes = ", ".join(f"{c.name} exited {c.process.returncode}" for c in exited)
                self.fail(f"while waiting for {what}: {codes}")
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(POLL_S)

    def _expect(self, response: httpx.Response, status: int, action: str) -> None:
        if response.status_code != status:
            self.fail(f"{action}: HTTP {response.status_code} {response.text}")

    @staticmethod
    def _run_path(dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
