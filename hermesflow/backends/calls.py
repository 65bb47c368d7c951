"""What a step asks of a backend, and what comes back: the one vocabulary shared by the
application programs, the scheduler, the backend actors and the HTTP API.

A step of an application issues one or more calls. An `LLMCall` goes to a language-model
backend (the CPU model, vLLM, any OpenAI-compatible server); a `ToolCall` goes to a tool backend
(Python functions, code execution, search). Both are JSON-serialisable, so a call can be stored
before it is dispatched and replayed after a crash, and a `CallResult` stored when it finishes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChatMessage(BaseModel):
    """One chat message, as in the OpenAI chat API."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class LLMCall(BaseModel):
    """A generation: either chat `messages` (rendered with the model's chat template) or a raw
    `prompt`. `temperature` 0 is greedy decoding, so a replayed call gives the same text."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["llm"] = "llm"
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    stop: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_input(self) -> LLMCall:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' (chat) or 'prompt' (completion)")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' is empty; give at least one message")
        return self


class ToolCall(BaseModel):
    """A call of the tool `tool` of a tool backend with JSON arguments `args`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tool"] = "tool"
    tool: Annotated[str, Field(min_length=1)]
    args: dict[str, Any] = Field(default_factory=dict)
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0


Call = Annotated[LLMCall | ToolCall, Field(discriminator="kind")]


class CallResult(BaseModel):
    """The outcome of one call.

    `text` is the generation (LLM) or the tool's output rendered as text; `value` the tool's
    JSON result. `seconds` is the backend's own time for the call, `prefill_s`/`decode_s` split
    it for LLM calls (what the cost model is calibrated from). `error` is set, and `text` empty,
    when the tool raised or timed out: a failed tool call is an observation the program reacts
    to (a ReAct agent reads the error), not a crash of the application.
    """

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    value: Any = None
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    batch_size: int = 1
    finish_reason: Literal["stop", "length", "error"] = "stop"
    error: str | None = None
