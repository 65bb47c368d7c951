"""Map-reduce summarisation (`map_reduce`): load a document, summarise each chunk, combine.

    load_document (tools) ─▶ summarize_chunks (llm, one call per chunk)
                          ─▶ combine_summaries (llm) ─▶ END

The chunk count — 2 to 10 for the shipped documents — is the fan-out of the map stage, known only
once the document is loaded: the class whose size varies most, and the biggest of the suite.
Text passed directly (`text` instead of `doc_id`) is cut by the same `chunk_text` and starts at
the map stage. A chunk whose summary comes back empty contributes its first sentence instead, so
the combining prompt never loses a part of the document.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hermesflow.apps.program import AppProgram, Finished, ProgramState, StepPlan, Transition
from hermesflow.apps.suite_data import documents, documents_by_id
from hermesflow.apps.suite_steps import (
    CHARS_PER_TOKEN,
    LOAD_DOCUMENT_EXEC_S,
    LOAD_DOCUMENT_TOOL,
    SHORT_REPLY_SHARE_OF_CAP,
    TOOLS_BACKEND,
    chat,
    check_results,
    clip,
    counts_prior,
    expect_inputs,
    failed,
    generated_text,
    input_tokens_prior,
    llm_stage,
    split_sentences,
    tool_stage,
    unknown_stage,
)
from hermesflow.apps.tools import chunk_text
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.pdgraph.model import END, LLM_BACKEND, PDGraph, StageKind

LOAD = "load_document"
MAP = "summarize_chunks"
REDUCE = "combine_summaries"

MAX_CHUNKS_LIMIT = 32
MAX_TEXT_CHARS = 50_000
MAP_MAX_TOKENS = 48
REDUCE_MAX_TOKENS = 80
NOTE_MAX_CHARS = 200
DEFAULT_TITLE = "the document"

MAP_SYSTEM = "You summarise text in one short sentence."
REDUCE_SYSTEM = "You write short, faithful summaries."


class MapReduceInputs(BaseModel):
    """Either a shipped document (`doc_id`) or your own `text` (with an optional `title`);
    at most `max_chunks` chunks are summarised."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_id: str | None = None
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    title: str | None = None
    max_chunks: Annotated[int, Field(ge=1, le=MAX_CHUNKS_LIMIT)] = 16

    @model_validator(mode="after")
    def _one_source(self) -> MapReduceInputs:
        if (self.doc_id is None) == (self.text is None):
            raise ValueError(
                "give exactly one of 'doc_id' (a shipped document) or 'text' (your own text to "
                "summarise)"
            )
        if self.doc_id is not None and self.doc_id not in documents_by_id():
            known = ", ".join(sorted(documents_by_id()))
            raise ValueError(
                f"unknown doc_id {self.doc_id!r}; known documents: {known} — or pass your own "
                "text as 'text'"
            )
        if self.text is not None and not chunk_text(self.text):
            raise ValueError("'text' is blank; give the text to summarise")
        return self


def map_call(chunk: str) -> LLMCall:
    return chat(MAP_SYSTEM, f"Summarise in one sentence:\n{chunk}", MAP_MAX_TOKENS)


def reduce_call(title: str, notes: list[str]) -> LLMCall:
    listed = "\n".join(f"- {clip(note, NOTE_MAX_CHARS)}" for note in notes)
    return chat(
        REDUCE_SYSTEM,
        f'Write a short summary of "{title}" from these notes:\n{listed}',
        REDUCE_MAX_TOKENS,
    )


def _loaded_document(result: CallResult) -> tuple[str, list[str]] | str:
    """(title, chunks) from a `load_document` result, or the error to finish with."""
    if failed(result):
        return f"load_document failed: {result.error or 'no result'}"
    value = result.value
    chunks = value.get("chunks") if isinstance(value, dict) else None
    if (
        not isinstance(chunks, list)
        or not chunks
        or not all(isinstance(c, str) and c.strip() for c in chunks)
    ):
        return "load_document returned no chunks of text"
    return str(value.get("title") or DEFAULT_TITLE), chunks


