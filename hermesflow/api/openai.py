"""The OpenAI-compatible routes of the gateway: `/v1/models` (and `/v1/models/{model}`),
`/v1/chat/completions`, `/v1/completions`, streamed or not.

Each request is one step of an application. Its id comes from the `X-Hermesflow-App` header or
else the request's `user` field, so every call of one program is ranked as one application by
the Gittins policy; the class (`X-Hermesflow-Class`, default `openai`) learns its PDGraph from
its runs, and `X-Hermesflow-Stage` names the step (default `chat` / `completion`). A request
without an application id is an application of one step: it gets a fresh id and is finished
right after its answer. The answer's `X-Hermesflow-App` header says which id was used.

`model` names the LLM backend (default `llm`). Unset `temperature` means greedy decoding. A
prompt longer than the backend takes is refused with OpenAI's 400 `context_length_exceeded`,
also when only the backend can count its tokens (its refusal comes back as the call's result,
before any text is streamed); with the extension field `truncation: "auto"` it keeps its end
instead. The extension field `attention` (`dense`, `minference`, `retrieval`) picks the
call's attention method on a backend that runs it. Errors use OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Response
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse
from pydantic import ValidationError

from hermesflow.api.errors import ApiError, check_result
from hermesflow.api.models.control import StepDelta, StepEvent
from hermesflow.api.models.openai import (
    APP_HEADER,
    CLASS_HEADER,
    STAGE_HEADER,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Model,
    ModelList,
    OpenAIError,
    Usage,
)
from hermesflow.api.scheduler_proxy import SchedulerProxy
from hermesflow.api.sse import SSE_HEADERS, sse
from hermesflow.backends.call_checks import LLM_BACKEND_TYPES
from hermesflow.backends.calls import CallResult, LLMCall
from hermesflow.client_records import MAX_APP_ID_CHARS, MAX_CLASS_CHARS, MAX_NAME_CHARS

OPEN_CLASS = "openai"
"""The application class of OpenAI-compatible requests that name none."""
DONE = "[DONE]"

_ERRORS = {
    400: {
        "model": OpenAIError,
        "description": "invalid request, or a prompt longer than the model takes "
        "(`context_length_exceeded`)",
    },
    401: {"model": OpenAIError, "description": "a missing or wrong bearer token"},
    404: {"model": OpenAIError, "description": "unknown model"},
    413: {"model": OpenAIError, "description": "a body over the server's limit"},
    422: {
        "model": OpenAIError,
        "description": "refused by the scheduler (e.g. a finished application)",
    },
    502: {"model": OpenAIError, "description": "the backend failed the call"},
}
_SSE = {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": "`stream: true`",
}


class OpenAIRoute(APIRoute):
    """Marks the routes whose errors are rendered in OpenAI's envelope (see `gateway`)."""


AppHeader = Annotated[
    str | None,
    Header(
        alias=APP_HEADER,
        min_length=1,
        max_length=MAX_APP_ID_CHARS,
        description="application id grouping requests",
    ),
]
ClassHeader = Annotated[
    str | None,
    Header(
        alias=CLASS_HEADER,
        min_length=1,
        max_length=MAX_CLASS_CHARS,
        description="application class (default openai)",
    ),
]
StageHeader = Annotated[
    str | None,
    Header(
        alias=STAGE_HEADER,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="stage of this step",
    ),
]


class Grouping:
    """The application a request belongs to, from its `X-Hermesflow-*` headers."""

    def __init__(
        self, app_id: AppHeader = None, app_class: ClassHeader = None, stage: StageHeader = None
    ) -> None:
        self.app_id, self.app_class, self.stage = app_id, app_class, stage

    def step(self, user: str | None, default_stage: str, model: str) -> _Step:
        step = _Step(self.app_id or user, self.app_class, self.stage or default_stage, model)
        # An id from `user` names a client session, not one run: after its application ended
        # (idle timeout), the next request starts the session's next application.
        step.reopen = self.app_id is None and user is not None
        return step


class _Step:
    """Where one OpenAI request runs: its application, class, stage and backend."""

    def __init__(self, app_id: str | None, app_class: str | None, stage: str, model: str) -> None:
        self.one_shot = app_id is None
        self.key = app_id or f"{OPEN_CLASS}-{uuid.uuid4().hex}"
        self.app_class = app_class or OPEN_CLASS
        self.stage = stage
        self.model = model
        self.reopen = False


