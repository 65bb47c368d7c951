"""The request and response bodies of the Hermesflow HTTP API (`hermesflow.gateway`).

Pydantic only — no FastAPI, no Ray — so HTTP clients (the CLI's `submit`, the Airflow hook and
triggers) validate what they send and read with the same models the server declares in its
OpenAPI schema. Three groups live here:

* the **control API** (`/v1/apps`, `/v1/backends`, `/v1/classes`, ...): submit application
  runs and single steps (held until their result is in, or named and read back later), read
  their state and event stream, record how an application's tasks ended, finish or fail an
  open application, declare an open class's PDGraph;
* the **monitoring** views of the control API (`GET /v1/apps`, `/v1/classes`, `/v1/act`): the
  live applications in the policy's order with their ranks and remaining-demand estimates, the
  classes, and the completion-time history of finished runs, for dashboards (the Airflow page);
* the **OpenAI-compatible API** (`/v1/models`, `/v1/chat/completions`, `/v1/completions`): the
  subset of OpenAI's request fields Hermesflow honours, and the response and stream-chunk
  shapes OpenAI clients parse. Request models accept (and ignore) the OpenAI fields they do not
  use, so a stock client's extra parameters do not fail a request.

Names a client creates (application ids, step ids, class, stage and backend names, the OpenAI
`user`) have fixed length limits (`MAX_*_CHARS`): they are keys of the store's tables and of
Airflow's ids. The limits an operator may change (body size, labels) are `ApiLimits` settings
(`hermesflow.config`), checked by the gateway.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hermesflow.backends.calls import Call, CallResult, ChatMessage, Truncation

__all__ = [
    "APP_HEADER",
    "CLASS_HEADER",
    "STAGE_HEADER",
    "ActHistory",
    "ActPoint",
    "ActSeries",
    "ActTotal",
    "AppEvent",
    "AppSubmission",
    "AppView",
    "BackendView",
    "CallResult",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ClassDeclaration",
    "ClassSummary",
    "Completion",
    "CompletionRequest",
    "FinishRequest",
    "LiveAppView",
    "ModelList",
    "OpenAIError",
    "RemainingEstimate",
    "SchedulerStats",
    "StepSubmission",
    "StepView",
    "TaskOutcome",
    "TaskState",
]

APP_HEADER = "X-Hermesflow-App"
"""OpenAI-compatible requests carrying the same application id are ranked as one application."""
CLASS_HEADER = "X-Hermesflow-Class"
"""The application class of such requests (default `openai`); each class learns its own PDGraph."""
STAGE_HEADER = "X-Hermesflow-Stage"
"""The stage name of one request in its class's graph (default `chat` or `completion`)."""

TERMINAL_PHASES = frozenset({"finished", "failed"})
"""Phases an application never leaves; a client stops waiting once it sees one."""
TERMINAL_STEP_STATES = frozenset({"done", "failed"})
"""States a step never leaves (a failed step is re-submitted as a new attempt, not resumed)."""

JSON = dict[str, Any]

MAX_APP_ID_CHARS = 128
"""Longest application id: the store's run key column."""
MAX_STEP_ID_CHARS = 200
"""Longest client-named step id: the store's step id column."""
MAX_CLASS_CHARS = 250
"""Longest application-class name: Airflow's dag_id limit (a DAG is an application class)."""
MAX_NAME_CHARS = 200
"""Longest stage, backend or model name."""
MAX_USER_CHARS = 120
"""Longest OpenAI `user`: it names a session whose later applications are `user#2`, `user#3`,
..., which must fit an application id."""

