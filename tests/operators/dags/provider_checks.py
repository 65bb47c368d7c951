"""A DAG that exercises the provider's guarantees, run by `test_operators.py`:

* `retried` — a tool step whose task fails its first try *after* the step finished; the
  retry must get the same step back, not run the tool again;
* `calculate` — `@task.hermes_tool` mapped over two expressions (step ids `calculate[0]`, `[1]`);
* `program` — a whole run of the registered program `sleep_chain` (`ProgramRunOperator`);
* `refused` — a calculator step whose expression the tool refuses: it must fail at once, not
  be retried (its retries would fail the same way); `after_refusal`, run only when it failed,
  keeps the DAG run a success.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Context, task
from airflow.sdk.exceptions import AirflowException

from hermesflow.operators.program_run import ProgramRunOperator
from hermesflow.operators.tool_step import ToolStepOperator

SLEEP_S = 1.0
"""Long enough for the first try to defer (the step is not done when it is submitted)."""


class FailFirstTry(ToolStepOperator):
    """A tool step whose first try fails once the step's result is in."""

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        if context["ti"].try_number == 1:
            raise AirflowException("the first try fails after its step finished")
        return result


with DAG(
    dag_id="provider_checks",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
):
    FailFirstTry(
        task_id="retried",
        tool="sleep",
        args={"seconds": SLEEP_S},
        retries=1,
        retry_delay=timedelta(0),
    )

    @task.hermes_tool(tool="calculator")
    def calculate(expression: str) -> dict[str, str]:
        return {"expression": expression}

    calculate.expand(expression=["2 + 3", "6 * 7"])

    ProgramRunOperator(
        task_id="program", app_class="sleep_chain", inputs={"steps": 2, "seconds": 0.05}
    )

    ToolStepOperator(
        task_id="refused",
        tool="calculator",
        args={"expression": "__import__('os')"},
        retries=2,
        retry_delay=timedelta(0),
    ) >> EmptyOperator(task_id="after_refusal", trigger_rule="all_failed")
