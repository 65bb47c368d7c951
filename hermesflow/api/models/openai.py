"""The bodies of the OpenAI-compatible API (`hermesflow.api.openai`: `/v1/models`,
`/v1/chat/completions`, `/v1/completions`): the subset of OpenAI's request fields Hermesflow
honours, and the response and stream-chunk shapes OpenAI clients parse. Request models accept
(and ignore) the OpenAI fields they do not use, so a stock client's extra parameters do not
fail a request. Pydantic only, like every module of `hermesflow.api.models`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from hermesflow.backends.calls import AttentionMethod, ChatMessage, Truncation
from hermesflow.client_records import Name

APP_HEADER = "X-Hermesflow-App"
"""OpenAI-compatible requests carrying the same application id are ranked as one application."""
CLASS_HEADER = "X-Hermesflow-Class"
"""The application class of such requests (default `openai`); each class learns its own PDGraph."""
STAGE_HEADER = "X-Hermesflow-Stage"
"""The stage name of one request in its class's graph (default `chat` or `completion`)."""

MAX_USER_CHARS = 120
"""Longest OpenAI `user`: it names a session whose later applications are `user#2`, `user#3`,
..., which must fit an application id."""


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error envelope, returned by the OpenAI-compatible routes."""

    error: OpenAIErrorBody


class TextPart(BaseModel):
    """A text part of a message's content (`{"type": "text", "text": ...}`)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class RequestMessage(BaseModel):
    """A chat message as OpenAI clients send it; `developer` is treated as `system`."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def to_chat_message(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """The generation parameters both OpenAI endpoints share. Unset `temperature` means greedy
    decoding (Hermesflow's default, so a replayed call gives the same text)."""

    model_config = ConfigDict(extra="ignore")

    model: Name = Field(default="llm", description="the LLM backend to run on (see GET /v1/models)")
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1, le=1, description="only one choice per request")] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str | None, Field(max_length=MAX_USER_CHARS)] = Field(
        default=None, description=f"application id when no {APP_HEADER} header is sent"
    )
    truncation: Truncation = Field(
        default=Truncation.DISABLED,
        description="Hermesflow's extension, named as in OpenAI's Responses API: a prompt longer "
        "than the model takes is refused with 400 `context_length_exceeded` (`disabled`, the "
        "default) or keeps its last tokens that fit (`auto`)",
    )
    attention: AttentionMethod | None = Field(
        default=None,
        description="Hermesflow's extension: how the prompt and the generation attend — `dense`, "
        "`minference` (sparse prefill) or `retrieval` (retrieval over the KV cache while "
        "decoding); default: the backend's `attention` option",
    )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[RequestMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None


class CompletionRequest(_GenerationRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="one prompt (a list holding one string is accepted too)"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: FinishReason
    logprobs: None = None


class _Reply(BaseModel):
    """What every reply and stream chunk of one request shares."""

    id: str
    created: int = Field(description="Unix time")
    model: str


class ChatCompletion(_Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class Completion(_Reply):
    """A text completion; stream chunks have the same shape (`usage` only in the last one)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "hermesflow"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
