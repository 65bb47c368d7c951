"""`PrewarmApplier` on its own: the engine's warm decisions are journalled and carried out on a
real backend actor, and a backend that cannot warm fails the runs waiting for it — built from
real parts (`support.runtime_parts`) on the shared Ray cluster."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("ray")

from support.runtime_parts import TOOLS, build_parts

from hermesflow.backends.base import BackendSpec
from hermesflow.schedulers.engine import EngineConfig
from hermesflow.schedulers.errors import RunFailed
from hermesflow.schedulers.interface import BackendPhase
from hermesflow.store import DecisionKind, RunPhase

NAP = {"kind": "tool", "tool": "sleep", "args": {"seconds": 0.01}}
BROKEN = BackendSpec(
    name="tools",
    type="python-tools",
    options={"workers": 1, "tools": {"sleep": "no_such_module_for_tests:nap"}},
)


def _queue_one_step(parts) -> asyncio.Future:
    runs = parts.open_runs()
    future, _ = runs.open_step("app", "chat", "ask", NAP, "tools", None, False, False)
    return future


async def _until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_warm_decision_is_journalled_and_warms_the_backend_actor(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path)
        _queue_one_step(parts)
        output = parts.engine.schedule()
        assert output.warm == ("tools",) and output.dispatch == ()
        applier = parts.prewarm()
        try:
            applier.apply(output)
            assert parts.engine.backends["tools"].phase is BackendPhase.WARMING
            await _until(lambda: parts.engine.backends["tools"].phase is BackendPhase.WARM)
            assert await parts.slots["tools"].pid() is not None
        finally:
            parts.release_all()
        [warm] = [d for d in parts.store.decisions() if d.kind is DecisionKind.WARM]
        assert (warm.backend, warm.detail) == ("tools", {"expected_s": TOOLS.expected_warmup_s})
        assert parts.engine.backends["tools"].capacity == TOOLS.options["workers"]
        assert parts.slots["tools"].warmups == 1
        assert parts.loop.task_failures == 0

    asyncio.run(scenario())


def test_a_backend_that_cannot_warm_fails_the_runs_waiting_for_it(ray_cluster, tmp_path) -> None:
    async def scenario() -> None:
        parts = build_parts(tmp_path, [BROKEN], engine=EngineConfig(max_warm_failures=1))
        future = _queue_one_step(parts)
        try:
            await parts.dispatch_until(future.done)
        finally:
            parts.release_all()
        with pytest.raises(
            RunFailed, match="backend 'tools' could not be warmed: .*no_such_module_for_tests"
        ):
            future.result()
        assert parts.journal.run("app").phase is RunPhase.FAILED
        assert parts.engine.backends["tools"].phase is BackendPhase.COLD
        assert len(parts.live) == 0

    asyncio.run(scenario())
