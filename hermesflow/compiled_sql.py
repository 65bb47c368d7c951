"""Core statements compiled once for a dialect and run on the DBAPI cursor: the journal's hot path.

`Connection.execute` costs 35-80 µs of CPU per statement on top of the driver's 5-10 µs: it
builds an execution context and a result object, and walks the statement for its cache key,
every time. The journal runs about six statements per program step on the scheduler's own
thread, which makes that the largest share of the scheduler's time per step. A
`CompiledStatement` does that work once: it compiles the statement for the engine's dialect and
keeps, per parameter, its place in the SQL and its type's bind processor (JSON serialisation,
enums stored by name), so running it is the same SQL with the same values that `execute` would
send — straight to the cursor, inside the connection's own transaction.

Driver errors are raised as SQLAlchemy's (`sqlalchemy.exc.IntegrityError` and the rest), so a
caller catches one kind of error whichever path wrote. Statements whose SQL depends on the
values (expanding `IN` lists) are refused: build those with `Connection.execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement


@dataclass(frozen=True, slots=True)
class _Parameter:
    """One bound parameter of the compiled SQL: the caller's value `key`, or a value the
    statement fixes (`key` None), converted by the type's bind `processor`."""

    name: str
    key: str | None
    fixed: Any
    processor: Callable[[Any], Any] | None


class CompiledStatement:
    """`statement` compiled for `dialect`; `run`, `run_many` and `scalar` execute it on a
    SQLAlchemy connection's cursor, in that connection's transaction."""

    __slots__ = ("_error_base", "_parameters", "_positional", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError(
                f"{statement} renders its SQL per execution (an expanding IN or a literal-execute "
                "parameter), so it cannot be compiled once; run it with Connection.execute"
            )
        self.sql: str = compiled.string
        self._positional = compiled.positional
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        names = compiled.positiontup if compiled.positional else list(binds)
        self._parameters = tuple(
            _Parameter(
                name,
                binds[name].key if binds[name].required else None,
                binds[name].effective_value,
                binds[name].type.dialect_impl(dialect).bind_processor(dialect),
            )
            for name in names or ()
        )
        self._error_base: type[Exception] = dialect.loaded_dbapi.Error

    def run(self, connection: Connection, values: Mapping[str, Any]) -> int:
        """Execute once; returns the number of rows it changed."""
        cursor = connection.connection.cursor()
        try:
            self._execute(cursor.execute, self._bound(values), values)
            return cursor.rowcount
        finally:
            cursor.close()

    def run_many(self, connection: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Execute once per row (the driver's `executemany`)."""
        bound = [self._bound(row) for row in rows]
        if bound:
            cursor = connection.connection.cursor()
            try:
                self._execute(cursor.executemany, bound, bound)
            finally:
                cursor.close()

    def scalar(self, connection: Connection, values: Mapping[str, Any]) -> Any:
        """Execute once and return the first column of the first row (e.g. `RETURNING id`), or
        None when there is no row."""
        cursor = connection.connection.cursor()
        try:
            self._execute(cursor.execute, self._bound(values), values)
            row = cursor.fetchone()
            return None if row is None else row[0]
        finally:
            cursor.close()

    def _bound(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        converted = []
        for parameter in self._parameters:
            value = parameter.fixed if parameter.key is None else values[parameter.key]
            converted.append(value if parameter.processor is None else parameter.processor(value))
        if self._positional:
            return tuple(converted)
        return {parameter.name: value for parameter, value in zip(self._parameters, converted, strict=True)}

    def _execute(self, execute: Callable[[str, Any], Any], bound: Any, shown: Any) -> None:
        try:
            execute(self.sql, bound)
        except self._error_base as error:
            raise DBAPIError.instance(self.sql, shown, error, self._error_base) from error
