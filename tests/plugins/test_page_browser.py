"""The Hermesflow page in a real browser: headless Chromium (through Playwright) logs in with
Airflow's own login form, opens the page at `/hermesflow/ui` and inside Airflow's UI through
the navigation entry (`/plugin/hermesflow`), and watches a live application of a declared open
class go through its steps: its row appears with its stage, moves on, and disappears when the
application finishes, while the class's PDGraph marks the stage it is at and the ACT history
counts the finished run. The page's banners are seen with the real api-server: 503 with the
plugin's connection pointed at a dead port, 401 with the browser's Airflow cookie removed, 403
with a forged one.

Screenshots go to the test's temporary folder; with `HERMESFLOW_UPDATE_SCREENSHOTS=1` they are
written to `docs/img/` instead (the README's pictures), e.g.
`HERMESFLOW_UPDATE_SCREENSHOTS=1 pytest tests/plugins/test_page_browser.py`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("airflow")
pytest.importorskip("ray")
sync_api = pytest.importorskip("playwright.sync_api")

from plugin_support import AirflowApi, Hermes
from support.airflow_services import free_port
from support.browser import chromium, log_in, needs_chromium

REPO = Path(__file__).resolve().parents[2]
ADMIN = "admin"
APP_CLASS = "page_triage"
"""An open class declared by this test only, so its graph and runs are this test's."""
UI_TIMEOUT_MS = 20_000
"""The page polls every 2 s; a state the API shows must be on the page well within this."""
STEP_WAIT_S = 60.0

pytestmark = needs_chromium


def _graph() -> dict[str, Any]:
    """Triage: classify, then look up (and perhaps classify again) or answer at once."""
    seconds = {"samples": [1.0, 3.0], "unit": "s"}

    def tool(next_: dict[str, float]) -> dict[str, Any]:
        return {"kind": "tool", "backend": "tools", "next": next_, "exec_s": seconds}

    return {
        "name": APP_CLASS,
        "entry": {"classify": 1.0},
        "stages": {
            "classify": tool({"lookup": 0.6, "answer": 0.4}),
            "lookup": tool({"classify": 0.25, "answer": 0.75}),
            "answer": tool({"__end__": 1.0}),
        },
    }


def _app_id() -> str:
    return f"triage-{uuid.uuid4().hex[:6]}"


def _nap(stage: str, seconds: float) -> dict[str, Any]:
    call = {"kind": "tool", "tool": "sleep", "args": {"seconds": seconds}}
    return {"app_class": APP_CLASS, "stage": stage, "backend": "tools", "call": call}


class Steps:
    """Named steps of open applications of `APP_CLASS`, over Hermesflow's HTTP API."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api

    def start(self, app_id: str, step_id: str, stage: str, seconds: float) -> None:
        answer = self.api.put(f"/v1/apps/{app_id}/steps/{step_id}", json=_nap(stage, seconds))
        assert answer.status_code == 202, answer.text

    def wait_done(self, app_id: str, step_id: str) -> None:
        answer = self.api.get(f"/v1/apps/{app_id}/steps/{step_id}", params={"wait": STEP_WAIT_S})
        assert answer.status_code == 200 and answer.json()["state"] == "done", answer.text

    def finish(self, app_id: str) -> None:
        answer = self.api.post(f"/v1/apps/{app_id}/finish")
        assert answer.status_code == 200 and answer.json()["phase"] == "finished", answer.text


@pytest.fixture
def steps(hermes: Hermes) -> Iterator[Steps]:
    with hermes.client() as api:
        declared = api.put(f"/v1/classes/{APP_CLASS}/graph", json=_graph())
        assert declared.status_code in (200, 201), declared.text
        yield Steps(api)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go (module docstring)."""
    if os.environ.get("HERMESFLOW_UPDATE_SCREENSHOTS") == "1":
        folder = REPO / "docs" / "img"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def _runs_counted(page: Any) -> int:
    """Finished runs the page's ACT totals count, all policies together."""
    return int(page.locator("#act-totals").get_attribute("data-runs"))


def _wait_for_more_runs(page: Any, runs: int) -> int:
    """Until the ACT totals count more than `runs` finished runs; the new count. (Polled from
    here: the page's Content-Security-Policy forbids the eval that `wait_for_function` needs.)"""
    sync_api.expect(page.locator("#act-totals")).not_to_have_attribute(
        "data-runs", str(runs), timeout=UI_TIMEOUT_MS
    )
    counted = _runs_counted(page)
    assert counted > runs
    return counted


