"""Tests for hermesflow.compiled_sql on SQLite and on a real PostgreSQL server: a compiled
statement writes exactly what `Connection.execute` writes, and fails the same way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from hermesflow.compiled_sql import CompiledStatement
from hermesflow.store import AppClass, CallPhase, Run, RunPhase, StepCall, Store

_runs, _calls = Run.__table__, StepCall.__table__


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    with store.engine.begin() as connection:
        connection.execute(insert(AppClass.__table__).values(name="react"))
    yield store
    store.close()


def _insert_run(key: str) -> Any:
    return (
        insert(_runs)
        .values(
            key=bindparam("key"), app_class="react", phase=bindparam("phase"), submitted_s=1.5,
            state=bindparam("state"), result=bindparam("result"),
        )
        .returning(_runs.c.id)
    )


def _stored(store: Store, key: str) -> tuple[Any, ...]:
    with store.engine.connect() as connection:
        row = connection.execute(select(_runs).where(_runs.c.key == key)).one()
    return row.app_class, row.phase, row.submitted_s, row.state, row.result


def test_a_compiled_insert_stores_what_execute_stores(store: Store) -> None:
    statement = _insert_run("k")
    compiled = CompiledStatement(statement, store.engine.dialect)
    values = {"phase": RunPhase.RUNNING, "state": {"step": 2, "seen": ["a", "é"]}, "result": None}
    with store.engine.begin() as connection:
        by_execute = connection.execute(statement, values | {"key": "by-execute"}).scalar_one()
        compiled_id = compiled.scalar(connection, values | {"key": "compiled"})
    assert compiled_id == by_execute + 1  # RETURNING gives the new row's id
    assert _stored(store, "compiled") == _stored(store, "by-execute") == (
        "react", RunPhase.RUNNING, 1.5, {"step": 2, "seen": ["a", "é"]}, None
    )
    with store.engine.connect() as connection:  # an enum is stored by name, as execute does
        raw = connection.exec_driver_sql("SELECT phase FROM runs WHERE key = 'compiled'").scalar_one()
    assert raw == "RUNNING"


def test_run_counts_the_rows_a_conditional_update_changed_and_run_many_writes_each_row(store: Store) -> None:
    with store.engine.begin() as connection:
        run_id = CompiledStatement(_insert_run("k"), store.engine.dialect).scalar(
            connection, {"key": "k", "phase": RunPhase.RUNNING, "state": None, "result": None}
        )
        calls = [
            {"run_id": run_id, "step": 0, "call_index": i, "stage": "s", "backend": "b", "call": {"i": i},
             "phase": CallPhase.QUEUED, "attempts": 0, "queued_s": 0.0}
            for i in range(3)
        ]
        insert_calls = insert(_calls).values({name: bindparam(name) for name in calls[0]})
        CompiledStatement(insert_calls, store.engine.dialect).run_many(connection, calls)
        complete = CompiledStatement(
            update(_calls)
            .where(_calls.c.run_id == bindparam("run_id"), _calls.c.call_index == bindparam("index"))
            .where(_calls.c.phase != CallPhase.DONE)
            .values(phase=CallPhase.DONE, result=bindparam("result"), attempts=_calls.c.attempts + 1),
            store.engine.dialect,
        )
        assert complete.run(connection, {"run_id": run_id, "index": 1, "result": {"text": "one"}}) == 1
        assert complete.run(connection, {"run_id": run_id, "index": 1, "result": {"text": "again"}}) == 0
        rows = connection.execute(select(_calls).order_by(_calls.c.call_index)).all()
    assert [(r.call, r.phase, r.attempts, r.result) for r in rows] == [
        ({"i": 0}, CallPhase.QUEUED, 0, None),
        ({"i": 1}, CallPhase.DONE, 1, {"text": "one"}),
        ({"i": 2}, CallPhase.QUEUED, 0, None),
    ]


def test_a_driver_error_is_sqlalchemys_and_names_the_statement(store: Store) -> None:
    compiled = CompiledStatement(_insert_run("k"), store.engine.dialect)
    values = {"key": "same", "phase": RunPhase.ADMITTED, "state": None, "result": None}
    with store.engine.begin() as connection:
        compiled.scalar(connection, values)
    with pytest.raises(IntegrityError, match="INSERT INTO runs"), store.engine.begin() as connection:
        compiled.scalar(connection, values)


def test_a_statement_whose_sql_depends_on_its_values_is_refused(store: Store) -> None:
    expanding = select(_runs.c.id).where(_runs.c.key.in_(bindparam("keys", expanding=True)))
    with pytest.raises(ValueError, match="expanding IN.*Connection.execute"):
        CompiledStatement(expanding, store.engine.dialect)
