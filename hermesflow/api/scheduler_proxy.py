"""How the HTTP layer talks to the scheduler actor: awaited calls, streams, and their errors.

Every route of the gateway goes through `SchedulerProxy`, so there is one place that turns the
scheduler's answers into HTTP: a `SubmissionError` (the scheduler refusing a submission; Ray
delivers it wrapped in a `RayTaskError`, the original is its `cause`) becomes 422 — or 404 when
the route names an application or step that does not exist, or 409 when it sends a step to an
application that has ended; any other Ray error (a dead or restarting scheduler actor) becomes
503; a run that failed (`RunFailed`, whose message the scheduler writes for clients) becomes
502, and so does any other error, told as its type and an incident id: its text (a remote
traceback with paths, pids and actor ids) goes to the gateway's log only. A call's result can
be an error too (`check_result`): refused by its backend (the caller's mistake, a 4xx) or failed
in it (502). Routes render an `ApiError` in their own family's format (FastAPI's `{"detail"}`
or OpenAI's `{"error"}`, see `hermesflow.gateway`).

Server-Sent Events are formatted here too (`sse`), one JSON document per `data:` line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.sse import format_sse_event
from pydantic import BaseModel
from ray.exceptions import RayError, RayTaskError

from hermesflow.backends.calls import CallErrorCode, CallResult
from hermesflow.incidents import original, report
from hermesflow.schedulers.runtime_state import ApplicationFinished, RunFailed, SubmissionError

log = logging.getLogger(__name__)


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
        log.warning("the scheduler is not reachable", exc_info=error)
        return ApiError(
            503,
            f"the Hermesflow scheduler is not reachable ({type(error).__name__}); check that "
            "`hermesflow serve` is running on this Ray cluster",
            type="server_error",
            code="scheduler_unavailable",
        )
    cause = original(error)
    if isinstance(cause, SubmissionError):
        if missing_app or isinstance(cause, LookupError):
            return ApiError(404, _message(cause), code="not_found")
        if isinstance(cause, ApplicationFinished):
            return ApiError(409, _message(cause), code="application_finished")
        return ApiError(422, _message(cause), code="submission_refused")
    if isinstance(cause, KeyError):
        return ApiError(404, _message(cause), code="not_found")
    if isinstance(cause, RunFailed):
        message = f"the application failed: {cause}"
    else:
        message = report(log, "the request failed in the scheduler", error)
    return ApiError(502, message, type="server_error", code="scheduler_error")


def check_result(result: CallResult, refused_status: int) -> CallResult:
    """`result`, unless its call did not run as sent: refused by its backend (the caller's
    mistake: `refused_status`, with the refusal's code) or failed in it (502). A tool's own
    failure is a result like any other (the program reads its error)."""
    code = result.error_code
    if code is None or code is CallErrorCode.TOOL_ERROR:
        return result
    if code.refused:
        raise ApiError(refused_status, result.error or "the backend refused the call", code=code.value)
    raise ApiError(
        502,
        result.error or "the backend failed the call",
        type="server_error",
        code=CallErrorCode.BACKEND_ERROR.value,
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

    async def stream_step(
        self, check: Callable[[CallResult], object], **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """`stream_step`'s items (`{"delta"}`..., then `{"result"}`). The first item is awaited
        here, before the caller starts an HTTP response, so a refused step is still an HTTP
        error — also one its backend refused, whose result comes first and is given to `check`
        (which raises `ApiError` for it); a failure later in the stream raises `ApiError` from
        the iterator."""
        generator = self.handle.stream_step.options(num_returns="streaming").remote(**kwargs)
        first = await self._next(generator)
        if first is not None and "result" in first:
            check(CallResult.model_validate(first["result"]))

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
