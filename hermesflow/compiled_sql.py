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
caller catches one kind of error whichever path wrote, and one that says the database dropped the
connection invalidates it, so that its next use reconnects. Statements whose SQL depends on the
values (expanding `IN` lists) are refused: build those with `Connection.execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
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

    __slots__ = ("_dialect", "_error_base", "_parameters", "_positional", "sql")

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
        self._dialect = dialect

    def run(self, connection: Connection, values: Mapping[str, Any]) -> int:
        """Execute once; returns the number of rows it changed."""
        with self._cursor(connection, values) as cursor:
            cursor.execute(self.sql, self._bound(values))
            return cursor.rowcount

    def run_many(self, connection: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Execute once per row (the driver's `executemany`)."""
        bound = [self._bound(row) for row in rows]
        if bound:
            with self._cursor(connection, bound) as cursor:
                cursor.executemany(self.sql, bound)

    def scalar(self, connection: Connection, values: Mapping[str, Any]) -> Any:
        """Execute once and return the first column of the first row (e.g. `RETURNING id`), or
        None when there is no row."""
        with self._cursor(connection, values) as cursor:
            cursor.execute(self.sql, self._bound(values))
            row = cursor.fetchone()
            return None if row is None else row[0]

    def _bound(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        converted = []
        for parameter in self._parameters:
            value = parameter.fixed if parameter.key is None else values[parameter.key]
            converted.append(value if parameter.processor is None else parameter.processor(value))
        if self._positional:
            return tuple(converted)
        return {parameter.name: value for parameter, value in zip(self._parameters, converted, strict=True)}

    @contextmanager
    def _cursor(self, connection: Connection, shown: Any) -> Iterator[Any]:
        """A cursor of `connection`'s DBAPI connection, closed after use. A driver error is
        raised as SQLAlchemy's; one that says the database dropped the connection also
        invalidates `connection`, as `Connection.execute` would, so its next use reconnects."""
        dbapi_connection = connection.connection
        cursor = dbapi_connection.cursor()
        try:
            yield cursor
        except self._error_base as error:
            dropped = self._dialect.is_disconnect(error, dbapi_connection.dbapi_connection, cursor)
            if dropped:
                connection.invalidate(error)
            raise DBAPIError.instance(
                self.sql, shown, error, self._error_base, connection_invalidated=dropped, dialect=self._dialect
            ) from error
        finally:
            if not connection.invalidated:
                cursor.close()
