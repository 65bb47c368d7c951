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

from sqlalchemy import Connection, Insert, Table, and_, bindparam, exists, insert, select, update
from sqlalchemy.engine import Dialect

from hermesflow.compiled_sql import CompiledStatement
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
    StepAttention,
    StepCall,
    StepObservation,
    Store,
    attention_values,
    observation_values,
    require_class,
    row_copy,
)

_LIVE_PHASES = (RunPhase.ADMITTED, RunPhase.RUNNING)
"""Phases of a run that is not over (stored as names, so compared by membership, not order)."""

# The write path's statements, built once and compiled per dialect by `_Statements` (see
# `compiled_sql.py`: they run on the DBAPI cursor, which costs a fifth of `Connection.execute`).
_runs, _calls, _decisions = Run.__table__, StepCall.__table__, Decision.__table__


def _insert(table: Table, columns: Iterable[str] | None = None, returning: bool = False) -> Insert:
    """An insert of `columns` (default: every column but the id), each from the parameter of
    its own name."""
    names = [c.name for c in table.columns if not c.primary_key] if columns is None else columns
    statement = insert(table).values({name: bindparam(name) for name in names})
    return statement.returning(table.c.id) if returning else statement


_RUN_COLUMNS = ("key", "app_class", "policy", "phase", "submitted_s", "inputs", "labels", "state")
"""What an admission stores of a run; the rest is written when it ends."""


_RUN_AT_STEP = and_(
    _runs.c.id == bindparam("run_id"),
    *(_runs.c.phase != phase for phase in RunPhase if phase not in _LIVE_PHASES),
    _runs.c.state["step"].as_integer() == bindparam("finished_step"),
)
"""`advance`'s guard: the run is live and still at the step that finished (the ended phases
excluded one by one: an IN list would be rendered anew at every execution)."""
_CALL_NOT_DONE = exists().where(_calls.c.id == bindparam("call_id"), _calls.c.phase != CallPhase.DONE)
_SET_RUN_STATE = update(_runs).values(state=bindparam("state"))
_END_RUN = _SET_RUN_STATE.values(
    phase=bindparam("phase"), finished_s=bindparam("finished_s"), act_s=bindparam("finished_s") - _runs.c.submitted_s,
    result=bindparam("result"), error=bindparam("error"), cold_start_s=bindparam("cold_start_s"),
    attained_s=bindparam("attained_s"),
)


@dataclass(frozen=True, slots=True)
class _Statements:
    """The journal's writes, compiled for one dialect."""

    run_id_by_key: CompiledStatement
    insert_run: CompiledStatement
    start_run_step: CompiledStatement
    advance_run: CompiledStatement
    advance_run_completing: CompiledStatement
    end_run: CompiledStatement
    end_run_completing: CompiledStatement
    mark_running: CompiledStatement
    requeue: CompiledStatement
    complete: CompiledStatement
    insert_call: CompiledStatement
    insert_client_step: CompiledStatement
    insert_decision: CompiledStatement
    insert_observation: CompiledStatement
    insert_attention: CompiledStatement

    @classmethod
    def compile(cls, dialect: Dialect) -> _Statements:
        calls_where = update(_calls).where(_calls.c.id == bindparam("call_id"))
        statements = {
            "run_id_by_key": select(_runs.c.id).where(_runs.c.key == bindparam("key")),
            "insert_run": _insert(_runs, _RUN_COLUMNS, returning=True),
            "start_run_step": _SET_RUN_STATE.where(_runs.c.id == bindparam("run_id")).values(phase=RunPhase.RUNNING),
            "advance_run": _SET_RUN_STATE.where(_RUN_AT_STEP),
            "advance_run_completing": _SET_RUN_STATE.where(_RUN_AT_STEP, _CALL_NOT_DONE),
            "end_run": _END_RUN.where(_RUN_AT_STEP),
            "end_run_completing": _END_RUN.where(_RUN_AT_STEP, _CALL_NOT_DONE),
            "mark_running": calls_where.values(
                phase=CallPhase.RUNNING, started_s=bindparam("at_s"), attempts=_calls.c.attempts + 1
            ),
            "requeue": calls_where.where(_calls.c.phase != CallPhase.DONE).values(
                phase=CallPhase.QUEUED, started_s=None
            ),
            "complete": calls_where.where(_calls.c.phase != CallPhase.DONE).values(
                phase=CallPhase.DONE, result=bindparam("result"), finished_s=bindparam("at_s")
            ),
            "insert_call": _insert(_calls, returning=True),
            "insert_client_step": _insert(ClientStep.__table__),
            "insert_decision": _insert(_decisions),
            "insert_observation": _insert(StepObservation.__table__),
            "insert_attention": _insert(StepAttention.__table__),
        }
        return cls(**{name: CompiledStatement(statement, dialect) for name, statement in statements.items()})


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


