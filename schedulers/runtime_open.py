"""Open applications on the scheduler actor: runs whose steps a client sends one by one.

The OpenAI-compatible gateway and Airflow tasks do not hand the scheduler a program; each of
their requests is one step of an application named by the client (`key`). `OpenRuns`, a
collaborator of the scheduler actor, admits such a run on its first step (its class's graph is the one its client
declared with `declare_graph`, else a vague prior, see `open_apps.py`), queues each step like any
other, hands the result (or a stream of text deltas) back to the caller, records each step's
observation once the next step names its successor, and ends the run when the client says so
(finished, or failed) or after `open_app_idle_s` without steps.

Every step in flight has a waiter future in `LiveRun.waiters`, also when no caller awaits it
(a named step, `runtime_steps.py`, or a step recovered after a restart): it is what a long poll
waits on and what keeps the run from being finished or closed as idle under a running step.

A scheduler crash (its process killed) runs no request twice, as for program runs: every step
is stored (`journal.start_step`) before it is queued, under a name — the client's for a named
step, else the name of the Ray call that carries it (the actor's `_request_name`, its Ray task
id). The restarted actor queues the stored steps not done yet again (`recover`), and Ray retries
each caller's call that was in flight on it (`max_task_retries=-1`) under the same task id: the
retry finds its step by that name and answers it (`_stored_answer`: awaits it, or reads its
stored result) instead of storing a second one. So each request has one `step_calls` row,
completed once (`journal.complete`) and answered once: the first try's reply died with the
process. Execution on the backend is at least once, like a program run's call: the backend
actors are owned by the scheduler actor and die with it, so a call running at the crash is
lost and runs again on its row; even an execution that outlived the crash could not be
recorded, because its result's owner was the dead process. A call whose result is stored never
runs again. A stream is not retried (`HermesScheduler.stream_step`): Ray would append a retry's
items after those already delivered, and a re-run's deltas are not the first run's, so the
client would read a spliced answer. Its client gets an error instead, and its step still runs
once in the restarted scheduler, its result stored.

A step's result reaches its waiter from the run driver (`RunDriver`), which keeps the step's
observation in `LiveRun.pending_observations`; the next step (or the run's end) names the
successor and records them through the journal. `OpenRuns` gets the journal, the store, the live
runs, the backend slots and the demand estimator, changes runs through `RunControl`, and counts
its work on the `ActorLoop`. No Ray here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from hermesflow.apps.program import StepPlan
from hermesflow.backends.call_checks import LLM_BACKEND_TYPES, check_call
from hermesflow.backends.calls import Call, CallRefused, LLMCall
from hermesflow.client_records import TERMINAL_APP_PHASES, AppViewPhase
from hermesflow.journal import ClientStepRow, RunJournal, StoredCall
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import END, LLM_BACKEND, PDGraph, StageKind
from hermesflow.schedulers.errors import (
    ApplicationFinished,
    RunFailed,
    SubmissionError,
    UnknownApplication,
)
from hermesflow.schedulers.open_apps import DECLARED_SOURCE, open_class_prior, structure_of
from hermesflow.schedulers.runtime_config import RuntimeConfig
from hermesflow.schedulers.runtime_control import RunControl
from hermesflow.schedulers.runtime_loop import ActorLoop
from hermesflow.schedulers.runtime_state import (
    LiveRun,
    LiveRuns,
    RunState,
    new_step,
    view_step,
    view_stored,
)
from hermesflow.store import CallPhase, DecisionKind, DecisionRow, RunRow, Store
from hermesflow.views import AppView, ClassDeclaration, StepDelta, StepEnd, StepEvent

if TYPE_CHECKING:
    from hermesflow.schedulers.runtime_backends import BackendSlot

_CALL = TypeAdapter(Call)


class OpenRuns:
    """Open applications (module docstring).

    From `config` it reads the program classes (which take no external steps) and the idle
    times after which an open run is closed; `policy` is the name stored with each admitted run.
    Its own state is each client session's latest application key (`session_key`)."""

    def __init__(
        self,
        config: RuntimeConfig,
        journal: RunJournal,
        store: Store,
        live: LiveRuns,
        slots: Mapping[str, BackendSlot],
        demand: DemandEstimator,
        policy: str,
        runs: RunControl,
        loop: ActorLoop,
    ) -> None:
        self.programs = config.programs
        self.open_app_idle_s = config.open_app_idle_s
        self.named_app_idle_s = config.named_app_idle_s
        self.journal = journal
        self.store = store
        self.live = live
        self.slots = slots
        self.demand = demand
        self.policy = policy
        self.runs = runs
        self.loop = loop
        self._session_keys: dict[str, str] = {}

    # -- steps ----------------------------------------------------------------------------------

    def open_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: dict[str, Any],
        backend: str | None,
        labels: dict[str, Any] | None,
        reopen: bool,
        stream: bool,
        request: str | None = None,
    ) -> tuple[asyncio.Future, asyncio.Queue | None]:
        """Admit one step of an open application: its result's future, and with `stream` the
        queue its text deltas arrive on. With `reopen`, `key` names a client session: once its
        application has ended, the step starts the session's next application (`key#2`, ...).
        `request` is the name of the Ray call that carries the step (module docstring)."""
        parsed, backend = self.parse_step(stage, call, backend)
        if reopen:
            key = self.session_key(key)
        return self.loop.timed(
            self._admit_request, key, app_class, stage, parsed, backend, labels, stream, request
        )

    def _admit_request(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: Call,
        backend: str,
        labels: dict[str, Any] | None,
        stream: bool,
        request: str | None,
    ) -> tuple[asyncio.Future, asyncio.Queue | None]:
        """Admit a step (`admit`) — unless a step is stored under `request` already, because
        Ray retried its call on this restarted actor: then the stored step answers. One
        synchronous piece, so a second try cannot interleave with the first."""
        if request is not None and (found := self.journal.client_step(key, request)) is not None:
            run, step = found
            if step is not None:
                return self._stored_answer(key, run, step), None
        return self.admit(key, app_class, stage, call, backend, labels, stream, request=request)

    def _stored_answer(self, key: str, run: RunRow, step: ClientStepRow) -> asyncio.Future:
        """The answer of a stored step: its waiter while it is in flight (every step in flight
        has one, recovered steps too), else its stored result, or the error its application
        ended with before it ran."""
        live = self.live.by_key(key)
        if live is not None and (waiter := live.waiters.get(step.call.id)) is not None:
            return waiter
        answer, view = _waiter(), view_step(key, run, step)
        if view.result is None:
            answer.set_exception(RunFailed(view.error))
        else:
            answer.set_result(view.result)
        return answer

    def parse_step(self, stage: str, call: dict[str, Any], backend: str | None) -> tuple[Call, str]:
        """The step's call, validated, and the backend it runs on (default: `llm` for an LLM
        call). A call its backend cannot run (wrong kind, unknown tool, arguments that do not
        fit the tool's signature) is refused here, before anything is stored or queued."""
        try:
            parsed = _CALL.validate_python(call)
        except ValidationError as error:
            raise SubmissionError(f"invalid call for step {stage!r}: {error}") from None
        backend = backend or (LLM_BACKEND if isinstance(parsed, LLMCall) else None)
        if backend not in self.slots:
            raise SubmissionError(
                f"unknown backend {backend!r} for step {stage!r}; configured backends: {sorted(self.slots)}"
            )
        slot = self.slots[backend]
        try:
            check_call(backend, slot.spec.type, slot.signatures, parsed)
        except CallRefused as refused:
            raise SubmissionError(f"step {stage!r}: {refused}") from None
        return parsed, backend

    def session_key(self, session: str) -> str:
        """The key of the session's live application, or of its next one. The latest key of each
        session is remembered, so a live session costs no store look-up per request."""
        key = self._session_keys.get(session, session)
        generation = int(key.rpartition("#")[2]) if key != session else 1
        while key not in self.live and self.journal.run(key) is not None:
            generation += 1
            key = f"{session}#{generation}"
        self._session_keys[session] = key
        return key

    def admit(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: Call,
        backend: str,
        labels: dict[str, Any] | None,
        stream: bool,
        client_step: str | None = None,
        attempt: int = 1,
        request: str | None = None,
    ) -> tuple[asyncio.Future, asyncio.Queue | None]:
        """Queue one step (opening the run on its first); `client_step` is the client's name of
        it, stored with the step, and `attempt` which submission of that name this is. An
        unnamed step is stored under `request`, the name of the Ray call that carries it."""
        now = time.time()
        live = self.live.by_key(key)
        if live is None:
            if (ended := self.journal.run(key)) is not None:
                raise ApplicationFinished(
                    f"application {key!r} has {ended.phase.name.lower()}; send new steps under a new "
                    "application id (from Airflow: a new DAG run)"
                )
            if app_class in self.programs:
                raise SubmissionError(
                    f"class {app_class!r} is a program class; submit whole runs of it, or name an open class"
                )
            self._ensure_open_class(app_class, stage, backend)
            state = RunState(step=-1, open=True)
            admit = DecisionRow(
                now, DecisionKind.ADMIT, detail={"class": app_class, "key": key, "open": True}
            )
            run, _ = self.journal.admit(
                key, app_class, self.policy, now, None, labels, state.stored(), admit
            )
            live = self.runs.new_live(run, None, None, state)
        elif live.program is not None:
            raise SubmissionError(
                f"application {key!r} is a program run; it takes no external steps"
            )
        self._record_observations(live, stage)
        state = live.state
        if client_step is not None:
            state.named = True  # a client that names steps closes the run itself
        state.step += 1
        state.visits[stage] = state.visits.get(stage, 0) + 1
        plan = StepPlan(stage=stage, backend=backend, calls=[call])
        step = new_step(state.step, plan, client_step or request, attempt)
        calls = self.journal.start_step(live.run_id, state.stored(), step, now)
        future = live.waiters[calls[0].id] = _waiter()
        sink: asyncio.Queue | None = asyncio.Queue() if stream else None
        if sink is not None:
            live.sinks[calls[0].id] = sink
        live.last_activity_s = now
        self.runs.begin_step(live, plan, calls)
        return future, sink

    def _ensure_open_class(self, app_class: str, stage: str, backend: str) -> None:
        if app_class in self.demand.classes:
            return
        graph = open_class_prior(app_class, stage, backend, self.backend_kind(backend))
        self.store.save_pdgraph(graph, source="open-prior")
        self.runs.use_graph(self.demand.prepare(graph))

    def backend_kind(self, backend: str) -> StageKind:
        """The kind of stage a step on `backend` is (an unknown backend's: a tool's)."""
        if backend not in self.slots:
            return StageKind.TOOL
        return (
            StageKind.LLM if self.slots[backend].spec.type in LLM_BACKEND_TYPES else StageKind.TOOL
        )

    # -- graphs ---------------------------------------------------------------------------------

    def declare_graph(self, name: str, graph: dict[str, Any]) -> tuple[ClassDeclaration, bool]:
        """Declare the PDGraph of open class `name` (e.g. an Airflow DAG's compiled graph): its
        runs are ranked over it from now on, and the background refit learns from there. The
        same structure as the class's last declaration again changes nothing, so the learned
        refits stay; a changed structure (an edited DAG) replaces the class's graph. Returns
        the `ClassDeclaration` and whether it is the class's first declaration."""
        try:
            parsed = PDGraph.model_validate(graph)
        except ValidationError as error:
            raise SubmissionError(f"invalid PDGraph for class {name!r}: {error}") from None
        self._check_declarable(name, parsed)
        return self.loop.timed(self._declare, parsed)

    def _check_declarable(self, name: str, graph: PDGraph) -> None:
        if graph.name != name:
            raise SubmissionError(
                f"the graph is named {graph.name!r} but declared as class {name!r}; the names must match"
            )
        if name in self.programs:
            raise SubmissionError(
                f"class {name!r} is a program class: its graph is its program's prior "
                f"({self.programs[name]}); declare graphs of open classes only, or use another name"
            )
        backends = {stage: graph.backend_of(stage) for stage in graph.stages}
        missing = [
            f"stage {s!r} runs on backend {b!r}" for s, b in backends.items() if b not in self.slots
        ]
        if missing:
            raise SubmissionError(
                f"class {name!r}: {', '.join(missing)}, which this scheduler does not have; configured "
                f"backends: {sorted(self.slots)}. Run those tasks on a configured backend, or add the "
                "backend to the scheduler's configuration"
            )

    def _declare(self, graph: PDGraph) -> tuple[ClassDeclaration, bool]:
        last = self.store.latest_snapshot(graph.name, DECLARED_SOURCE)
        if last is not None and structure_of(last[1]) == structure_of(graph):
            return ClassDeclaration(name=graph.name, version=last[0], changed=False), False
        version = self.store.save_pdgraph(graph, source=DECLARED_SOURCE)
        self.runs.use_graph(self.demand.prepare(graph))
        return ClassDeclaration(name=graph.name, version=version, changed=True), last is None

    # -- the end of a run -----------------------------------------------------------------------

    def finish_app(
        self, key: str, state: AppViewPhase = AppViewPhase.FINISHED, error: str | None = None
    ) -> AppView:
        """End an open application. `finished`: its client has no more steps (refused while a
        step runs). `failed`: its client failed (an Airflow DAG run did); it ends at once,
        stored FAILED with `error`, and its steps still in flight fail with it."""
        live = self.live.by_key(key)
        if live is None:
            stored = self.journal.run(key)
            if stored is None:
                raise UnknownApplication(f"no application {key!r}")
            return view_stored(stored)
        if live.program is not None:
            raise SubmissionError(f"application {key!r} is a program run; it ends by itself")
        if state not in TERMINAL_APP_PHASES:
            raise SubmissionError(
                f"an application finishes as 'finished' or 'failed', not {state!r}"
            )
        if state is AppViewPhase.FAILED:
            self.loop.timed(
                self.runs.fail,
                live,
                error or f"the client reported that application {key!r} failed",
            )
        elif live.waiters:
            raise SubmissionError(
                f"application {key!r} still has {len(live.waiters)} step(s) running"
            )
        else:
            self.loop.timed(self._end, live)
        return view_stored(self.journal.run(key))

    def _record_observations(self, live: LiveRun, next_stage: str) -> None:
        """Steps of an open run learn their successor when the next step arrives (or END)."""
        if live.pending_observations:
            finished = [
                dataclasses.replace(o, next_stage=next_stage) for o in live.pending_observations
            ]
            live.pending_observations.clear()
            self.journal.record_observations(live.run_id, finished)

    def _end(self, live: LiveRun) -> None:
        self._record_observations(live, END)
        self.runs.finish(live)

    def close_idle(self) -> None:
        """End the open runs without a step in flight whose last activity is older than their
        idle time (a run whose client names steps waits `named_app_idle_s`)."""
        now = time.time()
        for live in self.live:
            idle_s = self.named_app_idle_s if live.state.named else self.open_app_idle_s
            if live.program is None and not live.waiters and live.last_activity_s < now - idle_s:
                self.loop.timed(self._end, live)

    def recover(self, run: RunRow, state: RunState, calls: list[StoredCall]) -> None:
        """Reload an open run after a restart: its calls not done yet are queued again, each
        with a waiter, as if its client were still waiting (a named step's client reads the
        result later; a `submit_step` caller's retried call awaits the waiter; a stream's
        client is gone, the result is stored anyway)."""
        live = self.runs.new_live(run, None, None, state)
        if not calls:
            return
        last = calls[-1]
        plan = StepPlan(
            stage=last.stage, backend=last.backend, calls=[_CALL.validate_python(last.call)]
        )
        pending = [c for c in calls if c.phase is not CallPhase.DONE]
        for stored in pending:
            live.waiters[stored.id] = _waiter()
        self.runs.begin_step(live, plan, pending)


async def relay(future: asyncio.Future, sink: asyncio.Queue) -> AsyncIterator[StepEvent]:
    """A streamed step's events: a `StepDelta` for each piece of text as the backend sends it,
    then a `StepEnd` with the result once the step is done."""
    while True:
        getter = asyncio.ensure_future(sink.get())
        done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield StepDelta(delta=getter.result())
            continue
        getter.cancel()
        while not sink.empty():
            yield StepDelta(delta=sink.get_nowait())
        yield StepEnd(result=future.result())
        return


def _waiter() -> asyncio.Future:
    """A step's waiter future. Its exception (the run failed) is marked as seen, because a named
    or recovered step's waiter may have nobody awaiting it."""
    future = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future
