"""Usage errors of the `hermesflow` command: a value that cannot work is refused with exit 2 and
a message naming the option, never a traceback, and `serve` refuses before Ray starts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermesflow.cli import app
from hermesflow.cli_options import MAX_SIMULATED_APPS

FOLDER = "<a folder>"
"""Stands for a folder given where a file is expected (replaced by a real one)."""


def _assert_usage_error(exit_code: int, output: str, exception: object, option: str) -> None:
    assert exit_code == 2, output
    assert isinstance(exception, SystemExit), f"{exception!r}\n{output}"
    assert "Traceback" not in output
    assert f"Invalid value for '{option}'" in output or f"Invalid value for {option}:" in output


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        (["simulate", "--load", "nan"], "--load"),
        (["simulate", "--load", "inf"], "--load"),
        (["simulate", "--load", "0"], "--load"),
        (["simulate", "--load", "-0.5"], "--load"),
        (["simulate", "--apps", "0"], "--apps"),
        (["simulate", "--apps", "-1"], "--apps"),
        (["simulate", "--apps", "100000000"], "--apps"),
        (["simulate", "--max-warm", "0"], "--max-warm"),
        (["simulate", "--max-warm", "-1"], "--max-warm"),
        (["simulate", "--seed", "-1"], "--seed"),
        (["simulate", "--policy", "fifo"], "--policy"),
        (["simulate", "--planner", "eager"], "--planner"),
        (["simulate", "--workload", FOLDER], "--workload"),
        (["simulate", "--workload", "no-such-workload.json"], "--workload"),
        (["pdgraph", "show", "react", "--workload", FOLDER], "--workload"),
        (["pdgraph", "show", "no_such_class"], "APP_CLASS"),
        (["compare", "--load", "nan"], "--load"),
        (["compare", "--load", "-inf"], "--load"),
        (["compare", "--apps", "0"], "--apps"),
        (["compare", "--apps", "-3"], "--apps"),
        (["compare", "--apps", "100000000"], "--apps"),
        (["compare", "--seed", "-1"], "--seed"),
        (["submit", "react", "--url", "127.0.0.1:8000"], "--url"),
        (["submit", "react", "--url", "http://127.0.0.1:99999"], "--url"),
        (["submit", "react", "--timeout", "0"], "--timeout"),
        (["submit", "react", "--timeout", "nan"], "--timeout"),
        (["submit", "react", "--inputs", "[1]"], "--inputs"),
        (["submit", "react", "--app-id", "a" * 300], "--app-id"),
        (["submit", ""], "APP_CLASS"),
    ],
)
def test_nonsense_is_a_usage_error_naming_the_option(
    arguments: list[str], option: str, tmp_path: Path
) -> None:
    arguments = [str(tmp_path) if a == FOLDER else a for a in arguments]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})
    _assert_usage_error(result.exit_code, result.output, result.exception, option)


def test_the_cap_on_simulated_applications_says_why(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", "--apps", "100000000"], env={"COLUMNS": "200"})
    message = " ".join(result.output.split())
    assert f"at most {MAX_SIMULATED_APPS}" in message and "run several seeds" in message


def test_a_binary_workload_file_is_a_usage_error(tmp_path: Path) -> None:
    workload = tmp_path / "workload.json"
    workload.write_bytes(b"\xff\xfe\x00 not text")
    result = CliRunner().invoke(app, ["simulate", "--workload", str(workload)])
    _assert_usage_error(result.exit_code, result.output, result.exception, "--workload")


# -- serve and stop: refused before Ray starts ---------------------------------------------------

PROBE = """
import json, sys, time
from typer.testing import CliRunner
from hermesflow.cli import app

answers = []
for arguments in json.loads(sys.argv[1]):
    started = time.monotonic()
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})
    answers.append({
        "exit_code": result.exit_code,
        "output": result.output,
        "exception": repr(result.exception),
        "is_exit": isinstance(result.exception, SystemExit),
        "seconds": time.monotonic() - started,
    })
print(json.dumps({"answers": answers, "ray_imported": "ray" in sys.modules}))
"""


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something listens on."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def test_serve_and_stop_refuse_nonsense_before_ray_starts(
    taken_port: int, closed_port: int, tmp_path: Path
) -> None:
    """In a fresh interpreter, so that "Ray was never imported" proves Ray never started."""
    cases = [
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--port", "-1"], "--port"),
        (["serve", "--port", str(taken_port)], "--port"),
        (["serve", "--host", "203.0.113.7", "--port", "0"], "--host"),
        (["serve", "--num-cpus", "0"], "--num-cpus"),
        (["serve", "--policy", "srpt"], "--policy"),
        (["serve", "--db-url", "not a url"], "--db-url"),
        (["serve", "--grace-period", "-1"], "--grace-period"),
        (["serve", "--grace-period", "inf"], "--grace-period"),
        (["serve", "--ready-timeout", "0"], "--ready-timeout"),
        (["serve", "--scheduler-name", " "], "--scheduler-name"),
        (["stop", "--address", f"127.0.0.1:{closed_port}"], "--address"),
        (["stop", "--grace-period", "nan"], "--grace-period"),
    ]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([arguments for arguments, _ in cases])],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for (arguments, option), answer in zip(cases, report["answers"], strict=True):
        _assert_usage_error(answer["exit_code"], answer["output"], SystemExit(), option)
        assert answer["is_exit"], (arguments, answer["exception"])
        assert answer["seconds"] < 30, (arguments, answer["seconds"])
    taken = report["answers"][2]["output"]
    assert f"127.0.0.1:{taken_port}" in taken and "in use" in taken
    assert report["ray_imported"] is False