class _Writes:
    """One transaction's writes: its connection, the compiled statements, and the decisions it
    carries, which are inserted together (one statement) just before it commits."""

    __slots__ = ("connection", "decisions", "sql")

    def __init__(self, connection: Connection, sql: _Statements) -> None:
        self.connection = connection
        self.sql = sql
        self.decisions: list[dict[str, Any]] = []

    def decide(self, rows: Iterable[DecisionRow], run_id: int | None = None) -> None:
        """Queue decisions for this transaction; `run_id` fills rows that name no run."""
        self.decisions.extend(
            {"at_s": r.at_s, "kind": r.kind, "backend": r.backend, "run_id": r.run_id or run_id, "detail": r.detail}
            for r in rows
        )

    def mark_running(self, deferred: list[tuple[int, float, DecisionRow]]) -> None:
        self.sql.mark_running.run_many(self.connection, ({"call_id": c, "at_s": at_s} for c, at_s, _ in deferred))
        self.decide(d for _, _, d in deferred)

    def insert_calls(self, run_id: int, step: NewStep, at_s: float) -> list[StoredCall]:
        stored = []
        for index, call in enumerate(step.calls):
            row = {
                "run_id": run_id, "step": step.step, "call_index": index, "stage": step.stage,
                "backend": step.backend, "call": call, "phase": CallPhase.QUEUED, "attempts": 0,
                "queued_s": at_s, "result": None, "started_s": None, "finished_s": None,
            }
            call_id = self.sql.insert_call.scalar(self.connection, row)
            stored.append(
                StoredCall(call_id, run_id, step.step, index, step.stage, step.backend, call, CallPhase.QUEUED, 0, None, at_s, None)
            )
        if step.client_step is not None:
            self.sql.insert_client_step.run(
                self.connection, {"run_id": run_id, "step_id": step.client_step, "attempt": step.attempt, "step": step.step}
            )
        return stored

    def observe(self, observations: Sequence[StageObservation]) -> None:
        """Insert finished steps' observations, with the attention methods of those that record
        them (`StepAttention`)."""
        self.sql.insert_observation.run_many(self.connection, [observation_values(o) for o in observations])
        methods = [v for v in map(attention_values, observations) if v is not None]
        if methods:
            self.sql.insert_attention.run_many(self.connection, methods)

    def complete(self, completed: CompletedCall, at_s: float) -> bool:
        values = {"call_id": completed.call_id, "result": completed.result, "at_s": at_s}
        if not self.sql.complete.run(self.connection, values):
            return False
        self.decide([completed.decision])
        return True

    def end(self) -> None:
        """Insert the queued decisions (the transaction's last statement)."""
        self.sql.insert_decision.run_many(self.connection, self.decisions)
        self.decisions = []


