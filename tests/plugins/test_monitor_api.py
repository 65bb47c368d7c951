"""The plugin app in a real Airflow api-server, reading a real Hermesflow: Airflow's login guards
every route, the JSON API shows a running program's state, the navigation entry is registered,
a broken connection is a 502/503 that names it and the fix, and Schemathesis finds no server
error in the app's own OpenAPI schema."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest

pytest.importorskip("airflow")
pytest.importorskip("ray")

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugin_support import CONN_ID, AirflowApi, Hermes
from support.airflow_services import free_port

PREFIX = "/hermesflow"
API_ROUTES = ("/api/apps", "/api/backends", "/api/classes", "/api/act", "/api/stats")
GUARDED = (
    *API_ROUTES,
    "/api/classes/sleep_chain/graph",
    "/ui",
    "/static/hermesflow.js",
    "/openapi.json",
)
EXAMPLES_PER_OPERATION = 15
"""Generated requests per operation, valid and invalid ones (derandomized: the same requests on
every run, so a failure reproduces)."""


@contextmanager
def edited_connection(airflow_api: AirflowApi, hermes: Hermes, **fields: Any) -> Iterator[None]:
    """The plugin's connection with `fields` changed, pointed back at `hermes` afterwards."""
    airflow_api.patch_connection(**fields)
    try:
        yield
    finally:
        airflow_api.patch_connection(**{k: hermes.connection()[k] for k in fields})


def test_every_route_needs_an_airflow_login(airflow_api: AirflowApi) -> None:
    with airflow_api.anonymous() as anonymous:
        for route in GUARDED:
            assert anonymous.get(PREFIX + route).status_code == 401, route
            forged = anonymous.get(PREFIX + route, headers={"Authorization": "Bearer forged"})
            assert forged.status_code == 403, route
        page = anonymous.get(f"{PREFIX}/ui", headers={"Accept": "text/html"})
        assert page.status_code == 401 and "Log in to Airflow" in page.text
        assert f"next={quote(PREFIX + '/ui', safe='')}" in page.text, page.text
        for unserved in ("/docs", "/redoc"):  # FastAPI's own would be anonymous (STACK §9)
            assert anonymous.get(PREFIX + unserved).status_code == 404, unserved
    with airflow_api.client() as api:
        schema = api.get(f"{PREFIX}/openapi.json").json()
    assert schema["servers"] == [{"url": PREFIX}]
    assert set(schema["paths"]) == {*API_ROUTES, "/api/classes/{name}/graph", "/ui"}


def test_the_navigation_entry_is_registered(airflow_api: AirflowApi) -> None:
    with airflow_api.client() as api:
        plugins = api.get("/api/v2/plugins").json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "hermesflow"]
    (view,) = plugin["external_views"]
    wanted = {"name": "Hermesflow", "href": f"{PREFIX}/ui", "destination": "nav"}
    assert {key: view[key] for key in wanted} == wanted
    assert view["url_route"] == "hermesflow"  # opens the page inside Airflow's UI
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == [PREFIX]


def test_the_api_shows_a_running_program(airflow_api: AirflowApi, hermes: Hermes) -> None:
    app_id = f"plugin-tests:{uuid.uuid4().hex[:12]}"
    with hermes.client() as server:
        submitted = server.post(
            "/v1/apps",
            json={
                "app_class": "sleep_chain",
                "app_id": app_id,
                "inputs": {"steps": 2, "seconds": 1.5},
            },
        )
        assert submitted.status_code == 201, submitted.text
        with airflow_api.client() as api:
            live = api.get(f"{PREFIX}/api/apps", params={"app_class": "sleep_chain"})
            assert live.status_code == 200, live.text
            (view,) = [a for a in live.json() if a["app_id"] == app_id]
            assert view["phase"] in ("admitted", "running") and view["position"] >= 1
            assert view["policy"] == "gittins"

            classes = {c["name"]: c for c in api.get(f"{PREFIX}/api/classes").json()}
            assert classes["sleep_chain"]["kind"] == "program"
            graph = api.get(f"{PREFIX}/api/classes/sleep_chain/graph").json()
            assert graph["name"] == "sleep_chain" and "nap" in graph["stages"]
            backends = {b["name"]: b for b in api.get(f"{PREFIX}/api/backends").json()}
            assert backends["tools"]["phase"] == "warm"
            stats = api.get(f"{PREFIX}/api/stats").json()
            assert stats["policy"] == "gittins" and "sleep_chain" in stats["classes"]

            ended = server.get(f"/v1/apps/{app_id}", params={"wait": 60}).json()
            assert ended["phase"] == "finished", ended
            act = api.get(f"{PREFIX}/api/act", params={"app_class": "sleep_chain", "window_s": 600})
            assert act.status_code == 200, act.text
            (total,) = act.json()["totals"]
            assert total["policy"] == "gittins" and total["runs"] >= 1
            assert total["mean_s"] >= 3.0  # two naps of 1.5 s


