"""Server-Sent Events as the API writes them: one JSON document per `data:` line."""

from __future__ import annotations

import json
from typing import Any

from fastapi.sse import format_sse_event
from pydantic import BaseModel


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
