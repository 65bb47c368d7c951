"""Code generation with a test loop (`code_gen`): write a function, run its tests, fix, rerun.

    write_code (llm) ─▶ run_tests (code) ─▶ END  (tests pass, or no tries left)
                                         ─▶ fix_code (llm) ─▶ run_tests ...

The model's reply is reduced to code (the first fenced block that defines the function, else
the text from the first `def`/`import`, else the raw text) and written to `solution.py`; the
task's tests (`test_solution.py`, which imports `solution`) run in the code sandbox. A run passes
only if the tests exit cleanly *and* print the runner's marker, so a solution that exits the
interpreter early does not pass. A failure's traceback tail is what the fix prompt shows the
model. `max_tries` bounds the runs of the tests.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hermesflow.apps.program import AppProgram, Finished, ProgramState, StepPlan, Transition
from hermesflow.apps.suite_data import code_tasks
from hermesflow.apps.suite_steps import (
    CHARS_PER_TOKEN,
    CODE_BACKEND,
    RUN_PYTHON_EXEC_S,
    RUN_PYTHON_TOOL,
    chat,
    check_results,
    clip,
    counts_prior,
    draw_weighted,
    expect_inputs,
    failed,
    generated_text,
    input_tokens_prior,
    llm_stage,
    tool_stage,
    unknown_stage,
    weighted_population,
)
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.pdgraph.model import END, LLM_BACKEND, PDGraph, StageKind

WRITE = "write_code"
RUN = "run_tests"
FIX = "fix_code"

MAX_TRIES_LIMIT = 3
MAX_TRIES_WEIGHTS = {1: 1, 2: 2, 3: 2}
"""How often demo runs allow each number of test runs (relative weights)."""
ASSUMED_PASSING_TRY: tuple[int | None, ...] = (1, 2, None, None)
"""Prior only: the try whose code passes (None: none does; a 135M model rarely gets it right)."""

CODE_MAX_TOKENS = 96
CODE_MAX_CHARS = 800
FEEDBACK_MAX_CHARS = 300
RUN_TIMEOUT_S = 10.0

SOLUTION_FILE = "solution.py"
TESTS_FILE = "test_solution.py"
PASS_MARKER = "ALL TESTS PASSED"
TEST_RUNNER = f"""\
import os, sys
sys.path.insert(0, os.getcwd())
with open({TESTS_FILE!r}) as tests:
    exec(compile(tests.read(), {TESTS_FILE!r}, "exec"), {{"__name__": "__main__"}})
print({PASS_MARKER!r})
"""
"""The sandbox's `source`: run the tests (which import `solution`) from the working directory."""

SYSTEM = "You write short, correct Python functions. Reply with one ```python code block."

_FENCED = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_CODE_START = re.compile(r"^(?:def |import |from |class |@)", re.MULTILINE)


