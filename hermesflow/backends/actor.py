"""A backend as a Ray actor: the face of every backend inside a Ray cluster.

The actor is created cold (nothing loaded), warmed by `load` (which reports its own measured
time, the warm-up the prewarm planner plans with), serves calls concurrently up to the
backend's capacity — the scheduler never sends more — and is killed to release it, which frees
its memory for sure. `stream` is a Ray streaming generator: it yields `{"delta": text}` items as
the backend produces text, then one `{"result": CallResult}` item.

Before each call the actor checks that the call fits the backend (`call_checks`); a call that
does not, or that the backend refuses itself (`CallRefused`, e.g. a prompt longer than the model
takes), is answered as a result with its `error_code`, not raised: a caller's mistake must reach
the client as a clear 4xx, not as a remote traceback.

Torch in a Ray worker sees `OMP_NUM_THREADS=1` (Ray sets it to the actor's CPUs); backends that
compute set their own thread count in `load` (the `threads` option). Their OpenMP threads wait
passively (`wait_passively`, before the backend loads torch).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from pydantic import TypeAdapter

from hermesflow.backends.base import Backend, BackendSpec, make_backend, wait_passively
from hermesflow.backends.call_checks import check_call
from hermesflow.backends.calls import Call, CallRefused, CallResult
from hermesflow.backends.tools import ToolBackend, ToolSignature

_CALL = TypeAdapter(Call)


@ray.remote
class BackendActor:
    """Ray actor around one `Backend` built from a `BackendSpec` (given as JSON)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        wait_passively()
        self.spec = BackendSpec.model_validate(spec)
        self.backend: Backend = make_backend(self.spec)
        self._takes_priority = "priority" in inspect.signature(self.backend.run).parameters

    def pid(self) -> int:
        return os.getpid()

    def capacity(self) -> int:
        return self.backend.capacity

    async def load(self) -> float:
        """Warm the backend; returns the seconds it took."""
        start = time.perf_counter()
        await self.backend.load()
        return time.perf_counter() - start

    async def unload(self) -> None:
        await self.backend.unload()

    def signatures(self) -> dict[str, ToolSignature] | None:
        """The tools a loaded tool backend serves (None for other backends, and before `load`):
        what the scheduler checks tool calls against before it queues them."""
        backend = self.backend
        if isinstance(backend, ToolBackend) and backend.loaded:
            return dict(backend.signatures)
        return None

    async def run(self, call: dict[str, Any], priority: float | None = None) -> dict[str, Any]:
        result = await self._run(call, priority, None)
        return result.model_dump(mode="json")

    async def stream(self, call: dict[str, Any], priority: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield text deltas as they are generated, then the result."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        def sink(text: str) -> None:  # called from the backend's compute thread
            loop.call_soon_threadsafe(deltas.put_nowait, text)

        task = asyncio.ensure_future(self._run(call, priority, sink))
        task.add_done_callback(lambda _: loop.call_soon_threadsafe(deltas.put_nowait, None))
        while (text := await deltas.get()) is not None:
            yield {"delta": text}
        yield {"result": (await task).model_dump(mode="json")}

    async def _run(self, call: dict[str, Any], priority: float | None, sink) -> CallResult:
        parsed = _CALL.validate_python(call)
        try:
            check_call(self.spec.name, self.spec.type, self.signatures(), parsed)
            if self._takes_priority and priority is not None:
                return await self.backend.run(parsed, sink, priority=priority)
            return await self.backend.run(parsed, sink)
        except CallRefused as refused:
            return refused.result()
