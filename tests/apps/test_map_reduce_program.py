"""Map-reduce summarisation, driven with hand-written results: the map fan-out is the chunk
count (for every shipped document, loaded by the real tool), text passed directly, the chunk
cap, load failures, empty summaries, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hermesflow.apps.map_reduce import (
    LOAD,
    MAP,
    REDUCE,
    MapReduceInputs,
    MapReduceSummarizer,
)
from hermesflow.apps.program import StepPlan
from hermesflow.apps.suite_data import documents
from hermesflow.apps.tools import chunk_text, load_document
from hermesflow.backends.calls import CallResult

PARAGRAPHS = (
    "Rivers carry water from the mountains to the sea. Their valleys have long been trade routes.",
    "Mountains rise where plates of the crust collide. The highest ones are young and growing.",
    "Deserts receive very little rain. Their plants and animals have many ways of saving water.",
)
TEXT = "\n\n".join(PARAGRAPHS)


def loaded(step: StepPlan) -> list[CallResult]:
    """The tools backend, played by the real tool."""
    return [CallResult(value=load_document(**step.calls[0].args))]


def summaries(step: StepPlan) -> list[CallResult]:
    return [CallResult(text=f"Summary {i}.") for i in range(len(step.calls))]


def says(text: str) -> list[CallResult]:
    return [CallResult(text=text)]


@pytest.fixture
def program() -> MapReduceSummarizer:
    return MapReduceSummarizer()


@pytest.mark.parametrize("doc", documents(), ids=lambda d: d.id)
def test_the_map_fanout_is_the_chunk_count(program, drive_app, scripted, doc) -> None:
    run = drive_app(
        program, MapReduceInputs(doc_id=doc.id), scripted(loaded, summaries, says("All of it."))
    )
    chunks = chunk_text(doc.text)
    assert run.stages == [LOAD, MAP, REDUCE]
    assert run.steps[0].backend == "tools"
    assert run.steps[0].calls[0].tool == "load_document" and run.steps[0].calls[0].args == {
        "doc_id": doc.id
    }
    assert run.fanouts(MAP) == [len(chunks)] and 2 <= len(chunks) <= 10
    prompts = [call.messages[-1].content for call in run.steps[1].calls]
    assert all(p.endswith(chunk) for p, chunk in zip(prompts, chunks, strict=True))
    reduce_prompt = run.steps[2].calls[0].messages[-1].content
    assert doc.title in reduce_prompt
    assert all(f"- Summary {i}." in reduce_prompt for i in range(len(chunks)))
    assert run.result == {
        "title": doc.title,
        "summary": "All of it.",
        "notes": [f"Summary {i}." for i in range(len(chunks))],
        "chunks": len(chunks),
        "chunks_skipped": 0,
    }


def test_text_passed_directly_starts_at_the_map_stage(program, drive_app, scripted) -> None:
    inputs = MapReduceInputs(text=TEXT, title="Landscapes")
    run = drive_app(program, inputs, scripted(summaries, says("Rivers, mountains, deserts.")))
    assert run.stages == [MAP, REDUCE] and run.fanouts(MAP) == [3]
    assert run.result["title"] == "Landscapes"


def test_max_chunks_caps_the_fanout(program, drive_app, scripted) -> None:
    run = drive_app(
        program, MapReduceInputs(text=TEXT, max_chunks=2), scripted(summaries, says("S."))
    )
    assert run.fanouts(MAP) == [2] and run.result["chunks_skipped"] == 1


def test_an_empty_summary_is_replaced_by_the_chunk_opening(program, drive_app, scripted) -> None:
    def one_empty(step: StepPlan) -> list[CallResult]:
        return [
            CallResult(text=""),
            CallResult(finish_reason="error", error="oom"),
            CallResult(text="Deserts."),
        ]

    run = drive_app(program, MapReduceInputs(text=TEXT), scripted(one_empty, says("")))
    assert run.result["notes"] == [
        "Rivers carry water from the mountains to the sea.",
        "Mountains rise where plates of the crust collide.",
        "Deserts.",
    ]
    assert run.result["summary"] == " ".join(
        run.result["notes"]
    )  # the combine call came back empty


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (
            CallResult(finish_reason="error", error="no document 'x'"),
            "load_document failed: no document 'x'",
        ),
        (CallResult(value={"title": "T", "chunks": []}), "no chunks"),
        (CallResult(value={"title": "T", "chunks": ["ok", 3]}), "no chunks"),
        (CallResult(value="plain text"), "no chunks"),
    ],
)
def test_a_failed_load_ends_the_run_with_the_error(
    program, drive_app, scripted, result, error
) -> None:
    run = drive_app(program, MapReduceInputs(doc_id=documents()[0].id), scripted([result]))
    assert run.stages == [LOAD] and error in run.result["error"]


def test_a_loaded_document_without_title_gets_a_default(program, drive_app, scripted) -> None:
    untitled = [CallResult(value={"chunks": ["One chunk of text here."]})]
    run = drive_app(
        program, MapReduceInputs(doc_id=documents()[0].id), scripted(untitled, summaries, says("S"))
    )
    assert run.result["title"] == "the document" and run.fanouts(MAP) == [1]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "exactly one of 'doc_id'"),
        ({"doc_id": documents()[0].id, "text": "Some text."}, "exactly one of 'doc_id'"),
        (
            {"doc_id": "no-such-doc"},
            "unknown doc_id 'no-such-doc'; known documents: .*pass your own text as 'text'",
        ),
        ({"text": " \n\n  "}, "'text' is blank"),
        ({"text": "Some text.", "max_chunks": 0}, "greater than or equal to 1"),
        ({"doc_id": documents()[0].id, "chunks": 3}, "Extra inputs"),
    ],
)
def test_invalid_inputs_are_refused_with_the_field(program, inputs, message) -> None:
    with pytest.raises(ValidationError, match=message) as error:
        program.validate_inputs(inputs)
    assert "MapReduceInputs" in str(error.value)


def test_the_unknown_doc_id_error_names_the_known_ones(program) -> None:
    with pytest.raises(ValidationError) as error:
        program.validate_inputs({"doc_id": "nope"})
    assert all(doc.id in str(error.value) for doc in documents())
