"""Prewarming on the Ray runtime: ask the `PrewarmPlanner` (the same pure object the simulator
uses) what to warm and what to release, journal the decision, and apply it to the
`BackendSlot`s. The planner sees the live runs, each backend's status and queue, and the
admission rate per class; a backend that cannot be warmed after `max_warm_failures` tries fails
the runs waiting for it instead of leaving them queued forever.

A mixin of `HermesScheduler`; it uses `config`, `planner`, `live`, `slots`, `queues`,
`journal`, `_spawn`, `_timed` and `_fail`; its own state is `_arrivals` (admission times and
classes inside the rate window) and `_started_s`.
"""

from __future__ import annotations

import time

from hermesflow.schedulers.interface import BackendPhase
from hermesflow.store import DecisionRow


class PrewarmMixin:
    """Warm and release backends as the planner decides (module docstring)."""

    def _arrival_rates(self) -> dict[str, float]:
        """Admissions per second per class over the last `arrival_rate_window_s` — or since the
        scheduler started, when that is shorter, so a young scheduler does not under-estimate."""
        now = time.time()
        while self._arrivals and self._arrivals[0][0] < now - self.config.arrival_rate_window_s:
            self._arrivals.popleft()
        window = min(self.config.arrival_rate_window_s, max(now - self._started_s, 1.0))
        rates: dict[str, float] = {}
        for _, app_class in self._arrivals:
            rates[app_class] = rates.get(app_class, 0.0) + 1.0 / window
        return rates

    def _plan(self) -> None:
        now = time.time()
        decision = self.planner.plan(
            now,
            [live.record for live in self.live.values()],
            {name: slot.status(len(self.queues[name])) for name, slot in self.slots.items()},
            self._arrival_rates(),
        )
        rows = []
        for name in decision.release:
            rows.append(DecisionRow(now, "release", name))
            self._spawn(self.slots[name].release())
        for name in decision.warm:
            rows.append(DecisionRow(now, "warm", name, detail={"expected_s": self.slots[name].warmup_s}))
            self._spawn(self._warm(name))
        if rows:
            self.journal.record(rows)

    async def _warm(self, name: str) -> None:
        slot = self.slots[name]
        await slot.warm()
        if slot.phase is BackendPhase.COLD and slot.failures >= self.config.max_warm_failures:
            self._timed(self._fail_waiting, name, slot.last_error)

    def _fail_waiting(self, backend: str, error: str | None) -> None:
        """A backend that cannot warm fails the runs waiting for it rather than hang them."""
        queue = self.queues[backend]
        while (request := queue.pop()) is not None:
            live = self.live.get(request.app.app_id)
            if live is not None:
                self._fail(live, f"backend {backend!r} could not be warmed: {error}")
        self.slots[backend].failures = 0
