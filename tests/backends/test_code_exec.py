"""`CodeExecutor`, once per isolation that works on this machine and per event loop (asyncio's,
and uvloop's, which Ray's async actors run): output, stdin, files, failures, timeouts that leave
no process behind, no network, limits, a bare environment; started as root, the user and the
interpreter it chooses. `test_code_exec_in_ray.py` runs it in a real Ray actor."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import socket
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hermesflow.backends import code_exec
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.backends.code_exec import FALLBACK_PYTHON, SANDBOX_PATH, CodeExecutor

if TYPE_CHECKING:
    from conftest import LoopThread

MAX_OUTPUT_BYTES = 1024


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> LoopThread:
    """The event loop the backend runs on."""
    name = "backend_loop" if request.param == "asyncio" else "uvloop_backend_loop"
    return request.getfixturevalue(name)


@pytest.fixture(scope="module", params=["netns", "audit-hook"])
def executor(request: pytest.FixtureRequest, loop: LoopThread) -> Iterator[CodeExecutor]:
    backend = CodeExecutor("code", isolation=request.param, max_output_bytes=MAX_OUTPUT_BYTES)
    try:
        loop.run(backend.load())
    except RuntimeError as error:
        pytest.skip(f"no {request.param} isolation here: {error}")
    assert backend.isolation == request.param
    yield backend
    loop.run(backend.unload())


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


def test_prints(loop: LoopThread, executor: CodeExecutor) -> None:
    result = run_code(loop, executor, "print('hello', 6 * 7)")
    assert result.finish_reason == "stop"
    assert result.value == {
        "returncode": 0,
        "stdout": "hello 42\n",
        "stderr": "",
        "timed_out": False,
    }
    assert result.text == "returncode: 0\nstdout:\nhello 42\n"


def test_reads_stdin_and_files(loop: LoopThread, executor: CodeExecutor) -> None:
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
    result = run_code(loop, executor, source, stdin="quiet", files=files)
    assert result.value["stdout"] == "QUIET from a file\n"


def test_an_exception_is_a_nonzero_returncode_with_the_traceback(
    loop: LoopThread, executor: CodeExecutor
) -> None:
    result = run_code(loop, executor, "def f():\n    return 1 / 0\nf()\n")
    assert result.finish_reason == "stop", "a failing program is an observation, not a tool failure"
    assert result.value["returncode"] == 1
    stderr = result.value["stderr"]
    assert stderr.startswith("Traceback (most recent call last):\n  File ")
    assert (
        'main.py", line 3, in <module>' in stderr
        and "ZeroDivisionError: division by zero" in stderr
    )
    assert "runpy" not in stderr, "the bootstrap's frames are hidden"
    assert run_code(loop, executor, "import sys; sys.exit(7)").value["returncode"] == 7


def test_output_is_truncated(loop: LoopThread, executor: CodeExecutor) -> None:
    result = run_code(loop, executor, "print('x' * 5000)")
    stdout = result.value["stdout"]
    assert stdout.startswith("x" * MAX_OUTPUT_BYTES)
    assert stdout.endswith(f"[... {5001 - MAX_OUTPUT_BYTES} more bytes cut]")


def test_a_timeout_kills_the_program_and_its_children(
    loop: LoopThread, executor: CodeExecutor, gone: Callable[[int], bool]
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
    result = run_code(loop, executor, source, timeout_s=1.5)
    assert result.finish_reason == "error"
    assert result.error == "run_python timed out after 1.5 s; the program was killed"
    assert result.value["timed_out"] is True and result.value["returncode"] == -9
    for pid in map(int, result.value["stdout"].split()):
        assert gone(pid), f"process {pid} outlived the timeout"


def test_the_audit_hook_refuses_processes(loop: LoopThread, executor: CodeExecutor) -> None:
    if executor.isolation != "audit-hook":
        pytest.skip("only the audit-hook sandbox refuses processes (a network namespace need not)")
    for source in (
        "import subprocess; subprocess.run(['true'])",
        "import os; os.system('true')",
        "import os; os.fork()",
    ):
        result = run_code(loop, executor, source)
        assert result.value["returncode"] == 1
        assert (
            "refused: this sandbox has no network and starts no programs" in result.value["stderr"]
        )


def test_children_left_behind_are_killed(
    loop: LoopThread, executor: CodeExecutor, gone: Callable[[int], bool]
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
    result = run_code(loop, executor, source, timeout_s=10)
    assert result.finish_reason == "stop" and result.value["timed_out"] is False
    assert result.value["returncode"] == 0
    assert result.seconds < 5
    assert gone(int(result.value["stdout"]))


def test_unread_stdin_is_no_error(loop: LoopThread, executor: CodeExecutor) -> None:
    result = run_code(loop, executor, "print('done')", stdin="x" * (1 << 20))
    assert result.value == {"returncode": 0, "stdout": "done\n", "stderr": "", "timed_out": False}


def test_no_network_even_to_a_listening_local_socket(
    loop: LoopThread, executor: CodeExecutor
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
        result = run_code(loop, executor, source)
        with pytest.raises(BlockingIOError):
            server.accept()
    stdout = result.value["stdout"]
    assert "CONNECTED" not in stdout
    expected = (
        "Network is unreachable" if executor.isolation == "netns" else "socket.connect refused"
    )
    assert expected in stdout


def test_memory_is_limited(loop: LoopThread, executor: CodeExecutor) -> None:
    result = run_code(loop, executor, "block = bytearray(2 << 30)")
    assert result.value["returncode"] == 1
    assert "MemoryError" in result.value["stderr"]


def test_the_environment_is_bare_and_the_directory_removed(
    loop: LoopThread, executor: CodeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERMES_TEST_SECRET", "s3cret")
    source = """
        import os
        print(os.getcwd())
        print(sorted(os.environ))
    """
    workdir, names = run_code(loop, executor, source).value["stdout"].splitlines()
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
    loop: LoopThread, executor: CodeExecutor, args: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        loop.run(executor.run(ToolCall(tool="run_python", args=args)))


def test_llm_calls_and_unknown_tools_raise(
    loop: LoopThread, executor: CodeExecutor
) -> None:
    with pytest.raises(TypeError, match="serves tool calls"):
        loop.run(executor.run(LLMCall(prompt="print(1)")))
    listed = r"run_python\(source: str, stdin: str = '', files: dict\[str, str\] = \{\}\)"
    with pytest.raises(ValueError, match=rf"unknown tool 'python'; its tools: {listed}"):
        loop.run(executor.run(ToolCall(tool="python", args={"source": ""})))


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


as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="privileges are dropped only when started as root"
)


@pytest.fixture
def unreadable_python(tmp_path: Path) -> Path:
    """A working interpreter behind a directory only root may enter: what `nobody` meets in
    a virtualenv under /root."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = private / "python"
    link.symlink_to(sys.executable)
    return link


