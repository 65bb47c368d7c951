"""ReAct tool loop (`react`): the model thinks, calls a tool, reads the result, and again.

    think (llm) ─▶ search (search) ─▶ think ...
               ─▶ calculate (tools) ─▶ think ...
               ─▶ END  (a final answer, or the last round)

Each round the model writes one line: `search: ...`, `calculate: ...` or `answer: ...`. The parser
is forgiving — `Search[...]`, `lookup(...)`, `Final Answer: ...` and "the answer is ..." all
count, a bare arithmetic expression is a calculation, and anything else (a small model often
just states a guess) searches for the question itself — so the tiny CPU model cannot stall the
loop, and a bare guess is checked against evidence before it becomes the answer (a guess the
model repeats word for word after seeing the evidence is its answer). A tool error is the
observation the next round reads. The last of `max_rounds` rounds asks for the answer and takes
whatever the model says (the usual ReAct budget), so the number of rounds, and with it the
demand, is decided by the model's outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hermesflow.apps.program import AppProgram, Finished, ProgramState, StepPlan, Transition
from hermesflow.apps.suite_data import react_questions
from hermesflow.apps.suite_steps import (
    CALCULATOR_EXEC_S,
    CALCULATOR_TOOL,
    SEARCH_BACKEND,
    SEARCH_EXEC_S,
    TOOLS_BACKEND,
    chat,
    check_results,
    counts_prior,
    draw_weighted,
    estimate_input_tokens,
    expect_inputs,
    generated_text,
    llm_stage,
    search_call,
    tool_observation,
    tool_stage,
    unknown_stage,
    weighted_population,
)
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, LLM_BACKEND, PDGraph, StageKind

THINK = "think"
SEARCH = "search"
CALCULATE = "calculate"

MAX_ROUNDS_LIMIT = 5
MAX_ROUNDS_WEIGHTS = {1: 1, 2: 2, 3: 3, 4: 2, 5: 2}
"""How often demo runs allow each number of rounds (relative weights)."""
ASSUMED_ANSWER_ROUND: tuple[int | None, ...] = (2, 3, None, None)
"""Prior only: the round at which the model gives its answer (None: it never does by itself)."""

THINK_MAX_TOKENS = 48
SEARCH_K = 2
OBSERVATION_MAX_CHARS = 300
MAX_QUESTION_CHARS = 500

SYSTEM = (
    "Answer the question. Reply with exactly one line, one of:\n"
    "search: <what to look up>\ncalculate: <arithmetic expression>\nanswer: <final answer>"
)
NEXT_LINE = "Your next line:"
LAST_LINE = "Reply now with answer: <final answer>."

ActionKind = Literal["answer", "search", "calculate"]
_KEYWORDS: dict[str, ActionKind] = {
    "final answer": "answer",
    "answer": "answer",
    "finish": "answer",
    "search": "search",
    "lookup": "search",
    "look up": "search",
    "calculate": "calculate",
    "calculator": "calculate",
    "calc": "calculate",
    "compute": "calculate",
}
_ACTION_LINE = re.compile(
    r"^\W*(final answer|answer|finish|search|look ?up|calculator|calculate|calc|compute)"
    r"\s*([:\[(=])\s*(.*?)\s*\.?$",
    re.IGNORECASE,
)
_ANSWER_PHRASE = re.compile(
    r"\banswer\b(?:\s+to\b[^:\n]{0,100}?)?\s*(?:\bis\b|:|=)\s*:?\s*(.+?)\s*\.?$", re.IGNORECASE
)
""""The answer is X", "the answer to the question ... is: X": how a small model answers."""
_NUMBER = r"\d[\d,]*(?:\.\d+)?"
_EXPRESSION = re.compile(rf"[(\s]*-?{_NUMBER}(?:\s*[-+*/x\u00d7^%]\s*[(\s]*-?{_NUMBER}[)\s]*)+")
_EXPRESSION_TOKEN = re.compile(r"[a-z]+(?=\s*\()|\d+(?:\.\d+)?|\*\*|[-+*/%()]")
"""What the calculator reads: numbers, operators, parentheses, and function names before `(`."""
_COMPUTES = re.compile(r"[\d)](?:\*\*|[-+*/%])[-(\da-z]|[a-z]+\(")


class ReActInputs(BaseModel):
    """A question, the round budget, and optionally the reference answer (to score the run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]
    max_rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS_LIMIT)] = 3
    answer: str | None = None

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("the question is blank; ask something")
        return question.strip()


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    argument: str
    explicit: bool = True
    """False when the parser fell back (no recognisable action in the model's reply)."""


