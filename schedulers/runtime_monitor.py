"""What the scheduler shows of itself: live applications in the policy's order, classes,
completion-time history, backends, counters, and its Ray metrics.

The control API's monitoring routes (`GET /v1/apps`, `/v1/classes`, `/v1/act`, `/v1/backends`,
`/v1/stats`) each await one method here. The ranks are the policy's own keys, computed by the
same `Policy.key` the backend queues order by, from the same request fields the engine queues (`runtime_state.request_of`)
them; the remaining demand is the `DemandEstimator`'s Monte-Carlo draws for the application's
current PDGraph state, the draws its Gittins index is computed from. So the page shows what the
scheduler decides with, not a second estimate of it. The completion-time history is read from
the store (`Store.finished_acts`), so it covers runs of earlier scheduler lifetimes too.

Reading is not scheduling: these methods are not counted in the scheduler's overhead
(`ActorLoop.timed`), so a dashboard polling every few seconds does not skew a benchmark.
Publishing the Ray metrics (`publish_queues`, after each dispatch pass) is, since it runs on the
dispatch path; the actor counts it.

`SchedulerMonitor` is a collaborator of the scheduler actor: it reads the live runs, the engine,
the backend slots, the policy, planner and demand estimator, and the store, and changes nothing
but the Ray metrics. No Ray here (`SchedulerMetrics` holds the Ray metric objects).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hermesflow.journal import RunJournal, StoredCall
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.schedulers.engine import SchedulingEngine
from hermesflow.schedulers.errors import SubmissionError
from hermesflow.schedulers.interface import Policy, RequestRecord
from hermesflow.schedulers.metrics import SchedulerMetrics, ray_dashboard_url
from hermesflow.schedulers.prewarm import PrewarmPlanner
from hermesflow.schedulers.runtime_loop import ActorLoop
from hermesflow.schedulers.runtime_state import LiveRun, LiveRuns, live_phase, request_of
from hermesflow.store import FinishedAct, RunPhase, Store
from hermesflow.views import (
    ActHistory,
    ActorStats,
    ActPoint,
    ActSeries,
    ActTotal,
    BackendView,
    BackendViewPhase,
    ClassKind,
    ClassSummary,
    LiveAppView,
    RemainingEstimate,
)

if TYPE_CHECKING:
    from hermesflow.schedulers.runtime_backends import BackendSlot

REMAINING_LEVEL = 0.8
"""Central probability mass of the remaining-demand interval shown: the 10th to 90th percentile."""
UNKNOWN_POLICY = "unknown"
"""Series name of stored runs without a policy (recorded by something other than a scheduler)."""
ACT_PERCENTILE = 95.0


class SchedulerMonitor:
    """The scheduler's monitoring views and metrics (module docstring).

    `program_classes` tell program classes from open ones, `pinned` are the backends kept warm
    from the start; `completed_calls` is the driver's count of stored results, which the
    overhead per step (`loop.work`) is divided by."""

    def __init__(
        self,
        live: LiveRuns,
        engine: SchedulingEngine,
        slots: Mapping[str, BackendSlot],
        policy: Policy,
        planner: PrewarmPlanner,
        demand: DemandEstimator,
        program_classes: Collection[str],
        pinned: Collection[str],
        store: Store,
        journal: RunJournal,
        metrics: SchedulerMetrics,
        loop: ActorLoop,
        completed_calls: Callable[[], int],
    ) -> None:
        self.live = live
        self.engine = engine
        self.slots = slots
        self.policy = policy
        self.planner = planner
        self.demand = demand
        self.program_classes = program_classes
        self.pinned = pinned
        self.store = store
        self.journal = journal
        self.metrics = metrics
        self.loop = loop
        self.completed_calls = completed_calls
        self._published: dict[str, tuple[int, tuple[int, int] | None]] = {}
        """Each queue's length and head (request, application version) when last published."""

    # -- live applications ----------------------------------------------------------------------

    def live_apps(self, app_class: str | None = None, limit: int = 200) -> list[LiveAppView]:
        """The live applications in the order the policy serves them; at most `limit`,
        optionally of one class (positions stay those among all live applications)."""
        if limit < 1:
            raise SubmissionError(f"limit must be at least 1, not {limit}")
        now = time.time()
        ranked = []
        for live in self.live:
            queued = self._queued_calls(live)
            ranked.append((self._rank(live, queued, now), _first_id(queued), live, queued))
        ranked.sort(
            key=lambda r: (r[0] is None, r[0] or 0.0, r[1], r[2].record.arrival_s, r[2].key)
        )
        views = []
        for position, (rank, _, live, queued) in enumerate(ranked, start=1):
            if app_class is None or live.record.app_class == app_class:
                views.append(self._live_view(live, queued, rank, position, now))
                if len(views) == limit:
                    break
        return views

    def _pending_calls(self, live: LiveRun) -> list[StoredCall]:
        """The run's calls without a result (queued or running)."""
        return [c for c in live.calls.values() if c.call_index not in live.results]

    def _queued_calls(self, live: LiveRun) -> list[StoredCall]:
        return [c for c in self._pending_calls(live) if not self.engine.is_running(c.id)]

    def _rank(self, live: LiveRun, queued: Sequence[StoredCall], now: float) -> float | None:
        """The policy's key for the run: the smallest among its waiting calls, else the key its
        next call would get if queued now. None when the policy keeps no state for the run."""
        if queued:
            requests = [request_of(live, stored) for stored in queued]
        else:
            backend = live.plan.backend if live.plan is not None else ""
            requests = [RequestRecord(-1, live.record, backend, now)]
        try:
            return min(float(self.policy.key(request)) for request in requests)
        except KeyError:  # a policy with per-application state (vtc) that never saw this run
            return None

    def _remaining(self, live: LiveRun) -> RemainingEstimate | None:
        """Remaining backend-seconds from the class's PDGraph given the run's current state."""
        state = live.record.state
        if state.app_class not in self.demand.classes:
            return None
        work = self.demand.draws_for(state).work_s
        if work.size == 0:
            return None
        low, high = np.quantile(work, [(1 - REMAINING_LEVEL) / 2, (1 + REMAINING_LEVEL) / 2])
        mean = float(work.mean())
        if not all(math.isfinite(v) for v in (mean, low, high)):
            return None
        return RemainingEstimate(mean=mean, low=float(low), high=float(high), level=REMAINING_LEVEL)

    def _live_view(
        self,
        live: LiveRun,
        queued: Sequence[StoredCall],
        rank: float | None,
        position: int,
        now: float,
    ) -> LiveAppView:
        record = live.record
        running = sum(1 for c in self._pending_calls(live) if self.engine.is_running(c.id))
        return LiveAppView(
            app_id=live.key,
            app_class=record.app_class,
            phase=live_phase(live),
            stage=live.plan.stage if live.plan is not None else None,
            backend=live.plan.backend if live.plan is not None else None,
            submitted_at=record.arrival_s,
            elapsed_s=max(now - record.arrival_s, 0.0),
            attained_s=record.attained_s,
            policy=self.policy.name,
            rank=rank if rank is not None and math.isfinite(rank) else None,
            position=position,
            remaining_s=self._remaining(live),
            queued_calls=len(queued),
            running_calls=running,
        )

    # -- classes and history --------------------------------------------------------------------

    async def class_summaries(self) -> list[ClassSummary]:
        """Every class the scheduler ranks, with its graph's stored version and run counts."""
        snapshots = await asyncio.to_thread(self.store.class_snapshots)
        finished = await asyncio.to_thread(self.store.run_counts, RunPhase.FINISHED)
        live = Counter(run.record.app_class for run in self.live)
        summaries = []
        for name in sorted(self.demand.classes):
            version, source = snapshots.get(name, (None, None))
            summaries.append(
                ClassSummary(
                    name=name,
                    kind=ClassKind.PROGRAM if name in self.program_classes else ClassKind.OPEN,
                    version=version,
                    source=source,
                    live_apps=live[name],
                    finished_runs=finished.get(name, 0),
                )
            )
        return summaries

    async def act_history(
        self, window_s: float = 86400.0, buckets: int = 24, app_class: str | None = None
    ) -> ActHistory:
        """Completion times of the runs that finished in the last `window_s` seconds, per
        policy, in `buckets` equal time buckets (see `act_history`)."""
        if window_s <= 0 or buckets < 1:
            raise SubmissionError(
                f"need window_s > 0 and buckets >= 1, not {window_s} and {buckets}"
            )
        now = time.time()
        rows = await asyncio.to_thread(self.store.finished_acts, now - window_s, app_class)
        return act_history(rows, now, window_s, buckets)

    # -- backends and counters ------------------------------------------------------------------

    def backends(self) -> list[BackendView]:
        """Each backend: its state in the engine, and what its slot knows of its actor."""
        views = []
        for name, slot in self.slots.items():
            state = self.engine.backends[name]
            views.append(
                BackendView(
                    name=name,
                    type=slot.spec.type,
                    phase=BackendViewPhase(state.phase.name.lower()),
                    pinned=name in self.pinned,
                    warmup_s=state.warmup_s,
                    capacity=state.capacity,
                    in_flight=state.in_flight,
                    queued=len(self.engine.queues[name]),
                    last_error=slot.last_error,
                    warm_since=None if math.isinf(state.warm_since_s) else state.warm_since_s,
                    warmups=slot.warmups,
                    last_warmup_s=slot.last_warmup_s,
                )
            )
        return views

    def stats(self) -> ActorStats:
        """Counters for benchmarks: the scheduler's own time per completed call — CPU time
        (`overhead_ms_per_step`), wall time, and the wall time of journal transactions — and
        where the cluster's Ray dashboard is."""
        completed, work = self.completed_calls(), self.loop.work
        return ActorStats(
            policy=self.policy.name,
            planner=self.planner.name,
            live_apps=len(self.live),
            completed_calls=completed,
            busy_s=work.wall_s,
            overhead_ms_per_step=1e3 * work.cpu_s / max(completed, 1),
            overhead_wall_ms_per_step=1e3 * work.wall_s / max(completed, 1),
            journal_ms_per_step=1e3 * self.journal.busy_s / max(completed, 1),
            classes=list(self.demand.classes),
            task_failures=self.loop.task_failures,
            ray_dashboard_url=ray_dashboard_url(),
        )

    # -- Ray metrics ----------------------------------------------------------------------------

    def publish_queues(self) -> None:
        """Each backend queue's length and head key, to the Ray metrics. A queue whose length
        and head (its request and application version, which its key is a function of) are as
        last published is skipped: most passes are the planner's timer, which moves no queue."""
        for name, queue in self.engine.queues.items():
            head = queue.peek()
            seen = (len(queue), None if head is None else (head.request_id, head.app.version))
            if self._published.get(name) == seen:
                continue
            self._published[name] = seen
            self.metrics.queue(
                name, len(queue), None if head is None else float(self.policy.key(head))
            )


