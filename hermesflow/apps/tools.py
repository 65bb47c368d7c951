"""Tools of the reference suite that run in the Python tool pool (`python-tools` backend).

`load_document` is the first stage of map-reduce: it reads a shipped document and cuts it into
chunks, one LLM summary each, so the chunk count is the fan-out of the map stage. The same
`chunk_text` cuts text a user passes directly, so both ways give the same chunks.

Chunking keeps paragraphs whole: one chunk per paragraph, except that a paragraph longer than
`max_chars` is cut between sentences (a sentence longer than that between words) and a paragraph
shorter than `min_chars` joins the chunk before it (a heading or a one-liner is no chunk alone).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hermesflow.apps.suite_data import documents_by_id
from hermesflow.apps.suite_steps import split_sentences

DEFAULT_MAX_CHUNK_CHARS = 600
"""About 150 tokens: one map prompt stays short on a CPU model."""

DEFAULT_MIN_CHUNK_CHARS = 80

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def chunk_text(
    text: str, max_chars: int = DEFAULT_MAX_CHUNK_CHARS, min_chars: int = DEFAULT_MIN_CHUNK_CHARS
) -> list[str]:
    """Chunks of `text` (module docstring); [] for blank text."""
    if not 0 < min_chars <= max_chars:
        raise ValueError(f"need 0 < min_chars <= max_chars, got {min_chars} and {max_chars}")
    chunks: list[str] = []
    for paragraph in (" ".join(raw.split()) for raw in _PARAGRAPH_BREAK.split(text)):
        if not paragraph:
            continue
        if len(paragraph) < min_chars and chunks and len(chunks[-1]) + len(paragraph) < max_chars:
            chunks[-1] = f"{chunks[-1]} {paragraph}"
        else:
            chunks.extend(_split_long(paragraph, max_chars))
    return chunks


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    if len(paragraph) <= max_chars:
        return [paragraph]
    parts = (part for sentence in split_sentences(paragraph) for part in _fit(sentence, max_chars))
    return _pack(parts, max_chars)


def _fit(sentence: str, max_chars: int) -> list[str]:
    """A sentence as parts of at most max_chars: itself, or its words packed (a word longer
    than max_chars, which has no space to cut at, cut itself)."""
    if len(sentence) <= max_chars:
        return [sentence]
    words = (w[i : i + max_chars] for w in sentence.split() for i in range(0, len(w), max_chars))
    return _pack(words, max_chars)


def _pack(parts: Iterable[str], max_chars: int) -> list[str]:
    """Consecutive parts (each at most max_chars) joined by spaces into pieces of at most
    max_chars, greedily."""
    pieces: list[str] = []
    current = ""
    for part in parts:
        if current and len(current) + 1 + len(part) > max_chars:
            pieces.append(current)
            current = part
        else:
            current = f"{current} {part}" if current else part
    if current:
        pieces.append(current)
    return pieces


def load_document(doc_id: str) -> dict[str, Any]:
    """The tool `load_document`: {"title", "chunks"} of a shipped document."""
    known = documents_by_id()
    try:
        document = known[doc_id]
    except KeyError:
        raise ValueError(
            f"no document {doc_id!r}; known documents: {', '.join(sorted(known))} "
            "(to summarise other text, pass it as 'text' to the map_reduce application)"
        ) from None
    return {"title": document.title, "chunks": chunk_text(document.text)}