def clean_expression(text: str) -> str:
    """An arithmetic expression for the calculator, from a model's version of one: the model's
    own `= result` goes, `^` is a power, `x` or the multiplication sign a product, thousands
    separators and words go (function names such as `sqrt(` stay: the calculator refuses those
    it does not know). "" unless something is left to compute."""
    text = text.split("=", 1)[0].lower()
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"(?<=[\d)\s])[x\u00d7](?=[\s\d(])", "*", text).replace("^", "**")
    expression = "".join(_EXPRESSION_TOKEN.findall(text))
    return expression if _COMPUTES.search(expression) else ""


def _unwrap(opening: str, argument: str) -> str:
    """`search[x]`, `lookup(x)`: drop the closing bracket that matches the action's opening one."""
    closing = {"[": "]", "(": ")"}.get(opening)
    if closing and argument.endswith(closing):
        argument = argument[:-1]
    return argument.strip()


def _first_action(output: str) -> Action | None:
    """The first line that reads as an action or an answer, else a bare arithmetic expression."""
    for line in (raw.strip() for raw in output.splitlines()):
        match = _ACTION_LINE.match(line)
        if match and (argument := _unwrap(match.group(2), match.group(3))):
            return Action(_KEYWORDS[" ".join(match.group(1).lower().split())], argument)
        phrase = _ANSWER_PHRASE.search(line)
        if phrase and phrase.group(1).strip():
            return Action("answer", phrase.group(1).strip())
    expression = _EXPRESSION.search(output)
    return Action("calculate", expression.group(0).strip()) if expression else None


def parse_action(output: str, question: str, last_round: bool) -> Action:
    """The action of a model reply (module docstring); never fails. In the last round every
    reply is the answer: an action's argument is the model's best guess at it."""
    found = _first_action(output)
    if last_round:
        if found is None:
            first_line = next((line.strip() for line in output.splitlines() if line.strip()), "")
            return Action("answer", first_line, explicit=False)
        return found if found.kind == "answer" else Action("answer", found.argument, explicit=False)
    if found is None:
        return Action("search", question, explicit=False)
    if found.kind == "calculate":
        expression = clean_expression(found.argument)
        return Action("calculate", expression) if expression else Action("search", question, False)
    return found


def answer_matches(answer: str, expected: str) -> bool:
    """Numeric answers match any number in the answer; others match as a substring."""
    plain = re.sub(r"(?<=\d),(?=\d{3})", "", answer.lower())
    try:
        target = float(expected.replace(",", ""))
    except ValueError:
        return expected.lower().strip() in plain
    return any(
        abs(float(n) - target) <= 1e-6 * max(1.0, abs(target))
        for n in re.findall(r"-?\d+(?:\.\d+)?", plain)
    )


def think_call(question: str, trace: list[dict[str, str]], last_round: bool) -> LLMCall:
    lines = [f"Question: {question}"]
    for step in trace:
        lines += [f"{step['action']}: {step['input']}", f"result: {step['observation']}"]
    lines.append(LAST_LINE if last_round else NEXT_LINE)
    return chat(SYSTEM, "\n".join(lines), THINK_MAX_TOKENS)


