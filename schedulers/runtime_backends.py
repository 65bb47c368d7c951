"""The runtime's side of each backend: one `BackendSlot` per backend name.

A slot owns the backend's lifecycle as the scheduler sees it (`BackendPhase`):

    COLD ──warm()──▶ WARMING ──load done──▶ WARM ──release()──▶ DRAINING ──idle──▶ COLD

Cold means no actor at all; warming is starting a `BackendActor` and its `load` (the measured
warm-up, kept as an exponential moving average for the prewarm planner); draining waits for
in-flight calls, then kills the actor, which frees its memory for sure. A call on an actor
that dies raises `BackendDied`: the slot goes back to COLD and the scheduler re-queues the
call, so a step is retried, never lost.

Every completed warm-up is counted and its measured time kept (`warmups`, `last_warmup_s`, the
`/v1/backends` view) and reported to the scheduler's Ray metrics with each warm/cold transition.

A warmed tool backend tells its tool signatures (`signatures`), which the scheduler checks later
steps against before queueing them (`hermesflow.backends.call_checks`); they outlive the actor,
since the backend's configuration does not change. A call the backend fails (it raised) becomes
an error result naming the backend and an incident id; the traceback, with its paths, pids and
actor ids, goes to the log only (`hermesflow.incidents`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError

from hermesflow.backends.actor import BackendActor
from hermesflow.backends.base import BackendSpec
from hermesflow.backends.call_checks import call_kind_of
from hermesflow.backends.calls import CallErrorCode, CallResult
from hermesflow.backends.tools import ToolSignature
from hermesflow.incidents import described, report
from hermesflow.schedulers.interface import BackendPhase
from hermesflow.schedulers.metrics import SchedulerMetrics
from hermesflow.schedulers.prewarm import BackendStatus

log = logging.getLogger(__name__)

WARMUP_EMA = 0.5
"""Weight of the newest measured warm-up in the moving average the planner sees."""


class BackendDied(RuntimeError):
    """The backend's actor died during a call; the call did not complete."""


class BackendSlot:
    """Lifecycle and calls of one backend (module docstring). Not thread-safe: one event loop."""

    def __init__(
        self, spec: BackendSpec, on_change: Callable[[], None], metrics: SchedulerMetrics
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.phase = BackendPhase.COLD
        self.warmup_s = spec.expected_warmup_s
        self.in_flight = 0
        self.capacity = 1
        self.last_used_s = -math.inf
        self.warm_since_s = math.inf
        self.failures = 0
        self.last_error: str | None = None
        self.warmups = 0
        self.last_warmup_s: float | None = None
        self.serves = call_kind_of(spec.type)
        self.signatures: dict[str, ToolSignature] | None = None
        """A tool backend's tools, known once it has been warm (None before, and for LLMs)."""
        self._actor: Any = None
        self._generation = 0
        self._on_change = on_change
        self._metrics = metrics
        metrics.backend_cold(self.name)

    # -- what the planner and the dispatcher read ---------------------------------------------

    def status(self, queued: int) -> BackendStatus:
        return BackendStatus(self.name, self.phase, self.warmup_s, self.in_flight, queued, self.last_used_s)

    @property
    def warm_since(self) -> float | None:
        """Unix time the loaded actor became warm; None while none is loaded."""
        return None if math.isinf(self.warm_since_s) else self.warm_since_s

    @property
    def free(self) -> int:
        return self.capacity - self.in_flight if self.phase is BackendPhase.WARM else 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def warm(self) -> None:
        """Start the actor and load the backend; on failure the slot is COLD again."""
        if self.phase is not BackendPhase.COLD:
            return
        self._generation += 1
        generation = self._generation
        self.phase = BackendPhase.WARMING
        start = time.time()
        actor = BackendActor.options(
            num_cpus=self.spec.num_cpus, num_gpus=self.spec.num_gpus, max_restarts=0
        ).remote(self.spec.model_dump(mode="json"))
        self._actor = actor
        try:
            capacity = await actor.capacity.remote()
            await actor.load.remote()
            signatures = await actor.signatures.remote()
        except Exception as error:  # noqa: BLE001 - any load failure leaves the backend cold
            if generation == self._generation:
                self.failures += 1
                self.last_error = described(error)
                log.error("backend %s failed to warm", self.name, exc_info=error)
                self._to_cold()
            return
        if generation != self._generation:  # released while warming
            return
        self.signatures = signatures
        measured = time.time() - start
        self.warmup_s = WARMUP_EMA * measured + (1 - WARMUP_EMA) * self.warmup_s
        self.capacity = capacity
        self.failures = 0
        self.warmups += 1
        self.last_warmup_s = measured
        self.phase, self.warm_since_s = BackendPhase.WARM, time.time()
        self._metrics.backend_warmed(self.name, measured)
        self._on_change()

    async def release(self) -> None:
        """Drain (wait for in-flight calls) and kill the actor."""
        if self.phase is BackendPhase.WARMING:
            self._generation += 1  # the pending warm-up is abandoned
            self._to_cold()
            return
        if self.phase is not BackendPhase.WARM:
            return
        self.phase = BackendPhase.DRAINING
        while self.in_flight:
            await asyncio.sleep(0.05)
        if self.phase is BackendPhase.DRAINING:
            self._to_cold()

    def revive(self) -> None:
        """Cancel a drain because work arrived (the actor is still loaded)."""
        if self.phase is BackendPhase.DRAINING:
            self.phase = BackendPhase.WARM
            self._on_change()

    def _to_cold(self) -> None:
        actor, self._actor = self._actor, None
        self.phase, self.warm_since_s, self.capacity = BackendPhase.COLD, math.inf, 1
        if actor is not None:
            ray.kill(actor)
        self._metrics.backend_cold(self.name)
        self._on_change()

    def shutdown(self) -> None:
        self._generation += 1
        if self._actor is not None:
            self._to_cold()

    async def pid(self) -> int | None:
        """The process id of the backend's actor (None while cold), for operators and tests."""
        return None if self._actor is None else await self._actor.pid.remote()

    # -- calls ----------------------------------------------------------------------------------

    async def call(
        self,
        call: dict[str, Any],
        priority: float | None,
        on_delta: Callable[[str], None] | None,
    ) -> CallResult:
        """Run one call on the warm actor; `BackendDied` if the actor dies meanwhile."""
        actor, generation = self._actor, self._generation
        self.in_flight += 1
        self.last_used_s = time.time()
        try:
            if on_delta is None:
                return CallResult.model_validate(await actor.run.remote(call, priority))
            result = None
            async for ref in actor.stream.options(num_returns="streaming").remote(call, priority):
                item = await ref
                if "delta" in item:
                    on_delta(item["delta"])
                else:
                    result = CallResult.model_validate(item["result"])
            return result
        except RayActorError as error:
            if generation == self._generation:
                self.last_error = f"its actor died during a call ({described(error)})"
                log.error("backend %s: its actor died during a call", self.name, exc_info=error)
                self._generation += 1
                self._to_cold()
            raise BackendDied(f"backend {self.name!r} died during a call") from error
        finally:
            self.in_flight -= 1
            self.last_used_s = time.time()
            self._on_change()

    def failure(self, error: Exception) -> CallResult:
        """The result of a call this backend failed by raising (its fault, not the caller's):
        the message names the backend and an incident id, the traceback goes to the log."""
        message = report(log, f"backend {self.name!r} failed the call", error)
        return CallResult(finish_reason="error", error=message, error_code=CallErrorCode.BACKEND_ERROR)
