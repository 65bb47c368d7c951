"""Fixtures of the backend tests.

- `async_runner`: one asyncio.Runner for the session, driving the tool, code and search backends.
- `uvloop_backend_loop`: like `backend_loop` below, on uvloop, the loop of Ray's async actors.
- `gone`: whether a process has exited (waiting a little, since killing is asynchronous).
- `backend_loop` and `cpu_llm`: an event loop running in a thread, and one loaded CPU model on it
  for the whole session (loading takes about a second; converting the GGUF, 20–30 s). The loop
  runs all the time, like an async Ray actor's, so a test HTTP server in another thread can call
  the model while the test itself blocks.

The model folder is the default one under `HERMES_HOME` (`~/.hermesflow/models/...`), not a
per-session temporary directory: the one-time GGUF conversion costs more than every other
backend test together, so it is shared across sessions like any installation's model cache.
The conversion logic itself is tested against temporary folders in `test_transformers_llm.py`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:  # imported by the fixture: the tool tests need no torch
    from hermesflow.backends.transformers_llm import TransformersLLM

T = TypeVar("T")

CALL_TIMEOUT_S = 120.0
"""Generous: these VMs sometimes run 5 to 10 times slower than usual."""


@pytest.fixture(scope="session")
def async_runner() -> Iterator[asyncio.Runner]:
    """One event loop for the session's async backends; `async_runner.run(coroutine)`."""
    with asyncio.Runner() as runner:
        yield runner


class LoopThread:
    """An asyncio event loop running in a daemon thread, like the loop of an async Ray actor.

    Backends bind to the loop that loaded them, so a session-wide backend needs a session-wide
    loop; tests hand it coroutines with `run` and block until they finish.
    """

    def __init__(
        self, new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    ) -> None:
        self.loop = new_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="backend-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@pytest.fixture(scope="session")
def backend_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def uvloop_backend_loop() -> Iterator[LoopThread]:
    """A uvloop loop in a thread: Ray's async actors run on uvloop, whose subprocess support
    takes fewer options than asyncio's."""
    uvloop = pytest.importorskip("uvloop")
    loop = LoopThread(uvloop.new_event_loop)
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def cpu_llm(backend_loop: LoopThread) -> Iterator[TransformersLLM]:
    """SmolLM2-135M-Instruct in bf16 with capacity 4, loaded once on `backend_loop`."""
    from hermesflow.backends.transformers_llm import TransformersLLM

    backend = TransformersLLM("smollm2", max_batch=4, dtype="bfloat16")
    backend_loop.run(backend.load())
    yield backend
    backend_loop.run(backend.unload())


# ---------------------------------------------------------------------------------------------
# Tool backends: is a process gone?
# ---------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (dead, not yet reaped by whoever adopted it) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def gone() -> Callable[[int], bool]:
    """`gone(pid)`: True once the process has exited, waiting up to 2 s for the kernel to
    deliver a SIGKILL (tests call it right after the backend said it killed the process)."""

    def wait_gone(pid: int, within_s: float = 2.0) -> bool:
        deadline = time.monotonic() + within_s
        while _alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    return wait_gone
