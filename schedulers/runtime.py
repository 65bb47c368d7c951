"""The Hermesflow scheduler on Ray: a detached, named async actor that serves applications.

It drives the same `SchedulingEngine` as the simulator (`engine.py`): it tells the engine what
happened — a run was admitted, a step's calls were stored, a call returned or its backend died,
a warm-up finished — and applies what `schedule()` decides: dispatch these calls (never more
than a backend's capacity in flight, so ordering stays the scheduler's), warm or release these
backends (`BackendSlot`s, real Ray actors). The engine's planner timer wakes it.

Durability: every admission, step, dispatch, completion and warm/release decision is a
`RunJournal` transaction before it takes effect, so a restarted actor (Ray restarts it; it is
created with `max_restarts=-1`) reloads its live runs from the store and goes on: finished
calls are not run again, runs finish exactly once. A call whose backend actor dies is
re-queued and retried up to `max_attempts` times.

`HermesScheduler` builds its collaborators, each an object given what it uses, and its public
methods (the Ray surface, `SchedulerApi`) wait until it is ready and delegate to them:

- `RunDriver` (`runtime_driver.py`): the live runs through the engine and the backends; a
  *program* run (`submit`) advances through its class's `AppProgram`. The others change runs
  through it, typed as `RunControl` (`runtime_control.py`).
- `OpenRuns` (`runtime_open.py`): *open* runs, whose steps a client sends one by one
  (`submit_step`, the OpenAI-compatible gateway, Airflow tasks), ranked as one application all
  the same; `NamedSteps` (`runtime_steps.py`): named, asynchronous steps and task outcomes.
- `PrewarmApplier` (`runtime_prewarm.py`): the engine's warm and release decisions.
- `Refitter` (`runtime_refit.py`): each class's PDGraph refitted from its recent observations.
- `SchedulerMonitor` (`runtime_monitor.py`): live applications in the policy's order, classes,
  completion-time history, backends, counters, Ray metrics.

They share the live runs (`LiveRuns`) and the actor's loop (`ActorLoop`: background tasks, the
dispatcher's wake-up, the overhead meter). Only this module and the driver touch Ray.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from pydantic import ValidationError

from hermesflow.apps.program import AppProgram
from hermesflow.backends.calls import CallResult
from hermesflow.client_records import AppViewPhase
from hermesflow.journal import RunJournal
from hermesflow.pdgraph.demand import COMMON_STATE_RUNS, DemandEstimator
from hermesflow.pdgraph.model import PDGraph
from hermesflow.schedulers.engine import BackendState, SchedulingEngine
from hermesflow.schedulers.errors import SubmissionError, UnknownApplication
from hermesflow.schedulers.metrics import SchedulerMetrics
from hermesflow.schedulers.policies import make_policy
from hermesflow.schedulers.prewarm import make_planner
from hermesflow.schedulers.runtime_backends import BackendSlot
from hermesflow.schedulers.runtime_config import NAMESPACE, SCHEDULER_NAME, RuntimeConfig
from hermesflow.schedulers.runtime_driver import RunDriver
from hermesflow.schedulers.runtime_loop import ActorLoop
from hermesflow.schedulers.runtime_monitor import SchedulerMonitor
from hermesflow.schedulers.runtime_open import OpenRuns, relay
from hermesflow.schedulers.runtime_prewarm import PrewarmApplier
from hermesflow.schedulers.runtime_refit import Refitter
from hermesflow.schedulers.runtime_state import (
    LiveRuns,
    RunState,
    load_program,
    view_live,
    view_stored,
)
from hermesflow.schedulers.runtime_steps import NamedSteps
from hermesflow.store import DecisionKind, DecisionRow, Store
from hermesflow.views import (
    ActHistory,
    ActorStats,
    AppEvent,
    AppView,
    BackendView,
    ClassDeclaration,
    ClassSummary,
    LiveAppView,
    StepEvent,
    StepView,
)


class HermesScheduler:
    """The scheduler actor's logic (module docstring); `SchedulerActor` is its Ray actor."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = RuntimeConfig.model_validate(config)
        self.store = Store(self.config.db_url)
        self.journal = RunJournal(self.store)
        self.programs: dict[str, AppProgram] = {
            name: load_program(name, path) for name, path in self.config.programs.items()
        }
        self.demand = DemandEstimator(self._initial_graphs(), self.config.costs)
        self.policy = make_policy(self.config.policy, self.demand)
        self.planner = make_planner(
            self.config.planner,
            self.demand,
            pinned=self.config.warm_at_start,
            **self.config.planner_options,
        )
        self.metrics = SchedulerMetrics()
        self.slots = {spec.name: BackendSlot(spec, self.metrics) for spec in self.config.backends}
        for name in self.config.warm_at_start:
            if name not in self.slots:
                raise ValueError(f"warm_at_start names {name!r}, which is not a configured backend")
        self.engine = SchedulingEngine(
            self.policy,
            self.planner,
            [BackendState(spec.name, spec.expected_warmup_s) for spec in self.config.backends],
            clock=time.time,
            config=self.config.engine,
        )
        self.live = LiveRuns()
        self.loop = ActorLoop()
        self.driver = RunDriver(
            self.journal,
            self.engine,
            self.demand,
            self.slots,
            self.live,
            self.loop,
            self.metrics,
            self.policy.name,
            self.config.costs,
        )
        self.open_runs = OpenRuns(
            self.config,
            self.journal,
            self.store,
            self.live,
            self.slots,
            self.demand,
            self.policy.name,
            self.driver,
            self.loop,
        )
        self.named_steps = NamedSteps(
            self.journal, self.store, self.live, self.open_runs, self.loop
        )
        self.prewarm = PrewarmApplier(
            self.engine, self.slots, self.journal, self.live, self.driver, self.loop
        )
        self.refitter = Refitter(
            self.config,
            self.store,
            self.demand,
            self.programs.keys(),
            self.open_runs.backend_kind,
            self.driver,
        )
        self.monitor = SchedulerMonitor(
            self.live,
            self.engine,
            self.slots,
            self.policy,
            self.planner,
            self.demand,
            self.programs.keys(),
            self.config.warm_at_start,
            self.store,
            self.journal,
            self.metrics,
            self.loop,
            lambda: self.driver.completed_calls,
        )
        self._ready = asyncio.Event()
        self.loop.spawn(self._main())

    # -- set-up and background loops -----------------------------------------------------------

    def _initial_graphs(self) -> dict[str, PDGraph]:
        known = set(self.store.list_classes())
        graphs = {}
        for name, program in self.programs.items():
            if name in known:
                graphs[name] = self.store.load_pdgraph(name)
            else:
                graphs[name] = program.prior()
                self.store.save_pdgraph(graphs[name], source="prior")
        for name in known - set(graphs):
            graphs[name] = self.store.load_pdgraph(name)
        return graphs

    async def _main(self) -> None:
        await self._prepare_graphs()
        self._recover()
        self._ready.set()
        self.loop.spawn(self._plan_timer())
        self.loop.spawn(self.refitter.run())
        while True:
            await self.loop.woken()
            self.loop.timed(self.driver.complete_landed)
            self.loop.settle()
            self.loop.timed(self._schedule)
            self.loop.timed(self.monitor.publish_queues)

    async def _prepare_graphs(self) -> None:
        """Draw the states each class's runs commonly pass through before serving
        (`DemandEstimator.prepare`, in a worker thread), so that admitting and ranking the
        first runs is a look-up rather than a millisecond of Monte-Carlo each on their path."""
        for app_class in self.demand.classes:
            graph = self.demand.compiled(app_class).graph
            self.demand.install(
                await asyncio.to_thread(self.demand.prepare, graph, COMMON_STATE_RUNS)
            )

    async def _plan_timer(self) -> None:
        """Wake the engine when its planner is due, unless the planner is quiet
        (`SchedulingEngine.timer_due`: then the tick costs no pass); flush the journal's
        deferred dispatch marks and close idle open runs on the same beat."""
        while True:
            await asyncio.sleep(max(self.engine.next_plan_s - time.time(), 0.01))
            if self.loop.timed(self.engine.timer_due, time.time()):
                self.loop.wake()
                await asyncio.sleep(0)  # the main loop plans now, which moves `next_plan_s` on
            self.loop.timed(self.journal.flush)
            self.open_runs.close_idle()

    def _schedule(self) -> None:
        """Apply what the engine decides (module docstring)."""
        output = self.engine.schedule()
        self.prewarm.apply(output)
        for dispatch in output.dispatch:
            self.driver.start_call(dispatch)

    def _recover(self) -> None:
        """Reload unfinished runs from the store and queue their unfinished calls."""
        runs = self.journal.live_runs()
        for run, calls in runs:
            state = RunState.load(run.key, run.state)
            if state.open:
                self.open_runs.recover(run, state, calls)
            elif (program := self.programs.get(run.app_class)) is not None:
                self.driver.recover(run, program, state, calls)
        if runs:
            self.journal.record(
                [DecisionRow(time.time(), DecisionKind.RECOVER, detail={"runs": len(runs)})]
            )

    @staticmethod
    def _request_name() -> str:
        """The name of the actor call being served, the same in each of its tries: Ray retries
        a call that was in flight when the actor died on the restarted actor, as the same task."""
        return f"ray-task:{ray.get_runtime_context().get_task_id()}"

    # -- public API (called through the actor): program runs -------------------------------------

    async def ready(self) -> bool:
        await self._ready.wait()
        return True

    async def submit(
        self,
        app_class: str,
        inputs: dict[str, Any],
        key: str | None = None,
        labels: dict[str, Any] | None = None,
    ) -> AppView:
        """Admit a program run; the same `key` again returns the same run."""
        await self._ready.wait()
        if key is not None and (live := self.live.by_key(key)) is not None:
            return view_live(live)
        if key is not None and (existing := self.journal.run(key)) is not None:
            return view_stored(existing)
        program = self.programs.get(app_class)
        if program is None:
            raise SubmissionError(
                f"unknown application class {app_class!r}; this scheduler runs: {sorted(self.programs)}. "
                "Register its program in RuntimeConfig.programs, or send single steps with submit_step"
            )
        try:
            validated = program.validate_inputs(inputs)
            transition = program.start(validated)
        except ValidationError as error:
            raise SubmissionError(f"invalid inputs for class {app_class!r}: {error}") from None
        return self.loop.timed(
            self.driver.admit, app_class, program, validated, transition, key, labels
        )

    async def app(self, key: str) -> AppView:
        await self._ready.wait()
        live = self.live.by_key(key)
        if live is not None:
            return view_live(live)
        stored = await asyncio.to_thread(self.journal.run, key)
        if stored is None:
            raise UnknownApplication(f"no application {key!r}; submit it first")
        return view_stored(stored)

    async def wait(self, key: str, timeout_s: float | None = None) -> AppView:
        """The application's view once it has ended (or when `timeout_s` passes)."""
        await self._ready.wait()
        live = self.live.by_key(key)
        if live is not None:
            try:
                await asyncio.wait_for(live.done.wait(), timeout_s)
            except TimeoutError:
                pass
        return await self.app(key)

    async def events(self, key: str, after: int = 0) -> list[AppEvent]:
        await self._ready.wait()
        stored = await asyncio.to_thread(self.journal.run, key)
        if stored is None:
            raise UnknownApplication(f"no application {key!r}; submit it first")
        events = await asyncio.to_thread(self.journal.events, stored.id, after)
        return [
            AppEvent(id=e.id, at_s=e.at_s, kind=e.kind, backend=e.backend, detail=e.detail)
            for e in events
        ]

    # -- open runs and named steps (`OpenRuns`, `NamedSteps`) -----------------------------------

    async def submit_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: dict[str, Any],
        backend: str | None = None,
        labels: dict[str, Any] | None = None,
        reopen: bool = False,
    ) -> CallResult:
        """Run one step of an open application and return its result. With `reopen`,
        `key` names a client session: once its application has ended, the step starts the
        session's next application (`key#2`, `key#3`, ...) instead of being refused.

        The step is stored under the name of the Ray call that carries it (`_request_name`), so
        Ray's retry of the call after a crash answers the stored step (`runtime_open.py`)."""
        request = self._request_name()
        await self._ready.wait()
        future, _ = self.open_runs.open_step(
            key, app_class, stage, call, backend, labels, reopen, False, request
        )
        return await future

    @ray.method(max_task_retries=0)
    async def stream_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: dict[str, Any],
        backend: str | None = None,
        labels: dict[str, Any] | None = None,
        reopen: bool = False,
    ) -> AsyncIterator[StepEvent]:
        """Like `submit_step`, yielding a `StepDelta` per piece of text, then a `StepEnd`. Ray
        must not retry it on the restarted actor after a crash: its client gets an error
        instead of a spliced answer (`runtime_open.py`)."""
        await self._ready.wait()
        future, sink = self.open_runs.open_step(
            key, app_class, stage, call, backend, labels, reopen, True
        )
        async for item in relay(future, sink):
            yield item

    async def put_step(
        self,
        key: str,
        step_id: str,
        app_class: str,
        stage: str,
        call: dict[str, Any],
        backend: str | None = None,
        labels: dict[str, Any] | None = None,
    ) -> tuple[StepView, bool]:
        """Submit step `step_id` of open application `key` without waiting for it. Returns the
        step's view and whether it was queued now (False: the step existed, nothing new runs)."""
        await self._ready.wait()
        return self.named_steps.put_step(key, step_id, app_class, stage, call, backend, labels)

    async def step(self, key: str, step_id: str, wait_s: float = 0.0) -> StepView:
        """Step `step_id` of application `key` as stored; with `wait_s`, once it is done or
        failed, or after `wait_s` seconds."""
        await self._ready.wait()
        return await self.named_steps.step(key, step_id, wait_s)

    async def record_task(self, key: str, outcome: dict[str, Any]) -> bool:
        """Store how one try of one task of application `key` ended (`NamedSteps`)."""
        await self._ready.wait()
        return await self.named_steps.record_task(key, outcome)

    async def finish_app(
        self, key: str, state: AppViewPhase = AppViewPhase.FINISHED, error: str | None = None
    ) -> AppView:
        """End an open application, `finished` or `failed` (`OpenRuns.finish_app`)."""
        await self._ready.wait()
        return self.open_runs.finish_app(key, state, error)

    async def declare_graph(
        self, name: str, graph: dict[str, Any]
    ) -> tuple[ClassDeclaration, bool]:
        """Declare the PDGraph of open class `name` (`OpenRuns.declare_graph`)."""
        await self._ready.wait()
        return self.open_runs.declare_graph(name, graph)

    # -- what the scheduler shows of itself (`SchedulerMonitor`) ---------------------------------

    async def graph(self, app_class: str) -> PDGraph:
        return self.demand.compiled(app_class).graph

    async def live_apps(self, app_class: str | None = None, limit: int = 200) -> list[LiveAppView]:
        await self._ready.wait()
        return self.monitor.live_apps(app_class, limit)

    async def class_summaries(self) -> list[ClassSummary]:
        await self._ready.wait()
        return await self.monitor.class_summaries()

    async def act_history(
        self, window_s: float = 86400.0, buckets: int = 24, app_class: str | None = None
    ) -> ActHistory:
        await self._ready.wait()
        return await self.monitor.act_history(window_s, buckets, app_class)

    async def backends(self) -> list[BackendView]:
        return self.monitor.backends()

    async def stats(self) -> ActorStats:
        return self.monitor.stats()

    # -- processes -------------------------------------------------------------------------------

    async def pid(self) -> int:
        """The process id of the scheduler actor itself (what a crash test kills)."""
        return os.getpid()

    async def backend_pid(self, name: str) -> int | None:
        """The process id of a backend's actor, None while it is cold."""
        if name not in self.slots:
            raise SubmissionError(
                f"unknown backend {name!r}; configured backends: {sorted(self.slots)}"
            )
        return await self.slots[name].pid()

    async def shutdown(self) -> None:
        """Release every backend (kills their actors)."""
        for slot in self.slots.values():
            slot.release()


SchedulerActor = ray.remote(HermesScheduler)


def start_scheduler(
    config: RuntimeConfig, name: str = SCHEDULER_NAME, namespace: str = NAMESPACE
) -> Any:
    """The named detached scheduler actor, created if it does not exist yet (Ray must be
    initialised). Ray restarts it after a crash, with the same configuration."""
    handle = SchedulerActor.options(
        name=name,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
        max_concurrency=10_000,
    ).remote(config.model_dump(mode="json"))
    ray.get(handle.ready.remote())
    return handle


def get_scheduler(name: str = SCHEDULER_NAME, namespace: str = NAMESPACE) -> Any:
    """The running scheduler actor; a clear error when `hermesflow serve` is not running."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise RuntimeError(
            f"no Hermesflow scheduler named {name!r} in Ray namespace {namespace!r}; start one with "
            "`hermesflow serve` (or start_scheduler(config)) on this Ray cluster"
        ) from None
