"""The OpenAI-compatible client backend against a real HTTP server on 127.0.0.1.

The server here is a minimal OpenAI-compatible app (models, chat completions, completions;
streamed and not) backed by the session's real SmolLM2 backend; uvicorn runs it in a thread.
A test with the `openai` package checks that the server really speaks the protocol, so what the
client is tested against is not just what the client expects.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from hermesflow.backends.base import BackendSpec, make_backend
from hermesflow.backends.calls import CallErrorCode, CallRefused, CallResult, LLMCall, ToolCall
from hermesflow.backends.llm_text import ContextLengthExceeded
from hermesflow.backends.openai_client import OpenAIClientBackend, ServerError, _events
from hermesflow.backends.transformers_llm import TransformersLLM

if TYPE_CHECKING:  # the fixture's type; conftest modules are not imported by name
    from conftest import LoopThread

MODEL = "smollm2"
MODEL_WITHOUT_USAGE = "smollm2-no-usage"
"""Served by the same model, but its streams never carry `usage` (as some servers do)."""

API_KEY = "test-key"
MAX_TOKENS_LIMIT = 512
"""The server refuses larger `max_tokens` with HTTP 400, as servers do past their context."""

STARTUP_TIMEOUT_S = 30.0
MAX_PROMPT_CHARS = 20_000
"""A longer prompt is refused as OpenAI refuses one past the model's context."""


# ---------------------------------------------------------------------------------------------
# The test server
# ---------------------------------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status)


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def openai_app(llm: TransformersLLM, llm_loop: LoopThread) -> FastAPI:
    """`/v1/models`, `/v1/chat/completions` and `/v1/completions` over `llm`, which lives on
    `llm_loop` (another thread's event loop)."""
    app = FastAPI()

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401, "invalid API key")
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": m, "object": "model"} for m in (MODEL, MODEL_WITHOUT_USAGE)],
        }

    async def generate(call: LLMCall) -> AsyncIterator[str | CallResult]:
        """The call's text deltas as the model produces them, then its result."""
        here = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def on_delta(text: str) -> None:  # runs on the model's loop
            here.call_soon_threadsafe(queue.put_nowait, text)

        async def job() -> CallResult:
            try:
                return await llm.run(call, on_delta)
            finally:
                here.call_soon_threadsafe(queue.put_nowait, None)

        future = asyncio.run_coroutine_threadsafe(job(), llm_loop.loop)
        try:
            while (text := await queue.get()) is not None:
                yield text
            yield await asyncio.wrap_future(future)
        finally:
            future.cancel()  # the client went away: stop generating

    async def complete(request: Request, chat: bool) -> Any:
        body = await request.json()
        if body.get("model") not in (MODEL, MODEL_WITHOUT_USAGE):
            return _error(404, f"model {body.get('model')!r} does not exist")
        if body.get("max_tokens", 16) > MAX_TOKENS_LIMIT:
            return _error(400, f"max_tokens must be at most {MAX_TOKENS_LIMIT}")
        if len(json.dumps(body.get("messages") or body.get("prompt"))) > MAX_PROMPT_CHARS:
            error = {
                "message": "This model's maximum context length is 8192 tokens",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
            return JSONResponse({"error": error}, 400)
        stop = body.get("stop") or []
        try:
            call = LLMCall(
                messages=body["messages"] if chat else None,
                prompt=None if chat else body["prompt"],
                max_tokens=body.get("max_tokens", 16),
                temperature=body.get("temperature", 0.0),
                stop=[stop] if isinstance(stop, str) else stop,
            )
        except (KeyError, ValidationError) as error:
            return _error(400, str(error))
        usage_wanted = body.get("model") == MODEL and (body.get("stream_options") or {}).get(
            "include_usage", False
        )
        kind = "chat.completion" if chat else "text_completion"
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": body["model"],
        }

        def choice(text: str | None, finish: str | None) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "finish_reason": finish}
            return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}

        def usage(result: CallResult) -> dict[str, int]:
            return {
                "prompt_tokens": result.input_tokens,
                "completion_tokens": result.output_tokens,
                "total_tokens": result.input_tokens + result.output_tokens,
            }

        if not body.get("stream"):
            result = await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(llm.run(call), llm_loop.loop)
            )
            answer = (
                {"message": {"role": "assistant", "content": result.text}}
                if chat
                else {"text": result.text}
            )
            return {
                **head,
                "object": kind,
                "choices": [{"index": 0, **answer, "finish_reason": result.finish_reason}],
                "usage": usage(result),
            }

        async def events() -> AsyncIterator[str]:
            chunk = {**head, "object": f"{kind}.chunk" if chat else kind}
            try:
                async for item in generate(call):
                    if isinstance(item, str):
                        yield _sse({**chunk, "choices": [choice(item, None)]})
                    else:
                        yield _sse({**chunk, "choices": [choice(None, item.finish_reason)]})
                        if usage_wanted:
                            yield _sse({**chunk, "choices": [], "usage": usage(item)})
            except ValueError as error:  # the backend refused the call after the headers went out
                yield _sse({"error": {"message": str(error), "type": "invalid_request_error"}})
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete(request, chat=False)

    return app


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 (a free port) from its own thread and event loop."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="openai-test-server", daemon=True
        )

    def __enter__(self) -> str:
        """Start; returns the API root, e.g. http://127.0.0.1:PORT/v1."""
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join()


