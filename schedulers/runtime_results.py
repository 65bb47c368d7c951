"""What a real experiment measured: how each application ended, and the run's figures.

Kept apart from `runtime_experiment.py` (the Ray driver) so the demo's report, the CLI and the
tests read results without Ray.

How an application ends is classified once, here (`AppEnd`), from what the store holds:

- A program turns every outcome of its workload into a *result*: a code_gen run whose code
  never passed its tests within `max_tries`, a map_reduce run whose document could not be
  loaded, a ReAct agent that read a tool's refusal and answered anyway — all end `FINISHED`
  with a (possibly negative) result. They are `COMPLETED` applications, part of the workload,
  and the only ones that application completion time (ACT) counts.
- A run ends `FAILED` only when the scheduler ends it: a backend could not be warmed (a model,
  tool pool or sandbox that failed to start), its actor died on every retry, or the program
  raised on what the scheduler handed it — which the shipped programs do only when the
  scheduler broke their contract. These are infrastructure failures.
- A submission the scheduler refused or lost, and a run that had not ended when the experiment
  stopped waiting for it, are infrastructure failures too.

So every end but `COMPLETED` is an infrastructure failure: it is listed with its class and
error, it is left out of the ACT statistics (a failed run has no completion time), and the
demo and the runtime benchmark exit non-zero when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from hermesflow.store_schema import RunPhase, RunRow

ACT_SCOPE = "completed applications only"
"""What the ACT statistics of a summary count (the `act_scope` field of its JSON)."""


class ExperimentError(RuntimeError):
    """The experiment could not run at all (a pinned backend never warmed, the engine probe
    failed): no application was submitted, so there are no figures to report."""


class AppEnd(StrEnum):
    """How one application of an experiment ended (module docstring)."""

    COMPLETED = "completed"
    """The program reached its end (`RunPhase.FINISHED`); its result may be negative."""
    FAILED = "failed"
    """The scheduler failed the run (`RunPhase.FAILED`): a backend that could not warm or died
    on every retry, or a program that raised; the run's `error` says which."""
    NOT_ADMITTED = "not_admitted"
    """The scheduler refused the submission or its actor failed while taking it."""
    UNFINISHED = "unfinished"
    """Still admitted or running when the experiment stopped waiting (its deadline passed)."""

    @property
    def is_infrastructure_failure(self) -> bool:
        """Every end but COMPLETED: the platform, not the workload, ended the application."""
        return self is not AppEnd.COMPLETED


@dataclass(frozen=True, slots=True)
class AppOutcome:
    """One application of an experiment: how it ended and, when it completed, its times."""

    key: str | None
    app_class: str
    end: AppEnd
    act_s: float | None
    cold_start_s: float
    attained_s: float
    error: str | None = None


def outcome_of(run: RunRow, waited_s: float) -> AppOutcome:
    """The outcome of a run read back from the store after the experiment waited `waited_s`."""
    if run.phase is RunPhase.FINISHED:
        end, error = AppEnd.COMPLETED, None
    elif run.phase is RunPhase.FAILED:
        end, error = AppEnd.FAILED, run.error or "failed without an error message"
    else:
        end = AppEnd.UNFINISHED
        error = f"still {run.phase.name.lower()} after the experiment waited {waited_s:.0f} s"
    return AppOutcome(
        run.key,
        run.app_class,
        end,
        run.act_s if end is AppEnd.COMPLETED else None,
        run.cold_start_s or 0.0,
        run.attained_s or 0.0,
        error,
    )


def not_admitted(app_class: str, error: str) -> AppOutcome:
    """An application whose submission the scheduler refused (it has no run in the store)."""
    return AppOutcome(None, app_class, AppEnd.NOT_ADMITTED, None, 0.0, 0.0, error)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """How loaded the busiest LLM engine was in one run (see `calibration.offered_load`)."""

    backend: str
    offered: float
    """The run's LLM work at the engine speed measured before the runs, per second of the
    arrival span, over the engine's capacity: the load the run really offered."""
    busy_share: float
    """Share of the makespan in which the engine was computing, from its own call timings."""


@dataclass(slots=True)
class RuntimeResult:
    """What one real run measured."""

    policy: str
    planner: str
    outcomes: list[AppOutcome]
    overhead_ms_per_step: float
    overhead_wall_ms_per_step: float
    journal_ms_per_step: float
    completed_calls: int
    makespan_s: float
    warmup_s: dict[str, float]
    db_url: str
    engine_load: EngineLoad | None = None

    @property
    def completed(self) -> list[AppOutcome]:
        return [o for o in self.outcomes if o.end is AppEnd.COMPLETED]

    @property
    def failures(self) -> list[AppOutcome]:
        return [o for o in self.outcomes if o.end.is_infrastructure_failure]

    @property
    def acts(self) -> np.ndarray:
        """Completion times of the completed applications (failed ones have none)."""
        return np.array([o.act_s for o in self.completed], dtype=float)

    def summary(self) -> dict[str, Any]:
        """The run's figures as JSON-ready values. `mean_act_s`, `p95_act_s` and
        `cold_start_share` count completed applications only (`act_scope`); they are None when
        none completed. `failures` lists every other application with its class and error."""
        acts = self.acts
        cold = sum(o.cold_start_s for o in self.completed)
        load = self.engine_load
        return {
            "policy": self.policy,
            "planner": self.planner,
            "apps": len(self.outcomes),
            "apps_completed": len(acts),
            "apps_failed": len(self.failures),
            "act_scope": ACT_SCOPE,
            "mean_act_s": float(acts.mean()) if len(acts) else None,
            "p95_act_s": float(np.percentile(acts, 95)) if len(acts) else None,
            "cold_start_share": cold / float(acts.sum()) if len(acts) else None,
            "overhead_ms_per_step": self.overhead_ms_per_step,
            "overhead_wall_ms_per_step": self.overhead_wall_ms_per_step,
            "journal_ms_per_step": self.journal_ms_per_step,
            "calls": self.completed_calls,
            "makespan_s": self.makespan_s,
            "offered_load": None if load is None else load.offered,
            "llm_busy_share": None if load is None else load.busy_share,
            "failures": [
                {"key": o.key, "app_class": o.app_class, "end": o.end.value, "error": o.error}
                for o in self.failures
            ],
        }