class RunJournal:
    """Journal transactions over a `Store` (module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sql = _Statements.compile(store.engine.dialect)
        self._deferred: list[tuple[int, float, DecisionRow]] = []
        self._batch: _Writes | None = None
        self._connection: Connection | None = None
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
        with self._transaction() as writes:
            connection = writes.connection
            if self._sql.run_id_by_key.scalar(connection, {"key": key}) is not None:
                existing = connection.execute(select(_runs).where(_runs.c.key == key)).one()
                return row_copy(RunRow, existing), False
            if app_class not in self._stored_classes:
                require_class(connection, app_class)
                self._stored_classes.add(app_class)
            values = {
                "key": key, "app_class": app_class, "policy": policy, "phase": RunPhase.ADMITTED,
                "submitted_s": submitted_s, "inputs": inputs, "labels": labels, "state": state,
            }
            run_id = self._sql.insert_run.scalar(connection, values)
            writes.decide([decision], run_id)
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
        with self._writes():
            yield

    @contextmanager
    def _writes(self) -> Iterator[_Writes]:
        """The current batch's writes, or a new batch's. `busy_s` counts its begin and end
        here, and the statements in `_transaction`."""
        if self._batch is not None:
            yield self._batch
            return
        start = time.perf_counter()
        connection = self._writer()
        transaction = connection.begin()
        writes = self._batch = _Writes(connection, self._sql)
        self.busy_s += time.perf_counter() - start
        try:
            yield writes
            start = time.perf_counter()
            writes.end()
        except BaseException:
            transaction.rollback()
            raise
        finally:
            self._batch = None
        transaction.commit()
        self.busy_s += time.perf_counter() - start

    def _writer(self) -> Connection:
        """The connection every write goes through, held for the journal's life. One connection
        keeps SQLite's page and statement caches warm from one transaction to the next: the pool
        hands its connections out in turn, and a connection that others wrote behind re-reads
        the pages they changed. A transaction also costs no check-out and check-in then (about
        0.2 ms of CPU each in the actor). A connection the database dropped is invalidated by
        the statement that found it (`compiled_sql`) and replaced on its next use."""
        if self._connection is None or self._connection.closed:
            self._connection = self.store.engine.connect()
        return self._connection

    @contextmanager
    def _transaction(self) -> Iterator[_Writes]:
        """The current batch, or a transaction of its own, which first writes the deferred
        dispatch marks (see `dispatch`)."""
        deferred, self._deferred = self._deferred, []
        with self._writes() as writes:
            start = time.perf_counter()
            writes.mark_running(deferred)
            yield writes
            self.busy_s += time.perf_counter() - start

    def start_step(
        self, run_id: int, state: dict[str, Any], step: NewStep, at_s: float, decisions: Iterable[DecisionRow] = ()
    ) -> list[StoredCall]:
        """Store the run's new state and the step's calls (QUEUED); returns the stored calls."""
        with self._transaction() as writes:
            self._sql.start_run_step.run(writes.connection, {"run_id": run_id, "state": state})
            writes.decide(decisions, run_id)
            return writes.insert_calls(run_id, step, at_s)

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
        with self._transaction() as writes:
            self._sql.requeue.run(writes.connection, {"call_id": call_id})
            writes.decide([decision])

    def complete(self, call_id: int, result: dict[str, Any], at_s: float, decision: DecisionRow) -> bool:
        """Store a call's result unless it already has one; False for a duplicate."""
        with self._transaction() as writes:
            return writes.complete(CompletedCall(call_id, result, decision), at_s)

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
        ended, or `completed` was a duplicate — then nothing is written.

        The guard is the run's own update, conditional on all three (one statement, no read)."""
        values: dict[str, Any] = {"run_id": run_id, "finished_step": finished_step, "state": state}
        if completed is not None:
            values["call_id"] = completed.call_id
        if end is None:
            update_run = self._sql.advance_run_completing if completed else self._sql.advance_run
        else:
            update_run = self._sql.end_run_completing if completed else self._sql.end_run
            values |= {
                "phase": end.phase, "finished_s": at_s, "result": end.result, "error": end.error,
                "cold_start_s": end.cold_start_s, "attained_s": end.attained_s,
            }
        with self._transaction() as writes:
            if not update_run.run(writes.connection, values):
                return None  # nothing of it was written; the dispatch marks stay
            if completed is not None:
                writes.complete(completed, at_s)
            if observation is not None:
                writes.observe([observation])
            writes.decide(decisions, run_id)
            return [] if next_step is None else writes.insert_calls(run_id, next_step, at_s)

    def record(self, decisions: Iterable[DecisionRow]) -> None:
        """Store decisions that change no run (warm, release, recover) in one transaction, which
        also writes the deferred dispatch marks."""
        with self._transaction() as writes:
            writes.decide(decisions)

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
        with self._transaction() as writes:
            writes.observe(observations)


def _stored_call(row: StepCall) -> StoredCall:
    return StoredCall(
        row.id, row.run_id, row.step, row.call_index, row.stage, row.backend, row.call,
        row.phase, row.attempts, row.result, row.queued_s, row.started_s,
    )