@pytest.fixture(scope="module")
def server_url(backend_loop: LoopThread, cpu_llm: TransformersLLM) -> Iterator[str]:
    with ServerThread(openai_app(cpu_llm, backend_loop)) as url:
        yield url


@pytest.fixture(scope="module")
def client(
    async_runner: asyncio.Runner, server_url: str, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[OpenAIClientBackend]:
    monkeypatch_module.setenv("HERMES_TEST_OPENAI_KEY", API_KEY)
    backend = OpenAIClientBackend(
        "remote", base_url=server_url, model=MODEL, api_key_env="HERMES_TEST_OPENAI_KEY", capacity=4
    )
    async_runner.run(backend.load())
    yield backend
    async_runner.run(backend.unload())


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def ask(
    runner: asyncio.Runner, backend: OpenAIClientBackend, call: LLMCall
) -> tuple[CallResult, list[str]]:
    deltas: list[str] = []
    return runner.run(backend.run(call, deltas.append)), deltas


# ---------------------------------------------------------------------------------------------
# Generation through the server
# ---------------------------------------------------------------------------------------------

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_streams_what_the_model_generates(
    async_runner: asyncio.Runner,
    client: OpenAIClientBackend,
    backend_loop: LoopThread,
    cpu_llm: TransformersLLM,
) -> None:
    call = LLMCall(messages=CAPITAL, max_tokens=24)
    direct = backend_loop.run(cpu_llm.run(call))
    result, deltas = ask(async_runner, client, call)
    assert result.text == direct.text and "Paris" in result.text
    assert "".join(deltas) == result.text and len(deltas) > 3
    assert (result.input_tokens, result.output_tokens) == (
        direct.input_tokens,
        direct.output_tokens,
    )
    assert result.finish_reason == "stop"
    assert 0 < result.prefill_s <= result.seconds and result.decode_s > 0


def test_completions_respect_max_tokens_and_stop(
    async_runner: asyncio.Runner, client: OpenAIClientBackend
) -> None:
    cut, deltas = ask(async_runner, client, LLMCall(prompt="Once upon a time", max_tokens=6))
    assert cut.output_tokens == 6 and cut.finish_reason == "length"
    assert "".join(deltas) == cut.text
    stop = cut.text.split()[2]
    stopped, _ = ask(
        async_runner, client, LLMCall(prompt="Once upon a time", max_tokens=6, stop=[stop])
    )
    assert stopped.text == cut.text[: cut.text.index(stop)] and stopped.finish_reason == "stop"


def test_without_usage_the_chunks_are_counted(
    async_runner: asyncio.Runner, server_url: str
) -> None:
    backend = OpenAIClientBackend(
        "bare", base_url=server_url, model=MODEL_WITHOUT_USAGE, api_key=API_KEY
    )

    async def scenario() -> tuple[CallResult, list[str]]:
        await backend.load()
        deltas: list[str] = []
        try:
            return await backend.run(
                LLMCall(prompt="Once upon a time", max_tokens=5), deltas.append
            ), deltas
        finally:
            await backend.unload()

    result, deltas = async_runner.run(scenario())
    assert result.output_tokens == len(deltas) == 5 and result.input_tokens == 0


def test_concurrent_requests_are_batched_by_the_server(
    async_runner: asyncio.Runner, client: OpenAIClientBackend, cpu_llm: TransformersLLM
) -> None:
    cpu_llm.stats.max_batch = 0
    calls = [
        LLMCall(prompt=f"My favourite {thing} is", max_tokens=8)
        for thing in ("food", "book", "song")
    ]

    async def together() -> list[CallResult]:
        return list(await asyncio.gather(*(client.run(call) for call in calls)))

    results = async_runner.run(together())
    assert all(r.output_tokens == 8 for r in results)
    assert cpu_llm.stats.max_batch >= 2, "the server's model never batched the requests"


def test_the_test_server_speaks_the_openai_protocol(
    async_runner: asyncio.Runner, server_url: str
) -> None:
    async def with_the_sdk() -> tuple[str, str, str]:
        sdk = openai.AsyncOpenAI(base_url=server_url, api_key=API_KEY, max_retries=0)
        try:
            streamed = ""
            stream = await sdk.chat.completions.create(
                model=MODEL,
                messages=CAPITAL,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    streamed += chunk.choices[0].delta.content
            whole = await sdk.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=12)
            completion = await sdk.completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=4
            )
            assert whole.usage is not None and whole.usage.completion_tokens <= 12
            return streamed, whole.choices[0].message.content or "", completion.choices[0].text
        finally:
            await sdk.close()

    streamed, whole, completion = async_runner.run(with_the_sdk())
    assert streamed == whole and "Paris" in whole
    assert completion.strip()


