"""The routes an Airflow provider uses, end to end over HTTP: named asynchronous steps, declared
class graphs, task outcomes and failed finishes. One scheduler with a real tool pool (no LLM, so
it starts in seconds) and one gateway on the session's Ray cluster; the restart test starts its
own pair, because it kills its scheduler."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray")

from support.serving import serving  # noqa: E402

from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.journal import RunJournal  # noqa: E402
from hermesflow.pdgraph.distributions import Empirical  # noqa: E402
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind  # noqa: E402
from hermesflow.schedulers.runtime_config import RuntimeConfig  # noqa: E402
from hermesflow.store import RunPhase, Store, TaskOutcomeRow  # noqa: E402

TOKEN = f"steps-token-{uuid.uuid4().hex}"
TOOLS = BackendSpec(
    name="tools", type="python-tools", options={"workers": 4}, expected_warmup_s=2.0
)
PROGRAM = "sleep_chain"
"""A program class of `tests/support/runtime_programs.py`: declaring its graph is refused."""
CALCULATE = {"kind": "tool", "tool": "calculator", "args": {"expression": "2 + 3 * 4"}}
DIVIDE_BY_ZERO = {"kind": "tool", "tool": "calculator", "args": {"expression": "1 / 0"}}


def _nap(seconds: float) -> dict[str, Any]:
    return {"kind": "tool", "tool": "sleep", "args": {"seconds": seconds}}


@dataclass
class Served:
    url: str
    db_url: str
    scheduler: Any


@contextmanager
def _serving(db_url: str) -> Iterator[Served]:
    """A scheduler with the tool pool warm and a gateway in front, under names of their own."""
    config = RuntimeConfig(
        db_url=db_url,
        backends=[TOOLS],
        programs={PROGRAM: "runtime_programs:SleepChain"},
        warm_at_start=("tools",),
    )
    with serving(config, TOKEN, "steps") as served:
        yield Served(served.url, db_url, served.scheduler)


@pytest.fixture(scope="module")
def served(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with _serving(f"sqlite:///{tmp_path_factory.mktemp('steps') / 'hermes.db'}") as served:
        yield served


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)


@pytest.fixture
def api(served: Served) -> Iterator[httpx.Client]:
    with _client(served.url) as client:
        yield client


def _app_id() -> str:
    return f"etl:manual__{uuid.uuid4().hex[:8]}"  # an Airflow-style id: dag_id:run_id


def _step_url(app_id: str, step_id: str) -> str:
    return f"/v1/apps/{app_id}/steps/{step_id}"


def _put(
    api: httpx.Client, app_id: str, step_id: str, call: dict, stage: str = "calc"
) -> httpx.Response:
    body = {"app_class": "etl", "stage": stage, "backend": "tools", "call": call}
    return api.put(_step_url(app_id, step_id), json=body)


def _wait(api: httpx.Client, app_id: str, step_id: str, wait_s: float = 30) -> dict[str, Any]:
    response = api.get(_step_url(app_id, step_id), params={"wait": wait_s})
    assert response.status_code == 200, response.text
    return response.json()


def _calls_of(db_url: str, app_id: str) -> list:
    journal = RunJournal(Store(db_url))
    return journal.calls(journal.run(app_id).id)


# -- named steps ---------------------------------------------------------------------------------


def test_a_named_step_is_queued_at_once_and_read_with_a_long_poll(
    api: httpx.Client, served: Served
) -> None:
    app_id = _app_id()
    queued = _put(api, app_id, "calc", CALCULATE)
    assert queued.status_code == 202, queued.text
    assert queued.json() == {
        "app_id": app_id,
        "step_id": "calc",
        "stage": "calc",
        "state": "queued",
        "attempt": 1,
        "result": None,
        "error": None,
    }
    done = _wait(api, app_id, "calc")
    assert done["state"] == "done" and done["result"]["value"] == 14 and done["attempt"] == 1
    again = _put(api, app_id, "calc", CALCULATE)
    assert again.status_code == 200 and again.json() == done
    assert len(_calls_of(served.db_url, app_id)) == 1


def test_the_same_step_twice_while_it_runs_is_one_call(api: httpx.Client, served: Served) -> None:
    app_id = _app_id()
    first = _put(api, app_id, "nap[0]", _nap(1.0), stage="nap")
    repeated = _put(api, app_id, "nap[0]", _nap(1.0), stage="nap")
    assert (first.status_code, repeated.status_code) == (202, 200)
    assert repeated.json()["state"] in ("queued", "running") and repeated.json()["attempt"] == 1
    assert _wait(api, app_id, "nap[0]")["state"] == "done"
    assert len(_calls_of(served.db_url, app_id)) == 1


def test_a_long_poll_answers_after_its_wait_while_the_step_runs(api: httpx.Client) -> None:
    app_id = _app_id()
    _put(api, app_id, "nap", _nap(3.0), stage="nap")
    assert api.get(_step_url(app_id, "nap")).json()["state"] in ("queued", "running")
    assert _wait(api, app_id, "nap", wait_s=0.3)["state"] in ("queued", "running")
    assert _wait(api, app_id, "nap")["state"] == "done"


def test_a_failed_step_sent_again_runs_as_the_next_attempt(
    api: httpx.Client, served: Served
) -> None:
    app_id = _app_id()
    assert _put(api, app_id, "divide", DIVIDE_BY_ZERO).status_code == 202
    failed = _wait(api, app_id, "divide")
    assert failed["state"] == "failed" and failed["attempt"] == 1 and failed["error"]
    retried = _put(api, app_id, "divide", CALCULATE)
    assert retried.status_code == 202 and retried.json()["attempt"] == 2
    done = _wait(api, app_id, "divide")
    assert (done["state"], done["attempt"], done["result"]["value"]) == ("done", 2, 14)
    assert len(_calls_of(served.db_url, app_id)) == 2


def test_steps_of_an_ended_application_are_409_but_its_steps_can_still_be_read(
    api: httpx.Client,
) -> None:
    app_id = _app_id()
    _put(api, app_id, "calc", CALCULATE)
    _wait(api, app_id, "calc")
    assert api.post(f"/v1/apps/{app_id}/finish").json()["phase"] == "finished"
    late = _put(api, app_id, "load", CALCULATE)
    assert late.status_code == 409 and app_id in late.json()["detail"]
    assert "new DAG run" in late.json()["detail"]
    assert _put(api, app_id, "calc", CALCULATE).status_code == 200
    assert _wait(api, app_id, "calc")["result"]["value"] == 14


@pytest.mark.parametrize(
    ("path", "problem"),
    [("/v1/apps/nobody/steps/calc", "nobody"), ("/v1/apps/{app}/steps/nothing", "nothing")],
)
def test_unknown_applications_and_steps_are_404(api: httpx.Client, path: str, problem: str) -> None:
    app_id = _app_id()
    _put(api, app_id, "calc", CALCULATE)
    response = api.get(path.format(app=app_id), params={"wait": 1})
    assert response.status_code == 404 and problem in response.json()["detail"]


def test_a_named_step_cannot_be_streamed(api: httpx.Client) -> None:
    body = {
        "app_class": "etl",
        "stage": "calc",
        "backend": "tools",
        "call": CALCULATE,
        "stream": True,
    }
    response = api.put(_step_url(_app_id(), "calc"), json=body)
    assert response.status_code == 422 and "stream=false" in response.json()["detail"]


# -- finishing -----------------------------------------------------------------------------------


def test_a_failed_finish_ends_the_application_and_its_running_steps(
    api: httpx.Client, served: Served
) -> None:
    app_id = _app_id()
    _put(api, app_id, "nap", _nap(5.0), stage="nap")
    _put(api, app_id, "later", _nap(5.0), stage="nap")
    refused = api.post(f"/v1/apps/{app_id}/finish")
    assert refused.status_code == 422 and "still has 2 step(s) running" in refused.json()["detail"]
    failed = api.post(
        f"/v1/apps/{app_id}/finish", json={"state": "failed", "error": "task load failed"}
    )
    assert failed.status_code == 200, failed.text
    assert (failed.json()["phase"], failed.json()["error"]) == ("failed", "task load failed")
    step = _wait(api, app_id, "nap", wait_s=1)
    assert (step["state"], step["error"]) == ("failed", "task load failed")
    run = RunJournal(Store(served.db_url)).run(app_id)
    assert (run.phase, run.error) == (RunPhase.FAILED, "task load failed")
    assert _put(api, app_id, "nap", _nap(0.1), stage="nap").status_code == 409
    again = api.post(f"/v1/apps/{app_id}/finish", json={"state": "finished"})
    assert again.json()["phase"] == "failed"


def test_an_unknown_finish_state_is_422(api: httpx.Client) -> None:
    response = api.post(f"/v1/apps/{_app_id()}/finish", json={"state": "exploded"})
    assert response.status_code == 422


# -- task outcomes -------------------------------------------------------------------------------


def test_task_outcomes_are_recorded_once_even_before_a_step(
    api: httpx.Client, served: Served
) -> None:
    app_id = _app_id()
    outcome = {
        "app_class": "etl",
        "task_id": "extract",
        "try_number": 1,
        "state": "success",
        "duration_s": 0.5,
    }
    first = api.post(f"/v1/apps/{app_id}/tasks", json=outcome)
    assert first.status_code == 200, first.text
    assert first.json() == {**outcome, "map_index": -1, "step_id": None, "recorded": True}
    assert api.post(f"/v1/apps/{app_id}/tasks", json=outcome).json()["recorded"] is False
    mapped = {**outcome, "task_id": "transform", "map_index": 3, "step_id": "transform[3]"}
    assert api.post(f"/v1/apps/{app_id}/tasks", json=mapped).json()["recorded"] is True
    rows = Store(served.db_url).task_outcomes(app_id)
    assert [(r.task_id, r.map_index, r.state.value, r.step_id) for r in rows] == [
        ("extract", -1, "success", None),
        ("transform", 3, "success", "transform[3]"),
    ]
    assert all(isinstance(r, TaskOutcomeRow) for r in rows)
    assert api.post(f"/v1/apps/{app_id}/finish").status_code == 404  # no step, so no run


@pytest.mark.parametrize(
    "change", [{"try_number": 0}, {"state": "running"}, {"map_index": -2}, {"task_id": ""}]
)
def test_malformed_task_outcomes_are_422(api: httpx.Client, change: dict) -> None:
    outcome = {"app_class": "etl", "task_id": "extract", "try_number": 1, "state": "success"}
    assert api.post(f"/v1/apps/{_app_id()}/tasks", json={**outcome, **change}).status_code == 422


# -- declared class graphs -----------------------------------------------------------------------


def _stage(next_stage: dict[str, float], backend: str = "tools", exec_s: float = 0.5) -> Stage:
    return Stage(
        kind=StageKind.TOOL, backend=backend, next=next_stage, exec_s=Empirical(samples=(exec_s,))
    )


def _dag(name: str, *, exec_s: float = 0.5, with_load: bool = False) -> dict[str, Any]:
    stages = {"extract": _stage({"load" if with_load else END: 1.0}, exec_s=exec_s)}
    if with_load:
        stages["load"] = _stage({END: 1.0})
    return PDGraph(name=name, entry={"extract": 1.0}, stages=stages).model_dump(mode="json")


def test_declaring_a_graph_new_same_and_changed(api: httpx.Client, served: Served) -> None:
    name = f"dag_{uuid.uuid4().hex[:8]}"
    created = api.put(f"/v1/classes/{name}/graph", json=_dag(name))
    assert created.status_code == 201, created.text
    assert created.json() == {"name": name, "version": 1, "changed": True}
    same = api.put(f"/v1/classes/{name}/graph", json=_dag(name, exec_s=9.0))  # only sizes differ
    assert same.status_code == 200 and same.json() == {"name": name, "version": 1, "changed": False}
    assert api.get(f"/v1/classes/{name}/graph").json()["stages"]["extract"]["exec_s"][
        "samples"
    ] == [0.5]
    changed = api.put(f"/v1/classes/{name}/graph", json=_dag(name, with_load=True))
    assert changed.status_code == 200 and changed.json() == {
        "name": name,
        "version": 2,
        "changed": True,
    }
    assert set(api.get(f"/v1/classes/{name}/graph").json()["stages"]) == {"extract", "load"}


def test_a_declared_graph_replaces_the_vague_prior_of_its_runs(
    api: httpx.Client, served: Served
) -> None:
    name = f"dag_{uuid.uuid4().hex[:8]}"
    api.put(f"/v1/classes/{name}/graph", json=_dag(name, with_load=True))
    app_id = f"{name}:run"
    body = {"app_class": name, "stage": "extract", "backend": "tools", "call": CALCULATE}
    assert api.put(_step_url(app_id, "extract"), json=body).status_code == 202
    assert _wait(api, app_id, "extract")["state"] == "done"
    store = Store(served.db_url)
    assert store.latest_snapshot(name, "open-prior") is None
    assert set(api.get(f"/v1/classes/{name}/graph").json()["stages"]) == {"extract", "load"}


@pytest.mark.parametrize(
    ("graph", "problems"),
    [
        (_dag(PROGRAM), ["class 'sleep_chain' is a program class"]),
        (
            PDGraph(
                name="gpu_dag",
                entry={"a": 1.0},
                stages={"a": _stage({"b": 1.0}), "b": _stage({END: 1.0}, backend="gpu")},
            ).model_dump(mode="json"),
            ["stage 'b' runs on backend 'gpu'", "configured backends: ['tools']"],
        ),
        (_dag("another_name"), ["named 'another_name'"]),
        ({"name": "gpu_dag", "entry": {"a": 1.0}, "stages": {}}, ["stages"]),
    ],
)
def test_undeclarable_graphs_are_422_naming_the_problem(
    api: httpx.Client, graph: dict, problems: list[str]
) -> None:
    target = PROGRAM if graph["name"] == PROGRAM else "gpu_dag"
    response = api.put(f"/v1/classes/{target}/graph", json=graph)
    assert response.status_code == 422, response.text
    assert all(problem in str(response.json()["detail"]) for problem in problems)


def test_the_schema_lists_the_new_routes(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"put", "get"} <= set(paths["/v1/apps/{app_id}/steps/{step_id}"])
    assert "post" in paths["/v1/apps/{app_id}/tasks"] and "put" in paths["/v1/classes/{name}/graph"]
    assert {"StepView", "ClassDeclaration", "TaskOutcome", "FinishRequest"} <= set(
        schema["components"]["schemas"]
    )


# -- a scheduler restart between PUT and GET ----------------------------------------------------


@pytest.fixture
def restartable(ray_cluster: None, tmp_path: Path) -> Iterator[Served]:
    """A pair of its own: the test kills this scheduler."""
    with _serving(f"sqlite:///{tmp_path / 'hermes.db'}") as served:
        yield served


def test_named_steps_survive_a_scheduler_restart(restartable: Served) -> None:
    app_id = _app_id()
    with _client(restartable.url) as api:
        for index in range(2):  # overlapping steps, as a mapped task's
            assert _put(api, app_id, f"nap[{index}]", _nap(1.5), stage="nap").status_code == 202
        ray.kill(restartable.scheduler, no_restart=False)
        for index in range(2):
            step = _wait(api, app_id, f"nap[{index}]")
            assert (step["state"], step["attempt"], step["result"]["value"]) == ("done", 1, 1.5)
        assert _put(api, app_id, "nap[0]", _nap(1.5), stage="nap").status_code == 200
        assert api.post(f"/v1/apps/{app_id}/finish").json()["phase"] == "finished"
        assert _wait(api, app_id, "nap[1]", wait_s=0)["state"] == "done"
    calls = _calls_of(restartable.db_url, app_id)
    assert len(calls) == 2 and all(c.result is not None for c in calls)
