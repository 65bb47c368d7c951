"""Open applications on the scheduler actor: runs whose steps a client sends one by one.

The OpenAI-compatible gateway and Airflow tasks do not hand the scheduler a program; each of
their requests is one step of an application named by the client (`key`). This mixin of
`HermesScheduler` admits such a run on its first step (creating its class's vague prior, see
`open_apps.py`), queues each step like any other, hands the result (or a stream of text deltas)
back to the caller, records each step's observation once the next step names its successor,
and ends the run when the client says so or after `open_app_idle_s` without steps.

It uses the scheduler's state and helpers (`by_key`, `journal`, `slots`, `demand`, `policy`,
`_begin_step`, `_end`, `_new_live`, `_observation`, `_timed`); its own state is
`_session_keys`, each client session's latest application key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import TypeAdapter, ValidationError

from hermesflow.apps.program import StepPlan
from hermesflow.backends.calls import Call, CallResult, LLMCall
from hermesflow.journal import RunEnd, StoredCall
from hermesflow.pdgraph.model import END, LLM_BACKEND, StageKind
from hermesflow.schedulers.open_apps import open_class_prior
from hermesflow.schedulers.runtime_state import (
    ApplicationFinished,
    LiveRun,
    SubmissionError,
    UnknownApplication,
    new_step,
    view_stored,
)
from hermesflow.store import DecisionRow, RunPhase

_CALL = TypeAdapter(Call)
LLM_BACKEND_TYPES = frozenset({"transformers", "vllm", "openai"})
"""Backend types whose steps are LLM stages in a learned graph."""


class OpenRunsMixin:
    """Open applications (module docstring)."""

    async def submit_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: dict[str, Any],
        backend: str | None = None,
        labels: dict[str, Any] | None = None,
        reopen: bool = False,
    ) -> dict[str, Any]:
        """Run one step of an open application and return its result (JSON). With `reopen`,
        `key` names a client session: once its application has ended, the step starts the
        session's next application (`key#2`, `key#3`, ...) instead of being refused."""
        future, _ = await self._open_step(key, app_class, stage, call, backend, labels, reopen, stream=False)
        return (await future).model_dump(mode="json")

    async def stream_step(
        self,
        key: str,
        app_class: str,
        stage: str,
        call: dict[str, Any],
        backend: str | None = None,
        labels: dict[str, Any] | None = None,
        reopen: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Like `submit_step`, yielding `{"delta": text}` items, then `{"result": ...}`."""
        future, sink = await self._open_step(key, app_class, stage, call, backend, labels, reopen, stream=True)
        while True:
            getter = asyncio.ensure_future(sink.get())
            done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield {"delta": getter.result()}
                continue
            getter.cancel()
            while not sink.empty():
                yield {"delta": sink.get_nowait()}
            yield {"result": future.result().model_dump(mode="json")}
            return

    async def _open_step(self, key, app_class, stage, call, backend, labels, reopen, stream):
        await self._ready.wait()
        try:
            parsed = _CALL.validate_python(call)
        except ValidationError as error:
            raise SubmissionError(f"invalid call for step {stage!r}: {error}") from None
        backend = backend or (LLM_BACKEND if isinstance(parsed, LLMCall) else None)
        if backend not in self.slots:
            raise SubmissionError(
                f"unknown backend {backend!r} for step {stage!r}; configured backends: {sorted(self.slots)}"
            )
        if reopen:
            key = self._session_key(key)
        return self._timed(self._admit_open_step, key, app_class, stage, parsed, backend, labels, stream)

    def _session_key(self, session: str) -> str:
        """The key of the session's live application, or of its next one. The latest key of each
        session is remembered, so a live session costs no store look-up per request."""
        key = self._session_keys.get(session, session)
        generation = int(key.rpartition("#")[2]) if key != session else 1
        while key not in self.by_key and self.journal.run(key) is not None:
            generation += 1
            key = f"{session}#{generation}"
        self._session_keys[session] = key
        return key

    def _admit_open_step(self, key, app_class, stage, call, backend, labels, stream):
        now = time.time()
        live = self.by_key.get(key)
        if live is None:
            if self.journal.run(key) is not None:
                raise ApplicationFinished(f"application {key!r} has finished; use a new application id")
            if app_class in self.programs:
                raise SubmissionError(
                    f"class {app_class!r} is a program class; submit whole runs of it, or name an open class"
                )
            self._ensure_open_class(app_class, stage, backend)
            doc = {"step": -1, "open": True, "visits": {}, "attained_s": 0.0, "cold_s": 0.0}
            admit = DecisionRow(now, "admit", detail={"class": app_class, "key": key, "open": True})
            run, _ = self.journal.admit(key, app_class, self.policy.name, now, None, labels, doc, admit)
            live = self._new_live(run, None, None, doc)
            self.policy.on_admit(live.record, now)
        elif live.program is not None:
            raise SubmissionError(f"application {key!r} is a program run; it takes no external steps")
        self._record_open_observations(live, stage)
        live.doc["step"] += 1
        live.doc["visits"][stage] = live.doc["visits"].get(stage, 0) + 1
        plan = StepPlan(stage=stage, backend=backend, calls=[call])
        calls = self.journal.start_step(live.record.app_id, live.doc, new_step(live.doc["step"], plan), now)
        future = asyncio.get_running_loop().create_future()
        live.waiters[calls[0].id] = future
        sink: asyncio.Queue | None = asyncio.Queue() if stream else None
        if sink is not None:
            live.sinks[calls[0].id] = sink
        live.last_activity_s = now
        self._begin_step(live, plan, calls)
        return future, sink

    def _ensure_open_class(self, app_class: str, stage: str, backend: str) -> None:
        if app_class in self.demand.classes:
            return
        graph = open_class_prior(app_class, stage, backend, self._backend_kind(backend))
        self.store.save_pdgraph(graph, source="open-prior")
        self.demand.replace_graph(graph)

    def _backend_kind(self, backend: str) -> StageKind:
        if backend not in self.slots:
            return StageKind.TOOL
        return StageKind.LLM if self.slots[backend].spec.type in LLM_BACKEND_TYPES else StageKind.TOOL

    async def finish_app(self, key: str) -> dict[str, Any]:
        """End an open application (its client has no more steps)."""
        await self._ready.wait()
        live = self.by_key.get(key)
        if live is None:
            stored = self.journal.run(key)
            if stored is None:
                raise UnknownApplication(f"no application {key!r}")
            return view_stored(stored)
        if live.program is not None:
            raise SubmissionError(f"application {key!r} is a program run; it ends by itself")
        if live.waiters:
            raise SubmissionError(f"application {key!r} still has {len(live.waiters)} step(s) running")
        self._timed(self._end_open, live)
        return view_stored(self.journal.run(key))

    def _complete_open(self, live: LiveRun, stored: StoredCall, result: CallResult, work: float, now: float) -> None:
        call = live.calls.pop(stored.id)
        live.results.pop(stored.call_index, None)
        plan = StepPlan(stage=call.stage, backend=call.backend, calls=[_CALL.validate_python(call.call)])
        live.pending_observations.append(self._observation(live, plan, call.step, END, [result], [call], now))
        live.doc["cold_s"] = live.doc.get("cold_s", 0.0) + live.stage_cold_s
        live.stage_cold_s = 0.0
        future = live.waiters.pop(stored.id, None)
        live.sinks.pop(stored.id, None)
        if future is not None and not future.done():
            future.set_result(result)

    def _record_open_observations(self, live: LiveRun, next_stage: str) -> None:
        """Steps of an open run learn their successor when the next step arrives (or END)."""
        if live.pending_observations:
            finished = [dataclasses.replace(o, next_stage=next_stage) for o in live.pending_observations]
            live.pending_observations.clear()
            self.store.record_observations(live.record.app_id, finished)

    def _end_open(self, live: LiveRun) -> None:
        self._record_open_observations(live, END)
        self._end(live, RunEnd(RunPhase.FINISHED), None, None, live.doc["step"])

    def _close_idle_open_runs(self) -> None:
        cutoff = time.time() - self.config.open_app_idle_s
        for live in list(self.live.values()):
            if live.program is None and not live.waiters and live.last_activity_s < cutoff:
                self._timed(self._end_open, live)

