"""What the scheduler actor's collaborators may do to a run: the `RunControl` protocol.

Open runs, prewarm and refit change runs that the actor's `RunDriver` (`runtime_driver.py`)
drives: they make a run live, start its step, end it, or restate it in a new graph. They are
given the driver as this protocol, so each says which of its operations it uses, and none holds
the actor itself. No Ray here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pydantic import BaseModel

    from hermesflow.apps.program import AppProgram, StepPlan
    from hermesflow.journal import StoredCall
    from hermesflow.pdgraph.demand import PreparedGraph
    from hermesflow.schedulers.runtime_state import LiveRun, RunState
    from hermesflow.store import RunRow


class RunControl(Protocol):
    """The run operations the actor's collaborators call (implemented by `RunDriver`)."""

    def new_live(
        self, run: RunRow, program: AppProgram | None, inputs: BaseModel | None, state: RunState
    ) -> LiveRun:
        """Make an admitted (or reloaded) run live: the engine and the registry hold it."""

    def begin_step(self, live: LiveRun, plan: StepPlan, calls: list[StoredCall]) -> None:
        """Queue a stored step's unfinished calls in the engine."""

    def finish(self, live: LiveRun) -> None:
        """End the run as finished at its current step (an open run its client closed)."""

    def fail(self, live: LiveRun, error: str) -> None:
        """End the run as failed with `error`; its waiting callers get `RunFailed`."""

    def use_graph(self, prepared: PreparedGraph) -> None:
        """Rank the prepared graph's class by it from now on, its live runs included."""
