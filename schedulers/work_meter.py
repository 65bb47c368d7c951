"""Time spent in the scheduler's own work, as wall time and as CPU time.

The simulator reports the engine's time per decision and the Ray runtime its time per completed
call; both measure with this one meter. On a busy machine the wall time includes waiting for
the GIL and a core, the CPU time (`time.thread_time`, this thread only) does not, so the CPU
figure is the scheduler's cost and the wall figure what a request felt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


class WorkMeter:
    """Accumulates the wall and CPU seconds of the calls it runs (`timed`)."""

    __slots__ = ("cpu_s", "wall_s")

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0

    def timed(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run `fn(*args, **kwargs)` and add its time, also when it raises."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.wall_s += time.perf_counter() - wall
            self.cpu_s += time.thread_time() - cpu
