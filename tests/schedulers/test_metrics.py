"""The scheduler's Ray metrics as Prometheus scrapes them: the text each node's metrics agent
serves on its metrics export port (`ray.nodes()[i]["MetricsExportPort"]`), read while a real
scheduler queues, dispatches and finishes applications. The backend and class have names of
this module's own, so other schedulers on the shared cluster do not mix into the series."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ray = pytest.importorskip("ray")

from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.client_records import StepState  # noqa: E402
from hermesflow.pdgraph.distributions import Empirical  # noqa: E402
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind  # noqa: E402
from hermesflow.schedulers.metrics import ray_dashboard_url  # noqa: E402
from hermesflow.schedulers.runtime import start_scheduler  # noqa: E402
from hermesflow.schedulers.runtime_config import RuntimeConfig  # noqa: E402

SUFFIX = uuid.uuid4().hex[:8]
BACKEND = f"metered_tools_{SUFFIX}"
APP_CLASS = f"metered_{SUFFIX}"
CONTRACT_TAGS = ("backend", "app_class", "policy", "le")
"""The labels the contract defines (Ray adds its own: node, worker, session, version)."""
SCRAPE_TIMEOUT_S = 20.0

Samples = dict[tuple[str, frozenset], float]


def _scrape() -> Samples:
    """Every `ray_hermesflow_*` sample of every node, keyed by name and contract labels."""
    samples: Samples = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        text = httpx.get(url, timeout=10, trust_env=False).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_hermesflow_"):
                    labels = frozenset(
                        (k, v) for k, v in sample.labels.items() if k in CONTRACT_TAGS
                    )
                    samples[(sample.name, labels)] = sample.value
    return samples


def _label(**tags: str) -> frozenset:
    return frozenset(tags.items())


def _until(check: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        samples = _scrape()
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            mine = {k: v for k, v in samples.items() if BACKEND in str(k) or APP_CLASS in str(k)}
            pytest.fail(f"the metrics export never showed {what}; it has: {mine}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def metered(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory):
    """A scheduler whose one-worker tool pool (warm) makes calls queue behind a running one."""
    spec = BackendSpec(
        name=BACKEND, type="python-tools", options={"workers": 1}, expected_warmup_s=2.0
    )
    config = RuntimeConfig(
        db_url=f"sqlite:///{tmp_path_factory.mktemp('metrics') / 'hermes.db'}",
        backends=[spec],
        warm_at_start=(BACKEND,),
        refit_interval_s=3600.0,
    )
    handle = start_scheduler(config, name=f"metrics-{SUFFIX}")
    work = Stage(
        kind=StageKind.TOOL, backend=BACKEND, next={END: 1.0}, exec_s=Empirical(samples=(0.5,))
    )
    graph = PDGraph(name=APP_CLASS, entry={"work": 1.0}, stages={"work": work})
    ray.get(handle.declare_graph.remote(APP_CLASS, graph.model_dump(mode="json")))
    yield handle
    ray.get(handle.shutdown.remote())
    ray.kill(handle, no_restart=True)


def _put(handle: Any, key: str, seconds: float) -> None:
    call = {"kind": "tool", "tool": "sleep", "args": {"seconds": seconds}}
    ray.get(handle.put_step.remote(key, "work", APP_CLASS, "work", call, BACKEND))


def _running(handle: Any, key: str) -> bool:
    views = {v.app_id: v for v in ray.get(handle.live_apps.remote(APP_CLASS))}
    return key in views and views[key].running_calls == 1


def test_queue_rank_live_and_completion_metrics_reach_the_prometheus_export(metered) -> None:
    handle = metered
    backend, app_class = _label(backend=BACKEND), _label(app_class=APP_CLASS)
    blocker, first, second = (f"{label}-{SUFFIX}" for label in ("blocker", "first", "second"))
    _put(handle, blocker, 8.0)  # long enough for two exports of the busy queue
    deadline = time.monotonic() + 30
    while not _running(handle, blocker):
        assert time.monotonic() < deadline, "the blocking step never started"
        time.sleep(0.05)
    _put(handle, first, 0.1)
    _put(handle, second, 0.1)
    ranks = [v.rank for v in ray.get(handle.live_apps.remote(APP_CLASS)) if v.queued_calls]
    assert len(ranks) == 2

    busy = _until(
        lambda s: (
            s.get(("ray_hermesflow_queue_length", backend)) == 2
            and s.get(("ray_hermesflow_live_apps", app_class)) == 3
        ),
        "two queued calls and three live applications",
    )
    assert busy[("ray_hermesflow_best_rank", backend)] == pytest.approx(min(ranks))
    assert busy[("ray_hermesflow_backend_warm", backend)] == 1
    assert busy[("ray_hermesflow_warmup_seconds_count", backend)] == 1

    for key in (blocker, first, second):
        assert ray.get(handle.step.remote(key, "work", 30.0)).state is StepState.DONE
        ray.get(handle.finish_app.remote(key))
    finished = _label(app_class=APP_CLASS, policy="gittins")
    idle = _until(
        lambda s: (
            s.get(("ray_hermesflow_act_seconds_count", finished)) == 3
            and s.get(("ray_hermesflow_live_apps", app_class)) == 0
            and s.get(("ray_hermesflow_queue_length", backend)) == 0
        ),
        "three finished applications and an empty queue",
    )
    assert ("ray_hermesflow_best_rank", backend) not in idle  # NaN while empty: no sample
    assert idle[("ray_hermesflow_act_seconds_bucket", finished | {("le", "+Inf")})] == 3
    assert idle[("ray_hermesflow_act_seconds_bucket", finished | {("le", "0.1")})] == 0
    assert idle[("ray_hermesflow_backend_warm", backend)] == 1


def test_the_dashboard_url_is_none_without_a_dashboard_and_follows_rays_override(
    ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray_dashboard_url.cache_clear()
    assert ray_dashboard_url() is None
    ray_dashboard_url.cache_clear()
    monkeypatch.setenv("RAY_OVERRIDE_DASHBOARD_URL", "ray.example.org:8265")
    assert ray_dashboard_url() == "http://ray.example.org:8265"
    ray_dashboard_url.cache_clear()