class ReActToolLoop(AppProgram):
    """Think → search or calculate → think ... → answer (module docstring)."""

    app_class: ClassVar[str] = "react"
    Inputs: ClassVar[type[BaseModel]] = ReActInputs

    def start(self, inputs: BaseModel) -> Transition:
        own = expect_inputs(inputs, ReActInputs, self.app_class)
        return self._think(own, {"round": 1, "trace": []})

    def _think(self, inputs: ReActInputs, state: ProgramState) -> Transition:
        last = state["round"] >= inputs.max_rounds
        call = think_call(inputs.question, state["trace"], last)
        return Transition(
            state=state, next=StepPlan(stage=THINK, backend=LLM_BACKEND, calls=[call])
        )

    def advance(
        self, inputs: BaseModel, state: ProgramState, step: StepPlan, results: list[CallResult]
    ) -> Transition:
        own = expect_inputs(inputs, ReActInputs, self.app_class)
        check_results(self.app_class, step, results)
        if step.stage == THINK:
            reply = generated_text(results[0])
            action = parse_action(reply, own.question, state["round"] >= own.max_rounds)
            if _settled(action, reply, state["trace"]):
                action = parse_action(reply, own.question, last_round=True)
            if action.kind == "answer":
                return Transition(
                    state=state, next=Finished(result=self._result(own, state, action))
                )
            pending = {"reply": reply, "action": action.kind, "input": action.argument}
            return Transition(state={**state, "pending": pending}, next=_tool_step(action))
        if step.stage in (SEARCH, CALCULATE):
            observed = {
                **state["pending"],
                "observation": tool_observation(results[0], OBSERVATION_MAX_CHARS),
            }
            return self._think(
                own, {"round": state["round"] + 1, "trace": [*state["trace"], observed]}
            )
        raise unknown_stage(self.app_class, step.stage, (THINK, SEARCH, CALCULATE))

    @staticmethod
    def _result(inputs: ReActInputs, state: ProgramState, action: Action) -> dict[str, Any]:
        return {
            "answer": action.argument,
            "explicit": action.explicit,
            "rounds": state["round"],
            "correct": None
            if inputs.answer is None
            else answer_matches(action.argument, inputs.answer),
            "trace": state["trace"],
        }

    def sample_inputs(self, rng: np.random.Generator) -> BaseModel:
        questions = react_questions()
        question = questions[int(rng.integers(len(questions)))]
        return ReActInputs(
            question=question.question,
            max_rounds=draw_weighted(rng, MAX_ROUNDS_WEIGHTS),
            answer=question.answer,
        )

    def prior(self) -> PDGraph:
        """Rounds per run: the round budget of the inputs met by the assumed answer round; think
        prompts grow by one full-length observation per round; the tool mix is that the shipped
        questions need."""
        rounds = [
            budget if answer_round is None else min(budget, answer_round)
            for budget in weighted_population(MAX_ROUNDS_WEIGHTS)
            for answer_round in ASSUMED_ANSWER_ROUND
        ]
        questions = react_questions()
        observation = "." * OBSERVATION_MAX_CHARS
        think_tokens: list[int] = []
        for q in questions:
            for r in range(max(rounds)):
                trace = [{"action": SEARCH, "input": q.question, "observation": observation}] * r
                calls_in_round = sum(n > r for n in rounds)
                think_tokens += [
                    estimate_input_tokens(think_call(q.question, trace, False))
                ] * calls_in_round
        needs = [tool for q in questions for tool in q.tools]
        search_share = needs.count("search") / len(needs)
        end_share = len(rounds) / sum(rounds)
        return PDGraph(
            name=self.app_class,
            entry={THINK: 1.0},
            stages={
                THINK: llm_stage(
                    {
                        SEARCH: (1 - end_share) * search_share,
                        CALCULATE: (1 - end_share) * (1 - search_share),
                        END: end_share,
                    },
                    Empirical.of(think_tokens, unit="tokens"),
                    THINK_MAX_TOKENS,
                    short_reply=True,
                    visits=counts_prior(rounds, unit="visits"),
                ),
                SEARCH: tool_stage(StageKind.SEARCH, SEARCH_BACKEND, {THINK: 1.0}, SEARCH_EXEC_S),
                CALCULATE: tool_stage(
                    StageKind.TOOL, TOOLS_BACKEND, {THINK: 1.0}, CALCULATOR_EXEC_S
                ),
            },
        )


def _settled(action: Action, reply: str, trace: list[dict[str, str]]) -> bool:
    """A reply with no action that repeats the previous one word for word: the model has seen
    the evidence and stays with its statement, so that statement is its answer."""
    return not action.explicit and bool(reply) and bool(trace) and trace[-1]["reply"] == reply


def _tool_step(action: Action) -> StepPlan:
    if action.kind == "search":
        return StepPlan(
            stage=SEARCH, backend=SEARCH_BACKEND, calls=[search_call(action.argument, SEARCH_K)]
        )
    call = ToolCall(tool=CALCULATOR_TOOL, args={"expression": action.argument})
    return StepPlan(stage=CALCULATE, backend=TOOLS_BACKEND, calls=[call])
