"""A code_gen application end to end on the real runtime: the Ray scheduler actor, the CPU
model writing the code in its backend actor, and the code sandbox running the tests in its
own (as root on CI, so as the sandbox user, on uvloop)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from hermesflow.apps.code_gen import CodeGenInputs, CodeGenTestLoop  # noqa: E402
from hermesflow.apps.suite import program_paths, suite_backends  # noqa: E402
from hermesflow.apps.suite_steps import CODE_BACKEND  # noqa: E402
from hermesflow.client_records import AppViewPhase  # noqa: E402
from hermesflow.pdgraph.model import LLM_BACKEND  # noqa: E402
from hermesflow.schedulers.runtime import start_scheduler  # noqa: E402
from hermesflow.schedulers.runtime_config import RuntimeConfig  # noqa: E402

APP_TIMEOUT_S = 300.0
"""Cold start of both backends (the model's first GGUF conversion included) plus one reply
and one test run, on a busy 2-core machine."""

SANDBOX_TESTS = """\
try:  # the model's code may not even import: what is tested here is where the tests ran
    import solution
except Exception:
    pass
import os
assert os.geteuid() != 0, "the tests ran as root"
"""
"""Tests that pass whatever the model wrote, but only when the sandbox ran them to the end,
as an unprivileged user (when the runtime runs as root, as on CI)."""


@pytest.mark.slow
def test_a_code_gen_application_completes_with_its_tests_run_in_the_sandbox(
    ray_cluster: None, tmp_path: Path
) -> None:
    app_class = CodeGenTestLoop.app_class
    config = RuntimeConfig(
        db_url=f"sqlite:///{tmp_path / 'hermes.db'}",
        backends=[b for b in suite_backends() if b.name in (LLM_BACKEND, CODE_BACKEND)],
        programs={app_class: program_paths()[app_class]},
    )
    inputs = CodeGenInputs(
        function_name="add", prompt="Add two numbers.", tests=SANDBOX_TESTS, max_tries=1
    )
    handle = start_scheduler(config, name=f"code-gen-{uuid.uuid4().hex[:8]}")
    try:
        app_id = ray.get(handle.submit.remote(app_class, inputs.model_dump(mode="json"))).app_id
        view = ray.get(handle.wait.remote(app_id, APP_TIMEOUT_S))
    finally:
        ray.get(handle.shutdown.remote())
        ray.kill(handle, no_restart=True)
    assert view.phase is AppViewPhase.FINISHED, view
    assert view.result["tries"] == 1
    assert view.result["passed"] is True, view.result["feedback"]
