"""The needle-in-a-haystack check of the long-context methods.

A fact (the needle) is hidden at a given depth of a long real text (`haystack`), and the prompt
ends by starting the sentence that states it, so the model only has to copy the word from the
place it read it: the copy needs the attention of the last query to reach the needle's tokens,
which is exactly what a sparse prefill or a retrieval could drop. The check compares methods on
the same prompts: wherever dense attention finds the needle, the other methods must too.
SmolLM2-135M does not find it at every depth of its 8K context even with dense attention, which
is why the comparison is against dense rather than against the answer alone.
"""

from __future__ import annotations

from typing import Any

from hermesflow.backends.haystack import haystack_ids

NEEDLE_WORD = "PELICAN"
NEEDLE = f"\n\nThe secret code word is {NEEDLE_WORD}.\n\n"
QUESTION = "\n\nQuestion: what is the secret code word?\nAnswer: The secret code word is"


def needle_prompt(tokenizer: Any, tokens: int, depth: float) -> str:
    """About `tokens` tokens of real text with `NEEDLE` after the first `depth` (0..1) of them,
    ending with `QUESTION`."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth}; give a share of the text between 0 and 1")
    hay = haystack_ids(tokenizer, tokens)
    cut = round(len(hay) * depth)
    return tokenizer.decode(hay[:cut]) + NEEDLE + tokenizer.decode(hay[cut:]) + QUESTION


def finds_needle(answer: str) -> bool:
    """Whether a generated answer names the needle's word."""
    return NEEDLE_WORD in answer.upper()
