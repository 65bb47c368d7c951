"""The API's readiness route and its drain (the contract is in `hermesflow.api.models.lifecycle`).

`Drain` has three parts, wired up by `hermesflow.api.app.build_app`:
- `middleware` (ASGI, outermost): every HTTP exchange is registered while it runs, and what it
  sends is watched (has the response started, is it an event stream, has it ended), so that at
  the deadline the drain knows how to end it;
- `admit`, a dependency of every API route but the probes: while draining, a new request gets
  503 `server_shutting_down`, rendered by the app's error handlers in its route family's format;
- `drain(grace_s)`: stop admitting, wait until every exchange has ended or the grace period has
  passed, then end the rest — cancel each one's handler and close its response in its own
  format (OpenAI stream: an error chunk then `data: [DONE]`; control-API event stream: an
  `{"error"}` event; no response yet: 503).

The handler of each exchange runs as a task of its own so that the drain can cancel it while the
middleware, still holding the connection, writes the closing bytes. Responses are written one
whole event per ASGI message, so a cancelled stream never stops half-way through an event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from hermesflow.api.errors import ApiError
from hermesflow.api.models.lifecycle import (
    DRAINING,
    READY_PATH,
    SHUTTING_DOWN,
    DrainReport,
    Readiness,
    assess_readiness,
    unavailable,
)
from hermesflow.api.openai import DONE, OpenAIRoute, error_document
from hermesflow.api.scheduler_proxy import SchedulerProxy
from hermesflow.api.sse import sse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLOSE_TIMEOUT_S = 5.0
"""After the deadline, how long the drain waits for the cancelled handlers to unwind."""
READY_CHECK_TIMEOUT_S = 5.0
"""A readiness probe that gets no answer from the scheduler within this says `unavailable`."""

_REFUSED = (
    "this server is shutting down and accepts no new requests; send the request to another "
    "server, or retry once this one is back"
)


class _Exchange:
    """One HTTP request and its response, as far as the drain needs to know."""

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope = scope
        self._send = send
        self.handler: asyncio.Task | None = None
        self.started = False
        self.ended = False
        self.event_stream = False
        self.cut = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            content_type = dict(message.get("headers") or ()).get(b"content-type", b"")
            self.event_stream = content_type.startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self._send(message)

    @property
    def openai(self) -> bool:
        return isinstance(self.scope.get("route"), OpenAIRoute)

    async def close(self, error: ApiError) -> None:
        """End a response the drain cut off, in its route family's format."""
        if self.ended:
            return
        if not self.started:
            document = error_document(error) if self.openai else {"detail": error.message}
            await self._send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                }
            )
            body = json.dumps(document).encode()
        elif self.event_stream:
            if self.openai:
                body = sse(error_document(error)) + sse(DONE)
            else:
                body = sse({"error": error.message})
        else:
            return  # a plain body half sent: the server closes the connection
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        self.ended = True


class Drain:
    """The gateway's HTTP exchanges in flight and its drain (module docstring)."""

    def __init__(self) -> None:
        self.draining = False
        self._open: set[_Exchange] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._grace_s = 0.0

    async def admit(self) -> None:
        """Route dependency: refuse new requests while draining."""
        if self.draining:
            raise ApiError(503, _REFUSED, type="server_error", code=SHUTTING_DOWN)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """The ASGI middleware that tracks every HTTP exchange (`app.add_middleware`)."""

        async def track(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            exchange = _Exchange(scope, send)
            exchange.handler = asyncio.ensure_future(app(scope, receive, exchange.send))
            self._open.add(exchange)
            self._idle.clear()
            try:
                try:
                    await exchange.handler
                except asyncio.CancelledError:
                    # our own cancellation (the server's forced shutdown) goes on; the
                    # drain's cancellation of the handler ends in a closing message
                    if not exchange.cut or asyncio.current_task().cancelling():
                        raise
                if exchange.cut:
                    await exchange.close(self._deadline_error())
            finally:
                self._open.discard(exchange)
                if not self._open:
                    self._idle.set()

        return track

    def _deadline_error(self) -> ApiError:
        return ApiError(
            503,
            f"this server shut down before the response was complete (grace period "
            f"{self._grace_s:g} s); retry the request",
            type="server_error",
            code=SHUTTING_DOWN,
        )

    async def drain(self, grace_s: float) -> DrainReport:
        """Stop admitting requests, let the open ones finish for up to `grace_s` seconds, then
        end the rest (each in its own format) and return what happened."""
        started = time.monotonic()
        self.draining = True
        self._grace_s = grace_s
        open_at_start = len(self._open)
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            pass
        left = [e for e in self._open if e.handler is not None and not e.handler.done()]
        for exchange in left:
            exchange.cut = True
            exchange.handler.cancel()
        if left:
            try:
                await asyncio.wait_for(self._idle.wait(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                pass
        return DrainReport(
            open_at_start=open_at_start,
            ended_at_deadline=len(left),
            seconds=time.monotonic() - started,
        )


def readiness_router(proxy: SchedulerProxy, drain: Drain) -> APIRouter:
    """`GET /readyz` (no auth, like `/healthz`: probes carry no token). It names the pinned
    backends that are not warm, and nothing else about the server."""
    router = APIRouter(tags=["health"])

    @router.get(
        READY_PATH,
        summary="Readiness: 200 when the pinned backends are warm, else 503",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "warming, draining or unavailable"}},
    )
    async def readyz() -> JSONResponse:
        readiness = DRAINING if drain.draining else await _assess(proxy)
        return JSONResponse(
            readiness.model_dump(mode="json"), status_code=200 if readiness.ready else 503
        )

    return router


async def _assess(proxy: SchedulerProxy) -> Readiness:
    try:
        backends = await asyncio.wait_for(proxy.backends(), READY_CHECK_TIMEOUT_S)
    except (ApiError, TimeoutError):
        return unavailable("the scheduler does not answer; is it running (`hermesflow serve`)?")
    return assess_readiness(backends)
