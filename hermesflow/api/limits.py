"""What the gateway refuses before a route does any work: a body over the size limit (413),
text that is not Unicode (400), labels over their limits (422). The limits are `ApiLimits`
(`hermesflow.config`, `HERMES_API_*` settings).

* `BodyLimit`, an ASGI middleware, counts a request's body as the route reads it and refuses
  one over `max_body_bytes` — at once when its Content-Length says so, before a byte of it is
  read. It raises an `HTTPException` from inside the route's read, so the gateway's handlers
  render the refusal in the route's own format (FastAPI's, or OpenAI's envelope).
* `require_unicode`, a dependency of every route, refuses a JSON body holding a lone UTF-16
  surrogate (`"\\udc80"`). JSON's escapes can spell one and Python's `json` decodes it, but it
  is no character: UTF-8 cannot encode it, so the store, a tokenizer or the next process would
  fail on it later, after the request was accepted.
* `check_labels` holds a run's labels (the client's notes, stored with it) to their limits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hermesflow.api.errors import ApiError
from hermesflow.config import ApiLimits

_SHOWN_CHARS = 40
"""How much of an over-long name an error message quotes."""


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413 (module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > self.max_bytes:
                raise self._too_large(declared)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(None)
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self, declared: int | None) -> HTTPException:
        size = "is longer" if declared is None else f"has {declared} bytes, more"
        setting = ApiLimits.env_name("max_body_bytes")
        return HTTPException(
            413,
            f"the request body {size} than this server's limit of {self.max_bytes} bytes; send "
            f"less in one request, or raise the limit with {setting} where the server is started",
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def require_unicode(request: Request) -> None:
    """Refuse (400) a JSON body with a string that is not Unicode (module docstring). Routes
    without a body, and bodies that are not JSON (their route's validation says so), pass."""
    if getattr(request.scope.get("route"), "body_field", None) is None:
        return
    try:
        document = await request.json()  # parsed once: FastAPI has read it already
    except ValueError:
        return
    found = _lone_surrogate(document)
    if found is None:
        return
    path, text = found
    where = ".".join(map(str, path)) or "body"
    surrogate = next(c for c in text if "\ud800" <= c <= "\udfff")
    raise ApiError(
        400,
        f"{where}: the text holds a lone UTF-16 surrogate (\\u{ord(surrogate):04x}), which is no "
        "Unicode character; send valid Unicode: a character beyond U+FFFF as a surrogate pair "
        "(\\ud83d\\ude00) or as UTF-8",
        param=where if path else None,
    )


def _lone_surrogate(document: Any) -> tuple[tuple[str | int, ...], str] | None:
    """(path, text) of a string in a parsed JSON document — a value or a key — that UTF-8
    cannot encode. Iterative: a deeply nested document must not exhaust the stack."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                return path, value
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_unicode(key):
                    return (*path, key), key
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, i), item) for i, item in enumerate(value))
    return None


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    return repr(name) if len(name) <= _SHOWN_CHARS else f"{name[:_SHOWN_CHARS]!r}..."


def check_labels(labels: Mapping[str, Any] | None, limits: ApiLimits) -> None:
    """Refuse (422) labels with more keys, or longer keys or values, than `limits` allow."""
    if not labels:
        return
    problems = []
    if len(labels) > limits.max_labels:
        problems.append(
            f"{len(labels)} labels, more than {limits.max_labels} "
            f"({ApiLimits.env_name('max_labels')})"
        )
    for key, value in labels.items():
        if len(key) > limits.max_label_key_chars:
            problems.append(
                f"the key {_shown(key)} has {len(key)} characters, more than "
                f"{limits.max_label_key_chars} ({ApiLimits.env_name('max_label_key_chars')})"
            )
        size = len(json.dumps(value, ensure_ascii=False))
        if size > limits.max_label_value_chars:
            problems.append(
                f"the value of {_shown(key)} has {size} characters as JSON, more than "
                f"{limits.max_label_value_chars} ({ApiLimits.env_name('max_label_value_chars')})"
            )
    if problems:
        raise ApiError(
            422,
            f"labels: {'; '.join(problems)}. Labels are short notes about a run (where it came "
            "from, who owns it); send data as the run's inputs, or raise the limit with the "
            "setting named where the server is started",
            param="labels",
        )