class CodeGenInputs(BaseModel):
    """A function to write, the tests that judge it, and how many test runs are allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function_name: Annotated[str, Field(min_length=1, max_length=100)]
    prompt: Annotated[str, Field(min_length=1, max_length=2000)]
    tests: Annotated[str, Field(min_length=1, max_length=20_000)]
    max_tries: Annotated[int, Field(ge=1, le=MAX_TRIES_LIMIT)] = 2
    task_id: str | None = None

    @field_validator("function_name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(
                f"{name!r} is not a Python function name; use an identifier like 'add'"
            )
        return name

    @field_validator("tests")
    @classmethod
    def _imports_solution(cls, tests: str) -> str:
        if not re.search(
            r"^\s*(?:from\s+solution\s+import|import\s+solution\b)", tests, re.MULTILINE
        ):
            raise ValueError(
                "the tests must import the generated code from the module 'solution', e.g. "
                "'from solution import add' followed by asserts"
            )
        return tests


def extract_code(output: str, function_name: str) -> str:
    """The code in a model reply (module docstring)."""
    blocks = [b.strip() for b in _FENCED.findall(output) if b.strip()]
    if blocks:
        return next((b for b in blocks if f"def {function_name}" in b), blocks[0]) + "\n"
    start = _CODE_START.search(output)
    return (output[start.start() :] if start else output).strip() + "\n"


def write_call(inputs: CodeGenInputs) -> LLMCall:
    return chat(
        SYSTEM,
        f"{inputs.prompt}\nName the function {inputs.function_name}.",
        CODE_MAX_TOKENS,
    )


def fix_call(inputs: CodeGenInputs, code: str, feedback: str) -> LLMCall:
    user = (
        f"Task: {inputs.prompt}\nThis code failed its tests:\n"
        f"```python\n{clip(code, CODE_MAX_CHARS)}\n```\n"
        f"Error:\n{feedback}\nReply with the corrected code block."
    )
    return chat(SYSTEM, user, CODE_MAX_TOKENS)


def run_call(inputs: CodeGenInputs, code: str) -> ToolCall:
    return ToolCall(
        tool=RUN_PYTHON_TOOL,
        args={
            "source": TEST_RUNNER,
            "stdin": "",
            "files": {SOLUTION_FILE: code, TESTS_FILE: inputs.tests},
        },
        timeout_s=RUN_TIMEOUT_S,
    )


def read_test_run(result: CallResult) -> tuple[bool, str]:
    """(passed, feedback for the fix prompt)."""
    if failed(result):
        return False, clip(
            f"the test run failed: {result.error or 'no result'}", FEEDBACK_MAX_CHARS
        )
    value = result.value
    if not isinstance(value, dict):
        return False, "the test run returned no result"
    if value.get("timed_out"):
        return False, "the tests timed out (an endless loop?)"
    stdout, stderr = str(value.get("stdout") or ""), str(value.get("stderr") or "")
    if value.get("returncode") == 0:
        if PASS_MARKER in stdout:
            return True, ""
        return False, "the tests did not run to the end: does the code exit the interpreter?"
    tail = _last_lines((stderr or stdout).strip(), FEEDBACK_MAX_CHARS)
    return False, tail or f"the tests exited with code {value.get('returncode')!r} and no output"


def _last_lines(text: str, max_chars: int) -> str:
    """The end of a traceback, where the error is, cut at a line start."""
    if len(text) <= max_chars:
        return text
    tail = text[-max_chars:]
    return "..." + tail[tail.find("\n") :] if "\n" in tail else "..." + tail


class CodeGenTestLoop(AppProgram):
    """Write → test → fix → test ... (module docstring)."""

    app_class: ClassVar[str] = "code_gen"
    Inputs: ClassVar[type[BaseModel]] = CodeGenInputs

    def start(self, inputs: BaseModel) -> Transition:
        own = expect_inputs(inputs, CodeGenInputs, self.app_class)
        return Transition(
            state={"tries": 0},
            next=StepPlan(stage=WRITE, backend=LLM_BACKEND, calls=[write_call(own)]),
        )

    def advance(
        self, inputs: BaseModel, state: ProgramState, step: StepPlan, results: list[CallResult]
    ) -> Transition:
        own = expect_inputs(inputs, CodeGenInputs, self.app_class)
        check_results(self.app_class, step, results)
        if step.stage in (WRITE, FIX):
            code = extract_code(generated_text(results[0]), own.function_name)
            return Transition(
                state={**state, "code": code, "tries": state["tries"] + 1},
                next=StepPlan(stage=RUN, backend=CODE_BACKEND, calls=[run_call(own, code)]),
            )
        if step.stage == RUN:
            passed, feedback = read_test_run(results[0])
            state = {**state, "feedback": feedback}
            if passed or state["tries"] >= own.max_tries:
                return Transition(state=state, next=Finished(result=_result(state, passed)))
            call = fix_call(own, state["code"], feedback)
            return Transition(
                state=state, next=StepPlan(stage=FIX, backend=LLM_BACKEND, calls=[call])
            )
        raise unknown_stage(self.app_class, step.stage, (WRITE, RUN, FIX))

    def sample_inputs(self, rng: np.random.Generator) -> BaseModel:
        tasks = code_tasks()
        task = tasks[int(rng.integers(len(tasks)))]
        return CodeGenInputs(
            function_name=task.function_name,
            prompt=task.prompt,
            tests=task.tests,
            max_tries=draw_weighted(rng, MAX_TRIES_WEIGHTS),
            task_id=task.id,
        )

    def prior(self) -> PDGraph:
        """Test runs per app: the tries allowed by the inputs met by the assumed passing try; fix
        prompts carry a full-length reply and feedback."""
        runs = [
            budget if passing is None else min(budget, passing)
            for budget in weighted_population(MAX_TRIES_WEIGHTS)
            for passing in ASSUMED_PASSING_TRY
        ]
        fix_share = (sum(runs) - len(runs)) / sum(runs)
        tasks = [
            CodeGenInputs(function_name=t.function_name, prompt=t.prompt, tests=t.tests)
            for t in code_tasks()
        ]
        full_reply = "." * (CODE_MAX_TOKENS * CHARS_PER_TOKEN)
        full_feedback = "." * FEEDBACK_MAX_CHARS
        return PDGraph(
            name=self.app_class,
            entry={WRITE: 1.0},
            stages={
                WRITE: llm_stage(
                    {RUN: 1.0},
                    input_tokens_prior(write_call(t) for t in tasks),
                    CODE_MAX_TOKENS,
                    short_reply=False,
                ),
                RUN: tool_stage(
                    StageKind.CODE,
                    CODE_BACKEND,
                    {FIX: fix_share, END: 1 - fix_share},
                    RUN_PYTHON_EXEC_S,
                    visits=counts_prior(runs, unit="visits"),
                ),
                FIX: llm_stage(
                    {RUN: 1.0},
                    input_tokens_prior(fix_call(t, full_reply, full_feedback) for t in tasks),
                    CODE_MAX_TOKENS,
                    short_reply=False,
                ),
            },
        )


def _result(state: ProgramState, passed: bool) -> dict[str, Any]:
    return {
        "passed": passed,
        "tries": state["tries"],
        "code": state["code"],
        "feedback": state["feedback"] or None,
    }
