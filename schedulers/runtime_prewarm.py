"""Prewarming on the Ray runtime: apply the engine's warm and release decisions to the backends'
actors, journal them, and report back how each warm-up went.

The decisions are the engine's (`engine.py`: its `PrewarmPlanner` sees the live runs, each
backend's state and queue, and the admission rate per class). A warm-up that fails leaves the
backend cold; after `max_warm_failures` failures in a row the engine hands back the runs waiting
for it, and they fail here instead of staying queued forever.

`PrewarmApplier` is a collaborator of the scheduler actor: it gets the engine, the backend slots,
the journal and the live runs, fails runs through `RunControl`, and starts each warm-up as a
background task of the `ActorLoop`. No Ray here: the slots own the backends' actors.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hermesflow.journal import RunJournal
from hermesflow.schedulers.engine import EngineOutput, SchedulingEngine
from hermesflow.schedulers.runtime_control import RunControl
from hermesflow.schedulers.runtime_loop import ActorLoop
from hermesflow.schedulers.runtime_state import LiveRuns
from hermesflow.store import DecisionKind, DecisionRow

if TYPE_CHECKING:
    from hermesflow.schedulers.runtime_backends import BackendSlot


class PrewarmApplier:
    """Warm and release backends as the engine decides (module docstring)."""

    def __init__(
        self,
        engine: SchedulingEngine,
        slots: Mapping[str, BackendSlot],
        journal: RunJournal,
        live: LiveRuns,
        runs: RunControl,
        loop: ActorLoop,
    ) -> None:
        self.engine = engine
        self.slots = slots
        self.journal = journal
        self.live = live
        self.runs = runs
        self.loop = loop

    def apply(self, output: EngineOutput) -> None:
        """Release and warm the backends `output` names, journalled in one transaction; each
        warm-up runs in the background and reports to the engine when it ends."""
        if not output.warm and not output.release:
            return
        now = time.time()
        rows = []
        for name in output.release:
            rows.append(DecisionRow(now, DecisionKind.RELEASE, name))
            self.slots[name].release()
        for name in output.warm:
            backend = self.engine.backends[name]
            rows.append(
                DecisionRow(now, DecisionKind.WARM, name, detail={"expected_s": backend.warmup_s})
            )
            self.loop.spawn(self._warm(name, backend.generation))
        self.journal.record(rows)

    async def _warm(self, name: str, generation: int) -> None:
        slot = self.slots[name]
        try:
            capacity, measured_s = await slot.warm(generation)
        except Exception:  # noqa: BLE001 - any load failure leaves the backend cold (logged by the slot)
            self.loop.timed(self._warm_failed, name, generation)
            return
        if not self.engine.backend_warmed(name, generation, capacity, measured_s):
            slot.lost(generation)  # released or warmed anew while this warm-up ran
        self.loop.wake()

    def _warm_failed(self, name: str, generation: int) -> None:
        """A backend that cannot warm fails the runs waiting for it rather than hang them."""
        error = self.slots[name].last_error
        for app in self.engine.warm_failed(name, generation):
            live = self.live.by_run_id(app.app_id)
            if live is not None:
                self.runs.fail(live, f"backend {name!r} could not be warmed: {error}")
        self.loop.wake()
