"""The disk tier's index: which block files a cache directory holds, with their checksums.

**Why a SQLite file in the cache directory, and not the project's store** (`hermesflow.store`,
the rule for durable state): the index describes files on one node's local disk, so it must
live and die with them. A copied, wiped or remounted directory then carries a matching index;
a central database would need a node identity in every row, a network round trip on every
admission, and would be reachable from the scheduler's node only (SQLite by default, possibly
PostgreSQL elsewhere), while the cache runs on every Ray and Airflow worker. It still goes
through SQLAlchemy, like the store, and its engine is set up apart on purpose: it needs
immediate write transactions and no foreign keys, and importing the store (its settings and
PDGraph models, about 0.4 s) in every process that opens an `igtcache://` URL is too much.

Several processes share one directory. SQLite's own file lock is the lock for index updates:
every write is one `BEGIN IMMEDIATE` transaction, which takes the write lock at its start, so
a transaction that reads and then writes cannot fail half-way on a lock upgrade, and waits
(`LOCK_WAIT_S`) instead of failing while another process writes. WAL journaling lets readers
go on during a write. `synchronous=NORMAL` does not sync each commit: a power cut may lose the
last rows (their files become unindexed and are overwritten later) or leave a row whose file
was not yet on disk, which its checksum then rejects, so no fsync is needed for correctness.

`seq` is an AUTOINCREMENT key, never reused: a process learns of the blocks other processes
stored by reading the rows above the last `seq` it saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Row

from hermesflow.cache.blocks import BlockKey

INDEX_FILE = "index.sqlite"
LOCK_WAIT_S = 60.0
"""How long a transaction waits for another process's write lock before failing (writes hold
it for milliseconds; this only bounds a stuck process)."""
_WRITE = "igtcache_write"
"""Execution option marking the engine whose transactions begin IMMEDIATE."""

_metadata = MetaData()
_blocks = Table(
    "igtcache_blocks",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("name", String, nullable=False, unique=True),
    Column("url", String, nullable=False, index=True),
    Column("version", String, nullable=False),
    Column("start", Integer, nullable=False),
    Column("length", Integer, nullable=False),
    Column("crc32", Integer, nullable=False),
    sqlite_autoincrement=True,
)


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One stored block: its file name, key and CRC-32."""

    seq: int
    name: str
    key: BlockKey
    crc32: int


def _on_connect(dbapi_connection: Any, _record: object) -> None:
    """Transactions are begun by `_on_begin` (pysqlite's own BEGIN is turned off); WAL and
    NORMAL sync, see the module docstring."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _on_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _row(row: Row[Any]) -> IndexRow:
    return IndexRow(
        row.seq, row.name, BlockKey(row.url, row.version, row.start, row.length), row.crc32
    )


class DiskIndex:
    """The index of the cache directory `directory` (created on first use)."""

    def __init__(self, directory: Path) -> None:
        self._engine: Engine = create_engine(
            f"sqlite:///{directory / INDEX_FILE}", connect_args={"timeout": LOCK_WAIT_S}
        )
        event.listen(self._engine, "connect", _on_connect)
        event.listen(self._engine, "begin", _on_begin)
        self._writer = self._engine.execution_options(**{_WRITE: True})
        with self._writer.begin() as connection:  # several processes may create it at once
            _metadata.create_all(connection)

    def get(self, name: str) -> IndexRow | None:
        with self._engine.begin() as connection:
            row = connection.execute(select(_blocks).where(_blocks.c.name == name)).first()
        return None if row is None else _row(row)

    def rows_after(self, seq: int) -> list[IndexRow]:
        """Rows stored after `seq`, oldest first."""
        with self._engine.begin() as connection:
            return _rows_after(connection, seq)

    def stale(self, url: str, version: str) -> list[IndexRow]:
        """Rows of `url` of another version than `version`."""
        query = select(_blocks).where(_blocks.c.url == url, _blocks.c.version != version)
        with self._engine.begin() as connection:
            return [_row(row) for row in connection.execute(query)]

    @contextmanager
    def update(self) -> Iterator[IndexUpdate]:
        """One write transaction, holding the directory's write lock from its start: the
        caller changes the block files inside it too, so that files and rows change together
        for every other process (see `disk_tier`). Keep it short: other writers wait."""
        with self._writer.begin() as connection:
            yield IndexUpdate(connection)


@dataclass(frozen=True, slots=True)
class IndexUpdate:
    """The changes of one `DiskIndex.update` transaction."""

    connection: Connection

    def add(self, name: str, key: BlockKey, crc32: int) -> None:
        """Record block `key` in file `name`, replacing a row of the same name (a new `seq`)."""
        row = insert(_blocks).prefix_with("OR REPLACE").values(
            name=name, url=key.url, version=key.version, start=key.start, length=key.length,
            crc32=crc32,
        )  # fmt: skip
        self.connection.execute(row)

    def remove(self, names: list[str]) -> None:
        if names:
            self.connection.execute(delete(_blocks).where(_blocks.c.name.in_(names)))

    def rows_after(self, seq: int) -> list[IndexRow]:
        return _rows_after(self.connection, seq)


def _rows_after(connection: Connection, seq: int) -> list[IndexRow]:
    """Rows stored after `seq`, oldest first."""
    query = select(_blocks).where(_blocks.c.seq > seq).order_by(_blocks.c.seq)
    return [_row(row) for row in connection.execute(query)]
