"""The scheduler actor's event-loop services, shared by the actor and its collaborators.

Every collaborator of `HermesScheduler` (open runs, named steps, prewarm, refit, the monitor)
needs the same three things of the actor's loop: start a background task whose failure is not
lost, wake the dispatcher after changing what the engine holds, and count a piece of work as the
scheduler's own overhead (`WorkMeter`, reported as `overhead_ms_per_step`). They get this one
object rather than a reference to the actor. No Ray here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from hermesflow.schedulers.work_meter import WorkMeter

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


class ActorLoop:
    """Background tasks, the dispatcher's wake-up, and the overhead meter of one actor.

    `task_failures` counts background tasks that raised: they are logged and counted instead of
    vanishing with their task (`stats` reports the count)."""

    def __init__(self) -> None:
        self.work = WorkMeter()
        self.task_failures = 0
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run `coro` as a task of the actor's loop, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.task_failures += 1
            log.error("scheduler task failed", exc_info=task.exception())

    def wake(self) -> None:
        """Ask the dispatcher for a scheduling pass (many wakes before it runs make one pass)."""
        self._wake.set()

    async def woken(self) -> None:
        """Wait for the next `wake`, and take it."""
        await self._wake.wait()
        self._wake.clear()

    def settle(self) -> None:
        """Take the wakes asked for so far in this pass: the pass schedules after them anyway
        (storing a batch of results wakes the dispatcher once per result)."""
        self._wake.clear()

    def timed(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run a piece of the scheduler's own work, counting it as its overhead."""
        return self.work.timed(fn, *args, **kwargs)