def _usage(result: CallResult) -> Usage:
    return Usage(
        prompt_tokens=result.input_tokens,
        completion_tokens=result.output_tokens,
        total_tokens=result.input_tokens + result.output_tokens,
    )


def _check_result(result: CallResult) -> CallResult:
    """The result, or OpenAI's error for a call that did not run as sent: 400 for a call its
    backend refused (e.g. `context_length_exceeded`), 502 for one it failed."""
    check_result(result, refused_status=400)
    if result.finish_reason == "error":  # an error without a code: no LLM backend answers so
        raise ApiError(
            502,
            f"the backend failed the call: {result.error}",
            type="server_error",
            code="backend_error",
        )
    return result


def error_document(error: ApiError) -> dict[str, Any]:
    """OpenAI's error envelope for `error`."""
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


def _llm_call(build: Callable[[], LLMCall]) -> LLMCall:
    try:
        return build()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in error.errors()
        )
        raise ApiError(400, problems) from None


def openai_router(proxy: SchedulerProxy) -> APIRouter:
    """The OpenAI-compatible routes, bound to one scheduler."""
    router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)
    finishing: set[asyncio.Task] = set()

    async def llm_models() -> list[str]:
        return [b.name for b in await proxy.backends() if b.type in LLM_BACKEND_TYPES]

    async def check_model(model: str) -> None:
        names = await llm_models()
        if model not in names:
            raise ApiError(
                404,
                f"the model {model!r} does not exist; this server's models are its LLM backends: {names}",
                param="model",
                code="model_not_found",
            )

    async def finish(step: _Step) -> None:
        """End a one-step application (its answer is out); a refusal means it never opened."""
        if step.one_shot:
            try:
                await proxy.finish_app(step.key)
            except ApiError:
                pass

    def finish_later(step: _Step) -> None:
        # A stream's end (or the client leaving) cancels the response's scope, so the finish
        # runs as its own task.
        task = asyncio.get_running_loop().create_task(finish(step))
        finishing.add(task)
        task.add_done_callback(finishing.discard)

    async def run(step: _Step, call: LLMCall, response: Response) -> CallResult:
        response.headers[APP_HEADER] = step.key
        try:
            result = await proxy.submit_step(
                step.key, step.app_class, step.stage, call, step.model, reopen=step.reopen
            )
        finally:
            await finish(step)
        return _check_result(result)

    async def stream(
        step: _Step,
        call: LLMCall,
        render: Callable[[AsyncIterator[StepEvent]], AsyncIterator[bytes]],
    ) -> EventSourceResponse:
        try:
            events = await proxy.stream_step(
                step.key,
                step.app_class,
                step.stage,
                call,
                step.model,
                reopen=step.reopen,
                check=_check_result,
            )
        except ApiError:
            await finish(step)
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in render(events):
                    yield chunk
            except ApiError as error:
                yield sse(error_document(error))
            finally:
                if step.one_shot:
                    finish_later(step)
            yield sse(DONE)

        return EventSourceResponse(body(), headers={**SSE_HEADERS, APP_HEADER: step.key})

    @router.get(
        "/models", summary="The models (LLM backends) this server runs", response_model=ModelList
    )
    async def list_models() -> Any:
        return ModelList(data=[Model(id=name) for name in await llm_models()])

    @router.get(
        "/models/{model:path}",
        summary="One model (LLM backend) this server runs",
        response_model=Model,
        responses={404: _ERRORS[404]},
    )
    async def retrieve_model(model: str) -> Any:
        """What OpenAI clients' `models.retrieve` reads; a name that is not one of this
        server's LLM backends is OpenAI's 404 `model_not_found`."""
        await check_model(model)
        return Model(id=model)

    async def answer(
        body: ChatCompletionRequest | CompletionRequest,
        call: LLMCall,
        step: _Step,
        renderer: _ChatStream | _CompletionStream,
        reply: Callable[[CallResult], Any],
        response: Response,
    ) -> Any:
        if body.stream:
            return await stream(step, call, renderer.render)
        return reply(await run(step, call, response))

    @router.post(
        "/chat/completions",
        summary="Chat completion (OpenAI-compatible)",
        response_model=ChatCompletion,
        responses={**_ERRORS, 200: _SSE},
    )
    async def chat_completions(
        body: ChatCompletionRequest, response: Response, grouping: Annotated[Grouping, Depends()]
    ) -> Any:
        await check_model(body.model)
        call = _llm_call(
            lambda: LLMCall(
                messages=[m.to_chat_message() for m in body.messages],
                **_generation_options(body, body.max_completion_tokens or body.max_tokens),
            )
        )
        head = _reply_head("chatcmpl", body.model)

        def reply(result: CallResult) -> ChatCompletion:
            message = ChatMessageOut(content=result.text)
            choice = ChatChoice(message=message, finish_reason=result.finish_reason)
            return ChatCompletion(**head, choices=[choice], usage=_usage(result))

        step = grouping.step(body.user, "chat", body.model)
        return await answer(
            body, call, step, _ChatStream(head, body.include_usage), reply, response
        )

    @router.post(
        "/completions",
        summary="Text completion (OpenAI-compatible)",
        response_model=Completion,
        responses={**_ERRORS, 200: _SSE},
    )
    async def completions(
        body: CompletionRequest, response: Response, grouping: Annotated[Grouping, Depends()]
    ) -> Any:
        await check_model(body.model)
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        call = _llm_call(
            lambda: LLMCall(prompt=prompt, **_generation_options(body, body.max_tokens))
        )
        head = _reply_head("cmpl", body.model)

        def reply(result: CallResult) -> Completion:
            choice = CompletionChoice(text=result.text, finish_reason=result.finish_reason)
            return Completion(**head, choices=[choice], usage=_usage(result))

        step = grouping.step(body.user, "completion", body.model)
        return await answer(
            body, call, step, _CompletionStream(head, body.include_usage), reply, response
        )

    return router