def fallback_python() -> str:
    found = shutil.which(FALLBACK_PYTHON, path=SANDBOX_PATH)
    if found is None:
        pytest.skip(f"no {FALLBACK_PYTHON} on {SANDBOX_PATH}")
    return found


@as_root
def test_started_as_root_the_program_runs_as_nobody(loop: LoopThread) -> None:
    backend = CodeExecutor("dropped")
    loop.run(backend.load())
    assert backend.user == "nobody"
    source = """
        import os, resource
        open("mine.txt", "w").write("the directory is the program's")
        print(os.geteuid(), os.getegid(), os.getgroups())
        print(resource.getrlimit(resource.RLIMIT_NPROC)[0])
        open("/root/hermesflow-sandbox-probe", "w")
    """
    result = run_code(loop, backend, source)
    nobody = pwd.getpwnam("nobody")
    assert result.value["stdout"] == f"{nobody.pw_uid} {nobody.pw_gid} []\n64\n"
    assert "PermissionError: [Errno 13] Permission denied: '/root/" in result.value["stderr"]


@as_root
def test_an_interpreter_nobody_cannot_run_gives_way_to_one_it_can(
    loop: LoopThread, unreadable_python: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fallback = fallback_python()
    backend = CodeExecutor("fallback", python=str(unreadable_python), isolation="audit-hook")
    with caplog.at_level(logging.INFO, logger="hermesflow.backends.code_exec"):
        loop.run(backend.load())
    assert backend.user == "nobody" and backend.interpreter == fallback
    assert f"nobody cannot run {unreadable_python}: " in caplog.text
    assert "Permission denied" in caplog.text and f"code runs with {fallback}" in caplog.text
    result = run_code(loop, backend, "import os, sys; print(os.geteuid(), sys.executable)")
    assert result.value["stdout"] == f"{pwd.getpwnam('nobody').pw_uid} {fallback}\n"


@as_root
def test_without_an_interpreter_for_nobody_the_warning_names_the_fix(
    loop: LoopThread,
    unreadable_python: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(code_exec, "FALLBACK_PYTHON", "no-such-python")
    backend = CodeExecutor("root", python=str(unreadable_python), isolation="audit-hook")
    with caplog.at_level(logging.WARNING, logger="hermesflow.backends.code_exec"):
        loop.run(backend.load())
    assert backend.user == "root" and backend.interpreter == str(unreadable_python)
    assert "user 'nobody' can run no Python interpreter" in caplog.text
    assert "code runs as root — install Python where 'nobody' can read it" in caplog.text
    assert run_code(loop, backend, "import os; print(os.geteuid())").value["stdout"] == "0\n"


def test_no_interpreter_at_all_fails_load_with_the_fix(
    loop: LoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(code_exec, "FALLBACK_PYTHON", "no-such-python")
    backend = CodeExecutor("none", python="/no/such/python", run_as=None, isolation="audit-hook")
    message = (
        r"backend 'none': no Python interpreter starts here \(/no/such/python: .*No such file.*\); "
        "set the backend's python option to one that does"
    )
    with pytest.raises(RuntimeError, match=message):
        loop.run(backend.load())


def test_a_program_that_cannot_start_is_a_tool_error(loop: LoopThread, tmp_path: Path) -> None:
    """The interpreter checked at `load` is gone at the call: an error result naming it, not
    an exception out of the backend."""
    link = tmp_path / "python"
    link.symlink_to(sys.executable)
    backend = CodeExecutor("gone", python=str(link), run_as=None, isolation="audit-hook")
    loop.run(backend.load())
    link.unlink()
    result = run_code(loop, backend, "print(1)")
    assert result.finish_reason == "error" and result.value is None
    assert result.error == (
        f"run_python could not start the program: [Errno 2] No such file or directory: '{link}'"
    )


class _ExitProtocol(asyncio.SubprocessProtocol):
    def __init__(self) -> None:
        self.exited = asyncio.get_running_loop().create_future()

    def process_exited(self) -> None:
        self.exited.set_result(None)


def test_stdin_for_a_program_that_already_exited_is_dropped(loop: LoopThread) -> None:
    """A launcher that fails at once (an interpreter the sandbox user cannot run, during the
    load's probe) has exited before its stdin is written; uvloop has closed that pipe and raises
    on a write, which failed the load on CI. The input is dropped instead."""

    async def feed_an_exited_program() -> bool:
        transport, exiting = await asyncio.get_running_loop().subprocess_exec(
            _ExitProtocol, shutil.which("true") or "/bin/true", stdin=asyncio.subprocess.PIPE
        )
        await exiting.exited
        await asyncio.sleep(0.2)  # uvloop closes the pipes of an exited child
        stdin = transport.get_pipe_transport(0)
        code_exec._feed(stdin, b"print('unread')\n")  # noqa: SLF001
        transport.close()
        return stdin.is_closing()

    assert loop.run(feed_an_exited_program())
