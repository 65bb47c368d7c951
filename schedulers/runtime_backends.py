"""The runtime's side of each backend: one `BackendSlot` per backend name, which owns the
backend's Ray actor.

The backend's phase, capacity and load are the scheduling engine's (`engine.BackendState`): the
engine decides to warm or release it, and the scheduler actor applies that here. Warming starts
a `BackendActor` and its `load` and reports the measured time (the engine keeps a moving average
for the prewarm planner); releasing kills the actor, which frees its memory for sure (the
planner releases only idle backends). Each actor belongs to one engine `generation` of the
backend: a call on an actor that dies raises `BackendDied` with it, so the scheduler tells the
engine, which re-queues the call — a step is retried, never lost — and ignores the news if the
backend has since been released or warmed anew.

Every completed warm-up is counted and its measured time kept (`warmups`, `last_warmup_s`, the
`/v1/backends` view) and reported to the scheduler's Ray metrics.

A warmed tool backend tells its tool signatures (`signatures`), which the scheduler checks later
steps against before queueing them (`hermesflow.backends.call_checks`); they outlive the actor,
since the backend's configuration does not change. A call the backend fails (it raised) becomes
an error result naming the backend and an incident id; the traceback, with its paths, pids and
actor ids, goes to the log only (`hermesflow.incidents`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError

from hermesflow.backends.actor import BackendActor
from hermesflow.backends.base import BackendSpec
from hermesflow.backends.calls import CallErrorCode, CallResult
from hermesflow.backends.tools import ToolSignature
from hermesflow.incidents import described, report
from hermesflow.schedulers.metrics import SchedulerMetrics

log = logging.getLogger(__name__)


class BackendDied(RuntimeError):
    """The backend's actor (of engine generation `generation`) died during a call; the call did
    not complete."""

    def __init__(self, message: str, generation: int) -> None:
        super().__init__(message)
        self.generation = generation


class BackendSlot:
    """The actor of one backend (module docstring). Not thread-safe: one event loop."""

    def __init__(self, spec: BackendSpec, metrics: SchedulerMetrics) -> None:
        self.spec = spec
        self.name = spec.name
        self.last_error: str | None = None
        self.warmups = 0
        self.last_warmup_s: float | None = None
        self.signatures: dict[str, ToolSignature] | None = None
        """A tool backend's tools, known once it has been warm (None before, and for LLMs)."""
        self._actor: Any = None
        self._generation = -1
        self._metrics = metrics
        metrics.backend_cold(self.name)

    # -- lifecycle ------------------------------------------------------------------------------

    async def warm(self, generation: int) -> tuple[int, float]:
        """Start the actor and load the backend for engine generation `generation`; returns its
        capacity and the measured warm-up seconds. Raises if it cannot be loaded (the actor is
        killed, `last_error` says why)."""
        self.release()
        start = time.time()
        actor = BackendActor.options(
            num_cpus=self.spec.num_cpus, num_gpus=self.spec.num_gpus, max_restarts=0
        ).remote(self.spec.model_dump(mode="json"))
        self._actor, self._generation = actor, generation
        try:
            capacity = await actor.capacity.remote()
            await actor.load.remote()
            signatures = await actor.signatures.remote()
        except Exception as error:
            if self._actor is actor:
                self.last_error = described(error)
                log.error("backend %s failed to warm", self.name, exc_info=error)
                self.release()
            raise
        measured = time.time() - start
        self.signatures = signatures
        self.warmups += 1
        self.last_warmup_s = measured
        self._metrics.backend_warmed(self.name, measured)
        return capacity, measured

    def release(self) -> None:
        """Kill the actor, if any (the engine released the backend, or its warm-up is stale)."""
        actor, self._actor = self._actor, None
        if actor is not None:
            ray.kill(actor)
            self._metrics.backend_cold(self.name)

    def lost(self, generation: int) -> None:
        """The actor of `generation` died: drop it (a newer actor is kept)."""
        if generation == self._generation:
            self.release()

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
            raise BackendDied(f"backend {self.name!r} died during a call", generation) from error

    def failure(self, error: Exception) -> CallResult:
        """The result of a call this backend failed by raising (its fault, not the caller's):
        the message names the backend and an incident id, the traceback goes to the log."""
        message = report(log, f"backend {self.name!r} failed the call", error)
        return CallResult(finish_reason="error", error=message, error_code=CallErrorCode.BACKEND_ERROR)
