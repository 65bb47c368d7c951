"""The scheduler's monitoring views: the live applications in the policy's real order with its
real keys, the remaining-demand estimates, the class summaries and the completion-time history
— on a real scheduler actor with a one-worker tool pool, so calls queue behind each other —
and the store queries and bucketing they rest on."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest

from hermesflow.client_records import AppViewPhase, StepState
from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind
from hermesflow.schedulers.runtime_monitor import UNKNOWN_POLICY, act_history
from hermesflow.store import FinishedAct, RunPhase, Store
from hermesflow.views import (
    ActHistory,
    ActPoint,
    BackendViewPhase,
    ClassKind,
    ClassSummary,
    LiveAppView,
    StepView,
)

SHORT_S = (0.1, 0.2, 0.3)
LONG_S = (40.0, 50.0, 60.0)
"""Declared step sizes of the two open classes: the policy serves `short` first."""


def _graph(name: str, exec_s: tuple[float, ...], backend: str = "tools") -> PDGraph:
    work = Stage(
        kind=StageKind.TOOL, backend=backend, next={END: 1.0}, exec_s=Empirical(samples=exec_s)
    )
    return PDGraph(name=name, entry={"work": 1.0}, stages={"work": work})


def _nap(seconds: float) -> dict[str, Any]:
    return {"kind": "tool", "tool": "sleep", "args": {"seconds": seconds}}


# -- bucketing (no Ray) --------------------------------------------------------------------------


def test_act_history_buckets_each_policy_over_the_window() -> None:
    now = 10_000.0
    rows = [
        FinishedAct("gittins", now - 590, 2.0),  # first bucket of [now - 600, now), 100 s each
        FinishedAct("gittins", now - 10, 4.0),  # last bucket
        FinishedAct("gittins", now - 5, 6.0),
        FinishedAct("fcfs", now, 9.0),  # `now` itself falls in the last bucket
        FinishedAct("fcfs", now - 700, 99.0),  # before the window: ignored
        FinishedAct(None, now - 150, 1.0),
    ]
    history = act_history(rows, now, window_s=600.0, buckets=6)
    assert (history.window_s, history.bucket_s) == (600.0, 100.0)
    assert [s.policy for s in history.series] == ["fcfs", "gittins", UNKNOWN_POLICY]
    gittins = history.series[1].points
    assert [p.start for p in gittins] == [now - 600 + 100 * i for i in range(6)]
    assert [p.runs for p in gittins] == [1, 0, 0, 0, 0, 2]
    assert gittins[1] == ActPoint(start=now - 500, runs=0, mean_s=None, p95_s=None)
    assert gittins[5].mean_s == 5.0 and gittins[5].p95_s == pytest.approx(5.9)
    totals = {t.policy: t for t in history.totals}
    assert (totals["gittins"].runs, totals["gittins"].mean_s) == (3, 4.0)
    assert totals["gittins"].p95_s == pytest.approx(float(np.percentile([2.0, 4.0, 6.0], 95)))
    assert totals["fcfs"].runs == 1 and totals["fcfs"].mean_s == 9.0
    assert totals[UNKNOWN_POLICY].runs == 1


def test_act_history_of_no_runs_is_empty() -> None:
    history = act_history([], 0.0, window_s=60.0, buckets=3)
    assert history == ActHistory(window_s=60.0, bucket_s=20.0, series=[], totals=[])


# -- store queries (SQLite and PostgreSQL) -------------------------------------------------------


def test_store_summaries_of_classes_and_finished_runs(store_url: str) -> None:
    store = Store(store_url)
    try:
        store.save_pdgraph(_graph("alpha", SHORT_S), source="prior")
        store.save_pdgraph(_graph("alpha", LONG_S), source="refit")
        store.save_pdgraph(_graph("beta", SHORT_S), source="declared")
        runs = []
        for app_class, policy, finished, phase in [
            ("alpha", "gittins", 100.0, RunPhase.FINISHED),
            ("alpha", "fcfs", 50.0, RunPhase.FINISHED),
            ("alpha", "gittins", 120.0, RunPhase.FAILED),
            ("beta", "gittins", 200.0, RunPhase.FINISHED),
            ("beta", "gittins", None, None),  # still live
        ]:
            run = store.create_run(app_class, policy, submitted_s=10.0)
            if phase is not None:
                store.finish_run(run, finished, finished - 10.0, 0.0, 1.0, phase)
            runs.append(run)
        assert store.class_snapshots() == {"alpha": (2, "refit"), "beta": (1, "declared")}
        assert store.run_counts(RunPhase.FINISHED) == {"alpha": 2, "beta": 1}
        assert store.run_counts(RunPhase.ADMITTED) == {"beta": 1}
        assert store.finished_acts(60.0) == [
            FinishedAct("gittins", 100.0, 90.0),
            FinishedAct("gittins", 200.0, 190.0),
        ]
        assert store.finished_acts(0.0, "alpha") == [
            FinishedAct("fcfs", 50.0, 40.0),
            FinishedAct("gittins", 100.0, 90.0),
        ]
    finally:
        store.close()


# -- the scheduler actor -------------------------------------------------------------------------

ray = pytest.importorskip("ray")

from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.journal import RunJournal  # noqa: E402
from hermesflow.schedulers.runtime import start_scheduler  # noqa: E402
from hermesflow.schedulers.runtime_config import RuntimeConfig  # noqa: E402

ONE_WORKER = BackendSpec(
    name="tools", type="python-tools", options={"workers": 1}, expected_warmup_s=2.0
)
"""Capacity 1: a running call makes the next ones wait in the queue, in the policy's order."""


