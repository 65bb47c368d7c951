"""Code generation with a test loop, driven with hand-written results (pass first try, fail
then pass, out of tries, sandbox failures), code extraction, validation — and the test runner
itself, run for real against the shipped tasks in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hermesflow.apps.code_gen import (
    FIX,
    PASS_MARKER,
    RUN,
    SOLUTION_FILE,
    TEST_RUNNER,
    TESTS_FILE,
    WRITE,
    CodeGenInputs,
    CodeGenTestLoop,
    extract_code,
    read_test_run,
)
from hermesflow.apps.suite_data import code_tasks
from hermesflow.backends.calls import CallResult

TESTS = "from solution import add\nassert add(2, 3) == 5\n"
GOOD = "```python\ndef add(a, b):\n    return a + b\n```"
BAD = "```python\ndef add(a, b):\n    return a - b\n```"
TRACEBACK = (
    'Traceback (most recent call last):\n  File "test_solution.py", line 2\n'
    "    assert add(2, 3) == 5\nAssertionError"
)


def ran(
    returncode: int | None, stdout: str = "", stderr: str = "", timed_out: bool = False
) -> list[CallResult]:
    value = {"returncode": returncode, "stdout": stdout, "stderr": stderr, "timed_out": timed_out}
    return [CallResult(text=stdout + stderr, value=value)]


PASSED = ran(0, stdout=PASS_MARKER + "\n")
FAILED = ran(1, stderr=TRACEBACK)


def says(text: str) -> list[CallResult]:
    return [CallResult(text=text)]


@pytest.fixture
def program() -> CodeGenTestLoop:
    return CodeGenTestLoop()


def inputs(max_tries: int = 3) -> CodeGenInputs:
    return CodeGenInputs(
        function_name="add", prompt="Write add(a, b).", tests=TESTS, max_tries=max_tries
    )


def test_tests_pass_at_the_first_try(program, drive_app, scripted) -> None:
    run = drive_app(program, inputs(), scripted(says(GOOD), PASSED))
    assert run.stages == [WRITE, RUN]
    call = run.steps[1].calls[0]
    assert run.steps[1].backend == "code" and call.tool == "run_python"
    assert call.args == {
        "source": TEST_RUNNER,
        "stdin": "",
        "files": {SOLUTION_FILE: "def add(a, b):\n    return a + b\n", TESTS_FILE: TESTS},
    }
    assert run.result == {
        "passed": True,
        "tries": 1,
        "code": "def add(a, b):\n    return a + b\n",
        "feedback": None,
    }


def test_failing_tests_are_fixed_with_the_error(program, drive_app, scripted) -> None:
    run = drive_app(program, inputs(), scripted(says(BAD), FAILED, says(GOOD), PASSED))
    assert run.stages == [WRITE, RUN, FIX, RUN]
    fix_prompt = run.steps[2].calls[0].messages[-1].content
    assert "return a - b" in fix_prompt and "AssertionError" in fix_prompt
    assert (
        run.steps[3].calls[0].args["files"][SOLUTION_FILE] == "def add(a, b):\n    return a + b\n"
    )
    assert run.result["passed"] is True and run.result["tries"] == 2


@pytest.mark.parametrize("max_tries", [1, 2, 3])
def test_the_loop_stops_when_tries_run_out(program, drive_app, scripted, max_tries) -> None:
    steps = [says(BAD), FAILED] + [says(BAD), FAILED] * (max_tries - 1)
    run = drive_app(program, inputs(max_tries), scripted(*steps))
    assert run.stages.count(RUN) == max_tries and run.stages.count(FIX) == max_tries - 1
    assert run.result["passed"] is False and run.result["tries"] == max_tries
    assert "AssertionError" in run.result["feedback"]


@pytest.mark.parametrize(
    ("results", "feedback"),
    [
        (ran(None, timed_out=True), "timed out"),
        ([CallResult(finish_reason="error", error="sandbox unavailable")], "sandbox unavailable"),
        ([CallResult(text="?", value="not a dict")], "no result"),
        (ran(0, stdout="bye\n"), "did not run to the end"),  # exited early: no marker
        (ran(0), "did not run to the end"),
        (ran(2), "exited with code 2 and no output"),
    ],
)
def test_a_run_passes_only_with_a_clean_exit_and_the_marker(results, feedback) -> None:
    passed, text = read_test_run(results[0])
    assert passed is False and feedback in text


def test_the_fix_prompt_shows_only_the_tail_of_long_errors(program, drive_app, scripted) -> None:
    long_error = ran(1, stderr="x" * 5000 + "\nAssertionError: last line")
    run = drive_app(program, inputs(2), scripted(says(BAD), long_error, says(BAD), FAILED))
    prompt = run.steps[2].calls[0].messages[-1].content
    assert "AssertionError: last line" in prompt and "x" * 400 not in prompt


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (GOOD, "def add(a, b):\n    return a + b\n"),
        ("Sure!\n```\ndef add(a, b): return a+b\n```\nDone.", "def add(a, b): return a+b\n"),
        (
            "```python\nimport math\n```\n```python\ndef add(a, b):\n    return 0\n```",
            "def add(a, b):\n    return 0\n",
        ),
        ("Here it is:\ndef add(a, b):\n    return a + b", "def add(a, b):\n    return a + b\n"),
        (
            "```python\ndef add(a, b):\n    return a",
            "def add(a, b):\n    return a\n",
        ),  # cut at max_tokens
        ("I don't know.", "I don't know.\n"),
        ("", "\n"),
    ],
)
def test_code_extraction(reply: str, code: str) -> None:
    assert extract_code(reply, "add") == code


def _run_for_real(tmp_path: Path, solution: str, tests: str) -> CallResult:
    (tmp_path / SOLUTION_FILE).write_text(solution)
    (tmp_path / TESTS_FILE).write_text(tests)
    done = subprocess.run(
        [sys.executable, "-c", TEST_RUNNER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    value = {
        "returncode": done.returncode,
        "stdout": done.stdout,
        "stderr": done.stderr,
        "timed_out": False,
    }
    return CallResult(value=value)


def test_the_runner_passes_a_correct_solution(tmp_path: Path) -> None:
    passed, _ = read_test_run(_run_for_real(tmp_path, "def add(a, b):\n    return a + b\n", TESTS))
    assert passed


def test_the_runner_reports_the_failing_assert(tmp_path: Path) -> None:
    passed, feedback = read_test_run(
        _run_for_real(tmp_path, "def add(a, b):\n    return a - b\n", TESTS)
    )
    assert not passed and "assert add(2, 3) == 5" in feedback and "AssertionError" in feedback


def test_the_runner_is_not_fooled_by_an_early_exit(tmp_path: Path) -> None:
    passed, _ = read_test_run(_run_for_real(tmp_path, "import sys\nsys.exit(0)\n", TESTS))
    assert not passed


@pytest.mark.parametrize("task", code_tasks(), ids=lambda t: t.function_name)
def test_every_shipped_task_fails_without_a_solution(tmp_path: Path, task) -> None:
    """The tests really test: a stub that returns None fails them all."""
    stub = f"def {task.function_name}(*args, **kwargs):\n    return None\n"
    passed, feedback = read_test_run(_run_for_real(tmp_path, stub, task.tests))
    assert not passed and "Error" in feedback
    assert CodeGenInputs(function_name=task.function_name, prompt=task.prompt, tests=task.tests)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"function_name": "not a name"}, "not a Python function name"),
        ({"function_name": "class"}, "not a Python function name"),
        (
            {"tests": "assert add(1, 1) == 2"},
            "import the generated code from the module 'solution'",
        ),
        ({"max_tries": 0}, "greater than or equal to 1"),
        ({"max_tries": 4}, "less than or equal to 3"),
        ({"prompt": ""}, "at least 1 character"),
    ],
)
def test_invalid_inputs_are_refused_with_the_field(program, fields, message) -> None:
    raw = {"function_name": "add", "prompt": "Write add.", "tests": TESTS, **fields}
    with pytest.raises(ValidationError, match=message) as error:
        program.validate_inputs(raw)
    assert "CodeGenInputs" in str(error.value)
