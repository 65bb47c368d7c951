"""The scheduler actor's in-memory view of a run, and how runs look to clients.

No Ray here: `LiveRun` is plain state the actor keeps per live application, `RunState` the part
of it the journal stores with the run (what a restarted scheduler resumes from), `LiveRuns` the
registry of them that the actor's driver and its collaborators share (`runtime_driver.py`,
`runtime_open.py`, ...); the views (`hermesflow.views` models) are what the actor answers its
clients with: the control API and the Airflow provider read them.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from hermesflow.apps.program import AppProgram, ProgramState, StepPlan
from hermesflow.backends.calls import CallResult
from hermesflow.client_records import AppViewPhase, StepState
from hermesflow.journal import ClientStepRow, NewStep, StoredCall
from hermesflow.pdgraph.refit import StageObservation
from hermesflow.schedulers.interface import AppPhase, AppRecord, RequestRecord
from hermesflow.store import CallPhase, RunPhase, RunRow
from hermesflow.views import AppView, LiveAppPhase, StepView

_OPTIONAL_PARTS = ("plan", "program")
"""The parts of a `RunState` that only some runs have, left out of the stored JSON without."""


class RunState(BaseModel):
    """Where a run is, as the journal stores it (`runs.state`) with each step it starts.

    The scheduler keeps it typed in memory and converts it to JSON only when it hands it to the
    journal (`stored`), which sits below the scheduler layer and takes plain JSON; a restarted
    scheduler validates it once per reloaded run (`load`). The JSON keeps the keys and value
    shapes of the untyped state that came before, so a store written by an earlier version
    recovers: a program run has `program` (and `plan` until it ends), an open run has neither.
    """

    step: int
    """The run's current step: the index of its latest stored step (-1: an open run before its
    first step)."""
    visits: dict[str, int] = Field(default_factory=dict)
    """How many steps of each stage the run has started: its position in the class's graph."""
    plan: StepPlan | None = None
    """A program run's current step; None for an open run, whose steps its client plans, and
    for a program run that ended."""
    program: ProgramState | None = None
    """The program's own state (`Transition.state`); None for an open run."""
    attained_s: float = 0.0
    """Service the run has received, for the policy to resume from."""
    cold_s: float = 0.0
    """Time the run waited on cold backends."""
    open: bool = False
    """Its client submits the steps (an open run) rather than a program."""
    named: bool = False
    """Its client names its steps, and so closes the run itself (a longer idle time)."""

    def stored(self) -> dict[str, Any]:
        """The JSON the journal stores: the plan and the program state are left out while unset,
        as the untyped state left them out (a step's calls are dumped here, once per step)."""
        unset = {name for name in _OPTIONAL_PARTS if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=unset)

    @classmethod
    def load(cls, key: str, stored: dict[str, Any] | None) -> RunState:
        """The state of run `key` as the journal stored it; the one validation a reloaded run
        gets."""
        try:
            return cls.model_validate(stored)
        except ValidationError as error:
            raise ValueError(
                f"run {key!r} has a stored state this scheduler cannot resume ({error}); it was "
                "written by an incompatible Hermesflow version: let that version finish its runs "
                "before upgrading"
            ) from None


@dataclass(eq=False)
class LiveRun:
    """A run in memory: its scheduling record, its stored state and where its current step is
    (`plan`: a program run's is also in `state`; an open run's only here)."""

    record: AppRecord
    key: str
    program: AppProgram | None
    inputs: BaseModel | None
    state: RunState
    plan: StepPlan | None = None
    calls: dict[int, StoredCall] = field(default_factory=dict)
    results: dict[int, CallResult] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: dict[int, asyncio.Future] = field(default_factory=dict)
    sinks: dict[int, asyncio.Queue] = field(default_factory=dict)
    pending_observations: list[StageObservation] = field(default_factory=list)
    last_activity_s: float = field(default_factory=time.time)

    @property
    def run_id(self) -> int:
        """The journal's id of the run, which the engine names it by (`AppRecord.app_id`).
        Clients name it by `key`, which the API calls `app_id`."""
        return self.record.app_id


