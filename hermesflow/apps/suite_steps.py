"""What the four reference programs share: backend and tool names, call builders, readers of
results that never trust the model or the tool, and the size estimates their priors use.

Programs stay pure functions of their inputs and results, so everything here is deterministic.
Priors are *declared* demand, corrected by the refit from real observations; the estimates here
(4 characters per token, chat-template overhead, how far a 135M model writes towards its
`max_tokens`, tool times — checked against a few real runs of SmolLM2-135M on CPU) are what a
class is assumed to cost before it has any history.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from pydantic import BaseModel

from hermesflow.apps.program import StepPlan
from hermesflow.backends.calls import CallResult, ChatMessage, LLMCall, ToolCall
from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import LLM_BACKEND, Stage, StageKind

# -- backends and tools of the suite (the names of `suite.suite_backends`) ---------------------

SEARCH_BACKEND = "search"
CODE_BACKEND = "code"
TOOLS_BACKEND = "tools"

SEARCH_TOOL = "search"
RUN_PYTHON_TOOL = "run_python"
CALCULATOR_TOOL = "calculator"
LOAD_DOCUMENT_TOOL = "load_document"

# -- size estimates for priors ------------------------------------------------------------------

CHARS_PER_TOKEN = 4
"""The usual rough rule for English text with a BPE tokenizer."""

CHAT_TOKENS_PER_MESSAGE = 5
"""Role markers and separators the chat template adds around each message (ChatML)."""

CHAT_TOKENS_PER_PROMPT = 3
"""The assistant header the template appends to start the reply."""

LONG_REPLY_SHARE_OF_CAP = (0.5, 0.75, 1.0, 1.0)
"""Generated length as a share of `max_tokens` for code and multi-sentence text: a 135M model
more often runs to the cap than stops by itself (code replies: 74-80 of 96 tokens seen)."""

SHORT_REPLY_SHARE_OF_CAP = (0.25, 0.5, 0.75, 1.0)
"""The same for a one-line reply (an action, a verdict, a one-sentence summary): the model
often stops after its sentence, sometimes runs on (22-33 of 48 tokens seen)."""

SEARCH_EXEC_S = (0.02, 0.03, 0.05, 0.1)
"""One query: embed it with a small sentence encoder on CPU and look it up in the index
(13-65 ms seen on 2 CPU cores)."""

CALCULATOR_EXEC_S = (0.01, 0.02, 0.05)
"""A call of a pure-Python tool in the tool pool (7-20 ms seen on 2 CPU cores): dispatch to
a worker process, not the arithmetic."""

LOAD_DOCUMENT_EXEC_S = (0.01, 0.02, 0.05)
"""Read a shipped document and cut it into chunks, in the tool pool (about 20 ms seen)."""

RUN_PYTHON_EXEC_S = (0.2, 0.3, 0.3, 0.5, 1.0)
"""Start a sandboxed interpreter, import the solution, run a few asserts (0.26-0.34 s seen);
the tail is slow starts and the odd endless loop until the timeout."""


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_input_tokens(call: LLMCall) -> int:
    """Prompt tokens of an LLM call: its text by the 4-characters rule plus template overhead."""
    if call.messages is None:
        return estimate_tokens(call.prompt or "")
    return CHAT_TOKENS_PER_PROMPT + sum(
        CHAT_TOKENS_PER_MESSAGE + estimate_tokens(m.content) for m in call.messages
    )


def input_tokens_prior(calls: Iterable[LLMCall]) -> Empirical:
    return Empirical.of([estimate_input_tokens(c) for c in calls], unit="tokens")


def output_tokens_prior(max_tokens: int, shares: Sequence[float]) -> Empirical:
    return Empirical.of([max(1, round(s * max_tokens)) for s in shares], unit="tokens")


def seconds_prior(samples: Sequence[float]) -> Empirical:
    return Empirical.of(samples, unit="s")


def counts_prior(samples: Iterable[int], unit: str) -> Empirical:
    return Empirical.of(list(samples), unit=unit)


def llm_stage(
    next: dict[str, float],
    input_tokens: Empirical,
    max_tokens: int,
    *,
    short_reply: bool,
    fanout: Empirical | None = None,
    visits: Empirical | None = None,
) -> Stage:
    """A stage on the shared LLM engine whose calls generate up to `max_tokens`, one line
    (`short_reply`) or more."""
    return Stage(
        kind=StageKind.LLM,
        backend=LLM_BACKEND,
        next=next,
        input_tokens=input_tokens,
        output_tokens=output_tokens_prior(
            max_tokens, SHORT_REPLY_SHARE_OF_CAP if short_reply else LONG_REPLY_SHARE_OF_CAP
        ),
        fanout=fanout,
        visits=visits,
    )


def tool_stage(
    kind: StageKind,
    backend: str,
    next: dict[str, float],
    exec_s: Sequence[float],
    *,
    fanout: Empirical | None = None,
    visits: Empirical | None = None,
) -> Stage:
    """A stage of tool, search or code calls, each taking one of the `exec_s` seconds."""
    return Stage(
        kind=kind,
        backend=backend,
        next=next,
        exec_s=seconds_prior(exec_s),
        fanout=fanout,
        visits=visits,
    )


# -- weighted choices shared by sample_inputs and priors ----------------------------------------


def draw_weighted(rng: np.random.Generator, weights: Mapping[int, int]) -> int:
    """One value of `weights` (value -> relative integer weight)."""
    values = list(weights)
    probs = np.array([weights[v] for v in values], dtype=float)
    return int(values[int(rng.choice(len(values), p=probs / probs.sum()))])


def weighted_population(weights: Mapping[int, int]) -> list[int]:
    """Every value repeated by its weight: the same distribution as `draw_weighted`, as samples."""
    return [value for value, weight in weights.items() for _ in range(weight)]


# -- building calls ---------------------------------------------------------------------------


def chat(system: str, user: str, max_tokens: int) -> LLMCall:
    """A greedy chat call with a system and a user message."""
    return LLMCall(
        messages=[
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content=user),
        ],
        max_tokens=max_tokens,
    )


def search_call(query: str, k: int) -> ToolCall:
    return ToolCall(tool=SEARCH_TOOL, args={"query": query, "k": k})


def clip(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters, at a word boundary where there is one."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip() + "..."


# -- checking what the scheduler hands over ----------------------------------------------------

InputsT = TypeVar("InputsT", bound=BaseModel)


def expect_inputs(inputs: BaseModel, model: type[InputsT], app_class: str) -> InputsT:
    """The program's own inputs model; anything else was not validated by `validate_inputs`."""
    if not isinstance(inputs, model):
        raise TypeError(
            f"{app_class}: inputs are a {type(inputs).__name__}, not {model.__name__}; validate "
            "them with the program's validate_inputs first"
        )
    return inputs


