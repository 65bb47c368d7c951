"""The tables of the Hermesflow database and the rows read back from them.

The schema apart from `store.py` (which opens the database and holds the queries), so the
tables and their state enums can be read in one place (the decisions' `DecisionKind` and the
tasks' `TaskState` are in `hermesflow.client_records`, since clients read them too, without
SQLAlchemy). Tables are created by `Store` with `create_all`: a new table reaches an existing
database by itself, a new column of an existing table would need a migration — so features add
tables rather than columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, auto
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hermesflow.client_records import DecisionKind, TaskState


class RunPhase(IntEnum):
    """Where an application run is, in order: a run only ever moves to a later phase."""

    ADMITTED = auto()
    RUNNING = auto()
    FINISHED = auto()
    FAILED = auto()


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class AppClass(Base):
    __tablename__ = "app_classes"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class PDGraphSnapshot(Base):
    __tablename__ = "pdgraph_snapshots"
    __table_args__ = (UniqueConstraint("app_class", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    app_class: Mapped[str] = mapped_column(ForeignKey("app_classes.name"))
    version: Mapped[int]
    source: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    graph: Mapped[dict[str, Any]] = mapped_column(JSON)


class CallPhase(IntEnum):
    """Where one call of a step is, in order. DONE is written once: a late duplicate result of
    a call that was retried is ignored, so a call completes exactly once."""

    QUEUED = auto()
    RUNNING = auto()
    DONE = auto()


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    app_class: Mapped[str] = mapped_column(ForeignKey("app_classes.name"))
    policy: Mapped[str | None]
    phase: Mapped[RunPhase] = mapped_column(Enum(RunPhase, native_enum=False, length=16))
    submitted_s: Mapped[float]
    finished_s: Mapped[float | None]
    act_s: Mapped[float | None]
    cold_start_s: Mapped[float | None]
    attained_s: Mapped[float | None]
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    key: Mapped[str | None] = mapped_column(String(128), unique=True)
    inputs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None]


class StepCall(Base):
    """One call of one step of a run: stored before it is dispatched, completed once."""

    __tablename__ = "step_calls"
    __table_args__ = (UniqueConstraint("run_id", "step", "call_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int]
    call_index: Mapped[int]
    stage: Mapped[str]
    backend: Mapped[str]
    call: Mapped[dict[str, Any]] = mapped_column(JSON)
    phase: Mapped[CallPhase] = mapped_column(Enum(CallPhase, native_enum=False, length=16))
    attempts: Mapped[int] = mapped_column(default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    queued_s: Mapped[float]
    started_s: Mapped[float | None]
    finished_s: Mapped[float | None]


class ClientStep(Base):
    """A step its client named (`PUT /v1/apps/{app}/steps/{step_id}`), or an unnamed step under
    the name of the Ray call that carried it (`ray-task:<task id>`, `runtime_open.py`): which
    step of the run each attempt of it is, so a repeated submission — a client's, or Ray's retry
    of the call after a scheduler crash — finds the step instead of running it again."""

    __tablename__ = "client_steps"
    __table_args__ = (UniqueConstraint("run_id", "step_id", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    step_id: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int]
    step: Mapped[int]


class TaskOutcomeRecord(Base):
    """How one try of one task of an application ended, as its client (Airflow) reported it.
    Keyed by the application's key, not its run: native tasks can end before the first step."""

    __tablename__ = "task_outcomes"
    __table_args__ = (UniqueConstraint("app_key", "task_id", "map_index", "try_number", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    app_key: Mapped[str] = mapped_column(String(200), index=True)
    app_class: Mapped[str] = mapped_column(String(250))
    task_id: Mapped[str] = mapped_column(String(250))
    map_index: Mapped[int]
    try_number: Mapped[int]
    state: Mapped[TaskState] = mapped_column(
        Enum(
            TaskState, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
        )
    )
    duration_s: Mapped[float | None]
    step_id: Mapped[str | None] = mapped_column(String(200))
    recorded_s: Mapped[float]


class StepObservation(Base):
    """A `StageObservation`; the per-request tuples are JSON lists."""

    __tablename__ = "step_observations"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    stage: Mapped[str]
    backend: Mapped[str | None]
    step: Mapped[int]
    visit: Mapped[int]
    input_tokens: Mapped[list[int]] = mapped_column(JSON)
    output_tokens: Mapped[list[int]] = mapped_column(JSON)
    fanout: Mapped[int]
    exec_s: Mapped[list[float]] = mapped_column(JSON)
    work_s: Mapped[float | None]
    next_stage: Mapped[str]
    started_s: Mapped[float | None]
    finished_s: Mapped[float | None]


class StepAttention(Base):
    """The attention method each request of an LLM step ran, as a JSON list of
    `AttentionMethod` values: the methods of `StageObservation.attention`, in a table of their
    own so that databases written before it gain it without a migration (module docstring)."""

    __tablename__ = "step_attention"
    __table_args__ = (UniqueConstraint("run_id", "step"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    step: Mapped[int]
    methods: Mapped[list[str]] = mapped_column(JSON)


class Decision(Base):
    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    at_s: Mapped[float]
    kind: Mapped[str]
    backend: Mapped[str | None]
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as read back from the store. Runs of the Ray runtime also carry their client `key`,
    `inputs`, program `state` (see `journal.py`), and `result` or `error`."""

    id: int
    app_class: str
    policy: str | None
    phase: RunPhase
    submitted_s: float
    finished_s: float | None
    act_s: float | None
    cold_start_s: float | None
    attained_s: float | None
    labels: dict[str, Any] | None
    key: str | None = None
    inputs: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None


TERMINAL_DECISIONS = frozenset({DecisionKind.FINISH, DecisionKind.FAIL})
"""The decisions that end a run."""


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One scheduling decision of kind `kind` at time `at_s`."""

    at_s: float
    kind: DecisionKind
    backend: str | None = None
    run_id: int | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TaskOutcomeRow:
    """A task outcome as stored (see `TaskOutcomeRecord`); `recorded_s` is when it was reported."""

    app_key: str
    app_class: str
    task_id: str
    map_index: int
    try_number: int
    state: TaskState
    duration_s: float | None
    step_id: str | None
    recorded_s: float
