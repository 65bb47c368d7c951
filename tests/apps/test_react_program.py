"""The ReAct tool loop, driven with hand-written results: an early answer, search and calculator
rounds, the round budget, tool errors as observations, the forgiving parser, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hermesflow.apps.fact_check import FactCheckInputs
from hermesflow.apps.program import StepPlan
from hermesflow.apps.react import (
    CALCULATE,
    LAST_LINE,
    SEARCH,
    SEARCH_K,
    THINK,
    ReActInputs,
    ReActToolLoop,
    answer_matches,
    clean_expression,
    parse_action,
)
from hermesflow.backends.calls import CallResult


def says(text: str) -> list[CallResult]:
    return [CallResult(text=text)]


def found(step: StepPlan) -> list[CallResult]:
    query = step.calls[0].args["query"]
    return [
        CallResult(
            text=f"[1] Canberra: about {query}",
            value=[{"id": "geo-005", "title": "Canberra", "text": "...", "score": 1.0}],
        )
    ]


@pytest.fixture
def program() -> ReActToolLoop:
    return ReActToolLoop()


def prompt_of(step: StepPlan) -> str:
    return step.calls[0].messages[-1].content


def test_a_final_answer_in_the_first_round_ends_the_run(program, drive_app, scripted) -> None:
    inputs = ReActInputs(
        question="What is the capital of Australia?", max_rounds=3, answer="Canberra"
    )
    run = drive_app(program, inputs, scripted(says("Answer: Canberra.")))
    assert run.stages == [THINK]
    assert run.result == {
        "answer": "Canberra",
        "explicit": True,
        "rounds": 1,
        "correct": True,
        "trace": [],
    }


def test_search_then_answer(program, drive_app, scripted) -> None:
    inputs = ReActInputs(
        question="What is the capital of Australia?", max_rounds=3, answer="Canberra"
    )
    run = drive_app(
        program,
        inputs,
        scripted(says("search: capital of Australia"), found, says("answer: Sydney")),
    )
    assert run.stages == [THINK, SEARCH, THINK]
    search = run.steps[1]
    assert search.backend == "search" and search.calls[0].tool == "search"
    assert search.calls[0].args == {"query": "capital of Australia", "k": SEARCH_K}
    assert "result: [1] Canberra: about capital of Australia" in prompt_of(run.steps[2])
    assert run.result["rounds"] == 2 and run.result["correct"] is False
    assert run.result["trace"][0]["action"] == "search"


def test_calculate_then_answer(program, drive_app, scripted) -> None:
    inputs = ReActInputs(question="What is 17 * 23?", max_rounds=2, answer="391")
    run = drive_app(
        program,
        inputs,
        scripted(
            says("calculate: 17 * 23"), [CallResult(text="391.0", value=391.0)], says("answer: 391")
        ),
    )
    assert run.stages == [THINK, CALCULATE, THINK]
    calculate = run.steps[1]
    assert calculate.backend == "tools" and calculate.calls[0].tool == "calculator"
    assert calculate.calls[0].args == {"expression": "17*23"}
    assert run.result["correct"] is True


def test_the_round_budget_ends_the_loop(program, drive_app, scripted) -> None:
    inputs = ReActInputs(question="Who invented the telephone?", max_rounds=3)
    run = drive_app(
        program,
        inputs,
        scripted(
            says("search: telephone"),
            found,
            says("search: Bell"),
            found,
            says("search: patent 1876"),
        ),
    )
    assert run.stages == [THINK, SEARCH, THINK, SEARCH, THINK]
    assert [LAST_LINE in prompt_of(s) for s in run.steps if s.stage == THINK] == [
        False,
        False,
        True,
    ]
    assert run.result["answer"] == "patent 1876" and run.result["explicit"] is False
    assert run.result["rounds"] == 3 and run.result["correct"] is None


def test_one_round_asks_for_the_answer_at_once(program, drive_app, scripted) -> None:
    run = drive_app(
        program, ReActInputs(question="2 + 2?", max_rounds=1), scripted(says("It is four.\nMore."))
    )
    assert run.stages == [THINK] and LAST_LINE in prompt_of(run.steps[0])
    assert run.result["answer"] == "It is four." and run.result["explicit"] is False


def test_a_tool_error_is_the_next_observation(program, drive_app, scripted) -> None:
    error = [CallResult(finish_reason="error", error="ZeroDivisionError: division by zero")]
    run = drive_app(
        program,
        ReActInputs(question="What is 1/0?", max_rounds=2),
        scripted(says("calculate: 1/0"), error, says("answer: undefined")),
    )
    assert "result: Error: ZeroDivisionError: division by zero" in prompt_of(run.steps[2])
    assert run.result["trace"][0]["observation"].startswith("Error:")


@pytest.mark.parametrize("reply", ["", "hmm", "I am not sure what you mean."])
def test_unusable_output_searches_for_the_question(program, drive_app, scripted, reply) -> None:
    question = "Which river is the longest in Europe?"
    run = drive_app(
        program,
        ReActInputs(question=question, max_rounds=2),
        scripted(says(reply), found, says("answer: Volga")),
    )
    assert run.steps[1].calls[0].args["query"] == question


def test_a_guess_repeated_after_the_evidence_is_the_answer(program, drive_app, scripted) -> None:
    inputs = ReActInputs(question="What is the capital of Australia?", max_rounds=4)
    guess = "The capital of Australia is Canberra."
    run = drive_app(program, inputs, scripted(says(guess), found, says(guess)))
    assert run.stages == [THINK, SEARCH, THINK]
    assert run.result["answer"] == guess and run.result["explicit"] is False
    assert run.result["trace"][0]["reply"] == guess


def test_a_repeated_explicit_action_is_no_answer(program, drive_app, scripted) -> None:
    inputs = ReActInputs(question="Q?", max_rounds=3)
    again = says("search: the same thing")
    run = drive_app(program, inputs, scripted(again, found, again, found, again))
    assert run.stages == [THINK, SEARCH, THINK, SEARCH, THINK]


def test_a_failed_model_call_searches_for_the_question(program, drive_app, scripted) -> None:
    failed = [CallResult(finish_reason="error", error="engine restarted")]
    run = drive_app(
        program,
        ReActInputs(question="Q?", max_rounds=2),
        scripted(failed, found, says("answer: A")),
    )
    assert run.stages == [THINK, SEARCH, THINK]


@pytest.mark.parametrize(
    ("reply", "kind", "argument"),
    [
        ("Search[capital of France]", "search", "capital of France"),
        ("Thought: I should look it up.\nlookup(Eiffel Tower)", "search", "Eiffel Tower"),
        ("Final Answer: Paris", "answer", "Paris"),
        ("finish[Paris]", "answer", "Paris"),
        ("Calculator: 2^10", "calculate", "2**10"),
        ("calculate: sqrt(1764)", "calculate", "sqrt(1764)"),
        ("So it is 12 x 3 then", "calculate", "12*3"),
        ("compute = 1,234 + 5,678", "calculate", "1234+5678"),
        ("The answer is: Canberra.", "answer", "Canberra"),
        (
            'The answer to the question "Q?" is either Brasilia or Ankara.',
            "answer",
            "either Brasilia or Ankara",
        ),
        ("The answer to this question is: Rome", "answer", "Rome"),
        ("The capital of Australia is Sydney.", "search", "Q"),  # a bare guess is checked first
        ("17 * 23 = 391.", "calculate", "17*23"),
        ("calculate: the population of France", "search", "Q"),
        ("answer:", "search", "Q"),
    ],
)
def test_forgiving_action_parser(reply: str, kind: str, argument: str) -> None:
    action = parse_action(reply, "Q", last_round=False)
    assert (action.kind, action.argument) == (kind, argument)


def test_the_last_round_turns_an_action_into_the_answer() -> None:
    action = parse_action("search: Canberra", "Q", last_round=True)
    assert (action.kind, action.argument, action.explicit) == ("answer", "Canberra", False)
    assert parse_action("", "Q", last_round=True).argument == ""


@pytest.mark.parametrize(
    ("text", "expression"),
    [
        ("17 * 23", "17*23"),
        ("(45 + 55) x 3", "(45+55)*3"),
        ("2^-1", "2**-1"),
        ("17 * 23 = 391", "17*23"),
        ("Sqrt(1764)", "sqrt(1764)"),
        ("the square root", ""),
        ("42", ""),
        ("the population of France", ""),
    ],
)
def test_expressions_are_cleaned_for_the_calculator(text: str, expression: str) -> None:
    assert clean_expression(text) == expression


@pytest.mark.parametrize(
    ("answer", "expected", "match"),
    [
        ("The answer is 6,912.", "6912", True),
        ("about 42.0", "42", True),
        ("It is 41", "42", False),
        ("It's Canberra, of course", "Canberra", True),
        ("Sydney", "Canberra", False),
    ],
)
def test_answers_are_scored_against_the_reference(answer: str, expected: str, match: bool) -> None:
    assert answer_matches(answer, expected) is match


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"question": "Q?", "max_rounds": 0}, "greater than or equal to 1"),
        ({"question": "Q?", "max_rounds": 6}, "less than or equal to 5"),
        ({"question": "  "}, "blank"),
        ({"max_rounds": 2}, "question"),
        ({"question": "Q?", "rounds": 2}, "Extra inputs"),
    ],
)
def test_invalid_inputs_are_refused_with_the_field(program, inputs, message) -> None:
    with pytest.raises(ValidationError, match=message) as error:
        program.validate_inputs(inputs)
    assert "ReActInputs" in str(error.value)


def test_inputs_of_another_class_are_refused(program) -> None:
    with pytest.raises(TypeError, match="validate_inputs"):
        program.start(FactCheckInputs(text="A claim."))
