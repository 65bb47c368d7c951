"""The runtime's journal of live runs: the transactions that make a scheduler restart exact.

The Ray scheduler keeps its live applications in memory for speed, but every change that
matters is one transaction here first:

* `admit` creates a run under a client key; admitting the same key again returns the same run,
  so a client that retries a submission does not start a second run;
* `start_step` stores the program state and every call of the next step (QUEUED) before any is
  dispatched, and the step's name when it has one — its client's, or for an open run's unnamed
  step the name of the Ray call that carried it — so a repeated submission finds the step
  (`client_step`) instead of storing it twice;
* `dispatch` marks a call RUNNING and counts the attempt; `requeue` puts it back after its
  backend died;
* `complete` stores a call's result once: it succeeds only if the call is not DONE yet, so a
  late duplicate is dropped;
* `advance` records the finished step's observation and moves the run to its next step or
  finishes it — guarded by the step number, so it happens once.

Results that land together are stored in one transaction (`batch`, a group commit): the
scheduler stores every result that arrived since its last pass, then dispatches what they made
ready. Nothing they caused is visible outside the scheduler before that commit (the next calls
are dispatched and a waiting client answered after it), so a crash before it loses only results
whose calls are run again, never a step stored twice.

After a crash, `live_runs` gives each unfinished run with its state, its current step's calls
and any earlier call not done yet (an open run's steps overlap): DONE calls keep their results,
the others are queued again. Every transaction also appends the scheduling decisions it carries
(admission, dispatch, completion, warm, release) to the decisions table, which is the run's
event stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from hermesflow.pdgraph.refit import StageObservation
from hermesflow.store import (
    CallPhase,
    ClientStep,
    Decision,
    DecisionKind,
    DecisionRow,
    Run,
    RunPhase,
    RunRow,
    StepCall,
    StepObservation,
    Store,
    observation_values,
    require_class,
    row_copy,
)

_LIVE_PHASES = (RunPhase.ADMITTED, RunPhase.RUNNING)
"""Phases of a run that is not over (stored as names, so compared by membership, not order)."""

# The write path's statements, built once. A statement built per call costs SQLAlchemy a fresh
# cache key (a walk of the whole statement) on every execution; a module-level one is keyed once,
# which with a plain connection instead of an ORM session halves a completion's CPU.
_runs, _calls, _decisions = Run.__table__, StepCall.__table__, Decision.__table__
_RUN_BY_KEY = select(_runs).where(_runs.c.key == bindparam("key"))
_RUN_PROGRESS = select(_runs.c.phase, _runs.c.state, _runs.c.submitted_s).where(_runs.c.id == bindparam("run_id"))
_INSERT_RUN = insert(_runs).returning(_runs.c.id)
_SET_RUN_STATE = update(_runs).where(_runs.c.id == bindparam("run_id")).values(state=bindparam("state"))
_START_RUN_STEP = _SET_RUN_STATE.values(phase=RunPhase.RUNNING)
_END_RUN = _SET_RUN_STATE.values(
    phase=bindparam("phase"), finished_s=bindparam("finished_s"), act_s=bindparam("act_s"),
    result=bindparam("result"), error=bindparam("error"), cold_start_s=bindparam("cold_start_s"),
    attained_s=bindparam("attained_s"),
)
_MARK_RUNNING = (
    update(_calls)
    .where(_calls.c.id == bindparam("call_id"))
    .values(phase=CallPhase.RUNNING, started_s=bindparam("at_s"), attempts=_calls.c.attempts + 1)
)
_REQUEUE = (
    update(_calls)
    .where(_calls.c.id == bindparam("call_id"), _calls.c.phase != CallPhase.DONE)
    .values(phase=CallPhase.QUEUED, started_s=None)
)
_COMPLETE = (
    update(_calls)
    .where(_calls.c.id == bindparam("call_id"), _calls.c.phase != CallPhase.DONE)
    .values(phase=CallPhase.DONE, result=bindparam("result"), finished_s=bindparam("at_s"))
)
_INSERT_CALLS = insert(_calls).returning(_calls.c.id, sort_by_parameter_order=True)
_INSERT_CLIENT_STEP = insert(ClientStep.__table__)
_INSERT_DECISIONS = insert(_decisions)
_INSERT_OBSERVATIONS = insert(StepObservation.__table__)


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
class EventRow:
    """A decision about a run, with its id (the position in the run's event stream)."""

    id: int
    at_s: float
    kind: DecisionKind
    backend: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class NewStep:
    """The calls of a step to store before dispatching them; `client_step` is the client's name
    of the step (with the `attempt` this is), when the client named it."""

    step: int
    stage: str
    backend: str
    calls: Sequence[dict[str, Any]]
    client_step: str | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class ClientStepRow:
    """The latest attempt of a client-named step, with its (first) call as stored."""

    step_id: str
    attempt: int
    call: StoredCall


@dataclass(frozen=True, slots=True)
class CompletedCall:
    """A call's result to store (once) with the decision that records it."""

    call_id: int
    result: dict[str, Any]
    decision: DecisionRow


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
        self._deferred: list[tuple[int, float, DecisionRow]] = []
        self._batch: Connection | None = None
        self.busy_s = 0.0
        """Seconds spent in journal transactions (the durable share of scheduler overhead)."""
        self._stored_classes: set[str] = set()
        """Classes an admission found stored: classes are never deleted, so each is looked up
        once rather than on every admission."""

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
    ) -> tuple[RunRow, bool]:
        """The run under `key`, created now if new; the flag says whether it was created."""
        with self._transaction() as connection:
            existing = connection.execute(_RUN_BY_KEY, {"key": key}).first()
            if existing is not None:
                return row_copy(RunRow, existing), False
            if app_class not in self._stored_classes:
                require_class(connection, app_class)
                self._stored_classes.add(app_class)
            values = {
                "key": key, "app_class": app_class, "policy": policy, "phase": RunPhase.ADMITTED,
                "submitted_s": submitted_s, "inputs": inputs, "labels": labels, "state": state,
            }
            run_id = connection.execute(_INSERT_RUN, values).scalar_one()
            _insert_decisions(connection, [decision], run_id)
            run = RunRow(
                id=run_id, app_class=app_class, policy=policy, phase=RunPhase.ADMITTED, submitted_s=submitted_s,
                finished_s=None, act_s=None, cold_start_s=None, attained_s=None, labels=labels, key=key,
                inputs=inputs, state=state,
            )
            return run, True

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make every write inside one transaction (module docstring: the group commit); an
        error inside rolls all of them back. Nested batches join the outer one."""
        if self._batch is not None:
            yield
            return
        with self.store.engine.connect() as connection:
            transaction = connection.begin()
            self._batch = connection
            try:
                yield
            except BaseException:
                transaction.rollback()
                raise
            finally:
                self._batch = None
            start = time.perf_counter()
            transaction.commit()
            self.busy_s += time.perf_counter() - start

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction that first writes the deferred dispatch marks (see `dispatch`); inside
        a `batch`, the batch's."""
        deferred, self._deferred = self._deferred, []
        start = time.perf_counter()
        if self._batch is not None:  # `busy_s` counts the statements here, the commit in `batch`
            _mark_running(self._batch, deferred)
            yield self._batch
            self.busy_s += time.perf_counter() - start
            return
        with self.store.engine.begin() as connection:
            _mark_running(connection, deferred)
            yield connection
        self.busy_s += time.perf_counter() - start

    def start_step(
        self, run_id: int, state: dict[str, Any], step: NewStep, at_s: float, decisions: Iterable[DecisionRow] = ()
    ) -> list[StoredCall]:
        """Store the run's new state and the step's calls (QUEUED); returns the stored calls."""
        with self._transaction() as connection:
            connection.execute(_START_RUN_STEP, {"run_id": run_id, "state": state})
            _insert_decisions(connection, list(decisions), run_id)
            return _insert_calls(connection, run_id, step, at_s)

    def dispatch(self, call_id: int, at_s: float, decision: DecisionRow) -> None:
        """Mark a call RUNNING and count its attempt — deferred to the next transaction (or
        `flush`): losing the mark in a crash is harmless, because a restarted scheduler queues
        RUNNING and QUEUED calls alike, and it saves a commit per call."""
        self._deferred.append((call_id, at_s, decision))

    def flush(self) -> None:
        """Write the deferred dispatch marks now (the scheduler calls this on a timer)."""
        if self._deferred:
            with self._transaction():
                pass

    def requeue(self, call_id: int, decision: DecisionRow) -> None:
        """A call whose backend died goes back to QUEUED (its attempt stays counted)."""
        with self._transaction() as connection:
            connection.execute(_REQUEUE, {"call_id": call_id})
            _insert_decisions(connection, [decision])

    def complete(self, call_id: int, result: dict[str, Any], at_s: float, decision: DecisionRow) -> bool:
        """Store a call's result unless it already has one; False for a duplicate."""
        with self._transaction() as connection:
            return _complete(connection, CompletedCall(call_id, result, decision), at_s)

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
        completed: CompletedCall | None = None,
    ) -> list[StoredCall] | None:
        """Record step `finished_step`'s observation and move on: store `next_step`'s calls, or
        end the run. `completed` is the step's last call, stored in the same transaction.
        Returns the new calls, or None when the run had already moved past that step, has
        ended, or `completed` was a duplicate — then nothing is written."""
        with self._transaction() as connection:
            phase, stored_state, submitted_s = connection.execute(_RUN_PROGRESS, {"run_id": run_id}).one()
            if phase in (RunPhase.FINISHED, RunPhase.FAILED) or (stored_state or {}).get("step") != finished_step:
                return None
            if completed is not None and not _complete(connection, completed, at_s):
                return None  # a duplicate: nothing of it was written; the dispatch marks stay
            if observation is not None:
                connection.execute(_INSERT_OBSERVATIONS, [observation_values(observation)])
            _insert_decisions(connection, list(decisions), run_id)
            if end is None:
                connection.execute(_SET_RUN_STATE, {"run_id": run_id, "state": state})
                return _insert_calls(connection, run_id, next_step, at_s)
            connection.execute(_END_RUN, {
                "run_id": run_id, "state": state, "phase": end.phase, "finished_s": at_s,
                "act_s": at_s - submitted_s, "result": end.result, "error": end.error,
                "cold_start_s": end.cold_start_s, "attained_s": end.attained_s,
            })
            return []

    def record(self, decisions: Iterable[DecisionRow]) -> None:
        """Store decisions that change no run (warm, release, recover) in one transaction, which
        also writes the deferred dispatch marks."""
        with self._transaction() as connection:
            _insert_decisions(connection, list(decisions))

    def live_runs(self) -> list[tuple[RunRow, list[StoredCall]]]:
        """Unfinished runs in admission order, each with the calls of its current step."""
        with self.store.session() as session:
            runs = session.scalars(
                select(Run).where(Run.phase.in_(_LIVE_PHASES), Run.key.is_not(None)).order_by(Run.id)
            ).all()
            out = []
            for run in runs:
                step = (run.state or {}).get("step")
                current = (StepCall.step == step) | (StepCall.phase != CallPhase.DONE)
                calls = session.scalars(
                    select(StepCall)
                    .where(StepCall.run_id == run.id, current)
                    .order_by(StepCall.step, StepCall.call_index)
                ).all()
                out.append((row_copy(RunRow, run), [_stored_call(c) for c in calls]))
            return out

    def run(self, key: str) -> RunRow | None:
        with self.store.session() as session:
            run = session.scalar(select(Run).where(Run.key == key))
            return None if run is None else row_copy(RunRow, run)

    def client_step(self, key: str, step_id: str) -> tuple[RunRow, ClientStepRow | None] | None:
        """The run under `key` and the latest attempt of its step named `step_id` (None when it
        has no such step); None when there is no such run."""
        with self.store.session() as session:
            run = session.scalar(select(Run).where(Run.key == key))
            if run is None:
                return None
            query = (
                select(ClientStep.attempt, StepCall)
                .join(StepCall, StepCall.run_id == ClientStep.run_id)
                .where(ClientStep.run_id == run.id, ClientStep.step_id == step_id)
                .where(StepCall.step == ClientStep.step)
                .order_by(ClientStep.attempt.desc(), StepCall.call_index)
                .limit(1)
            )
            found = session.execute(query).first()
            if found is None:
                return row_copy(RunRow, run), None
            return row_copy(RunRow, run), ClientStepRow(step_id, found.attempt, _stored_call(found.StepCall))

    def runs_by_keys(self, keys: Sequence[str]) -> list[RunRow]:
        with self.store.session() as session:
            return [row_copy(RunRow, r) for r in session.scalars(select(Run).where(Run.key.in_(keys)).order_by(Run.id))]

    def events(self, run_id: int, after_id: int = 0, limit: int = 1000) -> list[EventRow]:
        """The run's decisions after event `after_id`, oldest first."""
        query = (
            select(Decision)
            .where(Decision.run_id == run_id, Decision.id > after_id)
            .order_by(Decision.id)
            .limit(limit)
        )
        with self.store.session() as session:
            return [EventRow(d.id, d.at_s, DecisionKind(d.kind), d.backend, d.detail) for d in session.scalars(query)]

    def call_results(self, backend: str) -> list[dict[str, Any]]:
        """The stored results of every finished call on `backend` (what calibration reads)."""
        query = select(StepCall.result).where(StepCall.backend == backend, StepCall.phase == CallPhase.DONE)
        with self.store.session() as session:
            return list(session.scalars(query.order_by(StepCall.id)))

    def calls(self, run_id: int) -> list[StoredCall]:
        """Every call of a run, in step and call order (what a test checks exactly-once on)."""
        with self.store.session() as session:
            query = select(StepCall).where(StepCall.run_id == run_id).order_by(StepCall.step, StepCall.call_index)
            return [_stored_call(c) for c in session.scalars(query)]

    def record_observations(self, run_id: int, observations: Sequence[StageObservation]) -> None:
        """Record finished steps of open run `run_id`: an open run's step learns its successor
        only when its client sends the next step (or ends the run), so its observation is
        written then, in a transaction of its own, where a program run's is part of `advance`."""
        if not observations:
            return
        if any(o.run_id != run_id for o in observations):
            raise ValueError(
                f"observations of other runs passed for run {run_id}; record each under its own run"
            )
        rows = [observation_values(o) for o in observations]
        with self._transaction() as connection:
            connection.execute(_INSERT_OBSERVATIONS, rows)


