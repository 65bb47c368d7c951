"""The scheduler actor's in-memory view of a run, its errors, and how runs look to clients.

No Ray here: `LiveRun` is plain state the actor (`runtime.py`, `runtime_open.py`) keeps per live
application; the views are the JSON the control API and the Airflow provider read.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from hermesflow.apps.program import AppProgram, StepPlan
from hermesflow.backends.calls import CallResult
from hermesflow.journal import NewStep, StoredCall
from hermesflow.pdgraph.refit import StageObservation
from hermesflow.schedulers.interface import AppPhase, AppRecord
from hermesflow.store import RunRow


class SubmissionError(ValueError):
    """A submission the scheduler refuses (unknown class, invalid inputs); says how to fix it."""


class UnknownApplication(SubmissionError, LookupError):
    """No application has this id."""


class ApplicationFinished(SubmissionError):
    """A step was sent to an application that has already ended."""


@dataclass(eq=False)
class LiveRun:
    """A run in memory: its scheduling record and where its current step is."""

    record: AppRecord
    key: str
    program: AppProgram | None
    inputs: BaseModel | None
    doc: dict[str, Any]
    plan: StepPlan | None = None
    calls: dict[int, StoredCall] = field(default_factory=dict)
    results: dict[int, CallResult] = field(default_factory=dict)
    stage_cold_s: float = 0.0
    step_started_s: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: dict[int, asyncio.Future] = field(default_factory=dict)
    sinks: dict[int, asyncio.Queue] = field(default_factory=dict)
    pending_observations: list[StageObservation] = field(default_factory=list)
    last_activity_s: float = field(default_factory=time.time)


def import_path(path: str) -> Any:
    """The object a `module:name` path names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def view_live(live: LiveRun) -> dict[str, Any]:
    """What a client sees of a live run."""
    return {
        "app_id": live.key,
        "app_class": live.record.app_class,
        "phase": "running" if live.record.phase is AppPhase.RUNNING else "admitted",
        "submitted_at": live.record.arrival_s,
        "finished_at": None,
        "act_s": None,
        "cold_start_s": live.doc.get("cold_s", 0.0),
        "attained_s": live.record.attained_s,
        "stage": live.plan.stage if live.plan else None,
        "step": live.doc.get("step"),
        "result": None,
        "error": None,
    }

def view_stored(run: RunRow) -> dict[str, Any]:
    """What a client sees of a stored (ended or not yet loaded) run."""
    return {
        "app_id": run.key,
        "app_class": run.app_class,
        "phase": run.phase.name.lower(),
        "submitted_at": run.submitted_s,
        "finished_at": run.finished_s,
        "act_s": run.act_s,
        "cold_start_s": run.cold_start_s,
        "attained_s": run.attained_s,
        "stage": None,
        "step": (run.state or {}).get("step"),
        "result": run.result,
        "error": run.error,
    }


def new_step(step: int, plan: StepPlan) -> NewStep:
    """The journal record of a planned step."""
    return NewStep(step, plan.stage, plan.backend, [c.model_dump(mode="json") for c in plan.calls])
