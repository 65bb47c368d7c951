"""End to end through a real Airflow 3 deployment: api-server, scheduler, dag-processor and
triggerer as separate processes (`support.airflow_services`) run the example DAG `rag_answer`
(a deferrable tool step, then a deferrable LLM step) triggered through Airflow's REST API, and
Hermesflow's own HTTP API shows the run as one application whose steps its Gittins scheduler
ranked and dispatched, of a class whose graph is the one the DAG declares.

Parametrized over Airflow's metadata database: SQLite (a file) and a real PostgreSQL server (a
fresh database on the session's server, through the root conftest's `store_url`).

Marked `slow` (about 2 minutes: a deployment per database): `make test-slow` runs it. `make test`
keeps real Airflow through `airflow dags test` (test_example_dags, test_operators) and the
plugin's api-server (tests/plugins)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("airflow")
pytest.importorskip("ray")

from provider_support import EXAMPLE_DAGS, Hermes
from support.airflow_services import AirflowServices

from hermesflow.operators.dag_graph import dag_pdgraph
from hermesflow.pdgraph.model import PDGraph
from hermesflow.schedulers.open_apps import structure_of

pytestmark = pytest.mark.slow

DAG_ID = "rag_answer"
CONF = {"question": "When was smallpox declared eradicated?"}
STEPS = {"retrieve": "search", "answer": "llm"}
"""The DAG's Hermesflow steps (task id → backend), in the order they run."""
DEFERRAL_RACE_RETRY = {
    "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
}
"""Airflow 3.3.2's scheduler can fail a resumed deferred task when it processes the executor's
stale "success" of the deferring try after the trigger already fired and the task is queued
again (apache/airflow#67287; 3.3.2 only covers the `scheduled` case, #66431). A step that ends
within seconds of deferring hits it on a loaded machine (seen once in ten runs here). One retry
is what a deployment does about it, and it also exercises the provider's idempotent step ids:
the retried task gets its finished step back and the scheduler dispatches nothing twice."""
APP_END_WAIT_S = 30.0
"""The listener ends the application from a thread in Airflow's scheduler after the run
succeeds, so the application may still be open for a moment when Airflow reports success."""


@pytest.fixture
def deployment(store_url: str, hermes: Hermes, tmp_path: Path) -> Iterator[AirflowServices]:
    """A started Airflow deployment whose metadata lives in `store_url`, whose dags folder holds
    only `rag_answer`, and whose `hermesflow_default` connection points at `hermes`. Afterwards
    every component must have exited on SIGTERM within the grace period, and no process of the
    deployment may be left (`stop()` checks that by PID)."""
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(EXAMPLE_DAGS / f"{DAG_ID}.py", dags)
    connection = f"hermesflow://:{hermes.token}@{hermes.url.removeprefix('http://')}"
    services = AirflowServices(
        tmp_path / "airflow",
        dags,
        db_url=store_url,
        env={"AIRFLOW_CONN_HERMESFLOW_DEFAULT": connection, **DEFERRAL_RACE_RETRY},
    )
    services.start()
    try:
        yield services
    finally:
        ended = services.stop()
    assert all(how.startswith("exit") for how in ended.values()), f"needed SIGKILL: {ended}"


def _declared_graph(dag_file: Path) -> PDGraph:
    """The PDGraph the DAG's operators declare, compiled from the DAG parsed in this process."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=dag_file)
    assert not bag.import_errors, bag.import_errors
    return dag_pdgraph(bag.dags[DAG_ID])  # not get_dag(), which reads Airflow's database


def test_dag_triggered_through_rest_api_runs_ranked_by_hermesflow(
    deployment: AirflowServices, hermes: Hermes
) -> None:
    started = time.monotonic()
    deployment.wait_for_dag(DAG_ID)
    deployment.unpause(DAG_ID)
    run_id = deployment.trigger(DAG_ID, conf=CONF)
    state = deployment.wait_for_run(DAG_ID, run_id)
    instances = deployment.task_instances(DAG_ID, run_id)
    tasks = {t["task_id"]: t["state"] for t in instances}
    if state != "success" or tasks != dict.fromkeys(STEPS, "success"):
        deployment.fail(f"run {run_id} ended {state}; task states {tasks}")
    tries = {t["task_id"]: t["try_number"] for t in instances}
    print(f"{DAG_ID}: trigger to success in {time.monotonic() - started:.1f} s, tries {tries}")
    deferred = {e["task_id"] for e in deployment.event_log(DAG_ID, run_id, "deferred")}
    assert deferred == set(STEPS), f"waited in the triggerer: {deferred}"

    app_id = f"{DAG_ID}:{run_id}"
    with hermes.client() as api:
        assert api.get("/v1/stats").json()["policy"] == "gittins"
        app = api.get(f"/v1/apps/{quote(app_id, safe='')}", params={"wait": APP_END_WAIT_S})
        graph = api.get(f"/v1/classes/{DAG_ID}/graph")
    assert app.status_code == 200, app.text
    assert app.json()["app_class"] == DAG_ID and app.json()["phase"] == "finished", app.json()

    events = hermes.events(app_id)
    dispatched = [e for e in events if e["kind"] == "dispatch"]
    assert [e["backend"] for e in dispatched] == list(STEPS.values()), events
    assert all(isinstance(e["detail"]["rank"], float) for e in dispatched), events

    assert graph.status_code == 200, graph.text
    served = PDGraph.model_validate(graph.json())
    assert structure_of(served) == structure_of(_declared_graph(EXAMPLE_DAGS / f"{DAG_ID}.py"))