def test_the_page_follows_a_live_application(
    airflow_api: AirflowApi, steps: Steps, browser: Any, shots: Path
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, airflow_api.url, ADMIN, airflow_api.password)

    page.goto(f"{airflow_api.url}/hermesflow/ui")
    page.wait_for_selector("body[data-loaded=true]")
    page.wait_for_selector("#backends tr[data-backend=tools][data-warmth=warm]")
    card = page.locator(f".class-card[data-class={APP_CLASS}]")
    card.locator("g.node[data-stage=classify]").wait_for()
    edge = card.locator("g.edge[data-from=classify][data-to=lookup]")
    assert edge.get_attribute("data-p") == "0.6"
    assert edge.locator("text").text_content() == "0.6"
    assert card.locator("g.edge[data-from=START][data-to=classify]").count() == 1
    assert card.locator("g.edge[data-from=answer][data-to=END]").count() == 1
    runs = _runs_counted(page)

    # A quick application ends first: the ACT history counts it.
    quick = _app_id()
    steps.start(quick, "classify", "classify", 0.2)
    steps.wait_done(quick, "classify")
    steps.finish(quick)
    runs = _wait_for_more_runs(page, runs)
    assert int(page.locator("#act-chart").get_attribute("data-points")) >= 1

    # The followed application, and two more that wait behind it, so the queue shows.
    app_id = _app_id()
    others = [(_app_id(), "classify"), (_app_id(), "lookup")]
    steps.start(app_id, "classify", "classify", 5.0)
    for other, stage in others:
        steps.start(other, stage, stage, 4.0)
    row = page.locator(f"#apps tr[data-app-id='{app_id}']")
    page.wait_for_selector(
        f"#apps tr[data-app-id='{app_id}'][data-phase=running][data-stage=classify]"
    )
    assert row.locator("td").nth(2).inner_text() == APP_CLASS
    page.wait_for_selector(f".class-card[data-class={APP_CLASS}] g.node[data-stage=classify].live")
    page.screenshot(path=str(shots / "hermesflow-page.png"), full_page=True)
    card.screenshot(path=str(shots / "hermesflow-pdgraph.png"))

    # The same, inside Airflow's UI: its navigation entry opens the page in a frame.
    in_airflow = context.new_page()
    in_airflow.on("pageerror", lambda error: errors.append(str(error)))
    in_airflow.goto(f"{airflow_api.url}/plugin/hermesflow")
    frame = in_airflow.frame_locator("iframe[src*='/hermesflow/ui']")
    frame.locator(f"#apps tr[data-app-id='{app_id}']").wait_for(timeout=UI_TIMEOUT_MS)
    frame.locator("body[data-loaded=true]").wait_for(timeout=UI_TIMEOUT_MS)
    in_airflow.screenshot(path=str(shots / "hermesflow-in-airflow.png"))
    in_airflow.close()

    # It moves on to its next stage, then ends: its row goes and the ACT history counts it.
    steps.wait_done(app_id, "classify")
    steps.start(app_id, "answer", "answer", 1.0)
    page.wait_for_selector(f"#apps tr[data-app-id='{app_id}'][data-stage=answer]")
    steps.wait_done(app_id, "answer")
    steps.finish(app_id)
    row.wait_for(state="detached")
    _wait_for_more_runs(page, runs)
    for other, stage in others:
        steps.wait_done(other, stage)
        steps.finish(other)

    assert errors == []
    context.close()


@pytest.mark.slow
def test_the_page_says_why_it_cannot_show_the_state(
    airflow_api: AirflowApi, hermes: Hermes, browser: Any
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    log_in(page, airflow_api.url, ADMIN, airflow_api.password)
    page.goto(f"{airflow_api.url}/hermesflow/ui")
    page.wait_for_selector("body[data-loaded=true]")
    banner = page.locator("#banner")
    assert banner.is_hidden()

    # Hermesflow unreachable: the plugin's connection points at a port nothing listens on.
    airflow_api.patch_connection(port=free_port())
    try:
        page.wait_for_selector("#banner[data-status='503']")
        assert "Hermesflow is unreachable" in banner.inner_text()
        assert "hermesflow_default" in banner.inner_text()  # the message names the connection
    finally:
        port = int(hermes.url.rsplit(":", 1)[1])
        airflow_api.patch_connection(port=port)
    banner.wait_for(state="hidden")

    # Logged out, or holding a token Airflow does not accept: the next poll is refused, and the
    # banner leads back to Airflow's login.
    cookies = context.cookies()
    context.clear_cookies()
    page.wait_for_selector("#banner[data-status='401']")
    assert "not logged in to Airflow" in banner.inner_text()
    login = page.locator("#banner-link")
    assert login.is_visible() and login.get_attribute("href") == f"{airflow_api.url}/"
    context.add_cookies([{"name": "_token", "value": "forged", "url": airflow_api.url}])
    page.wait_for_selector("#banner[data-status='403']")
    assert "login is not valid" in banner.inner_text() and login.is_visible()
    context.add_cookies(cookies)
    banner.wait_for(state="hidden")
    context.close()
