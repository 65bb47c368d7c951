"""Helpers of the Airflow provider's tests: a handle on the running Hermesflow API, and
`airflow dags test` as a subprocess whose run is read back from Airflow's database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO / "dags"
TEST_DAGS = Path(__file__).parent / "dags"
"""DAGs only the tests run (retries, program runs, TaskFlow decorators)."""
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_TEST_TIMEOUT_S = 600.0


def free_conn_uri() -> str:
    """A `hermesflow` connection URI to a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"hermesflow://:token@127.0.0.1:{port}"


@dataclass(frozen=True)
class Hermes:
    """A running Hermesflow API and the store behind it."""

    url: str
    token: str
    db_url: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120
        )

    def events(self, app_id: str) -> list[dict[str, Any]]:
        with self.client() as api:
            response = api.get(
                f"/v1/apps/{quote(app_id, safe='')}/events", params={"follow": False}
            )
        response.raise_for_status()
        return response.json()

    def app(self, app_id: str) -> dict[str, Any]:
        with self.client() as api:
            response = api.get(f"/v1/apps/{quote(app_id, safe='')}")
        response.raise_for_status()
        return response.json()

    def dispatches(self, app_id: str) -> list[dict[str, Any]]:
        """The calls the scheduler sent to a backend for this application."""
        return [e for e in self.events(app_id) if e["kind"] == "dispatch"]

    def calls(self, app_id: str) -> list[tuple[str, str]]:
        """(stage, backend) of every call the store holds for the application, in order."""
        from sqlalchemy import select

        from hermesflow.store import Run, StepCall, Store

        with Store(self.db_url).session() as session:
            rows = session.execute(
                select(StepCall.stage, StepCall.backend)
                .join(Run, Run.id == StepCall.run_id)
                .where(Run.key == app_id)
                .order_by(StepCall.id)
            )
            return [(row.stage, row.backend) for row in rows]

    def outcomes(self, app_id: str) -> list[Any]:
        """The task outcomes the listener reported for the application."""
        from hermesflow.store import Store

        return Store(self.db_url).task_outcomes(app_id)


# ---------------------------------------------------------------------------------------------
# `airflow dags test`
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DagRunResult:
    """One `airflow dags test` run: how it ended, its task instances and how long it took."""

    dag_id: str
    run_id: str
    state: str
    tasks: dict[str, list[dict[str, Any]]]
    """task_id → its task instances (one per map index): state, try_number, xcom."""
    seconds: float
    output: str

    @property
    def app_id(self) -> str:
        return f"{self.dag_id}:{self.run_id}"

    def states(self) -> dict[str, str]:
        """task_id → state of an unmapped task (of the first instance of a mapped one)."""
        return {task: instances[0]["state"] for task, instances in self.tasks.items()}

    def xcom(self, task_id: str, map_index: int = -1) -> Any:
        return next(i["xcom"] for i in self.tasks[task_id] if i["map_index"] == map_index)


def dags_test(
    dag_id: str, *, conf: dict[str, Any] | None = None, dags_folder: Path = EXAMPLE_DAGS
) -> DagRunResult:
    """Run `airflow dags test` in a subprocess (with the session's AIRFLOW_HOME and the
    Hermesflow connection) and read the new run back from Airflow's metadata database."""
    command = ["dags", "test", dag_id]
    if conf is not None:
        command += ["--conf", json.dumps(conf)]
    output, seconds = _airflow(command, dags_folder)
    return DagRunResult(dag_id, *_read_run(dag_id), seconds, output)


def tasks_test(dag_id: str, task_id: str, run_id: str, *, dags_folder: Path) -> DagRunResult:
    """Run one task of an existing DAG run again with `airflow tasks test` (triggers inline)."""
    output, seconds = _airflow(["tasks", "test", dag_id, task_id, run_id], dags_folder)
    return DagRunResult(dag_id, *_read_run(dag_id, run_id), seconds, output)


def _airflow(command: list[str], dags_folder: Path) -> tuple[str, float]:
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder)}
    started = time.monotonic()
    done = subprocess.run(
        [AIRFLOW, *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=DAG_TEST_TIMEOUT_S,
        check=False,
    )
    return f"{done.stdout}\n{done.stderr}", time.monotonic() - started


def _read_run(
    dag_id: str, run_id: str | None = None
) -> tuple[str, str, dict[str, list[dict[str, Any]]]]:
    """(run_id, state, tasks) of the DAG run `run_id`, or of the DAG's latest run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun).where(DagRun.dag_id == dag_id)
        if run_id is not None:
            query = query.where(DagRun.run_id == run_id)
        run = session.scalars(query.order_by(DagRun.id.desc()).limit(1)).one()
        tasks: dict[str, list[dict[str, Any]]] = {}
        tis = session.scalars(
            select(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
            .order_by(TaskInstance.task_id, TaskInstance.map_index)
        )
        for ti in tis:
            xcom = session.scalar(
                select(XComModel).where(
                    XComModel.dag_id == dag_id,
                    XComModel.run_id == run.run_id,
                    XComModel.task_id == ti.task_id,
                    XComModel.map_index == ti.map_index,
                    XComModel.key == "return_value",
                )
            )
            tasks.setdefault(ti.task_id, []).append(
                {
                    "state": str(ti.state),
                    "try_number": ti.try_number,
                    "map_index": ti.map_index,
                    "xcom": None if xcom is None else XComModel.deserialize_value(xcom),
                }
            )
        return run.run_id, str(run.state), tasks
