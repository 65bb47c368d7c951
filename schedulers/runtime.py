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

Applications come in two shapes. A *program* run (`submit`) advances through its class's
`AppProgram`: each step's calls are stored, queued and dispatched, and when the last result is
in, the program picks the next step from the real outputs. An *open* run (`submit_step`, the
OpenAI-compatible gateway and Airflow tasks) receives its steps one by one from a client; its
requests are ranked as one application all the same (`runtime_open.py`; named, asynchronous
steps and task outcomes in `runtime_steps.py`). What it shows of itself — live applications in
the policy's order, classes, completion-time history, backends, counters, Ray metrics — is in
`runtime_monitor.py`. Each finished step becomes a `StageObservation`; a background task refits
each class's PDGraph from its recent observations (`runtime_refit.py`); prewarm decisions are
applied in `runtime_prewarm.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

import ray
from pydantic import ValidationError

from hermesflow.apps.program import AppProgram, Finished, StepPlan, Transition
from hermesflow.backends.calls import CallResult
from hermesflow.journal import CompletedCall, RunEnd, RunJournal, StoredCall
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import END, PDGraph
from hermesflow.pdgraph.refit import StageObservation
from hermesflow.schedulers.engine import (
    BackendState,
    Dispatch,
    EngineOutput,
    LossOutcome,
    SchedulingEngine,
)
from hermesflow.schedulers.errors import RunFailed, SubmissionError, UnknownApplication
from hermesflow.schedulers.metrics import SchedulerMetrics
from hermesflow.schedulers.policies import make_policy
from hermesflow.schedulers.prewarm import make_planner
from hermesflow.schedulers.runtime_backends import BackendDied, BackendSlot
from hermesflow.schedulers.runtime_config import NAMESPACE, SCHEDULER_NAME, RuntimeConfig
from hermesflow.schedulers.runtime_monitor import MonitorMixin
from hermesflow.schedulers.runtime_open import OpenRunsMixin
from hermesflow.schedulers.runtime_prewarm import PrewarmMixin
from hermesflow.schedulers.runtime_refit import RefitMixin
from hermesflow.schedulers.runtime_state import (
    LiveRun,
    load_program,
    new_step,
    request_of,
    view_live,
    view_stored,
)
from hermesflow.schedulers.runtime_steps import ClientStepsMixin
from hermesflow.schedulers.work_meter import WorkMeter
from hermesflow.store import CallPhase, DecisionKind, DecisionRow, RunPhase, RunRow, Store

log = logging.getLogger(__name__)


class HermesScheduler(OpenRunsMixin, ClientStepsMixin, MonitorMixin, RefitMixin, PrewarmMixin):
    """The scheduler actor's logic (module docstring); `SchedulerActor` is its Ray actor."""

    # Ray must not retry a stream on the restarted actor after a crash (`runtime_open.py`).
    stream_step = ray.method(max_task_retries=0)(OpenRunsMixin.stream_step)

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
            self.config.planner, self.demand, pinned=self.config.warm_at_start, **self.config.planner_options
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
        self.live: dict[int, LiveRun] = {}
        self.by_key: dict[str, LiveRun] = {}
        self._refitted_at: dict[str, tuple] = {}
        self._session_keys: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._work = WorkMeter()
        self._task_failures = 0
        self._completed_calls = 0
        self._tasks: set[asyncio.Task] = set()
        self._spawn(self._main())

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

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._task_failures += 1
            log.error("scheduler task failed", exc_info=task.exception())

    async def _main(self) -> None:
        self._recover()
        self._ready.set()
        self._spawn(self._plan_timer())
        self._spawn(self._refit_loop())
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._timed(self._schedule)
            self._timed(self._publish_queues)

    async def _plan_timer(self) -> None:
        """Wake the engine when its planner is due; flush the journal's deferred dispatch marks
        and close idle open runs on the same beat."""
        while True:
            await asyncio.sleep(max(self.engine.next_plan_s - time.time(), 0.01))
            self._kick()
            await asyncio.sleep(0)  # the main loop plans now, which moves `next_plan_s` on
            self._timed(self.journal.flush)
            self._close_idle_open_runs()

    def _kick(self) -> None:
        self._wake.set()

    def _timed(self, fn, *args):
        """Run a piece of the scheduler's own work, counting it as its overhead (`WorkMeter`)."""
        return self._work.timed(fn, *args)

    # -- public API (called through the actor) -------------------------------------------------

    async def ready(self) -> bool:
        await self._ready.wait()
        return True

    async def submit(
        self,
        app_class: str,
        inputs: dict[str, Any],
        key: str | None = None,
        labels: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Admit a program run; the same `key` again returns the same run."""
        await self._ready.wait()
        if key is not None and key in self.by_key:
            return view_live(self.by_key[key])
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
        return self._timed(self._admit_program_run, app_class, program, validated, transition, key, labels)

    def _admit_program_run(self, app_class, program, inputs, transition: Transition, key, labels):
        now = time.time()
        key = key or uuid.uuid4().hex
        first = transition.next
        doc = {"step": 0, "program": transition.state, "visits": {}, "attained_s": 0.0, "cold_s": 0.0}
        if isinstance(first, StepPlan):
            doc["plan"] = first.model_dump(mode="json")
            doc["visits"] = {first.stage: 1}
        admit = DecisionRow(now, DecisionKind.ADMIT, detail={"class": app_class, "key": key})
        run, created = self.journal.admit(
            key, app_class, self.policy.name, now, inputs.model_dump(mode="json"), labels, doc, admit
        )
        if not created:
            return view_stored(run)
        live = self._new_live(run, program, inputs, doc)
        if isinstance(first, Finished):
            self._end(live, RunEnd(RunPhase.FINISHED, first.result), None, None, 0)
        else:
            calls = self.journal.start_step(run.id, doc, new_step(0, first), now)
            self._begin_step(live, first, calls)
        return view_live(live)

    def _new_live(self, run: RunRow, program, inputs, doc) -> LiveRun:
        """A run becomes live (admitted, or reloaded after a restart): the engine, and through
        it the policy, hears of it once here, so per-application policy state (vtc's counter)
        exists for recovered runs."""
        record = self.engine.admit(
            run.id,
            self.demand.initial_state(run.app_class),
            arrival_s=run.submitted_s,
            attained_s=doc.get("attained_s", 0.0),
            cold_s=doc.get("cold_s", 0.0),
        )
        live = LiveRun(record, run.key, program, inputs, doc)
        self.live[run.id] = live
        self.by_key[run.key] = live
        self.metrics.app_admitted(run.app_class)
        return live

    async def app(self, key: str) -> dict[str, Any]:
        await self._ready.wait()
        live = self.by_key.get(key)
        if live is not None:
            return view_live(live)
        stored = await asyncio.to_thread(self.journal.run, key)
        if stored is None:
            raise UnknownApplication(f"no application {key!r}; submit it first")
        return view_stored(stored)

    async def wait(self, key: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The application's view once it has ended (or when `timeout_s` passes)."""
        await self._ready.wait()
        live = self.by_key.get(key)
        if live is not None:
            try:
                await asyncio.wait_for(live.done.wait(), timeout_s)
            except TimeoutError:
                pass
        return await self.app(key)

    async def events(self, key: str, after: int = 0) -> list[dict[str, Any]]:
        await self._ready.wait()
        stored = await asyncio.to_thread(self.journal.run, key)
        if stored is None:
            raise UnknownApplication(f"no application {key!r}; submit it first")
        events = await asyncio.to_thread(self.journal.events, stored.id, after)
        return [{"id": e.id, "at_s": e.at_s, "kind": e.kind, "backend": e.backend, "detail": e.detail} for e in events]

    async def pid(self) -> int:
        """The process id of the scheduler actor itself (what a crash test kills)."""
        return os.getpid()

    @staticmethod
    def _request_name() -> str:
        """The name of the actor call being served, the same in each of its tries: Ray retries
        a call that was in flight when the actor died on the restarted actor, as the same task."""
        return f"ray-task:{ray.get_runtime_context().get_task_id()}"

    async def backend_pid(self, name: str) -> int | None:
        """The process id of a backend's actor, None while it is cold."""
        if name not in self.slots:
            raise SubmissionError(f"unknown backend {name!r}; configured backends: {sorted(self.slots)}")
        return await self.slots[name].pid()

    async def graph(self, app_class: str) -> dict[str, Any]:
        return self.demand.compiled(app_class).graph.model_dump(mode="json")

    async def shutdown(self) -> None:
        """Release every backend (kills their actors)."""
        for slot in self.slots.values():
            slot.release()

    # -- steps ----------------------------------------------------------------------------------

    def _begin_step(self, live: LiveRun, plan: StepPlan, calls: list[StoredCall]) -> None:
        """Hand a stored step's unfinished calls to the engine, with the run's graph state (the
        step is already counted in `live.doc["visits"]`)."""
        live.plan = plan
        if live.program is not None:
            live.calls, live.results = {}, {}
        for stored in calls:
            live.calls[stored.id] = stored
            if stored.phase is CallPhase.DONE:
                live.results[stored.call_index] = CallResult.model_validate(stored.result)
        queued = [request_of(live, stored) for stored in calls if stored.phase is not CallPhase.DONE]
        stage, visits = self._graph_position(live)
        self.engine.begin_stage(live.record.app_id, stage, visits, queued)
        if not queued and live.program is not None:
            self._advance(live)
            return
        self._kick()

    def _graph_position(self, live: LiveRun) -> tuple[str | None, tuple[int, ...]]:
        """Where the run is in its class's current graph (a refit may have added stages): its
        stage and its visit counts."""
        compiled = self.demand.compiled(live.record.app_class)
        counts = [0] * compiled.end
        for name, count in live.doc["visits"].items():
            if name in compiled.index:
                counts[compiled.index[name]] = count
        stage = live.plan.stage if live.plan is not None and live.plan.stage in compiled.index else None
        return stage, tuple(counts)

    def _schedule(self) -> None:
        """Apply what the engine decides (module docstring)."""
        output: EngineOutput = self.engine.schedule()
        self._apply_prewarm(output)
        for dispatch in output.dispatch:
            self._start_call(dispatch)

    def _start_call(self, dispatch: Dispatch) -> None:
        now = time.time()
        request = dispatch.request
        live = self.live[request.app.app_id]
        stored = live.calls[request.request_id]
        self.journal.dispatch(
            stored.id,
            now,
            DecisionRow(now, DecisionKind.DISPATCH, stored.backend, live.record.app_id, {"step": stored.step, "call": stored.call_index, "rank": dispatch.rank}),
        )
        self._spawn(self._execute(self.slots[stored.backend], live, stored, dispatch.rank))

    async def _execute(self, slot: BackendSlot, live: LiveRun, stored: StoredCall, priority: float) -> None:
        sink = live.sinks.get(stored.id)
        try:
            result = await slot.call(stored.call, priority, None if sink is None else sink.put_nowait)
        except BackendDied as died:
            self._timed(self._lost, slot, live, stored, died)
            return
        except Exception as error:  # noqa: BLE001 - a failing call is a result the program sees
            result = slot.failure(error)
        self._timed(self._complete, live, stored, result)

    def _lost(self, slot: BackendSlot, live: LiveRun, stored: StoredCall, died: BackendDied) -> None:
        """A call's backend died under it: the backend is cold (if that news is not stale), and
        the engine re-queues the call or, after `max_attempts` tries, gives its run up."""
        now = time.time()
        if self.engine.backend_lost(slot.name, died.generation):
            slot.lost(died.generation)
        loss = self.engine.lose(stored.id)
        if loss is None:
            return  # the run ended meanwhile
        if loss.outcome is LossOutcome.GAVE_UP:
            self._fail(live, f"{died}; gave up after {loss.attempts} attempts")
            return
        self.journal.requeue(stored.id, DecisionRow(now, DecisionKind.RETRY, stored.backend, live.record.app_id, {"call": stored.call_index, "reason": str(died)}))
        self._kick()

    def _complete(self, live: LiveRun, stored: StoredCall, result: CallResult) -> None:
        """A call finished: the engine accounts its service; then either advance the run (the
        step's last call of a program run, stored in the same transaction) or store it alone."""
        now = time.time()
        completion = self.engine.complete(stored.id, self._work_s(stored.backend, result))
        self._kick()
        if completion is None:
            return  # the run ended meanwhile (failed)
        decision = DecisionRow(
            now, DecisionKind.COMPLETE, stored.backend, live.record.app_id,
            {"step": stored.step, "call": stored.call_index, "seconds": result.seconds},
        )
        completed = CompletedCall(stored.id, result.model_dump(mode="json"), decision)
        ends_step = live.program is not None and completion.stage_done
        if not ends_step and not self.journal.complete(completed.call_id, completed.result, now, decision):
            return  # a duplicate result
        self._completed_calls += 1
        live.doc["attained_s"] = live.record.attained_s
        live.last_activity_s = now
        live.results[stored.call_index] = result
        if live.program is None:
            self._complete_open(live, stored, result, completion.work_s, now)
        elif ends_step:
            self._advance(live, completed)

    def _work_s(self, backend: str, result: CallResult) -> float:
        if backend in self.config.costs.llm:
            return self.config.costs.engine(backend).work_s(result.input_tokens, result.output_tokens)
        return result.seconds

    def _observation(
        self, live: LiveRun, plan: StepPlan, step: int, next_stage: str, results: list[CallResult],
        calls: list[StoredCall], now: float,
    ) -> StageObservation:
        return StageObservation(
            app_class=live.record.app_class,
            run_id=live.record.app_id,
            stage=plan.stage,
            step=step,
            visit=max(live.doc["visits"].get(plan.stage, 1), 1),
            next_stage=next_stage,
            fanout=len(results),
            input_tokens=tuple(r.input_tokens for r in results),
            output_tokens=tuple(r.output_tokens for r in results),
            exec_s=tuple(r.seconds for r in results),
            backend=plan.backend,
            work_s=sum(self._work_s(plan.backend, r) for r in results),
            started_s=min((c.queued_s for c in calls), default=now),
            finished_s=now,
        )

    def _advance(self, live: LiveRun, completion: CompletedCall | None = None) -> None:
        """The current step of a program run is complete: ask the program what comes next.
        `completion` is the step's last call, stored with the transition."""
        now = time.time()
        plan = live.plan
        results = [live.results[i] for i in range(len(plan.calls))]
        live.doc["cold_s"] = self.engine.apps[live.record.app_id].cold_s
        try:
            transition = live.program.advance(live.inputs, live.doc["program"], plan, results)
            following = transition.next
            if isinstance(following, StepPlan) and following.backend not in self.slots:
                raise ValueError(f"step {following.stage!r} names backend {following.backend!r}, which is not configured")
        except Exception as error:
            log.exception("program of %s failed", live.key)
            self._fail(live, f"the {live.record.app_class} program failed after step {plan.stage!r}: {error}")
            return
        next_stage = following.stage if isinstance(following, StepPlan) else END
        finished_step = live.doc["step"]
        observation = self._observation(live, plan, finished_step, next_stage, results, list(live.calls.values()), now)
        doc = dict(live.doc, program=transition.state, visits=dict(live.doc["visits"]))
        if isinstance(following, Finished):
            doc.pop("plan", None)
            self._end(live, RunEnd(RunPhase.FINISHED, following.result), observation, doc, finished_step, completion)
            return
        doc["step"] = finished_step + 1
        doc["plan"] = following.model_dump(mode="json")
        doc["visits"][following.stage] = doc["visits"].get(following.stage, 0) + 1
        calls = self.journal.advance(
            live.record.app_id, finished_step, observation, doc, new_step(doc["step"], following), None, now,
            [DecisionRow(now, DecisionKind.STEP, following.backend, detail={"stage": following.stage, "calls": len(following.calls)})],
            completion,
        )
        if calls is None:
            return
        live.doc = doc
        self._begin_step(live, following, calls)

    def _end(self, live: LiveRun, end: RunEnd, observation, doc, finished_step: int, completion=None) -> None:
        """Store the run's end (with its last observation and call), then take it out of the
        engine and wake whoever waits on it."""
        now = time.time()
        app = self.engine.apps[live.record.app_id]
        end = RunEnd(end.phase, end.result, end.error, app.cold_s + app.stage_cold_s, live.record.attained_s)
        kind = DecisionKind.FINISH if end.phase is RunPhase.FINISHED else DecisionKind.FAIL
        self.journal.advance(
            live.record.app_id, finished_step, observation, doc or live.doc, None, end, now,
            [DecisionRow(now, kind, detail={"error": end.error} if end.error else None)],
            completion,
        )
        ended = self.engine.finish(live.record.app_id)
        act_s = ended.act_s if end.phase is RunPhase.FINISHED else None
        self.metrics.app_ended(live.record.app_class, self.policy.name, act_s)
        self.live.pop(live.record.app_id, None)
        self.by_key.pop(live.key, None)
        live.done.set()
        self._kick()

    def _fail(self, live: LiveRun, error: str) -> None:
        self._end(live, RunEnd(RunPhase.FAILED, None, error), None, None, live.doc["step"])
        for future in live.waiters.values():
            if not future.done():
                future.set_exception(RunFailed(error))

    # -- recovery -------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Reload unfinished runs from the store and queue their unfinished calls."""
        runs = self.journal.live_runs()
        for run, calls in runs:
            program = self.programs.get(run.app_class)
            doc = dict(run.state or {})
            if doc.get("open"):
                self._recover_open(run, doc, calls)
                continue
            if program is None:
                continue
            inputs = program.validate_inputs(run.inputs or {})
            live = self._new_live(run, program, inputs, doc)
            plan = StepPlan.model_validate(doc["plan"])
            if not calls:
                calls = self.journal.start_step(run.id, doc, new_step(doc["step"], plan), time.time())
            self._begin_step(live, plan, calls)
        if runs:
            self.journal.record([DecisionRow(time.time(), DecisionKind.RECOVER, detail={"runs": len(runs)})])

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