class LiveRuns:
    """The live runs, by run id (what the engine names) and by key (what clients name). A run
    is in both from `add` until `remove`; nothing else changes the registry."""

    def __init__(self) -> None:
        self._by_id: dict[int, LiveRun] = {}
        self._by_key: dict[str, LiveRun] = {}

    def add(self, live: LiveRun) -> None:
        self._by_id[live.run_id] = live
        self._by_key[live.key] = live

    def remove(self, live: LiveRun) -> None:
        self._by_id.pop(live.run_id, None)
        self._by_key.pop(live.key, None)

    def by_run_id(self, run_id: int) -> LiveRun | None:
        return self._by_id.get(run_id)

    def by_key(self, key: str) -> LiveRun | None:
        return self._by_key.get(key)

    def __getitem__(self, run_id: int) -> LiveRun:
        return self._by_id[run_id]

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[LiveRun]:
        """The live runs in admission order (a copy: ending a run while iterating is safe)."""
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)


def request_of(live: LiveRun, stored: StoredCall) -> RequestRecord:
    """The engine's record of one of the run's calls: what the policy keys. Its token counts are
    estimates (a quarter of the prompt's characters, the output limit)."""
    call = stored.call
    input_tokens = len(str(call.get("prompt") or call.get("messages") or "")) // 4
    return RequestRecord(
        stored.id,
        live.record,
        stored.backend,
        stored.queued_s,
        None,
        input_tokens,
        call.get("max_tokens", 0),
    )


def import_path(path: str) -> Any:
    """The object a `module:name` path names."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"{path!r} is not a 'module:attribute' path")
    return getattr(importlib.import_module(module), name)


def load_program(app_class: str, path: str) -> AppProgram:
    """The program `RuntimeConfig.programs[app_class]` names: an `AppProgram` subclass is
    instantiated, an `AppProgram` instance is used as it is (a Semantic-Variable program is
    registered as an instance, because its graph is built from the decorated functions)."""
    where = f"RuntimeConfig.programs[{app_class!r}] = {path!r}"
    try:
        target = import_path(path)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{where} cannot be imported ({error}); give a 'module:attribute' path that the Ray "
            "workers can import"
        ) from None
    if isinstance(target, type) and issubclass(target, AppProgram):
        return target()
    if isinstance(target, AppProgram):
        return target
    raise ValueError(
        f"{where} names {target!r}, which is neither an AppProgram subclass nor an AppProgram "
        "instance; point it at the program's class or at a program object"
    )


def live_phase(live: LiveRun) -> LiveAppPhase:
    """Where a live run is, as a client reads it: running once a step of it has started."""
    return AppViewPhase.RUNNING if live.record.phase is AppPhase.RUNNING else AppViewPhase.ADMITTED


def view_live(live: LiveRun) -> AppView:
    """What a client sees of a live run."""
    return AppView(
        app_id=live.key,
        app_class=live.record.app_class,
        phase=live_phase(live),
        submitted_at=live.record.arrival_s,
        cold_start_s=live.state.cold_s,
        attained_s=live.record.attained_s,
        stage=live.plan.stage if live.plan else None,
        step=live.state.step,
    )


def view_stored(run: RunRow) -> AppView:
    """What a client sees of a stored (ended or not yet loaded) run."""
    return AppView(
        app_id=run.key,
        app_class=run.app_class,
        phase=AppViewPhase(run.phase.name.lower()),
        submitted_at=run.submitted_s,
        finished_at=run.finished_s,
        act_s=run.act_s,
        cold_start_s=run.cold_start_s,
        attained_s=run.attained_s,
        step=(run.state or {}).get("step"),
        result=run.result,
        error=run.error,
    )


def view_step(key: str, run: RunRow, step: ClientStepRow) -> StepView:
    """What a client sees of one of its named steps, from the store: a call that ended with an
    error failed, and so did a call its application ended without."""
    call, result, error = step.call, None, None
    if call.phase is CallPhase.DONE:
        result = CallResult.model_validate(call.result)
        state = StepState.FAILED if result.finish_reason == "error" else StepState.DONE
        error = result.error
    elif run.phase in (RunPhase.FINISHED, RunPhase.FAILED):
        state, error = StepState.FAILED, run.error or f"application {key!r} ended before this step ran"
    else:
        state = StepState.RUNNING if call.phase is CallPhase.RUNNING else StepState.QUEUED
    return StepView(
        app_id=key,
        step_id=step.step_id,
        stage=call.stage,
        state=state,
        attempt=step.attempt,
        result=result,
        error=error,
    )


def new_step(
    step: int, plan: StepPlan, client_step: str | None = None, attempt: int = 1
) -> NewStep:
    """The journal record of a planned step (`client_step`: the client's name of it)."""
    calls = [c.model_dump(mode="json") for c in plan.calls]
    return NewStep(step, plan.stage, plan.backend, calls, client_step, attempt)