def test_an_unknown_class_and_bad_parameters_are_client_errors(airflow_api: AirflowApi) -> None:
    with airflow_api.client() as api:
        missing = api.get(f"{PREFIX}/api/classes/no-such-class/graph")
        assert missing.status_code == 404, missing.text
        for route in ("/api/apps", "/api/act"):  # the longest filter Hermesflow accepts too
            longest = api.get(PREFIX + route, params={"app_class": "c" * 250})
            assert longest.status_code == 200, longest.text
        for route, params in [
            ("/api/apps", {"limit": 0}),
            ("/api/apps", {"limit": 1001}),
            ("/api/act", {"window_s": 59}),
            ("/api/act", {"buckets": 201}),
            ("/api/apps", {"app_class": ""}),
            ("/api/act", {"app_class": "c" * 251}),
        ]:
            assert api.get(PREFIX + route, params=params).status_code == 422, (route, params)


@pytest.mark.parametrize(
    ("fields", "status", "says"),
    [
        pytest.param({"port": None}, 503, "hermesflow serve", id="nothing-listens"),
        pytest.param({"password": "not-it"}, 502, "hermesflow serve --token", id="wrong-token"),
        pytest.param({"conn_type": "http"}, 503, "of type 'hermesflow'", id="wrong-type"),
    ],
)
def test_a_broken_connection_is_named_with_its_fix(
    airflow_api: AirflowApi, hermes: Hermes, fields: dict[str, Any], status: int, says: str
) -> None:
    fields = {"port": free_port()} if fields == {"port": None} else fields  # a port free now
    with edited_connection(airflow_api, hermes, **fields), airflow_api.client() as api:
        for route in API_ROUTES:
            answer = api.get(PREFIX + route)
            assert answer.status_code == status, (route, answer.text)
            detail = answer.json()["detail"]
            assert CONN_ID in detail and says in detail, detail
            assert hermes.token not in answer.text
    with airflow_api.client() as api:  # the connection repaired: the plugin follows at once
        assert api.get(f"{PREFIX}/api/stats").status_code == 200


# -- Schemathesis over the app's own schema -----------------------------------------------------
# Driven through `schema.as_strategy` and Hypothesis: `schemathesis.pytest.from_fixture` (the
# way to read a schema from a server a fixture starts) fails on pytest 9.2, which dropped the
# private `Item._nodeid` that Schemathesis 4.32 renames its tests through.


@pytest.fixture(scope="module")
def monitor_schema(airflow_api: AirflowApi) -> schemathesis.BaseSchema:
    """The schema, read with the admin's token (it is guarded like every route); its server
    entry names the mount point, so the operations resolve under it."""
    schema = schemathesis.openapi.from_url(
        f"{airflow_api.url}{PREFIX}/openapi.json", headers=airflow_api.auth
    )
    schema.config.update(headers=airflow_api.auth)
    return schema


def fuzz(schema: schemathesis.BaseSchema, check: Callable[[schemathesis.Case], None]) -> None:
    """`check` on valid and invalid requests to each operation of `schema` in turn."""
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for found in schema.get_all_operations():
        operation = found.ok()

        @given(case=st.one_of(*(operation.as_strategy(mode) for mode in modes)))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def run(case: schemathesis.Case) -> None:
            check(case)

        run()


def test_no_server_error_against_a_live_hermesflow(
    monitor_schema: schemathesis.BaseSchema,
) -> None:
    """Every check of Schemathesis: no 5xx at all, documented statuses and bodies, refused
    invalid input and missing credentials."""
    fuzz(monitor_schema, lambda case: case.call_and_validate())


def test_only_the_documented_errors_with_hermesflow_down(
    airflow_api: AirflowApi, hermes: Hermes, monitor_schema: schemathesis.BaseSchema
) -> None:
    def check(case: schemathesis.Case) -> None:
        no_5xx = schemathesis.checks.not_a_server_error
        response = case.call_and_validate(excluded_checks=[no_5xx])
        assert response.status_code < 500 or response.status_code == 503, response.text

    with edited_connection(airflow_api, hermes, port=free_port()):
        fuzz(monitor_schema, check)