class MapReduceSummarizer(AppProgram):
    """Load → summarise every chunk → combine (module docstring)."""

    app_class: ClassVar[str] = "map_reduce"
    Inputs: ClassVar[type[BaseModel]] = MapReduceInputs

    def start(self, inputs: BaseModel) -> Transition:
        own = expect_inputs(inputs, MapReduceInputs, self.app_class)
        if own.doc_id is not None:
            call = ToolCall(tool=LOAD_DOCUMENT_TOOL, args={"doc_id": own.doc_id})
            return Transition(
                state={}, next=StepPlan(stage=LOAD, backend=TOOLS_BACKEND, calls=[call])
            )
        return self._map(own, own.title or DEFAULT_TITLE, chunk_text(own.text or ""))

    def _map(self, inputs: MapReduceInputs, title: str, chunks: list[str]) -> Transition:
        kept = chunks[: inputs.max_chunks]
        state = {"title": title, "chunks": kept, "chunks_skipped": len(chunks) - len(kept)}
        calls = [map_call(chunk) for chunk in kept]
        return Transition(state=state, next=StepPlan(stage=MAP, backend=LLM_BACKEND, calls=calls))

    def advance(
        self, inputs: BaseModel, state: ProgramState, step: StepPlan, results: list[CallResult]
    ) -> Transition:
        own = expect_inputs(inputs, MapReduceInputs, self.app_class)
        check_results(self.app_class, step, results)
        if step.stage == LOAD:
            loaded = _loaded_document(results[0])
            if isinstance(loaded, str):
                return Transition(state=state, next=Finished(result={"error": loaded}))
            return self._map(own, *loaded)
        if step.stage == MAP:
            notes = [
                generated_text(r) or (split_sentences(chunk) or [chunk])[0]
                for chunk, r in zip(state["chunks"], results, strict=True)
            ]
            call = reduce_call(state["title"], notes)
            return Transition(
                state={**state, "notes": notes},
                next=StepPlan(stage=REDUCE, backend=LLM_BACKEND, calls=[call]),
            )
        if step.stage == REDUCE:
            result: dict[str, Any] = {
                "title": state["title"],
                "summary": generated_text(results[0]) or " ".join(state["notes"]),
                "notes": state["notes"],
                "chunks": len(state["chunks"]),
                "chunks_skipped": state["chunks_skipped"],
            }
            return Transition(state=state, next=Finished(result=result))
        raise unknown_stage(self.app_class, step.stage, (LOAD, MAP, REDUCE))

    def sample_inputs(self, rng: np.random.Generator) -> BaseModel:
        docs = documents()
        return MapReduceInputs(doc_id=docs[int(rng.integers(len(docs)))].id)

    def prior(self) -> PDGraph:
        """Fan-out and prompts from the shipped documents themselves; each note of the combining
        prompt is a chunk summary of typical length."""
        default_max = MapReduceInputs.model_fields["max_chunks"].default
        loaded = [(doc.title, chunk_text(doc.text)[:default_max]) for doc in documents()]
        typical_note = "." * round(
            MAP_MAX_TOKENS * CHARS_PER_TOKEN * float(np.mean(SHORT_REPLY_SHARE_OF_CAP))
        )
        return PDGraph(
            name=self.app_class,
            entry={LOAD: 1.0},
            stages={
                LOAD: tool_stage(StageKind.TOOL, TOOLS_BACKEND, {MAP: 1.0}, LOAD_DOCUMENT_EXEC_S),
                MAP: llm_stage(
                    {REDUCE: 1.0},
                    input_tokens_prior(map_call(c) for _, chunks in loaded for c in chunks),
                    MAP_MAX_TOKENS,
                    short_reply=True,
                    fanout=counts_prior((len(chunks) for _, chunks in loaded), unit="requests"),
                ),
                REDUCE: llm_stage(
                    {END: 1.0},
                    input_tokens_prior(
                        reduce_call(title, [typical_note] * len(chunks)) for title, chunks in loaded
                    ),
                    REDUCE_MAX_TOKENS,
                    short_reply=False,
                ),
            },
        )
