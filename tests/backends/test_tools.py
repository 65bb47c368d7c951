"""The built-in tools, tool signatures, and `PythonToolPool`: results, errors as observations,
timeouts that kill and replace a worker, and the program bugs that raise."""

from __future__ import annotations

import asyncio
import math
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hermesflow.backends.base import BackendSpec, make_backend
from hermesflow.backends.builtin_tools import BUILTIN_TOOLS, calculator, sleep, word_count
from hermesflow.backends.calls import CallErrorCode, CallResult, LLMCall, ToolCall
from hermesflow.backends.tools import PythonToolPool, ToolSignature

if TYPE_CHECKING:
    from conftest import LoopThread

EXTRA_TOOLS_MODULE = "hermes_test_extra_tools"
EXTRA_TOOLS = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    def echo(value, repeat: int = 1):
        return [value] * repeat

    def fail(message: str):
        raise RuntimeError(message)

    def not_json():
        return {1, 2}

    def die(code: int = 3):
        os._exit(code)

    def spin(pid_file: str):
        Path(pid_file).write_text(str(os.getpid()))
        while True:
            pass

    def pid() -> int:
        return os.getpid()

    def span(seconds: float) -> list[float]:
        started = time.time()
        time.sleep(seconds)
        return [started, time.time()]

    def anything(**kwargs):
        return sorted(kwargs)

    def positional(a, /):
        return a
    """
)
TOOL_NAMES = ("echo", "fail", "not_json", "die", "spin", "pid", "span", "anything")


@pytest.fixture(scope="module")
def extra_tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Test tools in a module on sys.path (which the workers inherit), name → import path."""
    folder = tmp_path_factory.mktemp("tools")
    (folder / f"{EXTRA_TOOLS_MODULE}.py").write_text(EXTRA_TOOLS)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield {name: f"{EXTRA_TOOLS_MODULE}:{name}" for name in TOOL_NAMES}


@pytest.fixture(scope="module")
def pool(backend_loop: LoopThread, extra_tools: dict[str, str]) -> Iterator[PythonToolPool]:
    backend = PythonToolPool("tools", tools={**BUILTIN_TOOLS, **extra_tools}, workers=2)
    backend_loop.run(backend.load())
    yield backend
    backend_loop.run(backend.unload())


def call(
    runner: LoopThread, pool: PythonToolPool, tool: str, timeout_s: float = 10.0, **args: object
) -> CallResult:
    return runner.run(pool.run(ToolCall(tool=tool, args=args, timeout_s=timeout_s)))


async def run_together(pool: PythonToolPool, calls: list[ToolCall]) -> list[CallResult]:
    return list(await asyncio.gather(*(pool.run(c) for c in calls)))