# -- reading results --------------------------------------------------------------------------


def check_results(app_class: str, step: StepPlan, results: Sequence[CallResult]) -> None:
    """The scheduler hands one result per call, in call order; anything else is its bug."""
    if len(results) != len(step.calls):
        raise ValueError(
            f"{app_class}: step {step.stage!r} issued {len(step.calls)} call(s) but got "
            f"{len(results)} result(s); pass exactly one result per call, in call order"
        )


def unknown_stage(app_class: str, stage: str, known: Iterable[str]) -> ValueError:
    return ValueError(
        f"{app_class}: no step {stage!r} in this program (its stages: {sorted(known)}); was the "
        "run started by another application class?"
    )


def failed(result: CallResult) -> bool:
    return result.error is not None or result.finish_reason == "error"


def generated_text(result: CallResult) -> str:
    """The model's text, or "" when the call failed."""
    return "" if failed(result) else result.text.strip()


def tool_observation(result: CallResult, max_chars: int) -> str:
    """A tool result as text for a prompt: its output, or the error the tool reported."""
    if failed(result):
        return clip(f"Error: {result.error or 'the tool failed'}", max_chars)
    if result.text.strip():
        return clip(result.text, max_chars)
    value = (
        "" if result.value is None else json.dumps(result.value, ensure_ascii=False, default=str)
    )
    return clip(value, max_chars) or "(no output)"


def search_hits(result: CallResult) -> list[dict[str, str]]:
    """The passages of a search result that have the documented shape; others are dropped."""
    if failed(result) or not isinstance(result.value, list):
        return []
    return [
        {"id": str(hit["id"]), "title": str(hit.get("title", "")), "text": str(hit["text"])}
        for hit in result.value
        if isinstance(hit, dict) and "id" in hit and isinstance(hit.get("text"), str)
    ]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: split after ., ! or ? followed by space and a capital or digit."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