AppClassName = Annotated[str, Field(min_length=1, max_length=MAX_CLASS_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


# -- control API ---------------------------------------------------------------------------------

_LABELS = (
    "the client's own key-value notes on the run, stored with it (limits: `ApiLimits`, "
    "HERMES_API_MAX_LABELS and friends)"
)


class AppSubmission(BaseModel):
    """A run of a program class. Submitting the same `app_id` again returns the same run."""

    model_config = ConfigDict(extra="forbid")

    app_class: AppClassName = Field(description="a program class the scheduler runs")
    inputs: JSON = Field(
        default_factory=dict, description="the class's inputs (validated by its program)"
    )
    app_id: Annotated[str | None, Field(min_length=1, max_length=MAX_APP_ID_CHARS)] = Field(
        default=None, description="client-chosen id that makes the submission idempotent"
    )
    labels: JSON | None = Field(default=None, description=_LABELS)


class AppView(BaseModel):
    """One application run as the scheduler sees it (live) or the store recorded it (ended)."""

    app_id: str
    app_class: str
    phase: Literal["admitted", "running", "finished", "failed"]
    submitted_at: float = Field(description="Unix time of admission")
    finished_at: float | None = None
    act_s: float | None = Field(default=None, description="application completion time, seconds")
    cold_start_s: float | None = Field(
        default=None, description="seconds spent waiting for cold backends"
    )
    attained_s: float | None = Field(default=None, description="backend-seconds of service so far")
    stage: str | None = None
    step: int | None = None
    result: Any = None
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.phase in TERMINAL_PHASES


class AppEvent(BaseModel):
    """One scheduling decision about a run (admit, step, dispatch, complete, retry, finish, fail)."""

    id: int
    at_s: float
    kind: str
    backend: str | None = None
    detail: JSON | None = None


class StepSubmission(BaseModel):
    """One step of an open application: its call runs on `backend` (default: `llm` for an LLM
    call) and is ranked with the application's other steps. The first step opens the
    application; `POST /v1/apps/{app_id}/finish` closes it."""

    model_config = ConfigDict(extra="forbid")

    app_class: AppClassName = Field(description="an open class (not a program class)")
    stage: Name = Field(description="the step's stage in the class's graph")
    backend: Name | None = None
    call: Call
    labels: JSON | None = Field(default=None, description=_LABELS)
    stream: bool = Field(default=False, description="answer with Server-Sent Events of text deltas")


class StepView(BaseModel):
    """One client-named step of an open application (`PUT /v1/apps/{app_id}/steps/{step_id}`),
    read from the store, so it survives a scheduler restart and the end of its application.

    `attempt` counts submissions of this `step_id` that ran: a failed step submitted again
    becomes attempt 2, and so on. `result` is set once the step is done (a failed tool call also
    has one, with its `error`); `error` says why a step failed.
    """

    app_id: str
    step_id: str
    stage: str
    state: Literal["queued", "running", "done", "failed"]
    attempt: int = Field(ge=1)
    result: CallResult | None = None
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STEP_STATES


class ClassDeclaration(BaseModel):
    """The answer to declaring an open class's PDGraph (`PUT /v1/classes/{name}/graph`).

    `changed` is false when the class's last declared graph had the same structure (stages,
    kinds, backends, entry and successors): then nothing was stored and the distributions the
    scheduler learned from the class's runs are kept. `version` is the store's snapshot version
    of the declaration in force (the new one, or the earlier one of the same structure).
    """

    name: str
    version: int = Field(ge=1)
    changed: bool


class TaskState(StrEnum):
    """The Airflow task states a client reports (Airflow's own names, recorded verbatim)."""

    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    UP_FOR_RETRY = "up_for_retry"
    UPSTREAM_FAILED = "upstream_failed"


class TaskOutcome(BaseModel):
    """How one try of one task of an application ended (`POST /v1/apps/{app_id}/tasks`).

    Airflow reports every task of a DAG run, native Python tasks included, so the store holds the
    whole run, not only the steps Hermesflow served; the application need not have a step yet.
    Reporting the same (task, map index, try, state) again records nothing: the answer echoes
    the outcome with `recorded` false, so a retried report is harmless.
    """

    model_config = ConfigDict(extra="forbid")

    app_class: AppClassName = Field(description="the application's class (dag_id)")
    task_id: Annotated[str, Field(min_length=1, max_length=250)]
    map_index: Annotated[int, Field(ge=-1, description="-1 for a task that is not mapped")] = -1
    try_number: Annotated[int, Field(ge=1)]
    state: TaskState
    duration_s: Annotated[float | None, Field(ge=0)] = None
    step_id: Annotated[str | None, Field(min_length=1, max_length=MAX_STEP_ID_CHARS)] = Field(
        default=None, description="the Hermesflow step this task ran, if any"
    )
    recorded: bool | None = Field(
        default=None,
        description="in answers: false when this outcome had been recorded before; ignored in requests",
    )


class FinishRequest(BaseModel):
    """The optional body of `POST /v1/apps/{app_id}/finish`: how the application ended.

    `failed` ends the application at once, even with steps still running (they fail with it), and
    stores it FAILED with `error`; `finished` (the default) needs its steps to be over.
    """

    model_config = ConfigDict(extra="forbid")

    state: Literal["finished", "failed"] = "finished"
    error: Annotated[str | None, Field(max_length=10_000)] = None


class BackendView(BaseModel):
    """One backend's lifecycle phase, capacity and load."""

    name: str
    type: str
    phase: Literal["cold", "warming", "warm"]
    pinned: bool = Field(
        default=False, description="kept warm from the start (`--warm`); `/readyz` waits for it"
    )
    warmup_s: float
    capacity: int
    in_flight: int
    queued: int
    last_error: str | None = None
    warm_since: float | None = Field(
        default=None, description="Unix time it became warm; None while no actor is loaded"
    )
    warmups: int = Field(
        default=0, ge=0, description="completed warm-ups since the scheduler started"
    )
    last_warmup_s: float | None = Field(
        default=None, description="measured seconds of the last completed warm-up"
    )


class SchedulerStats(BaseModel):
    """The scheduler's counters; `overhead_ms_per_step` is its own time per completed call."""

    policy: str
    planner: str
    live_apps: int
    completed_calls: int
    busy_s: float
    overhead_ms_per_step: float
    classes: list[str]
    ray_dashboard_url: str | None = Field(
        default=None, description="the Ray dashboard of the scheduler's cluster, if it runs one"
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


# -- monitoring ----------------------------------------------------------------------------------

MAX_LIVE_APPS = 1000
"""Most live applications one `GET /v1/apps` answers."""
MIN_ACT_WINDOW_S = 60.0
MAX_ACT_WINDOW_S = 30 * 86400.0
MAX_ACT_BUCKETS = 200
MAX_CLASS_FILTER = MAX_CLASS_CHARS
"""Longest application-class name a monitoring filter accepts."""


class RemainingEstimate(BaseModel):
    """Remaining backend-seconds of a live application, from its class's PDGraph conditioned on
    where the application is now: the mean and the central `level` interval of the Monte-Carlo
    draws the scheduler ranks with (`low`/`high` are the (1 - level)/2 and (1 + level)/2
    quantiles: the 10th and 90th percentiles at the default 0.8)."""

    mean: float = Field(ge=0)
    low: float = Field(ge=0)
    high: float = Field(ge=0)
    level: float = Field(default=0.8, gt=0, lt=1)


class LiveAppView(BaseModel):
    """A live application (admitted or running) as the scheduler ranks it (`GET /v1/apps`).

    `rank` is the policy's key for the application — smaller is served first; the Gittins index
    of its remaining demand for the Hermes policies. With calls waiting it is the smallest key
    among them, the value their backend's queue orders them by; with none waiting, the key the
    policy would give its next call queued now. `position` is its place in that order among all
    live applications (1 = served next), also when the list is filtered by class; each backend
    serves its own queue in this order.
    """

    app_id: str
    app_class: str
    phase: Literal["admitted", "running"]
    stage: str | None = None
    backend: str | None = Field(default=None, description="backend of its current step")
    submitted_at: float = Field(description="Unix time of admission")
    elapsed_s: float = Field(description="wall seconds since admission")
    attained_s: float = Field(description="backend-seconds of service so far")
    policy: str = Field(description="the scheduler's policy")
    rank: float | None = None
    position: int = Field(ge=1)
    remaining_s: RemainingEstimate | None = None
    queued_calls: int = Field(ge=0)
    running_calls: int = Field(ge=0)


class ClassSummary(BaseModel):
    """An application class the scheduler ranks (`GET /v1/classes`); its graph is at
    `GET /v1/classes/{name}/graph`. `version` and `source` are the stored snapshot in force
    (`prior`, `open-prior`, `declared`, `refit`); `finished_runs` counts the class's runs that
    finished (not failed), in the store."""

    name: str
    kind: Literal["program", "open"]
    version: int | None = None
    source: str | None = None
    live_apps: int = Field(ge=0)
    finished_runs: int = Field(ge=0)


class ActPoint(BaseModel):
    """Finished runs of one policy whose completion fell in [start, start + bucket_s)."""

    start: float = Field(description="Unix time the bucket starts")
    runs: int = Field(ge=0)
    mean_s: float | None = None
    p95_s: float | None = None


class ActSeries(BaseModel):
    policy: str
    points: list[ActPoint]


class ActTotal(BaseModel):
    """One policy's finished runs over the whole window."""

    policy: str
    runs: int = Field(ge=0)
    mean_s: float | None = None
    p95_s: float | None = None


class ActHistory(BaseModel):
    """Application completion times (ACT: admission to finish) of the runs that finished in the
    last `window_s` seconds, from the store, per policy: `buckets` equal time buckets, oldest
    first, and the totals. The 95th percentile is linearly interpolated."""

    window_s: float
    bucket_s: float
    series: list[ActSeries]
    totals: list[ActTotal]


# -- OpenAI-compatible API -----------------------------------------------------------------------


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
