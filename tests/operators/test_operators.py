"""The operators' guarantees, through `airflow dags test` of `dags/provider_checks.py` against
the real Hermesflow API: a retried task and a re-run DAG run submit no second call, mapped
TaskFlow steps get one step each, and a program run is one task."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("airflow")
pytest.importorskip("ray")

from provider_support import TEST_DAGS, DagRunResult, Hermes, dags_test, tasks_test

DAG_ID = "provider_checks"


@pytest.fixture(scope="module")
def checks(airflow_db: object, hermes: Hermes) -> DagRunResult:
    result = dags_test(DAG_ID, dags_folder=TEST_DAGS)
    assert result.state == "success", result.output[-6000:]
    return result


def _outcomes(hermes: Hermes, app_id: str, task_id: str) -> list[tuple[int, int, str, Any]]:
    return sorted(
        (o.map_index, o.try_number, o.state.value, o.step_id)
        for o in hermes.outcomes(app_id)
        if o.task_id == task_id
    )


def test_a_retried_task_gets_its_step_back_instead_of_a_second_call(
    checks: DagRunResult, hermes: Hermes
) -> None:
    (retried,) = checks.tasks["retried"]
    assert retried["state"] == "success" and retried["try_number"] == 2
    assert retried["xcom"] == 1.0  # the sleep tool returns the seconds slept
    assert hermes.calls(checks.app_id).count(("retried", "tools")) == 1
    assert _outcomes(hermes, checks.app_id, "retried") == [
        (-1, 1, "up_for_retry", "retried"),
        (-1, 2, "success", "retried"),
    ]


def test_mapped_taskflow_tool_steps_are_one_step_each(checks: DagRunResult, hermes: Hermes) -> None:
    assert [checks.xcom("calculate", i) for i in (0, 1)] == [5.0, 42.0]
    assert hermes.calls(checks.app_id).count(("calculate", "tools")) == 2
    steps = [step for *_, step in _outcomes(hermes, checks.app_id, "calculate")]
    assert steps == ["calculate[0]", "calculate[1]"]


def test_a_program_run_is_one_task_and_its_own_application(
    checks: DagRunResult, hermes: Hermes
) -> None:
    assert checks.xcom("program") == {"steps": 2, "calls": 1}
    program_app = f"{checks.app_id}:program"
    view = hermes.app(program_app)
    assert view["app_class"] == "sleep_chain" and view["phase"] == "finished"
    assert [stage for stage, _ in hermes.calls(program_app)] == ["nap", "nap"]
    assert ("program", "tools") not in hermes.calls(checks.app_id)


@pytest.mark.parametrize("task_id", [pytest.param("retried", marks=pytest.mark.slow), "program"])
def test_running_a_task_of_the_same_dag_run_again_submits_nothing(
    checks: DagRunResult, hermes: Hermes, task_id: str
) -> None:
    """`airflow tasks test` executes the task once more in the same DAG run (the application
    has even finished meanwhile): its step — or its program run — is found, not run again."""
    calls = hermes.calls(checks.app_id)
    program_calls = hermes.calls(f"{checks.app_id}:program")
    again = tasks_test(DAG_ID, task_id, checks.run_id, dags_folder=TEST_DAGS)
    assert again.states()[task_id] == "success", again.output[-6000:]
    assert hermes.calls(checks.app_id) == calls
    assert hermes.calls(f"{checks.app_id}:program") == program_calls


def test_a_step_the_tool_refuses_fails_its_task_without_retries(
    checks: DagRunResult, hermes: Hermes
) -> None:
    (refused,) = checks.tasks["refused"]
    assert refused["state"] == "failed" and refused["try_number"] == 1, refused
    assert hermes.calls(checks.app_id).count(("refused", "tools")) == 1
    (after,) = checks.tasks["after_refusal"]
    assert after["state"] == "success"
