"""The runtime's journal of live runs: the transactions that make a scheduler restart exact.

The Ray scheduler keeps its live applications in memory for speed, but every change that
matters is one transaction here first:

* `admit` creates a run under a client key; admitting the same key again returns the same run,
  so a client that retries a submission does not start a second run;
* `start_step` stores the program state and every call of the next step (QUEUED) before any is
  dispatched;
* `dispatch` marks a call RUNNING and counts the attempt; `requeue` puts it back after its
  backend died;
* `complete` stores a call's result once: it succeeds only if the call is not DONE yet, so a
  late duplicate is dropped;
* `advance` records the finished step's observation and moves the run to its next step or
  finishes it — guarded by the step number, so it happens once.

After a crash, `live_runs` gives each unfinished run with its state and its current step's
calls: DONE calls keep their results, the others are queued again. Every transaction also
appends the scheduling decisions it carries (admission, dispatch, completion, warm, release)
to the decisions table, which is the run's event stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from hermesflow.pdgraph.refit import StageObservation
from hermesflow.store import (
    CallPhase,
    Decision,
    DecisionRow,
    Run,
    RunPhase,
    StepCall,
    Store,
    _observation_row,
    _require_class,
)


_LIVE_PHASES = (RunPhase.ADMITTED, RunPhase.RUNNING)
"""Phases of a run that is not over (stored as names, so compared by membership, not order)."""


@dataclass(frozen=True, slots=True)
class StoredCall:
    """One call of a run's current step, as stored."""

    id: int
    run_id: int
    step: int
    call_index: int
    stage: str
    backend: str
    call: dict[str, Any]
    phase: CallPhase
    attempts: int
    result: dict[str, Any] | None
    queued_s: float
    started_s: float | None


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run with what a scheduler needs to resume it, or a client to read it."""

    id: int
    key: str
    app_class: str
    phase: RunPhase
    submitted_s: float
    finished_s: float | None
    inputs: dict[str, Any] | None
    state: dict[str, Any] | None
    result: Any
    error: str | None
    act_s: float | None
    cold_start_s: float | None
    attained_s: float | None
    labels: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EventRow:
    """A decision about a run, with its id (the position in the run's event stream)."""

    id: int
    at_s: float
    kind: str
    backend: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class NewStep:
    """The calls of a step to store before dispatching them."""

    step: int
    stage: str
    backend: str
    calls: Sequence[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a run ends."""

    phase: RunPhase
    result: Any = None
    error: str | None = None
    cold_start_s: float = 0.0
    attained_s: float = 0.0


class RunJournal:
    """Journal transactions over a `Store` (module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def admit(
        self,
        key: str,
        app_class: str,
        policy: str | None,
        submitted_s: float,
        inputs: dict[str, Any] | None,
        labels: dict[str, Any] | None,
        state: dict[str, Any],
        decision: DecisionRow,
    ) -> tuple[StoredRun, bool]:
        """The run under `key`, created now if new; the flag says whether it was created."""
        with self.store.session() as session:
            existing = session.scalar(select(Run).where(Run.key == key))
            if existing is not None:
                return _stored_run(existing), False
            _require_class(session, app_class)
            run = Run(
                key=key,
                app_class=app_class,
                policy=policy,
                phase=RunPhase.ADMITTED,
                submitted_s=submitted_s,
                inputs=inputs,
                labels=labels,
                state=state,
            )
            session.add(run)
            session.flush()
            session.add(_decision(decision, run.id))
            return _stored_run(run), True

    def start_step(
        self, run_id: int, state: dict[str, Any], step: NewStep, at_s: float, decisions: Iterable[DecisionRow] = ()
    ) -> list[StoredCall]:
        """Store the run's new state and the step's calls (QUEUED); returns the stored calls."""
        with self.store.session() as session:
            run = session.get(Run, run_id)
            run.state, run.phase = state, RunPhase.RUNNING
            rows = [
                StepCall(
                    run_id=run_id,
                    step=step.step,
                    call_index=index,
                    stage=step.stage,
                    backend=step.backend,
                    call=call,
                    phase=CallPhase.QUEUED,
                    attempts=0,
                    queued_s=at_s,
                )
                for index, call in enumerate(step.calls)
            ]
            session.add_all(rows)
            session.add_all(_decision(d, run_id) for d in decisions)
            session.flush()
            return [_stored_call(row) for row in rows]

    def dispatch(self, call_id: int, at_s: float, decision: DecisionRow) -> None:
        with self.store.session() as session:
            session.execute(
                update(StepCall)
                .where(StepCall.id == call_id)
                .values(phase=CallPhase.RUNNING, started_s=at_s, attempts=StepCall.attempts + 1)
            )
            session.add(_decision(decision, decision.run_id))

    def requeue(self, call_id: int, decision: DecisionRow) -> None:
        """A call whose backend died goes back to QUEUED (its attempt stays counted)."""
        with self.store.session() as session:
            session.execute(
                update(StepCall)
                .where(StepCall.id == call_id, StepCall.phase != CallPhase.DONE)
                .values(phase=CallPhase.QUEUED, started_s=None)
            )
            session.add(_decision(decision, decision.run_id))

    def complete(self, call_id: int, result: dict[str, Any], at_s: float, decision: DecisionRow) -> bool:
        """Store a call's result unless it already has one; False for a duplicate."""
        with self.store.session() as session:
            done = session.execute(
                update(StepCall)
                .where(StepCall.id == call_id, StepCall.phase != CallPhase.DONE)
                .values(phase=CallPhase.DONE, result=result, finished_s=at_s)
            ).rowcount
            if done:
                session.add(_decision(decision, decision.run_id))
            return bool(done)

    def advance(
        self,
        run_id: int,
        finished_step: int,
        observation: StageObservation | None,
        state: dict[str, Any],
        next_step: NewStep | None,
        end: RunEnd | None,
        at_s: float,
        decisions: Iterable[DecisionRow] = (),
    ) -> list[StoredCall] | None:
        """Record step `finished_step`'s observation and move on: store `next_step`'s calls, or
        end the run. Returns the new calls, or None when the run had already moved past that
        step (a duplicate advance) or has ended."""
        with self.store.session() as session:
            run = session.get(Run, run_id)
            if run.phase >= RunPhase.FINISHED or (run.state or {}).get("step") != finished_step:
                return None
            if observation is not None:
                session.add(_observation_row(observation))
            session.add_all(_decision(d, run_id) for d in decisions)
            run.state = state
            if end is not None:
                run.phase, run.finished_s, run.act_s = end.phase, at_s, at_s - run.submitted_s
                run.result, run.error = end.result, end.error
                run.cold_start_s, run.attained_s = end.cold_start_s, end.attained_s
                return []
            rows = [
                StepCall(
                    run_id=run_id,
                    step=next_step.step,
                    call_index=index,
                    stage=next_step.stage,
                    backend=next_step.backend,
                    call=call,
                    phase=CallPhase.QUEUED,
                    attempts=0,
                    queued_s=at_s,
                )
                for index, call in enumerate(next_step.calls)
            ]
            session.add_all(rows)
            session.flush()
            return [_stored_call(row) for row in rows]

    def record(self, decisions: Iterable[DecisionRow]) -> None:
        self.store.record_decisions(decisions)

    def live_runs(self) -> list[tuple[StoredRun, list[StoredCall]]]:
        """Unfinished runs in admission order, each with the calls of its current step."""
        with self.store.session() as session:
            runs = session.scalars(
                select(Run).where(Run.phase.in_(_LIVE_PHASES), Run.key.is_not(None)).order_by(Run.id)
            ).all()
            out = []
            for run in runs:
                step = (run.state or {}).get("step")
                calls = session.scalars(
                    select(StepCall)
                    .where(StepCall.run_id == run.id, StepCall.step == step)
                    .order_by(StepCall.call_index)
                ).all()
                out.append((_stored_run(run), [_stored_call(c) for c in calls]))
            return out

    def run(self, key: str) -> StoredRun | None:
        with self.store.session() as session:
            run = session.scalar(select(Run).where(Run.key == key))
            return None if run is None else _stored_run(run)

    def runs_by_keys(self, keys: Sequence[str]) -> list[StoredRun]:
        with self.store.session() as session:
            return [_stored_run(r) for r in session.scalars(select(Run).where(Run.key.in_(keys)).order_by(Run.id))]

    def events(self, run_id: int, after_id: int = 0, limit: int = 1000) -> list[EventRow]:
        """The run's decisions after event `after_id`, oldest first."""
        query = (
            select(Decision)
            .where(Decision.run_id == run_id, Decision.id > after_id)
            .order_by(Decision.id)
            .limit(limit)
        )
        with self.store.session() as session:
            return [EventRow(d.id, d.at_s, d.kind, d.backend, d.detail) for d in session.scalars(query)]

    def calls(self, run_id: int) -> list[StoredCall]:
        """Every call of a run, in step and call order (what a test checks exactly-once on)."""
        with self.store.session() as session:
            query = select(StepCall).where(StepCall.run_id == run_id).order_by(StepCall.step, StepCall.call_index)
            return [_stored_call(c) for c in session.scalars(query)]


def _decision(row: DecisionRow, run_id: int | None) -> Decision:
    return Decision(at_s=row.at_s, kind=row.kind, backend=row.backend, run_id=run_id, detail=row.detail)


def _stored_call(row: StepCall) -> StoredCall:
    return StoredCall(
        row.id, row.run_id, row.step, row.call_index, row.stage, row.backend, row.call,
        row.phase, row.attempts, row.result, row.queued_s, row.started_s,
    )


def _stored_run(run: Run) -> StoredRun:
    return StoredRun(
        run.id, run.key, run.app_class, run.phase, run.submitted_s, run.finished_s, run.inputs,
        run.state, run.result, run.error, run.act_s, run.cold_start_s, run.attained_s, run.labels,
    )
