"""Any OpenAI-compatible server (vLLM's, llama.cpp's, a hosted API, Hermesflow's own gateway) as a
language-model backend, spoken to over HTTP with `httpx` — no SDK dependency.

Chat calls go to `POST {base_url}/chat/completions`, raw prompts to `POST {base_url}/completions`,
always streamed (`stream: true`): the server-sent events are read line by line, each `data:`
chunk's text goes to `on_delta`, and `data: [DONE]` ends the stream. Token counts come from the
final `usage` chunk (`stream_options.include_usage`); a server that sends none is counted one
token per text chunk, which is what servers stream, and zero input tokens.

The server does its own batching; `capacity` only bounds how many requests this backend keeps in
flight (and its connection pool), so the scheduler's order applies beyond it.

A request the server refuses as invalid (HTTP 400 or 422) is the caller's to fix, so it raises
`CallRefused` with the server's message (`ContextLengthExceeded` for OpenAI's
`context_length_exceeded` and vLLM's "maximum context length"): the HTTP API answers it with a
4xx, as the CPU model's own refusals. Any other failure is the backend's (`ServerError`, a 502).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx

from hermesflow.backends.base import Backend, DeltaSink
from hermesflow.backends.calls import AttentionMethod, Call, CallRefused, CallResult, LLMCall
from hermesflow.backends.llm_text import ContextLengthExceeded

_ERROR_BODY_CHARS = 500
"""How much of an error response to quote in an exception."""

_INVALID_REQUEST = (httpx.codes.BAD_REQUEST, httpx.codes.UNPROCESSABLE_ENTITY)
"""Statuses by which a server says the request itself is wrong (the caller's to fix)."""


class ServerError(RuntimeError):
    """The server refused or failed a request; the message quotes its answer."""


@dataclass
class _Stream:
    """What one streamed completion has produced so far."""

    text: str = ""
    chunks: int = 0
    first_text_at: float | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class OpenAIClientBackend(Backend):
    """A remote OpenAI-compatible server behind the backend contract.

    Options: `base_url` — the API root, e.g. "http://127.0.0.1:8000/v1"; `model` — the model name
    sent with each request (checked against `GET /models` at load); `api_key`, or `api_key_env`
    naming an environment variable that holds it (sent as a Bearer token); `capacity` — requests
    in flight (default 16); `timeout_s` — per request, for connecting and between chunks.

    `CallResult` timings are the client's view: `prefill_s` is the time to the first text,
    `decode_s` the rest; `batch_size` is 1 because the server does not report its batch.
    """

    type_name: ClassVar[str] = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        api_key_env: str | None = None,
        capacity: int = 16,
        timeout_s: float = 120.0,
    ) -> None:
        super().__init__(name, capacity=capacity)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"backend {name!r}: base_url {base_url!r} must start with http(s)://")
        if api_key is not None and api_key_env is not None:
            raise ValueError(f"backend {name!r}: give api_key or api_key_env, not both")
        if timeout_s <= 0:
            raise ValueError(f"backend {name!r}: timeout_s {timeout_s}; give a positive number")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._client: httpx.AsyncClient | None = None

    async def load(self) -> None:
        """Open the connection pool and check that the server answers and serves `model`."""
        if self._client is not None:
            return
        client = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=self._headers(),
            timeout=self.timeout_s,
            limits=httpx.Limits(
                max_connections=self.capacity, max_keepalive_connections=self.capacity
            ),
        )
        try:
            response = await client.get("models")
        except httpx.HTTPError as error:
            await client.aclose()
            raise ServerError(
                f"backend {self.name!r}: no OpenAI-compatible server answers at {self.base_url} "
                f"({error!r}); start it, or fix base_url"
            ) from error
        if response.status_code != httpx.codes.OK:
            await client.aclose()
            raise ServerError(self._refusal("GET /models", response.status_code, response.text))
        served = [entry.get("id") for entry in _json(response.text).get("data", [])]
        if served and self.model not in served:
            await client.aclose()
            raise ServerError(
                f"backend {self.name!r}: {self.base_url} does not serve model {self.model!r}; "
                f"it serves {', '.join(map(str, served))}"
            )
        self._client = client

    async def run(self, call: Call, on_delta: DeltaSink | None = None) -> CallResult:
        if not isinstance(call, LLMCall):
            raise ValueError(
                f"backend {self.name!r} generates text; it cannot run a {call.kind} call"
            )
        if self._client is None:
            raise RuntimeError(f"backend {self.name!r} is not loaded; await load() first")
        path, payload = self._request(call)
        started = time.perf_counter()
        stream = _Stream()
        async with self._client.stream("POST", path, json=payload) as response:
            if response.status_code != httpx.codes.OK:
                body = (await response.aread()).decode(errors="replace")
                what = self._refusal(f"POST /{path}", response.status_code, body)
                if response.status_code in _INVALID_REQUEST:
                    raise _invalid_call(what, body)
                raise ServerError(what)
            async for chunk in _events(response):
                self._absorb(stream, chunk, on_delta)
        finished = time.perf_counter()
        first = stream.first_text_at or finished
        usage = stream.usage or {}
        return CallResult(
            text=stream.text,
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", stream.chunks)),
            seconds=finished - started,
            prefill_s=first - started,
            decode_s=finished - first,
            batch_size=1,
            finish_reason=_finish_reason(stream.finish_reason),
            attention=AttentionMethod.DENSE,
        )

    async def unload(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _headers(self) -> dict[str, str]:
        key = self._api_key
        if self._api_key_env is not None:
            key = os.environ.get(self._api_key_env)
            if not key:
                raise ValueError(
                    f"backend {self.name!r}: environment variable {self._api_key_env} is not set; "
                    "export the API key there"
                )
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _request(self, call: LLMCall) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": call.max_tokens,
            "temperature": call.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if call.stop:
            payload["stop"] = call.stop
        if call.messages is not None:
            payload["messages"] = [message.model_dump() for message in call.messages]
            return "chat/completions", payload
        payload["prompt"] = call.prompt
        return "completions", payload

    def _absorb(self, stream: _Stream, chunk: dict[str, Any], on_delta: DeltaSink | None) -> None:
        if "error" in chunk:
            raise ServerError(
                f"backend {self.name!r}: the server failed mid-stream: {chunk['error']}"
            )
        if chunk.get("usage"):
            stream.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            if text:
                stream.text += text
                stream.chunks += 1
                stream.first_text_at = stream.first_text_at or time.perf_counter()
                if on_delta is not None:
                    on_delta(text)
            if choice.get("finish_reason"):
                stream.finish_reason = choice["finish_reason"]

    def _refusal(self, what: str, status: int, body: str) -> str:
        hint = " (check api_key / api_key_env)" if status in (401, 403) else ""
        return (
            f"backend {self.name!r}: {what} at {self.base_url} answered HTTP {status}{hint}: "
            f"{body[:_ERROR_BODY_CHARS]}"
        )


def _invalid_call(what: str, body: str) -> CallRefused:
    """The refusal of a request the server found invalid: a context overflow when the server's
    error says so, else the call as sent."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = error.get("code") if isinstance(error, dict) else None
    if code == "context_length_exceeded" or "maximum context length" in body:
        return ContextLengthExceeded(what)
    return CallRefused(what)


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of a server-sent-event stream's `data:` lines, up to `[DONE]`.
    Comments (`:`), `event:`/`id:` fields and blank separators are skipped."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        if data:
            yield _json(data)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ServerError(
            f"the server sent invalid JSON ({error}): {text[:_ERROR_BODY_CHARS]}"
        ) from None
    if not isinstance(value, dict):
        raise ServerError(f"the server sent JSON that is not an object: {text[:_ERROR_BODY_CHARS]}")
    return value


def _finish_reason(reason: str | None) -> Literal["stop", "length"]:
    """OpenAI's reasons mapped onto ours: only "length" means the text was cut by max_tokens."""
    return "length" if reason == "length" else "stop"
