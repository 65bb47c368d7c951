"""The API's own error, and the HTTP face of a call's result that is an error.

Routes raise `ApiError`; the app renders it in the route family's format (FastAPI's
`{"detail"}` or OpenAI's `{"error"}`, see `hermesflow.api.app`). What the scheduler itself raises
becomes an `ApiError` in `hermesflow.api.scheduler_proxy`; a call's result can be an error too
(`check_result`): refused by its backend (the caller's mistake, a 4xx) or failed in it (502).
"""

from __future__ import annotations

from hermesflow.backends.calls import CallErrorCode, CallResult


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


def check_result(result: CallResult, refused_status: int) -> CallResult:
    """`result`, unless its call did not run as sent: refused by its backend (the caller's
    mistake: `refused_status`, with the refusal's code) or failed in it (502). A tool's own
    failure is a result like any other (the program reads its error)."""
    code = result.error_code
    if code is None or code is CallErrorCode.TOOL_ERROR:
        return result
    if code.refused:
        raise ApiError(
            refused_status, result.error or "the backend refused the call", code=code.value
        )
    raise ApiError(
        502,
        result.error or "the backend failed the call",
        type="server_error",
        code=CallErrorCode.BACKEND_ERROR.value,
    )
