"""Durable state of Hermesflow: PDGraph snapshots, runs, stage observations, decisions, and what
clients report about their applications (named steps, Airflow task outcomes).

Everything important goes through this module so that nothing lives only in an actor's memory:
a restarted scheduler reloads the classes' graphs, the refit reads the observations, the
Airflow page and the CLI read runs and decisions. The tables are in `store_schema.py` (and
re-exported here). SQLite (a file under `HERMES_HOME`) is the default and needs no server; any
SQLAlchemy URL works, e.g. PostgreSQL through psycopg 3 (`postgresql+psycopg://user@host/db`)
when Airflow, Ray workers and the CLI share one database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hermesflow.config import get_settings
from hermesflow.pdgraph.model import AttentionMethod, PDGraph
from hermesflow.pdgraph.refit import StageObservation
from hermesflow.store_schema import (
    TERMINAL_DECISIONS,
    AppClass,
    Base,
    CallPhase,
    ClientStep,
    Decision,
    DecisionKind,
    DecisionRow,
    PDGraphSnapshot,
    Run,
    RunPhase,
    RunRow,
    StepAttention,
    StepCall,
    StepObservation,
    TaskOutcomeRecord,
    TaskOutcomeRow,
)

__all__ = [  # the schema is re-exported: callers import tables and rows from here
    "TERMINAL_DECISIONS",
    "AppClass",
    "Base",
    "CallPhase",
    "ClientStep",
    "Decision",
    "DecisionKind",
    "DecisionRow",
    "FinishedAct",
    "PDGraphSnapshot",
    "Run",
    "RunPhase",
    "RunRow",
    "StepCall",
    "StepObservation",
    "Store",
    "TaskOutcomeRecord",
    "TaskOutcomeRow",
    "observation_values",
    "require_class",
    "row_copy",
]


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    """Enforce foreign keys (off by default in SQLite) and use WAL so readers (the CLI, the
    Airflow page) do not block the scheduler's writes. `synchronous=NORMAL` syncs at
    checkpoints rather than on every commit: a committed transaction survives a crash of any
    process (what a scheduler restart needs); only a power cut may lose the last commits."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe against process crashes
    cursor.close()


