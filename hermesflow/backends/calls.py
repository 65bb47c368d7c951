"""What a step asks of a backend, and what comes back: the one vocabulary shared by the
application programs, the scheduler, the backend actors and the HTTP API.

A step of an application issues one or more calls. An `LLMCall` goes to a language-model
backend (the CPU model, vLLM, any OpenAI-compatible server); a `ToolCall` goes to a tool backend
(Python functions, code execution, search). Both are JSON-serialisable, so a call can be stored
before it is dispatched and replayed after a crash, and a `CallResult` stored when it finishes.

A backend that cannot run a call as sent — an LLM call on a tool backend, an unknown tool,
arguments that do not fit the tool, a prompt longer than the model takes — raises
`CallRefused`: the caller's mistake, told apart from the backend failing (its own fault) by the
result's `error_code`, so the HTTP API answers the one with a 4xx and the other with a 502.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hermesflow.pdgraph.model import AttentionMethod


class CallKind(StrEnum):
    """What a call asks for, and so which backends can serve it (the calls' `kind` field)."""

    LLM = "llm"
    TOOL = "tool"


class Truncation(StrEnum):
    """What an LLM backend does with a prompt longer than it takes (the name and values of the
    `truncation` parameter of OpenAI's Responses API)."""

    DISABLED = "disabled"
    """Refuse the call (`context_length_exceeded`): nothing is cut without the caller asking."""
    AUTO = "auto"
    """Keep the end of the prompt, as much as fits: the end of a conversation is what its next
    turn depends on."""


class CallErrorCode(StrEnum):
    """Why a call ended without a result. The values are OpenAI's error codes where OpenAI has
    one. A call that failed with no code may succeed when tried again (a tool that timed out, a
    worker that died)."""

    INVALID_CALL = "invalid_call"
    """Refused: the call does not fit its backend (kind, tool name, arguments)."""
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    """Refused: the prompt (plus the tokens to generate) does not fit the model."""
    BACKEND_ERROR = "backend_error"
    """The backend failed: its fault, not the caller's; the details are in the server's log."""
    TOOL_ERROR = "tool_error"
    """The tool itself raised for these arguments (or returned what is not JSON): a result its
    program reads, like any observation; the same call fails the same way again."""

    @property
    def refused(self) -> bool:
        """Whether the caller must change the call (a 4xx), rather than the server be fixed."""
        return self in (CallErrorCode.INVALID_CALL, CallErrorCode.CONTEXT_LENGTH_EXCEEDED)

    @property
    def deterministic(self) -> bool:
        """Whether sending the same call again must fail again: a retry cannot help."""
        return self is not CallErrorCode.BACKEND_ERROR


class CallRefused(ValueError):
    """A backend refuses a call as sent; the message says what to change. The backend actor
    answers it as a result whose `error_code` says so (`result`), not as a crash."""

    code: ClassVar[CallErrorCode] = CallErrorCode.INVALID_CALL

    def result(self) -> CallResult:
        return CallResult(finish_reason="error", error=str(self), error_code=self.code)


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
    truncation: Truncation = Field(
        default=Truncation.DISABLED,
        description="a prompt longer than the backend takes: refused (disabled) or cut to its end (auto)",
    )
    attention: AttentionMethod | None = Field(
        default=None,
        # left out of the JSON while unset, so a call stores as it did before the field existed
        # (a stored call is compared with a client's resent one)
        exclude_if=lambda value: value is None,
        description="how the prompt and generation attend (default: the backend's `attention`)",
    )

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
    to (a ReAct agent reads the error), not a crash of the application. `error_code` is set
    when the call did not run as sent: refused by its backend (the caller's mistake) or failed
    in it (the backend's fault); see `CallErrorCode`. `attention` is the method an LLM call
    actually ran (a `minference` call shorter than the break-even length runs `dense`), so the
    cost model and the PDGraphs see what each method saves.
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
    attention: AttentionMethod | None = None
    error: str | None = None
    error_code: CallErrorCode | None = None
