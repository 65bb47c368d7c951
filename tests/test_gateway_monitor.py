"""The monitoring routes over HTTP (`GET /v1/apps`, `/v1/classes`, `/v1/act`, and the added
fields of `/v1/backends` and `/v1/stats`): auth, parameter bounds, and their answers from a real
scheduler with a one-worker tool pool, so steps queue behind each other in the policy's order."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

ray = pytest.importorskip("ray")

from support.serving import Serving, serving  # noqa: E402

from hermesflow.api.models.control import BackendView  # noqa: E402
from hermesflow.api.models.monitor import ActHistory, ClassSummary, LiveAppView  # noqa: E402
from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.pdgraph.distributions import Empirical  # noqa: E402
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind  # noqa: E402
from hermesflow.schedulers.runtime_config import RuntimeConfig  # noqa: E402

TOKEN = f"monitor-token-{uuid.uuid4().hex}"
ONE_WORKER = BackendSpec(
    name="tools", type="python-tools", options={"workers": 1}, expected_warmup_s=2.0
)
LIVE_APPS = TypeAdapter(list[LiveAppView])
CLASSES = TypeAdapter(list[ClassSummary])


def _graph(name: str, exec_s: tuple[float, ...]) -> dict[str, Any]:
    work = Stage(
        kind=StageKind.TOOL, backend="tools", next={END: 1.0}, exec_s=Empirical(samples=exec_s)
    )
    return PDGraph(name=name, entry={"work": 1.0}, stages={"work": work}).model_dump(mode="json")


@pytest.fixture(scope="module")
def served(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """The pool warm, no refit during the module (ranks stay the declared graphs' ones), and
    the open classes `quick` and `slow` declared."""
    config = RuntimeConfig(
        db_url=f"sqlite:///{tmp_path_factory.mktemp('monitor') / 'hermes.db'}",
        backends=[ONE_WORKER],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=("tools",),
        refit_interval_s=3600.0,
    )
    with serving(config, TOKEN, "monitor") as served, _client(served.url) as api:
        for name, exec_s in (("quick", (0.1, 0.2)), ("slow", (30.0, 40.0))):
            assert (
                api.put(f"/v1/classes/{name}/graph", json=_graph(name, exec_s)).status_code == 201
            )
        yield served


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


@pytest.fixture
def api(served: Serving) -> Iterator[httpx.Client]:
    with _client(served.url) as client:
        yield client


def _put(api: httpx.Client, app_id: str, app_class: str, seconds: float) -> None:
    call = {"kind": "tool", "tool": "sleep", "args": {"seconds": seconds}}
    body = {"app_class": app_class, "stage": "work", "backend": "tools", "call": call}
    assert api.put(f"/v1/apps/{app_id}/steps/work", json=body).status_code == 202


def _finish(api: httpx.Client, app_id: str) -> dict[str, Any]:
    step = api.get(f"/v1/apps/{app_id}/steps/work", params={"wait": 30}).json()
    assert step["state"] == "done", step
    return api.post(f"/v1/apps/{app_id}/finish").json()


def _live(api: httpx.Client, **params: Any) -> list[LiveAppView]:
    response = api.get("/v1/apps", params=params)
    assert response.status_code == 200, response.text
    return LIVE_APPS.validate_python(response.json())


def _app_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


# -- auth and parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/apps", "/v1/classes", "/v1/act"])
def test_monitoring_routes_need_the_bearer_token(served: Serving, path: str) -> None:
    missing = httpx.get(f"{served.url}{path}")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{served.url}{path}", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    with _client(served.url) as api:
        assert api.get(path).status_code == 200


@pytest.mark.parametrize(
    ("path", "params", "name"),
    [
        ("/v1/apps", {"limit": 0}, "limit"),
        ("/v1/apps", {"limit": 1001}, "limit"),
        ("/v1/apps", {"limit": "many"}, "limit"),
        ("/v1/apps", {"app_class": ""}, "app_class"),
        ("/v1/act", {"window_s": 59}, "window_s"),
        ("/v1/act", {"window_s": 31 * 86400}, "window_s"),
        ("/v1/act", {"buckets": 0}, "buckets"),
        ("/v1/act", {"buckets": 201}, "buckets"),
        ("/v1/act", {"buckets": 2.5}, "buckets"),
    ],
)
def test_out_of_bounds_parameters_are_422_naming_the_parameter(
    api: httpx.Client, path: str, params: dict, name: str
) -> None:
    response = api.get(path, params=params)
    assert response.status_code == 422, response.text
    assert [problem["loc"] for problem in response.json()["detail"]] == [["query", name]]


# -- answers -------------------------------------------------------------------------------------


def test_live_apps_most_urgent_first(api: httpx.Client) -> None:
    blocker, slow, quick = _app_id("blocker"), _app_id("slow"), _app_id("quick")
    _put(api, blocker, "quick", 2.0)
    deadline = time.monotonic() + 30
    while not any(v.app_id == blocker and v.running_calls == 1 for v in _live(api)):
        assert time.monotonic() < deadline, "the blocking step never started"
        time.sleep(0.05)
    _put(api, slow, "slow", 0.1)  # arrives first, served second
    _put(api, quick, "quick", 0.1)
    listed = _live(api)
    assert [v.position for v in listed] == list(range(1, len(listed) + 1))
    views = {v.app_id: v for v in listed}
    assert views[quick].position < views[slow].position
    assert views[quick].rank < views[slow].rank
    assert (views[slow].queued_calls, views[slow].running_calls, views[slow].policy) == (
        1,
        0,
        "gittins",
    )
    remaining = views[slow].remaining_s
    assert 30.0 <= remaining.low <= remaining.mean <= remaining.high <= 40.0
    assert remaining.level == 0.8
    (only_slow,) = _live(api, app_class="slow")
    assert only_slow.app_id == slow and only_slow.position == views[slow].position
    assert len(_live(api, limit=1)) == 1
    for app_id in (blocker, slow, quick):
        assert _finish(api, app_id)["phase"] == "finished"
    assert not {blocker, slow, quick} & {v.app_id for v in _live(api)}


def test_classes_name_their_kind_and_graph_source(api: httpx.Client) -> None:
    app_id = _app_id("counted")
    _put(api, app_id, "quick", 0.05)
    _finish(api, app_id)
    response = api.get("/v1/classes")
    assert response.status_code == 200, response.text
    classes = {c.name: c for c in CLASSES.validate_python(response.json())}
    assert classes["quick"].kind == "open" and classes["quick"].source == "declared"
    assert classes["quick"].version == 1 and classes["quick"].finished_runs >= 1
    assert classes["sleep_chain"].kind == "program" and classes["sleep_chain"].source == "prior"


def test_act_history_of_finished_program_runs(api: httpx.Client) -> None:
    submitted = api.post(
        "/v1/apps", json={"app_class": "sleep_chain", "inputs": {"steps": 1, "seconds": 0.05}}
    )
    assert submitted.status_code == 201, submitted.text
    app_id = submitted.json()["app_id"]
    run = api.get(f"/v1/apps/{app_id}", params={"wait": 30}).json()
    assert run["phase"] == "finished"
    response = api.get(
        "/v1/act", params={"window_s": 600, "buckets": 3, "app_class": "sleep_chain"}
    )
    assert response.status_code == 200, response.text
    history = ActHistory.model_validate(response.json())
    assert (history.window_s, history.bucket_s) == (600.0, 200.0)
    (series,) = history.series
    assert series.policy == "gittins" and [p.runs for p in series.points] == [0, 0, 1]
    assert series.points[2].start == pytest.approx(time.time() - 200, abs=30)
    (total,) = history.totals
    assert (total.runs, total.mean_s, total.p95_s) == (
        1,
        pytest.approx(run["act_s"]),
        pytest.approx(run["act_s"]),
    )
    default = ActHistory.model_validate(api.get("/v1/act").json())
    assert (default.window_s, len(default.series[0].points)) == (86400.0, 24)


def test_backends_and_stats_gain_their_monitoring_fields(api: httpx.Client) -> None:
    (tools,) = [BackendView.model_validate(b) for b in api.get("/v1/backends").json()]
    assert tools.phase == "warm" and tools.warmups == 1
    assert tools.last_warmup_s > 0 and tools.warm_since <= time.time()
    stats = api.get("/v1/stats").json()
    assert "ray_dashboard_url" in stats and stats["ray_dashboard_url"] is None


def test_the_schema_lists_the_monitoring_routes(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    for path in ("/v1/apps", "/v1/classes", "/v1/act"):
        assert schema["paths"][path]["get"]["tags"] == ["monitoring"], path
    assert {"LiveAppView", "RemainingEstimate", "ClassSummary", "ActHistory"} <= set(
        schema["components"]["schemas"]
    )
