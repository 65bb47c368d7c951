"""The shipped inputs of the reference application suite, read from `hermesflow/data/`.

Each file is JSON lines of one record type (below). The records are the realistic inputs the
demo and the benchmarks draw from (`AppProgram.sample_inputs`) and the population the declared
priors are computed from, so a prior's fan-out and loop counts follow the inputs that are run.
Files are read once per process and returned as tuples of frozen models: nothing here can be
changed by a caller.

    corpus.jsonl            search passages         {"id", "title", "text"}
    documents.jsonl         map-reduce documents    {"id", "title", "text"}
    react_questions.jsonl   ReAct questions         {"id", "question", "answer", "tools"}
    code_tasks.jsonl        functions to write      {"id", "function_name", "prompt", "tests"}
    claims.jsonl            fact-check texts        {"id", "claims": [{"text", "label", "source"}]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DATA_PACKAGE = "hermesflow.data"

NonEmpty = Annotated[str, Field(min_length=1)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: NonEmpty


class Passage(_Record):
    """One passage of the search corpus."""

    title: NonEmpty
    text: NonEmpty


class Document(_Record):
    """A document to summarise; paragraphs are separated by blank lines."""

    title: NonEmpty
    text: NonEmpty


class ReactQuestion(_Record):
    """A question for the ReAct agent, with its reference answer and the tools it needs."""

    question: NonEmpty
    answer: NonEmpty
    tools: tuple[Literal["search", "calculator"], ...] = Field(min_length=1)


class CodeTask(_Record):
    """A function to write; `tests` is Python that imports it from the module `solution`."""

    function_name: NonEmpty
    prompt: NonEmpty
    tests: NonEmpty


class LabelledClaim(BaseModel):
    """One claim, whether the corpus supports it, and the corpus passage that decides it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: NonEmpty
    label: bool
    source: NonEmpty


class ClaimSet(_Record):
    """A short text made of 1-4 claims, for the fact-checker."""

    claims: tuple[LabelledClaim, ...] = Field(min_length=1)

    @property
    def text(self) -> str:
        return " ".join(claim.text for claim in self.claims)


RecordT = TypeVar("RecordT", bound=_Record)


class ShippedDataError(RuntimeError):
    """A shipped data file is missing or malformed: the installation is broken."""


def _read(filename: str, model: type[RecordT]) -> tuple[RecordT, ...]:
    try:
        text = resources.files(DATA_PACKAGE).joinpath(filename).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ShippedDataError(
            f"{DATA_PACKAGE}/{filename} is missing; reinstall hermesflow (it ships as package data)"
        ) from None
    records: list[RecordT] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(model.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as error:
            raise ShippedDataError(f"{DATA_PACKAGE}/{filename}, line {number}: {error}") from None
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise ShippedDataError(f"{DATA_PACKAGE}/{filename}: duplicate ids")
    return tuple(records)


@cache
def corpus() -> tuple[Passage, ...]:
    return _read("corpus.jsonl", Passage)


@cache
def documents() -> tuple[Document, ...]:
    return _read("documents.jsonl", Document)


@cache
def documents_by_id() -> Mapping[str, Document]:
    return MappingProxyType({doc.id: doc for doc in documents()})


@cache
def react_questions() -> tuple[ReactQuestion, ...]:
    return _read("react_questions.jsonl", ReactQuestion)


@cache
def code_tasks() -> tuple[CodeTask, ...]:
    return _read("code_tasks.jsonl", CodeTask)


@cache
def claim_sets() -> tuple[ClaimSet, ...]:
    return _read("claims.jsonl", ClaimSet)
