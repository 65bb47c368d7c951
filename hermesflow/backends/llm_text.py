"""From an LLM call to token ids, and from generated ids back to streamed text.

Shared by every backend that tokenises on our side (the CPU transformers engine, vLLM): any
Hugging Face-style tokenizer works, so this module needs neither torch nor a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hermesflow.backends.calls import CallErrorCode, CallRefused, LLMCall, Truncation

_DECODE_OPTIONS = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
"""Decoding that round-trips: no special tokens in the text, no space "clean-up" that would
make the text of a token sequence differ from the concatenation of its pieces."""


class ContextLengthExceeded(CallRefused):
    """The prompt, or the prompt plus the tokens to generate, does not fit the model, and the
    call did not ask for truncation (OpenAI's 400 `context_length_exceeded`)."""

    code = CallErrorCode.CONTEXT_LENGTH_EXCEEDED


@dataclass(frozen=True)
class EncodedPrompt:
    """The token ids a call is generated from; `dropped` tokens were cut from the front (only
    when the call asked for `truncation: auto`)."""

    ids: list[int]
    dropped: int = 0


def encode_call(
    tokenizer: Any, call: LLMCall, max_input_tokens: int, context_tokens: int
) -> EncodedPrompt:
    """Token ids of an LLM call: `messages` rendered with the tokenizer's chat template (with the
    assistant's generation prompt), or `prompt` encoded as is. Works with any tokenizer that has
    the Hugging Face `apply_chat_template`/`encode` methods (vLLM's too).

    The prompt must fit both the backend's `max_input_tokens` and, with the call's `max_tokens`
    to generate, the model's `context_tokens`. One that does not is refused with
    `ContextLengthExceeded` naming the counts — never silently cut — unless the call asked for
    `truncation: auto`: then it keeps its last tokens that fit (the end of a conversation is
    what the next turn depends on).
    """
    if call.messages is not None:
        messages = [message.model_dump() for message in call.messages]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = list(tokenizer.encode(text, add_special_tokens=False))  # the template has them
    else:
        ids = list(tokenizer.encode(call.prompt))
    if not ids:
        raise CallRefused("the prompt encodes to no tokens; give a non-empty prompt")
    room = min(max_input_tokens, context_tokens - call.max_tokens)
    if len(ids) <= room:
        return EncodedPrompt(ids)
    if call.truncation is Truncation.AUTO and room >= 1:
        return EncodedPrompt(ids[len(ids) - room :], len(ids) - room)
    raise ContextLengthExceeded(_too_long(call, len(ids), max_input_tokens, context_tokens))


def _too_long(call: LLMCall, prompt_tokens: int, max_input_tokens: int, context_tokens: int) -> str:
    """OpenAI's wording, with the counts and what to change."""
    what = "messages" if call.messages is not None else "prompt"
    if prompt_tokens > max_input_tokens:
        return (
            f"This model's maximum prompt length is {max_input_tokens} tokens, but your {what} "
            f"resulted in {prompt_tokens} tokens. Shorten the {what}, or send "
            f'"truncation": "auto" to keep its last {max_input_tokens} tokens.'
        )
    requested = prompt_tokens + call.max_tokens
    fix = "lower max_tokens or shorten the " + what
    if context_tokens - call.max_tokens >= 1:
        fix += ', or send "truncation": "auto" to keep the end of the prompt that fits'
    return (
        f"This model's maximum context length is {context_tokens} tokens, but you requested "
        f"{requested} tokens ({prompt_tokens} in the {what}, {call.max_tokens} in the "
        f"completion); {fix}."
    )


class TextStream:
    """Turns generated token ids into text deltas whose concatenation is the final text.

    Detokenisation is incremental: a token's text is released once the tokens so far decode to
    whole characters (a multi-byte character split over tokens decodes to U+FFFD until its last
    byte arrives). Only a short window of recent tokens is decoded, so each token costs O(1).
    Stop strings: the text ends before the first occurrence of any of them; the last
    `longest stop - 1` characters are held back until it is clear they do not start one.
    """

    def __init__(self, tokenizer: Any, stop: Iterable[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix = 0  # window start: decoding from here gives correct leading spaces
        self._read = 0  # tokens before this are already text
        self.text = ""
        self._released = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text that may be emitted now (maybe "")."""
        self._ids.append(token_id)
        window = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        if len(full) > len(window) and not full.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            self._append(full[len(window) :])
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """End of generation: decode what is left (an unfinished character becomes U+FFFD) and
        release the held-back text."""
        if not self.stopped and self._read < len(self._ids):
            window = self._decode(self._ids[self._prefix : self._read])
            self._append(self._decode(self._ids[self._prefix :])[len(window) :])
            self._read = len(self._ids)
        return self._release(final=True)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, **_DECODE_OPTIONS) if ids else ""

    def _append(self, piece: str) -> None:
        if self.stopped:
            return
        start = max(0, len(self.text) - self._holdback)  # a stop may straddle the boundary
        self.text += piece
        hits = [i for s in self._stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text) if final else len(self.text) - self._holdback
        if end <= self._released:
            return ""
        delta, self._released = self.text[self._released : end], end
        return delta
