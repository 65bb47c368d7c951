"""`CodeExecutor`, once per isolation that works on this machine: output, stdin, files,
failures, timeouts that leave no process behind, no network, limits, a bare environment."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.backends.code_exec import CodeExecutor

if TYPE_CHECKING:
    from conftest import LoopThread

MAX_OUTPUT_BYTES = 1024


@pytest.fixture(scope="module", params=["netns", "audit-hook"])
def executor(request: pytest.FixtureRequest, backend_loop: LoopThread) -> Iterator[CodeExecutor]:
    backend = CodeExecutor("code", isolation=request.param, max_output_bytes=MAX_OUTPUT_BYTES)
    try:
        backend_loop.run(backend.load())
    except RuntimeError as error:
        pytest.skip(f"no {request.param} isolation here: {error}")
    assert backend.isolation == request.param
    yield backend
    backend_loop.run(backend.unload())


def run_code(
    runner: LoopThread,
    executor: CodeExecutor,
    source: str,
    timeout_s: float = 20.0,
    **args: object,
) -> CallResult:
    call = ToolCall(
        tool="run_python", args={"source": textwrap.dedent(source), **args}, timeout_s=timeout_s
    )
    return runner.run(executor.run(call))


def test_prints(backend_loop: LoopThread, executor: CodeExecutor) -> None:
    result = run_code(backend_loop, executor, "print('hello', 6 * 7)")
    assert result.finish_reason == "stop"
    assert result.value == {
        "returncode": 0,
        "stdout": "hello 42\n",
        "stderr": "",
        "timed_out": False,
    }
    assert result.text == "returncode: 0\nstdout:\nhello 42\n"


def test_reads_stdin_and_files(backend_loop: LoopThread, executor: CodeExecutor) -> None:
    source = """
        import sys
        from helpers.shout import shout
        print(shout(sys.stdin.read()), open('data/x.txt').read())
    """
    files = {
        "data/x.txt": "from a file",
        "helpers/__init__.py": "",
        "helpers/shout.py": "def shout(s):\n    return s.upper()\n",
    }
    result = run_code(backend_loop, executor, source, stdin="quiet", files=files)
    assert result.value["stdout"] == "QUIET from a file\n"


def test_an_exception_is_a_nonzero_returncode_with_the_traceback(
    backend_loop: LoopThread, executor: CodeExecutor
) -> None:
    result = run_code(backend_loop, executor, "def f():\n    return 1 / 0\nf()\n")
    assert result.finish_reason == "stop", "a failing program is an observation, not a tool failure"
    assert result.value["returncode"] == 1
    stderr = result.value["stderr"]
    assert stderr.startswith("Traceback (most recent call last):\n  File ")
    assert (
        'main.py", line 3, in <module>' in stderr
        and "ZeroDivisionError: division by zero" in stderr
    )
    assert "runpy" not in stderr, "the bootstrap's frames are hidden"
    assert run_code(backend_loop, executor, "import sys; sys.exit(7)").value["returncode"] == 7


def test_output_is_truncated(backend_loop: LoopThread, executor: CodeExecutor) -> None:
    result = run_code(backend_loop, executor, "print('x' * 5000)")
    stdout = result.value["stdout"]
    assert stdout.startswith("x" * MAX_OUTPUT_BYTES)
    assert stdout.endswith(f"[... {5001 - MAX_OUTPUT_BYTES} more bytes cut]")


def test_a_timeout_kills_the_program_and_its_children(
    backend_loop: LoopThread, executor: CodeExecutor, gone: Callable[[int], bool]
) -> None:
    spawn_child = """
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
    """
    source = f"""
        import os, subprocess, sys
        print(os.getpid(), flush=True)
        {spawn_child if executor.isolation == "netns" else ""}
        while True:
            pass
    """
    result = run_code(backend_loop, executor, source, timeout_s=1.5)
    assert result.finish_reason == "error"
    assert result.error == "run_python timed out after 1.5 s; the program was killed"
    assert result.value["timed_out"] is True and result.value["returncode"] == -9
    for pid in map(int, result.value["stdout"].split()):
        assert gone(pid), f"process {pid} outlived the timeout"


def test_the_audit_hook_refuses_processes(backend_loop: LoopThread, executor: CodeExecutor) -> None:
    if executor.isolation != "audit-hook":
        pytest.skip("only the audit-hook sandbox refuses processes (a network namespace need not)")
    for source in (
        "import subprocess; subprocess.run(['true'])",
        "import os; os.system('true')",
        "import os; os.fork()",
    ):
        result = run_code(backend_loop, executor, source)
        assert result.value["returncode"] == 1
        assert (
            "refused: this sandbox has no network and starts no programs" in result.value["stderr"]
        )


def test_children_left_behind_are_killed(
    backend_loop: LoopThread, executor: CodeExecutor, gone: Callable[[int], bool]
) -> None:
    """The program ends while a child it started still holds its stdout: the call ends with
    the program, not at the timeout, and the child is killed."""
    if executor.isolation == "audit-hook":
        pytest.skip("the audit-hook sandbox starts no processes")
    source = """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid)
    """
    result = run_code(backend_loop, executor, source, timeout_s=10)
    assert result.finish_reason == "stop" and result.value["timed_out"] is False
    assert result.value["returncode"] == 0
    assert result.seconds < 5
    assert gone(int(result.value["stdout"]))


def test_unread_stdin_is_no_error(backend_loop: LoopThread, executor: CodeExecutor) -> None:
    result = run_code(backend_loop, executor, "print('done')", stdin="x" * (1 << 20))
    assert result.value == {"returncode": 0, "stdout": "done\n", "stderr": "", "timed_out": False}


def test_no_network_even_to_a_listening_local_socket(
    backend_loop: LoopThread, executor: CodeExecutor
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        source = f"""
            import socket
            try:
                with socket.socket() as client:
                    client.settimeout(5)
                    client.connect(("127.0.0.1", {port}))
                print("CONNECTED")
            except OSError as error:
                print(type(error).__name__, error)
        """
        result = run_code(backend_loop, executor, source)
        with pytest.raises(BlockingIOError):
            server.accept()
    stdout = result.value["stdout"]
    assert "CONNECTED" not in stdout
    expected = (
        "Network is unreachable" if executor.isolation == "netns" else "socket.connect refused"
    )
    assert expected in stdout


def test_memory_is_limited(backend_loop: LoopThread, executor: CodeExecutor) -> None:
    result = run_code(backend_loop, executor, "block = bytearray(2 << 30)")
    assert result.value["returncode"] == 1
    assert "MemoryError" in result.value["stderr"]


def test_the_environment_is_bare_and_the_directory_removed(
    backend_loop: LoopThread, executor: CodeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERMES_TEST_SECRET", "s3cret")
    source = """
        import os
        print(os.getcwd())
        print(sorted(os.environ))
    """
    workdir, names = run_code(backend_loop, executor, source).value["stdout"].splitlines()
    assert "HERMES_TEST_SECRET" not in names and "HOME" in names
    assert not Path(workdir).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"source": 1}, "source: Input should be a valid string"),
        ({"source": "", "files": {"../escape.txt": ""}}, "relative path"),
        ({"source": "", "files": {"/etc/x": ""}}, "relative path"),
        ({"source": "", "files": {"main.py": ""}}, "relative path"),
        ({"source": "", "stdin": None}, "stdin: Input should be a valid string"),
        ({"code": "print(1)"}, r"missing \['source'\]; unknown \['code'\]"),
    ],
)
def test_bad_arguments_raise(
    backend_loop: LoopThread, executor: CodeExecutor, args: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        backend_loop.run(executor.run(ToolCall(tool="run_python", args=args)))


def test_llm_calls_and_unknown_tools_raise(
    backend_loop: LoopThread, executor: CodeExecutor
) -> None:
    with pytest.raises(TypeError, match="serves tool calls"):
        backend_loop.run(executor.run(LLMCall(prompt="print(1)")))
    listed = r"run_python\(source: str, stdin: str = '', files: dict\[str, str\] = \{\}\)"
    with pytest.raises(ValueError, match=rf"unknown tool 'python'; its tools: {listed}"):
        backend_loop.run(executor.run(ToolCall(tool="python", args={"source": ""})))


def test_auto_isolation_prefers_netns_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    try:
        asyncio.run(CodeExecutor("netns", isolation="netns").load())
        expected = "netns"
    except RuntimeError:
        expected = "audit-hook"
    backend = CodeExecutor("auto")
    with caplog.at_level(logging.INFO, logger="hermesflow.backends.code_exec"):
        asyncio.run(backend.load())
    assert backend.isolation == expected
    assert f"isolation {expected}" in caplog.text


def _interpreter_for(user: str) -> str | None:
    """An interpreter `user` can run: this one, or the system's (the bootstrap needs only the
    standard library)."""
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(
            ["runuser", "-u", user, "--", python, "-I", "-c", "pass"], capture_output=True
        )
        if probe.returncode == 0:
            return python
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when started as root")
def test_started_as_root_the_program_runs_as_nobody(backend_loop: LoopThread) -> None:
    python = _interpreter_for("nobody")
    if python is None:
        pytest.skip("user nobody can run no Python interpreter here")
    backend = CodeExecutor("dropped", python=python)
    backend_loop.run(backend.load())
    assert backend.user == "nobody"
    source = """
        import resource
        open("mine.txt", "w").write("the directory is the program's")
        print(resource.getrlimit(resource.RLIMIT_NPROC)[0])
        open("/root/hermesflow-sandbox-probe", "w")
    """
    result = run_code(backend_loop, backend, source)
    assert result.value["stdout"] == "64\n"
    assert "PermissionError: [Errno 13] Permission denied: '/root/" in result.value["stderr"]