def _insert_decisions(connection: Connection, rows: list[DecisionRow], run_id: int | None = None) -> None:
    """Insert decisions in one statement; `run_id` fills rows that name no run."""
    if rows:
        connection.execute(
            _INSERT_DECISIONS,
            [
                {"at_s": r.at_s, "kind": r.kind, "backend": r.backend, "run_id": r.run_id or run_id, "detail": r.detail}
                for r in rows
            ],
        )


def _mark_running(connection: Connection, deferred: list[tuple[int, float, DecisionRow]]) -> None:
    if deferred:
        connection.execute(_MARK_RUNNING, [{"call_id": call_id, "at_s": at_s} for call_id, at_s, _ in deferred])
        _insert_decisions(connection, [d for _, _, d in deferred])


def _insert_calls(connection: Connection, run_id: int, step: NewStep, at_s: float) -> list[StoredCall]:
    rows = [
        {
            "run_id": run_id, "step": step.step, "call_index": index, "stage": step.stage,
            "backend": step.backend, "call": call, "phase": CallPhase.QUEUED, "attempts": 0,
            "queued_s": at_s, "result": None, "started_s": None,
        }
        for index, call in enumerate(step.calls)
    ]
    ids = connection.execute(_INSERT_CALLS, rows).scalars().all()
    if step.client_step is not None:
        connection.execute(
            _INSERT_CLIENT_STEP,
            [{"run_id": run_id, "step_id": step.client_step, "attempt": step.attempt, "step": step.step}],
        )
    return [
        StoredCall(id_, run_id, step.step, r["call_index"], step.stage, step.backend, r["call"], CallPhase.QUEUED, 0, None, at_s, None)
        for id_, r in zip(ids, rows, strict=True)
    ]


def _complete(connection: Connection, completed: CompletedCall, at_s: float) -> bool:
    done = connection.execute(
        _COMPLETE, {"call_id": completed.call_id, "result": completed.result, "at_s": at_s}
    ).rowcount
    if done:
        _insert_decisions(connection, [completed.decision])
    return bool(done)


def _stored_call(row: StepCall) -> StoredCall:
    return StoredCall(
        row.id, row.run_id, row.step, row.call_index, row.stage, row.backend, row.call,
        row.phase, row.attempts, row.result, row.queued_s, row.started_s,
    )
