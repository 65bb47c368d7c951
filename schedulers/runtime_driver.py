"""The scheduler actor's run driver: the engine's second driver, with the wall clock.

`RunDriver` tells the `SchedulingEngine` what happened to runs — one became live, a step's
calls were stored, a call returned or its backend died — and applies the engine's dispatch
decisions: each dispatched call is journalled, run on its `BackendSlot`, and its result stored.
Results are stored in the actor's next pass, all that landed since the last one in one journal
transaction (`complete_landed`: a group commit), before the pass dispatches what they made
ready. A program run's last result of a step advances the run through its `AppProgram`
(`RunJournal.advance`: observation, completion and next step); an open run's result answers the
step's waiter and keeps its observation until the next step names the successor
(`runtime_open.py`).

It owns the live-run registry's entries (`LiveRuns`: `new_live` adds, `_end` removes) and is
what the actor's collaborators change runs through, typed as `RunControl`. Every entry point
that runs on a result (`complete_landed`, `_lost`) is counted as the scheduler's overhead
(`ActorLoop.timed`); the others are counted by their callers.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pydantic import BaseModel, TypeAdapter

from hermesflow.apps.program import AppProgram, Finished, StepPlan, Transition
from hermesflow.backends.calls import Call, CallResult
from hermesflow.journal import CompletedCall, RunEnd, RunJournal, StoredCall
from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.demand import DemandEstimator, PreparedGraph
from hermesflow.pdgraph.model import END
from hermesflow.pdgraph.refit import StageObservation
from hermesflow.schedulers.engine import Dispatch, LossOutcome, SchedulingEngine
from hermesflow.schedulers.errors import RunFailed
from hermesflow.schedulers.metrics import SchedulerMetrics
from hermesflow.schedulers.runtime_backends import BackendDied, BackendSlot
from hermesflow.schedulers.runtime_loop import ActorLoop
from hermesflow.schedulers.runtime_state import (
    LiveRun,
    LiveRuns,
    RunState,
    new_step,
    request_of,
    view_live,
    view_stored,
)
from hermesflow.store import CallPhase, DecisionKind, DecisionRow, RunPhase, RunRow
from hermesflow.views import AppView

log = logging.getLogger(__name__)

_CALL = TypeAdapter(Call)


class RunDriver:
    """Drives live runs through the engine and the backends (module docstring).

    `policy` is the name stored with each run's metrics; `costs` turn an LLM call's tokens into
    the work the engine accounts (other backends: their measured seconds)."""

    def __init__(
        self,
        journal: RunJournal,
        engine: SchedulingEngine,
        demand: DemandEstimator,
        slots: dict[str, BackendSlot],
        live: LiveRuns,
        loop: ActorLoop,
        metrics: SchedulerMetrics,
        policy: str,
        costs: CostModel,
    ) -> None:
        self.journal = journal
        self.engine = engine
        self.demand = demand
        self.slots = slots
        self.live = live
        self.loop = loop
        self.metrics = metrics
        self.policy = policy
        self.costs = costs
        self.completed_calls = 0
        """Calls whose result was stored: the denominator of the overhead per step."""
        self._landed: list[tuple[LiveRun, StoredCall, CallResult]] = []

    # -- runs become live, steps begin ----------------------------------------------------------

    def admit(
        self,
        app_class: str,
        program: AppProgram,
        inputs: BaseModel,
        transition: Transition,
        key: str | None,
        labels: dict[str, Any] | None,
    ) -> AppView:
        """Admit a program run whose inputs and first transition are validated: journal it and
        its first step in one transaction (a run is never stored without its current step's
        calls, and a commit is saved), and queue that step; the view of the run under `key` if
        it exists."""
        now = time.time()
        key = key or uuid.uuid4().hex
        first = transition.next
        state = RunState(step=0, program=transition.state)
        if isinstance(first, StepPlan):
            state.plan = first
            state.visits = {first.stage: 1}
        stored = state.stored()
        admit = DecisionRow(now, DecisionKind.ADMIT, detail={"class": app_class, "key": key})
        with self.journal.batch():
            run, created = self.journal.admit(
                key, app_class, self.policy, now, inputs.model_dump(mode="json"), labels, stored, admit
            )
            if created and isinstance(first, StepPlan):
                calls = self.journal.start_step(run.id, stored, new_step(0, first), now)
        if not created:
            return view_stored(run)
        live = self.new_live(run, program, inputs, state)
        if isinstance(first, Finished):
            self._end(live, RunEnd(RunPhase.FINISHED, first.result), None, None, 0)
        else:
            self.begin_step(live, first, calls)
        return view_live(live)

    def new_live(
        self, run: RunRow, program: AppProgram | None, inputs: BaseModel | None, state: RunState
    ) -> LiveRun:
        """A run becomes live (admitted, or reloaded after a restart): the engine, and through
        it the policy, hears of it once here, so per-application policy state (vtc's counter)
        exists for recovered runs."""
        record = self.engine.admit(
            run.id,
            self.demand.initial_state(run.app_class),
            arrival_s=run.submitted_s,
            attained_s=state.attained_s,
            cold_s=state.cold_s,
        )
        live = LiveRun(record, run.key, program, inputs, state)
        self.live.add(live)
        self.metrics.app_admitted(run.app_class)
        return live

    def begin_step(self, live: LiveRun, plan: StepPlan, calls: list[StoredCall]) -> None:
        """Hand a stored step's unfinished calls to the engine, with the run's graph state (the
        step is already counted in `live.state.visits`)."""
        live.plan = plan
        if live.program is not None:
            live.calls, live.results = {}, {}
        for stored in calls:
            live.calls[stored.id] = stored
            if stored.phase is CallPhase.DONE:
                live.results[stored.call_index] = CallResult.model_validate(stored.result)
        queued = [
            request_of(live, stored) for stored in calls if stored.phase is not CallPhase.DONE
        ]
        stage, visits = self._graph_position(live)
        self.engine.begin_stage(live.run_id, stage, visits, queued)
        if not queued and live.program is not None:
            self._advance(live)
            return
        self.loop.wake()

    def recover(
        self, run: RunRow, program: AppProgram, state: RunState, calls: list[StoredCall]
    ) -> None:
        """Reload an unfinished program run after a restart and queue its unfinished calls (its
        step's calls are stored now if the crash came between advance and storing them)."""
        plan = state.plan
        if plan is None:
            raise ValueError(
                f"program run {run.key!r} is unfinished but its stored state has no current step "
                "(`plan`); the store was changed by hand or by another program: mark the run failed"
            )
        inputs = program.validate_inputs(run.inputs or {})
        live = self.new_live(run, program, inputs, state)
        if not calls:
            calls = self.journal.start_step(
                run.id, state.stored(), new_step(state.step, plan), time.time()
            )
        self.begin_step(live, plan, calls)

    def _graph_position(self, live: LiveRun) -> tuple[str | None, tuple[int, ...]]:
        """Where the run is in its class's current graph (a refit may have added stages): its
        stage and its visit counts."""
        compiled = self.demand.compiled(live.record.app_class)
        counts = [0] * compiled.end
        for name, count in live.state.visits.items():
            if name in compiled.index:
                counts[compiled.index[name]] = count
        stage = (
            live.plan.stage if live.plan is not None and live.plan.stage in compiled.index else None
        )
        return stage, tuple(counts)

    def use_graph(self, prepared: PreparedGraph) -> None:
        """Rank the class by a prepared graph from now on: its live runs are restated in the
        new graph, and the engine re-ranks their waiting calls."""
        self.demand.install(prepared)
        self.engine.demand_changed()
        for live in self.live:
            if live.record.app_class == prepared.graph.name:
                self.engine.restate(live.run_id, *self._graph_position(live))

    # -- dispatch and results -------------------------------------------------------------------

    def start_call(self, dispatch: Dispatch) -> None:
        """Journal a dispatch decision and run the call on its backend."""
        now = time.time()
        request = dispatch.request
        live = self.live[request.app.app_id]
        stored = live.calls[request.request_id]
        self.journal.dispatch(
            stored.id,
            now,
            DecisionRow(
                now,
                DecisionKind.DISPATCH,
                stored.backend,
                live.run_id,
                {"step": stored.step, "call": stored.call_index, "rank": dispatch.rank},
            ),
        )
        self.loop.spawn(self._execute(self.slots[stored.backend], live, stored, dispatch.rank))

    async def _execute(
        self, slot: BackendSlot, live: LiveRun, stored: StoredCall, priority: float
    ) -> None:
        sink = live.sinks.get(stored.id)
        try:
            result = await slot.call(
                stored.call, priority, None if sink is None else sink.put_nowait
            )
        except BackendDied as died:
            self.loop.timed(self._lost, slot, live, stored, died)
            return
        except Exception as error:  # noqa: BLE001 - a failing call is a result the program sees
            result = slot.failure(error)
        self._landed.append((live, stored, result))
        self.loop.wake()

    @property
    def results_waiting(self) -> int:
        """Results that landed and are not stored yet (the actor's next pass stores them)."""
        return len(self._landed)

    def complete_landed(self) -> None:
        """Account and store every result that landed since the last pass, in one journal
        transaction (module docstring). If storing fails, none of them is stored: the error is
        logged and counted as a failed task, as it would fail the one call's task unbatched."""
        landed, self._landed = self._landed, []
        if not landed:
            return
        try:
            with self.journal.batch():
                for live, stored, result in landed:
                    self._complete(live, stored, result)
        except Exception:  # the actor's loop must go on for the other runs
            self.loop.task_failures += 1
            log.exception("storing %d results failed", len(landed))

    def _lost(
        self, slot: BackendSlot, live: LiveRun, stored: StoredCall, died: BackendDied
    ) -> None:
        """A call's backend died under it: the backend is cold (if that news is not stale), and
        the engine re-queues the call or, after `max_attempts` tries, gives its run up."""
        now = time.time()
        if self.engine.backend_lost(slot.name, died.generation):
            slot.lost(died.generation)
        loss = self.engine.lose(stored.id)
        if loss is None:
            return  # the run ended meanwhile
        if loss.outcome is LossOutcome.GAVE_UP:
            self.fail(live, f"{died}; gave up after {loss.attempts} attempts")
            return
        self.journal.requeue(
            stored.id,
            DecisionRow(
                now,
                DecisionKind.RETRY,
                stored.backend,
                live.run_id,
                {"call": stored.call_index, "reason": str(died)},
            ),
        )
        self.loop.wake()

    def _complete(self, live: LiveRun, stored: StoredCall, result: CallResult) -> None:
        """A call finished: the engine accounts its service; then either advance the run (the
        step's last call of a program run, stored in the same transaction) or store it alone."""
        now = time.time()
        completion = self.engine.complete(stored.id, self._work_s(stored.backend, result))
        if completion is None:
            return  # the run ended meanwhile (failed)
        decision = DecisionRow(
            now,
            DecisionKind.COMPLETE,
            stored.backend,
            live.run_id,
            {"step": stored.step, "call": stored.call_index, "seconds": result.seconds},
        )
        completed = CompletedCall(stored.id, result.model_dump(mode="json"), decision)
        ends_step = live.program is not None and completion.stage_done
        if not ends_step and not self.journal.complete(
            completed.call_id, completed.result, now, decision
        ):
            return  # a duplicate result
        self.completed_calls += 1
        live.state.attained_s = live.record.attained_s
        live.last_activity_s = now
        live.results[stored.call_index] = result
        if live.program is None:
            self._complete_open(live, stored, result, now)
        elif ends_step:
            self._advance(live, completed)

    def _complete_open(
        self, live: LiveRun, stored: StoredCall, result: CallResult, now: float
    ) -> None:
        """An open run's step is done: its observation waits for the successor the client's
        next step names (`OpenRuns`), and its waiter gets the result."""
        call = live.calls.pop(stored.id)
        live.results.pop(stored.call_index, None)
        plan = StepPlan(
            stage=call.stage, backend=call.backend, calls=[_CALL.validate_python(call.call)]
        )
        live.pending_observations.append(
            self._observation(live, plan, call.step, END, [result], [call], now)
        )
        live.state.cold_s = self.engine.apps[live.run_id].cold_s
        future = live.waiters.pop(stored.id, None)
        live.sinks.pop(stored.id, None)
        if future is not None and not future.done():
            future.set_result(result)

    def _work_s(self, backend: str, result: CallResult) -> float:
        """A call's service in backend-seconds: an LLM call's tokens priced at the rates of the
        attention method it ran, any other call's measured seconds."""
        if backend in self.costs.llm:
            return self.costs.engine(backend).work_s(result.input_tokens, result.output_tokens, result.attention)
        return result.seconds

    def _observation(
        self,
        live: LiveRun,
        plan: StepPlan,
        step: int,
        next_stage: str,
        results: list[CallResult],
        calls: list[StoredCall],
        now: float,
    ) -> StageObservation:
        return StageObservation(
            app_class=live.record.app_class,
            run_id=live.run_id,
            stage=plan.stage,
            step=step,
            visit=max(live.state.visits.get(plan.stage, 1), 1),
            next_stage=next_stage,
            fanout=len(results),
            input_tokens=tuple(r.input_tokens for r in results),
            output_tokens=tuple(r.output_tokens for r in results),
            exec_s=tuple(r.seconds for r in results),
            attention=tuple(r.attention for r in results) if all(r.attention for r in results) else (),
            backend=plan.backend,
            work_s=sum(self._work_s(plan.backend, r) for r in results),
            started_s=min((c.queued_s for c in calls), default=now),
            finished_s=now,
        )

    # -- program runs advance, runs end ---------------------------------------------------------

    def _advance(self, live: LiveRun, completion: CompletedCall | None = None) -> None:
        """The current step of a program run is complete: ask the program what comes next.
        `completion` is the step's last call, stored with the transition."""
        now = time.time()
        plan = live.plan
        results = [live.results[i] for i in range(len(plan.calls))]
        live.state.cold_s = self.engine.apps[live.run_id].cold_s
        try:
            transition = live.program.advance(live.inputs, live.state.program, plan, results)
            following = transition.next
            if isinstance(following, StepPlan) and following.backend not in self.slots:
                raise ValueError(
                    f"step {following.stage!r} names backend {following.backend!r}, which is not configured"
                )
        except Exception as error:
            log.exception("program of %s failed", live.key)
            self.fail(
                live,
                f"the {live.record.app_class} program failed after step {plan.stage!r}: {error}",
            )
            return
        next_stage = following.stage if isinstance(following, StepPlan) else END
        finished_step = live.state.step
        observation = self._observation(
            live, plan, finished_step, next_stage, results, list(live.calls.values()), now
        )
        # a copy, not validated again: the live state changes only once the journal took it
        state = live.state.model_copy(
            update={"program": transition.state, "visits": dict(live.state.visits)}
        )
        if isinstance(following, Finished):
            state.plan = None
            self._end(
                live,
                RunEnd(RunPhase.FINISHED, following.result),
                observation,
                state,
                finished_step,
                completion,
            )
            return
        state.step = finished_step + 1
        state.plan = following
        state.visits[following.stage] = state.visits.get(following.stage, 0) + 1
        calls = self.journal.advance(
            live.run_id,
            finished_step,
            observation,
            state.stored(),
            new_step(state.step, following),
            None,
            now,
            [
                DecisionRow(
                    now,
                    DecisionKind.STEP,
                    following.backend,
                    detail={"stage": following.stage, "calls": len(following.calls)},
                )
            ],
            completion,
        )
        if calls is None:
            return
        live.state = state
        self.begin_step(live, following, calls)

    def finish(self, live: LiveRun) -> None:
        self._end(live, RunEnd(RunPhase.FINISHED), None, None, live.state.step)

    def fail(self, live: LiveRun, error: str) -> None:
        self._end(live, RunEnd(RunPhase.FAILED, None, error), None, None, live.state.step)
        for future in live.waiters.values():
            if not future.done():
                future.set_exception(RunFailed(error))

    def _end(
        self,
        live: LiveRun,
        end: RunEnd,
        observation: StageObservation | None,
        state: RunState | None,
        finished_step: int,
        completion: CompletedCall | None = None,
    ) -> None:
        """Store the run's end (with its last observation and call), then take it out of the
        engine and wake whoever waits on it."""
        now = time.time()
        app = self.engine.apps[live.run_id]
        end = RunEnd(
            end.phase, end.result, end.error, app.cold_s + app.stage_cold_s, live.record.attained_s
        )
        kind = DecisionKind.FINISH if end.phase is RunPhase.FINISHED else DecisionKind.FAIL
        self.journal.advance(
            live.run_id,
            finished_step,
            observation,
            (state or live.state).stored(),
            None,
            end,
            now,
            [DecisionRow(now, kind, detail={"error": end.error} if end.error else None)],
            completion,
        )
        ended = self.engine.finish(live.run_id)
        act_s = ended.act_s if end.phase is RunPhase.FINISHED else None
        self.metrics.app_ended(live.record.app_class, self.policy, act_s)
        self.live.remove(live)
        live.done.set()
        self.loop.wake()
