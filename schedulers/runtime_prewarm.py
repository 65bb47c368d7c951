"""Prewarming on the Ray runtime: apply the engine's warm and release decisions to the backends'
actors, journal them, and report back how each warm-up went.

The decisions are the engine's (`engine.py`: its `PrewarmPlanner` sees the live runs, each
backend's state and queue, and the admission rate per class). A warm-up that fails leaves the
backend cold; after `max_warm_failures` failures in a row the engine hands back the runs waiting
for it, and they fail here instead of staying queued forever.

A mixin of `HermesScheduler`; it uses `engine`, `slots`, `live`, `journal`, `_spawn`, `_timed`,
`_kick` and `_fail`.
"""

from __future__ import annotations

import time

from hermesflow.schedulers.engine import EngineOutput
from hermesflow.store import DecisionKind, DecisionRow


class PrewarmMixin:
    """Warm and release backends as the engine decides (module docstring)."""

    def _apply_prewarm(self, output: EngineOutput) -> None:
        if not output.warm and not output.release:
            return
        now = time.time()
        rows = []
        for name in output.release:
            rows.append(DecisionRow(now, DecisionKind.RELEASE, name))
            self.slots[name].release()
        for name in output.warm:
            backend = self.engine.backends[name]
            rows.append(DecisionRow(now, DecisionKind.WARM, name, detail={"expected_s": backend.warmup_s}))
            self._spawn(self._warm(name, backend.generation))
        self.journal.record(rows)

    async def _warm(self, name: str, generation: int) -> None:
        slot = self.slots[name]
        try:
            capacity, measured_s = await slot.warm(generation)
        except Exception:  # noqa: BLE001 - any load failure leaves the backend cold (logged by the slot)
            self._timed(self._warm_failed, name, generation)
            return
        if not self.engine.backend_warmed(name, generation, capacity, measured_s):
            slot.lost(generation)  # released or warmed anew while this warm-up ran
        self._kick()

    def _warm_failed(self, name: str, generation: int) -> None:
        """A backend that cannot warm fails the runs waiting for it rather than hang them."""
        error = self.slots[name].last_error
        for app in self.engine.warm_failed(name, generation):
            live = self.live.get(app.app_id)
            if live is not None:
                self._fail(live, f"backend {name!r} could not be warmed: {error}")
        self._kick()