def _reply_head(prefix: str, model: str) -> dict[str, Any]:
    """The fields every chunk of one reply shares: its id, creation time and model."""
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def _generation_options(
    body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "stop": body.stop_list,
        "truncation": body.truncation,
        "attention": body.attention,
    }
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if body.temperature is not None:
        options["temperature"] = body.temperature
    return options


class _ChatStream:
    """Renders a step's stream as `chat.completion.chunk` events: a role chunk, one chunk per
    text delta, a chunk with the finish reason, and (with `include_usage`) a usage chunk."""

    def __init__(self, head: dict[str, Any], include_usage: bool) -> None:
        self.head, self.include_usage = head, include_usage

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(**self.head, choices=choices, usage=usage)
        document = chunk.model_dump(mode="json")
        for choice in document["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        if not self.include_usage:
            document.pop("usage")
        return sse(document)

    async def render(self, events: AsyncIterator[StepEvent]) -> AsyncIterator[bytes]:
        yield self._chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
        async for event in events:
            if isinstance(event, StepDelta):
                if event.delta:
                    yield self._chunk([ChatChunkChoice(delta=ChatDelta(content=event.delta))])
                continue
            result = _check_result(event.result)
            yield self._chunk(
                [ChatChunkChoice(delta=ChatDelta(), finish_reason=result.finish_reason)]
            )
            if self.include_usage:
                yield self._chunk([], _usage(result))


class _CompletionStream:
    """Renders a step's stream as `text_completion` chunks (same id), the last one with the
    finish reason, then (with `include_usage`) a usage chunk."""

    def __init__(self, head: dict[str, Any], include_usage: bool) -> None:
        self.head, self.include_usage = head, include_usage

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        chunk = Completion(**self.head, choices=choices, usage=usage)
        document = chunk.model_dump(mode="json")
        if not self.include_usage:
            document.pop("usage")
        return sse(document)

    async def render(self, events: AsyncIterator[StepEvent]) -> AsyncIterator[bytes]:
        async for event in events:
            if isinstance(event, StepDelta):
                if event.delta:
                    yield self._chunk([CompletionChoice(text=event.delta)])
                continue
            result = _check_result(event.result)
            yield self._chunk([CompletionChoice(text="", finish_reason=result.finish_reason)])
            if self.include_usage:
                yield self._chunk([], _usage(result))