class Store:
    """Typed access to the Hermesflow database at `url` (default: `HERMES_DB_URL`).

    Tables are created on first use. Each method is one transaction; `session()` gives callers
    their own for anything else.
    """

    def __init__(self, url: str | None = None, *, echo: bool = False) -> None:
        self.engine = create_engine(url or get_settings().db_url, echo=echo)
        if self.engine.dialect.name == "sqlite":
            database = self.engine.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        """Close the pooled connections (a PostgreSQL database cannot be dropped while open)."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    # PDGraph snapshots

    def save_pdgraph(self, graph: PDGraph, source: str) -> int:
        """Store `graph` as the next snapshot of its class; returns the new version."""
        return self.save_pdgraphs({graph.name: graph}, source)[graph.name]

    def save_pdgraphs(self, graphs: Mapping[str, PDGraph], source: str) -> dict[str, int]:
        """Store every graph or none: all are validated first, then written in one transaction.

        Two writers adding a snapshot of the same class at once conflict on (class, version);
        the second one's transaction fails as a whole and can simply be retried.
        """
        documents = {name: _validated_document(name, graph) for name, graph in graphs.items()}
        with self.session() as session:
            return {name: _add_snapshot(session, doc, source) for name, doc in documents.items()}

    def load_pdgraph(self, name: str, version: int | None = None) -> PDGraph:
        """The class's snapshot `version` (default: the latest)."""
        with self.session() as session:
            require_class(session, name)
            versions = _versions(session, name)
            wanted = versions[-1] if version is None else version
            graph = session.scalar(
                select(PDGraphSnapshot.graph).where(
                    PDGraphSnapshot.app_class == name, PDGraphSnapshot.version == wanted
                )
            )
        if graph is None:
            raise KeyError(f"class {name!r} has no snapshot version {version}; it has {versions}")
        return PDGraph.model_validate(graph)

    def latest_snapshot(self, name: str, source: str) -> tuple[int, PDGraph] | None:
        """The class's newest snapshot saved with `source` and its version; None if it has none
        (e.g. the last graph a client declared, under the refits learned since)."""
        query = (
            select(PDGraphSnapshot.version, PDGraphSnapshot.graph)
            .where(PDGraphSnapshot.app_class == name, PDGraphSnapshot.source == source)
            .order_by(PDGraphSnapshot.version.desc())
            .limit(1)
        )
        with self.session() as session:
            row = session.execute(query).first()
        return None if row is None else (row.version, PDGraph.model_validate(row.graph))

    def list_classes(self) -> list[str]:
        with self.session() as session:
            return _class_names(session)

    def snapshot_versions(self, name: str) -> list[int]:
        with self.session() as session:
            return _versions(session, name)

    # Runs, observations, decisions

    def create_run(
        self,
        app_class: str,
        policy: str | None = None,
        submitted_s: float = 0.0,
        labels: dict[str, Any] | None = None,
    ) -> int:
        """Admit a run of a stored class; returns its id."""
        with self.session() as session:
            require_class(session, app_class)
            run = Run(
                app_class=app_class,
                policy=policy,
                phase=RunPhase.ADMITTED,
                submitted_s=submitted_s,
                labels=labels,
            )
            session.add(run)
            session.flush()
            return run.id

    def finish_run(
        self,
        run_id: int,
        finished_s: float,
        act_s: float | None,
        cold_start_s: float | None,
        attained_s: float | None,
        phase: RunPhase = RunPhase.FINISHED,
    ) -> None:
        """Close a run with its completion time (ACT), cold-start wait and attained service."""
        if phase not in (RunPhase.FINISHED, RunPhase.FAILED):
            raise ValueError(f"phase {phase.name} does not close a run; use FINISHED or FAILED")
        with self.session() as session:
            run = _get_run(session, run_id)
            run.phase, run.finished_s, run.act_s = phase, finished_s, act_s
            run.cold_start_s, run.attained_s = cold_start_s, attained_s

    def runs(self, app_class: str | None = None, phase: RunPhase | None = None) -> list[RunRow]:
        """Runs in id order, optionally of one class and/or in one phase."""
        query = select(Run).order_by(Run.id)
        if app_class is not None:
            query = query.where(Run.app_class == app_class)
        if phase is not None:
            query = query.where(Run.phase == phase)
        with self.session() as session:
            return [row_copy(RunRow, run) for run in session.scalars(query)]

    def record_observations(self, run_id: int, observations: Iterable[StageObservation]) -> None:
        """Append stage executions of run `run_id`; each must name that run and its class."""
        with self.session() as session:
            run = _get_run(session, run_id)
            for obs in observations:
                if (obs.run_id, obs.app_class) != (run_id, run.app_class):
                    raise ValueError(
                        f"observation of run {obs.run_id} (class {obs.app_class!r}) passed for "
                        f"run {run_id} (class {run.app_class!r}); record it under its own run"
                    )
                session.add_all(_observation_rows(obs))

    def observations(self, app_class: str, limit: int) -> list[StageObservation]:
        """The newest `limit` observations of a class, oldest first (the refit's window)."""
        query = (
            select(StepObservation, Run.app_class, StepAttention.methods)
            .join(Run, StepObservation.run_id == Run.id)
            .outerjoin(
                StepAttention,
                (StepAttention.run_id == StepObservation.run_id) & (StepAttention.step == StepObservation.step),
            )
            .where(Run.app_class == app_class)
            .order_by(StepObservation.id.desc())
            .limit(limit)
        )
        with self.session() as session:
            rows = session.execute(query).all()
        return [_stage_observation(row, name, methods) for row, name, methods in reversed(rows)]

    def decisions(self, run_id: int | None = None) -> list[DecisionRow]:
        """Decisions in time order, optionally only those about one run."""
        query = select(Decision).order_by(Decision.at_s, Decision.id)
        if run_id is not None:
            query = query.where(Decision.run_id == run_id)
        with self.session() as session:
            return [
                DecisionRow(d.at_s, DecisionKind(d.kind), d.backend, d.run_id, d.detail)
                for d in session.scalars(query)
            ]

    def record_task_outcome(self, outcome: TaskOutcomeRow) -> bool:
        """Store a task outcome; False (and nothing written) when the same application, task,
        map index, try and state were recorded before — the unique key makes a repeated report,
        even a concurrent one, a no-op."""
        try:
            with self.session() as session:
                session.add(TaskOutcomeRecord(**_fields(outcome)))
        except IntegrityError:
            return False
        return True

    def task_outcomes(self, app_key: str) -> list[TaskOutcomeRow]:
        """The application's task outcomes in the order they were reported."""
        query = (
            select(TaskOutcomeRecord)
            .where(TaskOutcomeRecord.app_key == app_key)
            .order_by(TaskOutcomeRecord.id)
        )
        with self.session() as session:
            return [row_copy(TaskOutcomeRow, row) for row in session.scalars(query)]

    # Monitoring (the control API's views; read-only)

    def class_snapshots(self) -> dict[str, tuple[int, str]]:
        """Each class's newest PDGraph snapshot: its version and source (the graph in force)."""
        newest = (
            select(PDGraphSnapshot.app_class, func.max(PDGraphSnapshot.version).label("version"))
            .group_by(PDGraphSnapshot.app_class)
            .subquery()
        )
        query = select(
            PDGraphSnapshot.app_class, PDGraphSnapshot.version, PDGraphSnapshot.source
        ).join(
            newest,
            (PDGraphSnapshot.app_class == newest.c.app_class)
            & (PDGraphSnapshot.version == newest.c.version),
        )
        with self.session() as session:
            return {row.app_class: (row.version, row.source) for row in session.execute(query)}

    def run_counts(self, phase: RunPhase) -> dict[str, int]:
        """How many runs of each class are in `phase` (classes without any are left out)."""
        query = (
            select(Run.app_class, func.count(Run.id))
            .where(Run.phase == phase)
            .group_by(Run.app_class)
        )
        with self.session() as session:
            return {name: count for name, count in session.execute(query)}

    def finished_acts(self, since_s: float, app_class: str | None = None) -> list[FinishedAct]:
        """Completion times of the runs that finished (not failed) at or after `since_s`,
        optionally of one class, in finishing order."""
        query = (
            select(Run.policy, Run.finished_s, Run.act_s)
            .where(
                Run.phase == RunPhase.FINISHED,
                Run.finished_s >= since_s,
                Run.act_s.is_not(None),
            )
            .order_by(Run.finished_s, Run.id)
        )
        if app_class is not None:
            query = query.where(Run.app_class == app_class)
        with self.session() as session:
            return [FinishedAct(*row) for row in session.execute(query)]


