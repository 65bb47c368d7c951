"""A Semantic-Variable program with a tool and a loop: draft a text, then shorten it until a
word count says it is short enough.

    draft (llm) ─▶ word_count (tool) ─▶ [ shorten (llm) ─▶ word_count_2 (tool) ─▶ short_enough ] ×1-3

The loop's body is traced once; the scheduler's PDGraph of `tighten_text` gets a back edge from
`word_count_2` to `shorten` whose repeat probability it learns from the runs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hermesflow.apps.semantic import (
    loop,
    native_function,
    semantic_function,
    semantic_program,
    tool_function,
)

MAX_WORDS = 25
"""A text this short needs no more shortening."""


class TightenInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: Annotated[str, Field(min_length=1, max_length=200)]


@semantic_function(max_tokens=40)
def draft(topic: str) -> str:
    """Write two sentences about {{topic}}.

    Text: {{text}}"""


@semantic_function(max_tokens=32)
def shorten(text: str) -> str:
    """Rewrite this text in fewer words.

    Text: {{text}}
    Shorter: {{shorter}}"""


count_words = tool_function("word_count")


@native_function
def short_enough(text: str, words: int) -> bool:
    return words <= MAX_WORDS


@loop(until=short_enough, max_iters=3)
def tighten(text, words):
    shorter = shorten(text)
    return shorter, count_words(text=shorter)


@semantic_program(
    app_class="tighten_text",
    inputs=TightenInputs,
    examples=[{"topic": "sea otters"}, {"topic": "the printing press"}, {"topic": "glaciers"}],
)
def program(topic):
    text = draft(topic)
    text, words = tighten(text, count_words(text=text))
    return {"text": text, "words": words}