# ---------------------------------------------------------------------------------------------
# Failures say what to do
# ---------------------------------------------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_down_fails_load_clearly() -> None:
    url = f"http://127.0.0.1:{_unused_port()}/v1"
    backend = OpenAIClientBackend("down", base_url=url, model=MODEL, timeout_s=5)
    with pytest.raises(
        ServerError, match=f"no OpenAI-compatible server answers at {url}.*start it"
    ):
        asyncio.run(backend.load())


def test_a_wrong_key_or_model_fails_load_clearly(server_url: str) -> None:
    wrong_key = OpenAIClientBackend("k", base_url=server_url, model=MODEL, api_key="nope")
    with pytest.raises(ServerError, match=r"HTTP 401 \(check api_key"):
        asyncio.run(wrong_key.load())
    wrong_model = OpenAIClientBackend("m", base_url=server_url, model="gpt-9", api_key=API_KEY)
    with pytest.raises(ServerError, match="does not serve model 'gpt-9'; it serves smollm2"):
        asyncio.run(wrong_model.load())
    unset = OpenAIClientBackend(
        "e", base_url=server_url, model=MODEL, api_key_env="HERMES_NO_SUCH_VAR"
    )
    with pytest.raises(ValueError, match="HERMES_NO_SUCH_VAR is not set"):
        asyncio.run(unset.load())


def test_server_refusals_are_raised_with_their_message(
    async_runner: asyncio.Runner, client: OpenAIClientBackend
) -> None:
    with pytest.raises(CallRefused, match=f"HTTP 400: .*at most {MAX_TOKENS_LIMIT}") as refused:
        async_runner.run(client.run(LLMCall(prompt="hi", max_tokens=MAX_TOKENS_LIMIT + 1)))
    assert refused.value.code is CallErrorCode.INVALID_CALL  # the caller's to fix: a 4xx
    with pytest.raises(ContextLengthExceeded, match="maximum context length") as overflow:
        async_runner.run(client.run(LLMCall(prompt="word " * MAX_PROMPT_CHARS)))
    assert overflow.value.result().error_code is CallErrorCode.CONTEXT_LENGTH_EXCEEDED
    with pytest.raises(ServerError, match=r"failed mid-stream.*no tokens"):
        async_runner.run(client.run(LLMCall(prompt="")))


def test_bad_calls_and_options_are_refused(
    async_runner: asyncio.Runner, client: OpenAIClientBackend
) -> None:
    with pytest.raises(ValueError, match="cannot run a tool call"):
        async_runner.run(client.run(ToolCall(tool="calculator")))
    with pytest.raises(RuntimeError, match="not loaded"):
        asyncio.run(
            OpenAIClientBackend("x", base_url="http://h/v1", model=MODEL).run(LLMCall(prompt="hi"))
        )
    with pytest.raises(ValueError, match="must start with http"):
        OpenAIClientBackend("x", base_url="localhost:8000/v1", model=MODEL)
    with pytest.raises(ValueError, match="not both"):
        OpenAIClientBackend("x", base_url="http://h/v1", model=MODEL, api_key="a", api_key_env="B")
    backend = make_backend(
        BackendSpec(name="r", type="openai", options={"base_url": "http://h/v1", "model": MODEL})
    )
    assert isinstance(backend, OpenAIClientBackend) and backend.capacity == 16


def test_events_skip_comments_and_stop_at_done() -> None:
    body = (
        b": keep-alive\n\nevent: message\nid: 1\n"
        b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n'
        b"data: [DONE]\n\n"
        b'data: {"choices": [{"index": 0, "text": "late"}]}\n\n'
    )

    async def parse() -> list[dict[str, Any]]:
        return [event async for event in _events(httpx.Response(200, content=body))]

    assert asyncio.run(parse()) == [{"choices": [{"index": 0, "text": "a"}]}]
    with pytest.raises(ServerError, match="invalid JSON"):
        asyncio.run(_collect(httpx.Response(200, content=b"data: {oops\n\n")))


async def _collect(response: httpx.Response) -> list[dict[str, Any]]:
    return [event async for event in _events(response)]