@dataclass(frozen=True, slots=True)
class FinishedAct:
    """A finished run's policy, finishing time and completion time (`Store.finished_acts`)."""

    policy: str | None
    finished_s: float
    act_s: float


def _validated_document(name: str, graph: PDGraph) -> dict[str, Any]:
    """The graph as JSON after full validation (also of graphs built with `model_construct`)."""
    document = PDGraph.model_validate(graph.model_dump(mode="json")).model_dump(mode="json")
    if document["name"] != name:
        raise ValueError(f"graph {document['name']!r} is filed under {name!r}; use its own name")
    return document


def _add_snapshot(session: Session, document: dict[str, Any], source: str) -> int:
    name = document["name"]
    if session.get(AppClass, name) is None:
        session.add(AppClass(name=name))
        session.flush()
    latest = session.scalar(
        select(func.max(PDGraphSnapshot.version)).where(PDGraphSnapshot.app_class == name)
    )
    version = (latest or 0) + 1
    session.add(PDGraphSnapshot(app_class=name, version=version, source=source, graph=document))
    session.flush()
    return version


def require_class(session: Session | Connection, name: str) -> None:
    """A KeyError that lists the known classes unless class `name` is stored (the journal's
    admissions check it in their own transaction, on a connection)."""
    if session.execute(select(AppClass.name).where(AppClass.name == name)).first() is None:
        raise KeyError(
            f"unknown application class {name!r}; known classes: {_class_names(session)}. Add "
            "it with Store.save_pdgraph(graph, source), e.g. from a workload file"
        )


def _versions(session: Session, name: str) -> list[int]:
    query = select(PDGraphSnapshot.version).where(PDGraphSnapshot.app_class == name)
    return list(session.scalars(query.order_by(PDGraphSnapshot.version)))


def _class_names(session: Session | Connection) -> list[str]:
    return list(session.scalars(select(AppClass.name).order_by(AppClass.name)))


def _get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise KeyError(f"no run with id {run_id}; create it with Store.create_run first")
    return run


_Row = TypeVar("_Row")
_TUPLES = ("input_tokens", "output_tokens", "exec_s")
"""The per-request fields of a StageObservation, stored as JSON lists."""


def _fields(row: object) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)}  # type: ignore[arg-type]


def row_copy(cls: type[_Row], source: object, **overrides: Any) -> _Row:
    """A `cls` dataclass from the same-named attributes of `source` (an ORM row)."""
    names = [f.name for f in fields(cls) if f.name not in overrides]  # type: ignore[arg-type]
    return cls(**{name: getattr(source, name) for name in names}, **overrides)


def observation_values(obs: StageObservation) -> dict[str, Any]:
    """The columns of a `StepObservation` row for `obs` (its class is the run's; its attention
    methods go to `StepAttention`, see `attention_values`)."""
    values = _fields(obs)
    del values["app_class"], values["attention"]
    return values | {name: list(values[name]) for name in _TUPLES}


def attention_values(obs: StageObservation) -> dict[str, Any] | None:
    """The columns of the `StepAttention` row for `obs`, None when it records no method."""
    if not obs.attention:
        return None
    return {"run_id": obs.run_id, "step": obs.step, "methods": [m.value for m in obs.attention]}


def _observation_rows(obs: StageObservation) -> list[Base]:
    rows: list[Base] = [StepObservation(**observation_values(obs))]
    attention = attention_values(obs)
    if attention is not None:
        rows.append(StepAttention(**attention))
    return rows


def _stage_observation(row: StepObservation, app_class: str, methods: list[str] | None) -> StageObservation:
    tuples = {name: tuple(getattr(row, name)) for name in _TUPLES}
    attention = tuple(AttentionMethod(m) for m in methods or ())
    return row_copy(StageObservation, row, app_class=app_class, attention=attention, **tuples)