def act_history(
    rows: Iterable[FinishedAct], now: float, window_s: float, buckets: int
) -> ActHistory:
    """The `ActHistory` of `rows` (finished runs) over [now - window_s, now]: bucket i
    covers [start_i, start_i + bucket_s) with start_i = now - window_s + i * bucket_s (the last
    one also `now` itself); each policy's series has every bucket, empty ones with `runs: 0`.
    Rows outside the window are ignored."""
    bucket_s = window_s / buckets
    start = now - window_s
    acts: dict[str, list[list[float]]] = {}
    for row in rows:
        index = math.floor((row.finished_s - start) / bucket_s)
        if index < 0 or row.finished_s > now:
            continue
        per_bucket = acts.setdefault(row.policy or UNKNOWN_POLICY, [[] for _ in range(buckets)])
        per_bucket[min(index, buckets - 1)].append(row.act_s)
    series, totals = [], []
    for policy, per_bucket in sorted(acts.items()):
        points = [
            ActPoint(start=start + i * bucket_s, **_summary(values))
            for i, values in enumerate(per_bucket)
        ]
        series.append(ActSeries(policy=policy, points=points))
        every = [act for values in per_bucket for act in values]
        totals.append(ActTotal(policy=policy, **_summary(every)))
    return ActHistory(window_s=window_s, bucket_s=bucket_s, series=series, totals=totals)


def _summary(acts: Sequence[float]) -> dict[str, Any]:
    """The fields `ActPoint` and `ActTotal` share: how many runs, their mean and 95th
    percentile (None without runs)."""
    if not acts:
        return {"runs": 0, "mean_s": None, "p95_s": None}
    return {
        "runs": len(acts),
        "mean_s": float(np.mean(acts)),
        "p95_s": float(np.percentile(acts, ACT_PERCENTILE)),
    }


def _first_id(calls: Sequence[StoredCall]) -> float:
    """The queue's tie-break between equal keys: the earliest queued call id."""
    return min((c.id for c in calls), default=math.inf)