@pytest.fixture(scope="module")
def monitored(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory):
    """A scheduler with the one-worker pool warm and the classes `short` and `long` declared;
    no refit during the module, so a class's graph (and so its ranks) stays the declared one."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('monitor') / 'hermes.db'}"
    config = RuntimeConfig(
        db_url=db_url,
        backends=[ONE_WORKER],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=("tools",),
        refit_interval_s=3600.0,
    )
    handle = start_scheduler(config, name=f"monitor-{uuid.uuid4().hex[:8]}")
    for name, exec_s in (("short", SHORT_S), ("long", LONG_S)):
        ray.get(handle.declare_graph.remote(name, _graph(name, exec_s).model_dump(mode="json")))
    yield handle, db_url
    ray.get(handle.shutdown.remote())
    ray.kill(handle, no_restart=True)


def _put(handle, key: str, app_class: str, seconds: float, step_id: str = "work") -> None:
    ray.get(handle.put_step.remote(key, step_id, app_class, "work", _nap(seconds), "tools"))


def _done(handle, key: str, step_id: str = "work") -> StepView:
    step = ray.get(handle.step.remote(key, step_id, 30.0))
    assert step.state is StepState.DONE, step
    return step


def _views(handle, **query) -> dict[str, LiveAppView]:
    return {view.app_id: view for view in ray.get(handle.live_apps.remote(**query))}


def _until_running(handle, key: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (view := _views(handle).get(key)) is None or view.running_calls != 1:
        assert time.monotonic() < deadline, f"{key} never started running"
        time.sleep(0.05)


def _key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def test_live_apps_are_in_the_policy_order_with_the_keys_the_queue_dispatches_by(monitored) -> None:
    handle, db_url = monitored
    blocker, long, short = _key("blocker"), _key("long"), _key("short")
    _put(handle, blocker, "short", 2.0)
    _until_running(handle, blocker)
    queued_s = time.time()
    _put(handle, long, "long", 0.1)  # queued first: arrival order would serve it first
    _put(handle, short, "short", 0.1)
    ordered = ray.get(handle.live_apps.remote())
    asked_s = time.time()
    assert [v.position for v in ordered] == list(range(1, len(ordered) + 1))
    views = {v.app_id: v for v in ordered}
    assert views[short].position < views[long].position
    assert views[short].rank < views[long].rank
    assert all(v.policy == "gittins" and v.phase is AppViewPhase.RUNNING for v in views.values())
    assert (views[short].queued_calls, views[short].running_calls) == (1, 0)
    assert (views[blocker].queued_calls, views[blocker].running_calls) == (0, 1)
    assert (views[long].stage, views[long].backend) == ("work", "tools")
    for key, (least, most) in ((short, (0.1, 0.3)), (long, (40.0, 60.0))):
        remaining = views[key].remaining_s
        assert least <= remaining.low <= remaining.mean <= remaining.high <= most
        assert remaining.level == 0.8
    # elapsed since admission, read between this test's put and its read of the views
    assert 0.0 < views[long].elapsed_s <= asked_s - queued_s
    assert views[blocker].elapsed_s > views[long].elapsed_s  # same clock, admitted earlier
    assert views[long].attained_s == 0.0

    for key in (blocker, long, short):
        _done(handle, key)
    journal = RunJournal(Store(db_url))
    dispatched = {}
    for key in (long, short):
        (event,) = [e for e in journal.events(journal.run(key).id) if e.kind == "dispatch"]
        dispatched[key] = event
    assert dispatched[short].at_s < dispatched[long].at_s  # served in the listed order
    for key in (long, short):  # the rank shown is the key the dispatch used
        assert dispatched[key].detail["rank"] == views[key].rank
    for key in (blocker, long, short):
        ray.get(handle.finish_app.remote(key))


def test_filtering_by_class_keeps_positions_among_all_live_apps(monitored) -> None:
    handle, _ = monitored
    blocker, long, short = _key("blocker"), _key("long"), _key("short")
    _put(handle, blocker, "short", 1.5)
    _until_running(handle, blocker)
    _put(handle, long, "long", 0.1)
    _put(handle, short, "short", 0.1)
    everything = _views(handle)
    only_long = ray.get(handle.live_apps.remote("long"))
    assert [v.app_id for v in only_long] == [long]
    assert only_long[0].position == everything[long].position
    first = ray.get(handle.live_apps.remote(None, 1))
    assert len(first) == 1 and first[0].position == 1
    for key in (blocker, long, short):
        _done(handle, key)
        ray.get(handle.finish_app.remote(key))


def test_class_summaries_count_live_and_finished_runs(monitored) -> None:
    handle, _ = monitored
    name = f"tally_{uuid.uuid4().hex[:8]}"
    ray.get(handle.declare_graph.remote(name, _graph(name, SHORT_S).model_dump(mode="json")))
    ended, live = _key("ended"), _key("live")
    for key in (ended, live):
        _put(handle, key, name, 0.05)
        _done(handle, key)
    ray.get(handle.finish_app.remote(ended))
    summaries = {s.name: s for s in ray.get(handle.class_summaries.remote())}
    assert summaries[name] == ClassSummary(
        name=name, kind=ClassKind.OPEN, version=1, source="declared", live_apps=1, finished_runs=1
    )
    program = summaries["sleep_chain"]
    assert (program.kind, program.version, program.source) == (ClassKind.PROGRAM, 1, "prior")
    assert list(summaries) == sorted(summaries)
    ray.get(handle.finish_app.remote(live))


def test_act_history_of_the_runs_that_finished(monitored) -> None:
    handle, db_url = monitored
    name = f"timed_{uuid.uuid4().hex[:8]}"
    ray.get(handle.declare_graph.remote(name, _graph(name, SHORT_S).model_dump(mode="json")))
    keys = [_key("timed") for _ in range(3)]
    for key in keys:
        _put(handle, key, name, 0.05)
        _done(handle, key)
        ray.get(handle.finish_app.remote(key))
    history = ray.get(handle.act_history.remote(3600.0, 6, name))
    journal = RunJournal(Store(db_url))
    acts = [journal.run(key).act_s for key in keys]
    assert history.bucket_s == 600.0
    (series,) = history.series
    assert series.policy == "gittins" and [p.runs for p in series.points] == [0] * 5 + [3]
    (total,) = history.totals
    assert total.runs == 3
    assert total.mean_s == pytest.approx(np.mean(acts))
    assert total.p95_s == pytest.approx(np.percentile(acts, 95))
    assert ray.get(handle.act_history.remote(3600.0, 6, "no_such_class")).series == []


def test_backends_report_their_warm_ups(monitored) -> None:
    handle, _ = monitored
    (tools,) = ray.get(handle.backends.remote())
    assert tools.phase is BackendViewPhase.WARM and tools.warmups == 1
    assert 0 < tools.last_warmup_s < 60 and tools.warm_since <= time.time()
    stats = ray.get(handle.stats.remote())
    assert stats.ray_dashboard_url is None  # the test cluster runs no dashboard
