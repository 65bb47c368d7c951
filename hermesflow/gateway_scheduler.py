"""How the HTTP layer talks to the scheduler actor: awaited calls, streams, and their errors.

Every route of the gateway goes through `SchedulerProxy`, so there is one place that turns the
scheduler's answers into HTTP: a `SubmissionError` (the scheduler refusing a submission; Ray
delivers it wrapped in a `RayTaskError`, the original is its `cause`) becomes 422 — or 404 when
the route names an application or step that does not exist, or 409 when it sends a step to an
application that has ended; any other Ray error (a dead or restarting scheduler actor) becomes
503; a step or run that failed in the scheduler becomes 502. Routes render an `ApiError` in
their own family's format (FastAPI's `{"detail"}` or OpenAI's `{"error"}`, see
`hermesflow.gateway`).

Server-Sent Events are formatted here too (`sse`), one JSON document per `data:` line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import format_sse_event
from pydantic import BaseModel
from ray.exceptions import RayError, RayTaskError

from hermesflow.schedulers.runtime_state import ApplicationFinished, SubmissionError


class ApiError(Exception):
    """An HTTP error with a message for the client; `type`/`param`/`code` fill OpenAI's error
    envelope on the OpenAI-compatible routes."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def _cause(error: RayTaskError) -> BaseException:
    return getattr(error, "cause", None) or error


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # str(KeyError) quotes its message
    return str(error)


def to_api_error(error: Exception, *, missing_app: bool = False) -> ApiError:
    """The HTTP face of an error raised by a scheduler call. `missing_app`: the call names an
    existing application, and the scheduler's only refusal for it is that it does not exist."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, RayError) and not isinstance(error, RayTaskError):
        return ApiError(
            503,
            f"the Hermesflow scheduler is not reachable ({type(error).__name__}: {error}); check that "
            "`hermesflow serve` is running on this Ray cluster",
            type="server_error",
            code="scheduler_unavailable",
        )
    cause = _cause(error) if isinstance(error, RayTaskError) else error
    if isinstance(cause, SubmissionError):
        if missing_app or isinstance(cause, LookupError):
            return ApiError(404, _message(cause), code="not_found")
        if isinstance(cause, ApplicationFinished):
            return ApiError(409, _message(cause), code="application_finished")
        return ApiError(422, _message(cause), code="submission_refused")
    if isinstance(cause, KeyError):
        return ApiError(404, _message(cause), code="not_found")
    return ApiError(
        502,
        f"the request failed in the scheduler: {type(cause).__name__}: {_message(cause)}",
        type="server_error",
        code="scheduler_error",
    )


class SchedulerProxy:
    """The scheduler actor's public methods, awaited, with errors mapped by `to_api_error`."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def call(self, method: str, *args: Any, missing_app: bool = False, **kwargs: Any) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args, **kwargs)
        except RayError as error:
            raise to_api_error(error, missing_app=missing_app) from None

    async def stream_step(self, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """`stream_step`'s items (`{"delta"}`..., then `{"result"}`). The first item is awaited
        here, before the caller starts an HTTP response, so a refused step is still an HTTP
        error; a failure later in the stream raises `ApiError` from the iterator."""
        generator = self.handle.stream_step.options(num_returns="streaming").remote(**kwargs)
        first = await self._next(generator)

        async def items() -> AsyncIterator[dict[str, Any]]:
            item = first
            while item is not None:
                yield item
                item = await self._next(generator)

        return items()

    @staticmethod
    async def _next(generator: Any) -> dict[str, Any] | None:
        try:
            ref = await generator.__anext__()
            return await ref
        except StopAsyncIteration:
            return None
        except RayError as error:
            raise to_api_error(error) from None


def sse(
    data: BaseModel | dict[str, Any] | list[Any] | str, *, event_id: int | None = None
) -> bytes:
    """One Server-Sent Event whose `data:` is a JSON document (a `str` is sent as is, for
    OpenAI's `[DONE]` sentinel)."""
    if isinstance(data, BaseModel):
        text = data.model_dump_json()
    elif isinstance(data, str):
        text = data
    else:
        text = json.dumps(data, separators=(",", ":"))
    return format_sse_event(data_str=text, id=None if event_id is None else str(event_id))


SSE_KEEPALIVE = b": keep-alive\n\n"
"""An SSE comment line: keeps idle connections open through proxies; clients ignore it."""

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