# ---------------------------------------------------------------------------------------------
# The built-in tools, called directly.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 10", 1024),
        ("-3 ** 2", -9),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("10 / 4", 2.5),
        ("sqrt(16) + log(e)", 5),
        ("log(8, 2)", 3),
        ("sin(pi / 2)", 1),
        (" 1.5e3 ", 1500),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, expected: float) -> None:
    result = calculator(expression)
    assert isinstance(result, float)
    assert math.isclose(result, expected)


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os').system('true')", ValueError),
        ("x + 1", ValueError),
        ("(1).real", ValueError),
        ("'a' * 3", ValueError),
        ("True + 1", ValueError),
        ("lambda: 1", ValueError),
        ("[1, 2]", ValueError),
        ("sqrt(x=4)", ValueError),
        ("1 if 1 else 2", ValueError),
        ("", ValueError),
        ("1 +", ValueError),
        ("(-8) ** 0.5", ValueError),
        ("1" * 1001, ValueError),
        ("10 ** 400", OverflowError),
        ("9 ** 9 ** 9", OverflowError),
        ("1e308 * 10", OverflowError),
        ("1 / 0", ZeroDivisionError),
    ],
)
def test_calculator_refuses_anything_but_arithmetic(
    expression: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        calculator(expression)


def test_word_count_and_sleep() -> None:
    assert word_count("  one two\nthree ") == 3
    assert word_count("") == 0
    started = time.perf_counter()
    assert sleep(0.05) == 0.05
    assert time.perf_counter() - started >= 0.05
    with pytest.raises(ValueError, match="between 0 and"):
        sleep(-1)


# ---------------------------------------------------------------------------------------------
# Signatures.
# ---------------------------------------------------------------------------------------------


def test_signature_describes_and_checks_arguments() -> None:
    def tool(query: str, k: int = 3) -> list[str]:
        """Find things.

        More detail that a prompt does not need."""
        return []

    signature = ToolSignature.of_function("find", tool)
    assert str(signature) == "find(query: str, k: int = 3)"
    assert signature.summary == "Find things."
    signature.check({"query": "x"})
    with pytest.raises(
        ValueError, match=r"missing \['query'\].*unknown \['q'\].*find\(query: str, k: int = 3\)"
    ):
        signature.check({"q": "x"})


def test_signature_of_kwargs_tool_accepts_any_name_and_positional_only_is_refused() -> None:
    def tool(a: int, **rest: object) -> None: ...

    def positional(a: int, /) -> None: ...

    ToolSignature.of_function("t", tool).check({"a": 1, "b": 2})
    with pytest.raises(ValueError, match="positional-only"):
        ToolSignature.of_function("p", positional)


# ---------------------------------------------------------------------------------------------
# The pool.
# ---------------------------------------------------------------------------------------------


def test_pool_serves_the_builtin_tools(backend_loop: LoopThread, pool: PythonToolPool) -> None:
    result = call(backend_loop, pool, "calculator", expression="sqrt(16) + 2 ** 10")
    assert (result.finish_reason, result.value, result.text, result.error) == (
        "stop",
        1028.0,
        "1028.0",
        None,
    )
    assert result.seconds > 0
    assert call(backend_loop, pool, "word_count", text="a b c").value == 3
    assert str(pool.signatures["calculator"]) == "calculator(expression: str)"


def test_json_values_and_their_text(backend_loop: LoopThread, pool: PythonToolPool) -> None:
    result = call(backend_loop, pool, "echo", value={"a": [1, 2]}, repeat=2)
    assert result.value == [{"a": [1, 2]}, {"a": [1, 2]}]
    assert result.text == '[{"a": [1, 2]}, {"a": [1, 2]}]'
    assert call(backend_loop, pool, "echo", value="plain").text == '["plain"]'
    assert call(backend_loop, pool, "anything", b=1, a=2).value == ["a", "b"]


def test_calls_run_in_parallel_up_to_the_capacity(
    backend_loop: LoopThread, pool: PythonToolPool
) -> None:
    spans = [ToolCall(tool="span", args={"seconds": 0.3})] * pool.capacity
    results = backend_loop.run(run_together(pool, spans))
    starts, ends = zip(*(r.value for r in results), strict=True)
    assert max(starts) < min(ends), "the calls did not overlap"


def test_a_cancelled_call_kills_its_worker(
    backend_loop: LoopThread, pool: PythonToolPool, tmp_path: Path, gone: Callable[[int], bool]
) -> None:
    pid_file = tmp_path / "pid"

    async def cancel_spin() -> None:
        task = asyncio.create_task(
            pool.run(ToolCall(tool="spin", args={"pid_file": str(pid_file)}))
        )
        while not pid_file.exists() or not pid_file.read_text():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    backend_loop.run(cancel_spin())
    assert gone(int(pid_file.read_text()))
    assert call(backend_loop, pool, "word_count", text="still serving").value == 2


def test_a_raising_tool_gives_an_error_result(
    backend_loop: LoopThread, pool: PythonToolPool
) -> None:
    result = call(backend_loop, pool, "fail", message="boom")
    assert result.finish_reason == "error"
    assert result.error == "tool 'fail' raised RuntimeError: boom"
    assert result.text == "" and result.error_code is CallErrorCode.TOOL_ERROR
    refused = call(backend_loop, pool, "calculator", expression="__import__('os')")
    assert refused.finish_reason == "error" and "is not allowed" in refused.error
    assert refused.error_code is CallErrorCode.TOOL_ERROR and refused.error_code.deterministic


def test_a_result_that_is_not_json_gives_an_error_result(
    backend_loop: LoopThread, pool: PythonToolPool
) -> None:
    result = call(backend_loop, pool, "not_json")
    assert result.finish_reason == "error"
    assert "not JSON-serialisable" in result.error
    assert result.error_code is CallErrorCode.TOOL_ERROR


def test_a_tool_past_its_timeout_is_killed_and_its_worker_replaced(
    backend_loop: LoopThread, pool: PythonToolPool, tmp_path: Path, gone: Callable[[int], bool]
) -> None:
    pid_file = tmp_path / "pid"
    started = time.perf_counter()
    result = call(backend_loop, pool, "spin", timeout_s=0.5, pid_file=str(pid_file))
    assert time.perf_counter() - started < 2.0
    assert result.finish_reason == "error"
    assert result.error == "tool 'spin' timed out after 0.5 s; its worker was killed"
    assert result.error_code is None, "a timeout may pass when tried again"
    assert gone(int(pid_file.read_text()))
    pids = backend_loop.run(run_together(pool, [ToolCall(tool="pid")] * 4))
    assert all(r.finish_reason == "stop" for r in pids)
    assert int(pid_file.read_text()) not in {r.value for r in pids}


def test_a_worker_that_dies_is_replaced(backend_loop: LoopThread, pool: PythonToolPool) -> None:
    result = call(backend_loop, pool, "die", code=3)
    assert result.finish_reason == "error"
    assert result.error == "the worker running 'die' died (exit code 3)"
    assert result.error_code is None, "a dead worker may be a passing fault"
    assert call(backend_loop, pool, "calculator", expression="1 + 1").value == 2.0


def test_program_bugs_raise(backend_loop: LoopThread, pool: PythonToolPool) -> None:
    with pytest.raises(
        ValueError, match=r"unknown tool 'nope'; its tools: calculator\(expression: str\), sleep"
    ):
        call(backend_loop, pool, "nope")
    with pytest.raises(
        ValueError, match=r"missing \['expression'\].*it takes calculator\(expression: str\)"
    ):
        call(backend_loop, pool, "calculator", expr="1")
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        call(backend_loop, pool, "word_count", text="a", extra=1)
    with pytest.raises(TypeError, match="serves tool calls, not 'llm' calls"):
        backend_loop.run(pool.run(LLMCall(prompt="hi")))


def test_unload_stops_the_workers_and_load_starts_them_again(
    extra_tools: dict[str, str], gone: Callable[[int], bool]
) -> None:
    async def scenario() -> tuple[int, int]:
        backend = PythonToolPool("one", tools={"pid": extra_tools["pid"]}, workers=1)
        with pytest.raises(RuntimeError, match="not loaded"):
            await backend.run(ToolCall(tool="pid"))
        await backend.load()
        first = (await backend.run(ToolCall(tool="pid"))).value
        await backend.unload()
        assert gone(first)
        await backend.load()
        second = (await backend.run(ToolCall(tool="pid"))).value
        await backend.unload()
        return first, second

    first, second = asyncio.run(scenario())
    assert first != second
    assert gone(second)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "hermes_no_such_module:f",
            r"tool 'bad': cannot import 'hermes_no_such_module' \(ModuleNotFoundError",
        ),
        (
            f"{EXTRA_TOOLS_MODULE}:missing",
            rf"tool 'bad': module '{EXTRA_TOOLS_MODULE}' has no function 'missing'",
        ),
        (f"{EXTRA_TOOLS_MODULE}:positional", "parameter 'a' is positional-only"),
    ],
)
def test_load_fails_clearly_on_a_wrong_tool(
    extra_tools: dict[str, str], path: str, message: str
) -> None:
    backend = PythonToolPool("broken", tools={"pid": extra_tools["pid"], "bad": path}, workers=1)
    with pytest.raises(ImportError, match=message):
        asyncio.run(backend.load())


@pytest.mark.parametrize("path", ["no_colon", "a:b:c", ":f", "module:", "module:not-a-name"])
def test_malformed_tool_paths_are_refused_at_construction(path: str) -> None:
    with pytest.raises(ValueError, match="must read 'module:function'"):
        PythonToolPool("p", tools={"t": path})


@pytest.mark.parametrize(
    ("type_name", "options", "class_name"),
    [
        ("python-tools", {"workers": 3}, "PythonToolPool"),
        ("code", {"workers": 1, "max_output_bytes": 100}, "CodeExecutor"),
        ("search", {"batch_size": 8}, "SearchIndex"),
    ],
)
def test_tool_backend_types_are_built_from_specs(
    type_name: str, options: dict, class_name: str
) -> None:
    backend = make_backend(BackendSpec(name="b", type=type_name, options=options))
    assert type(backend).__name__ == class_name
    assert backend.type_name == type_name
    with pytest.raises(ValueError, match="bad options"):
        make_backend(BackendSpec(name="b", type=type_name, options={"no_such_option": 1}))
