"""`CodeExecutor` inside a real Ray backend actor, the way the runtime runs it.

Ray runs async actors on uvloop, whose `subprocess_exec` takes none of `user`, `group`,
`extra_groups`; CI and containers run Hermesflow as root, so this is where dropping privileges
and starting programs must work: the program runs as the unprivileged user, without network,
and code_gen's test run (solution.py + tests) passes or fails on its merits.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from hermesflow.apps.code_gen import CodeGenInputs, read_test_run, run_call  # noqa: E402
from hermesflow.backends.actor import BackendActor  # noqa: E402
from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.backends.calls import CallResult, ToolCall  # noqa: E402
from hermesflow.backends.code_exec import CodeExecutor  # noqa: E402

ACTOR_TIMEOUT_S = 120.0
"""Generous: these VMs sometimes run 5 to 10 times slower than usual."""

ADD_INPUTS = CodeGenInputs(
    function_name="add",
    prompt="Add two numbers.",
    tests="from solution import add\nassert add(1, 2) == 3\n",
    max_tries=1,
)


@pytest.fixture(scope="module")
def code_actor(ray_cluster: None) -> Iterator[Any]:
    """The suite's code backend (default options) in a loaded `BackendActor`."""
    spec = BackendSpec(name="code", type="code")
    actor = BackendActor.remote(spec.model_dump(mode="json"))
    try:
        ray.get(actor.load.remote(), timeout=ACTOR_TIMEOUT_S)
        yield actor
    finally:
        ray.kill(actor, no_restart=True)


def run_in(actor: Any, call: ToolCall) -> CallResult:
    reply = ray.get(actor.run.remote(call.model_dump(mode="json")), timeout=ACTOR_TIMEOUT_S)
    return CallResult.model_validate(reply)


def expected_isolation() -> str:
    """What `isolation="auto"` must pick here: netns wherever it can work."""
    try:
        asyncio.run(CodeExecutor("probe", isolation="netns").load())
    except RuntimeError:
        return "audit-hook"
    return "netns"


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when started as root")
def test_as_root_the_program_runs_as_nobody_without_network(code_actor: Any) -> None:
    nobody = pwd.getpwnam("nobody")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        source = f"""
            import os, socket
            print(os.geteuid(), os.getegid(), os.getgroups())
            try:
                socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=5)
                print("CONNECTED")
            except OSError as error:
                print(error)
        """
        call = ToolCall(tool="run_python", args={"source": textwrap.dedent(source)})
        result = run_in(code_actor, call)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert result.finish_reason == "stop", result.error
    ids, network = result.value["stdout"].splitlines()
    assert ids == f"{nobody.pw_uid} {nobody.pw_gid} []"
    refusal = {"netns": "Network is unreachable", "audit-hook": "socket.connect refused"}
    assert refusal[expected_isolation()] in network


def test_code_gen_test_runs_pass_and_fail_on_their_merits(code_actor: Any) -> None:
    good = run_in(code_actor, run_call(ADD_INPUTS, "def add(a, b):\n    return a + b\n"))
    assert good.finish_reason == "stop", good.error
    assert read_test_run(good) == (True, "")
    bad = run_in(code_actor, run_call(ADD_INPUTS, "def add(a, b):\n    return a - b\n"))
    passed, feedback = read_test_run(bad)
    assert not passed
    assert "assert add(1, 2) == 3" in feedback and "AssertionError" in feedback
