"""The fact-check chain, driven with hand-written results: claim extraction and its fallback,
one search and one verdict per claim, search errors, verdict parsing, input validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hermesflow.apps.fact_check import (
    EVIDENCE_K,
    EXTRACT,
    JUDGE,
    SEARCH,
    FactCheckChain,
    FactCheckInputs,
    parse_claims,
    parse_verdict,
)
from hermesflow.apps.program import StepPlan
from hermesflow.backends.calls import CallResult

TEXT = (
    "Canberra is the capital of Australia. Sydney is the capital of Australia. "
    "Water boils at 100 degrees."
)


def hits(step: StepPlan) -> list[CallResult]:
    return [
        CallResult(
            text=f"[1] Passage {i}: evidence about {call.args['query']}",
            value=[{"id": f"p{i}", "title": f"Passage {i}", "text": "evidence", "score": 0.9}],
        )
        for i, call in enumerate(step.calls)
    ]


def verdicts(*words: str) -> list[CallResult]:
    return [CallResult(text=w) for w in words]


@pytest.fixture
def program() -> FactCheckChain:
    return FactCheckChain()


def test_listed_claims_set_the_fanout_of_search_and_judge(program, drive_app, scripted) -> None:
    listed = "1. Canberra is the capital of Australia.\n2. Sydney is the capital of Australia."
    run = drive_app(
        program,
        FactCheckInputs(text=TEXT),
        scripted([CallResult(text=listed)], hits, verdicts("True", "False, it is Canberra.")),
    )
    assert run.stages == [EXTRACT, SEARCH, JUDGE]
    assert run.fanouts(SEARCH) == [2] and run.fanouts(JUDGE) == [2]
    search = run.steps[1]
    assert search.backend == "search"
    assert [c.args for c in search.calls] == [
        {"query": "Canberra is the capital of Australia.", "k": EVIDENCE_K},
        {"query": "Sydney is the capital of Australia.", "k": EVIDENCE_K},
    ]
    judge_prompt = run.steps[2].calls[1].messages[-1].content
    assert "Sydney is the capital" in judge_prompt and "evidence about Sydney" in judge_prompt
    assert run.result == {
        "claims": [
            {
                "claim": "Canberra is the capital of Australia.",
                "verdict": "true",
                "evidence": ["p0"],
            },
            {
                "claim": "Sydney is the capital of Australia.",
                "verdict": "false",
                "evidence": ["p1"],
            },
        ],
        "claims_from": "model",
    }


@pytest.mark.parametrize(
    "reply",
    [
        "",  # nothing
        "I cannot help with that.",  # refusal
        "The Moon is made of green cheese. Penguins live in the desert.",  # invented claims
        "- yes\n- ok",  # too short to be claims
    ],
)
def test_unusable_extraction_falls_back_to_the_sentences(
    program, drive_app, scripted, reply
) -> None:
    run = drive_app(
        program,
        FactCheckInputs(text=TEXT),
        scripted([CallResult(text=reply)], hits, verdicts("true", "false", "maybe")),
    )
    assert run.fanouts(SEARCH) == [3] and run.fanouts(JUDGE) == [3]
    assert run.result["claims_from"] == "sentences"
    assert [c["verdict"] for c in run.result["claims"]] == ["true", "false", "unknown"]


def test_a_failed_extraction_call_falls_back_too(program, drive_app, scripted) -> None:
    failed = CallResult(finish_reason="error", error="engine died")
    run = drive_app(
        program, FactCheckInputs(text=TEXT), scripted([failed], hits, verdicts("a", "b", "c"))
    )
    assert run.result["claims_from"] == "sentences" and run.fanouts(JUDGE) == [3]


def test_a_copied_text_line_counts_each_of_its_sentences(program) -> None:
    claims, source = parse_claims(TEXT, TEXT, max_claims=4)
    assert source == "model" and len(claims) == 3


def test_max_claims_caps_the_fanout(program, drive_app, scripted) -> None:
    run = drive_app(
        program,
        FactCheckInputs(text=TEXT, max_claims=2),
        scripted([CallResult(text="")], hits, verdicts("true", "true")),
    )
    assert run.fanouts(SEARCH) == [2]


def test_duplicate_claims_count_once() -> None:
    claims, _ = parse_claims(
        "Canberra is the capital of Australia.\n* canberra is the capital of australia.", TEXT, 4
    )
    assert claims == ["Canberra is the capital of Australia."]


def test_a_failed_search_is_judged_on_its_error(program, drive_app, scripted) -> None:
    def one_fails(step: StepPlan) -> list[CallResult]:
        return [CallResult(finish_reason="error", error="index not loaded"), *hits(step)[1:]]

    run = drive_app(
        program,
        FactCheckInputs(text=TEXT, max_claims=2),
        scripted([CallResult(text="")], one_fails, verdicts("unsure", "true")),
    )
    assert "Error: index not loaded" in run.steps[2].calls[0].messages[-1].content
    assert [c["evidence"] for c in run.result["claims"]] == [[], ["p1"]]


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("True", "true"),
        ("false.", "false"),
        ("The claim is supported by the evidence.", "true"),
        ("Refuted.", "false"),
        ("Yes", "true"),
        ("No, it is not.", "false"),
        ("Trueish", "unknown"),
        ("", "unknown"),
    ],
)
def test_verdict_parsing(reply: str, verdict: str) -> None:
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"text": "   "}, "blank"),
        ({"text": ""}, "at least 1 character"),
        ({"text": "x" * 2001}, "at most 2000"),
        ({"text": "A claim.", "max_claims": 0}, "greater than or equal to 1"),
        ({"text": "A claim.", "max_claims": 9}, "less than or equal to 8"),
        ({"text": "A claim.", "claims": ["x"]}, "Extra inputs"),
    ],
)
def test_invalid_inputs_are_refused_with_the_field(program, inputs, message) -> None:
    with pytest.raises(ValidationError, match=message) as error:
        program.validate_inputs(inputs)
    assert "FactCheckInputs" in str(error.value)


def test_an_unknown_stage_is_an_error(program) -> None:
    step = StepPlan(stage="nope", backend="llm", calls=[{"kind": "llm", "prompt": "x"}])
    with pytest.raises(ValueError, match="no step 'nope'"):
        program.advance(FactCheckInputs(text=TEXT), {}, step, [CallResult()])


def test_a_missing_result_is_an_error(program) -> None:
    first = program.start(FactCheckInputs(text=TEXT)).next
    with pytest.raises(ValueError, match="1 call"):
        program.advance(FactCheckInputs(text=TEXT), {}, first, [])
