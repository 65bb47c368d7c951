"""`ProgramRunOperator`: a whole run of a registered Hermesflow program, as one deferrable task.

Semantic-Variable programs and the reference programs run inside Hermesflow's scheduler, which
plans their steps itself; from Airflow they are one task that submits the run and awaits it:

    ProgramRunOperator(task_id="summarise", app_class="map_reduce",
                       inputs={"doc_id": "{{ params.doc_id }}"})

The run is its own application (`{dag_id}:{run_id}:{task_id}`, ranked by its program class's
PDGraph), submitted idempotently: a retried task or a restarted triggerer finds the same run.
The task's XCom is the program's result; a failed run fails the task with the program's error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jinja2
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException

from hermesflow import client
from hermesflow.api.models.control import AppSubmission, AppView
from hermesflow.client_records import AppViewPhase
from hermesflow.operators import naming
from hermesflow.operators.step_base import HermesOperator
from hermesflow.operators.triggers import HermesAppTrigger
from hermesflow.operators.validation import HermesDagError, check_fields, check_template_slots


class ProgramRunOperator(HermesOperator):
    """Run the program class `app_class` with `inputs` (templated) and return its result."""

    template_fields: Sequence[str] = ("inputs",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"inputs": "json"}

    def __init__(
        self, *, app_class: str, inputs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.app_class = app_class
        self.inputs = inputs if inputs is not None else {}
        self._check()

    def _arguments(self) -> dict[str, Any]:
        return {**super()._arguments(), "app_class": self.app_class, "inputs": self.inputs}

    @classmethod
    def check_arguments(
        cls, where: str, args: Mapping[str, Any], env: jinja2.Environment, complete: bool
    ) -> None:
        super().check_arguments(where, args, env, complete)
        if "app_class" in args:
            check_fields(where, AppSubmission, {"app_class": args["app_class"]})
        if "inputs" in args:
            check_template_slots(where, "inputs", args["inputs"], env)

    def execute(self, context: Context) -> Any:
        if not isinstance(self.inputs, Mapping):
            raise HermesDagError(
                f"{self._where()}: inputs rendered to a {type(self.inputs).__name__}; give the "
                f"inputs of class {self.app_class!r} as a dict"
            )
        app_id = naming.program_app_id(
            self.dag_id, context["run_id"], self.task_id, context["ti"].map_index
        )
        submission = AppSubmission(
            app_class=self.app_class,
            inputs=dict(self.inputs),
            app_id=app_id,
            labels=naming.labels(self.dag_id, context["run_id"]),
        )
        view: AppView = self.call_api(client.submit_app(submission))
        self.log.info("program run %r of class %r is %s", app_id, self.app_class, view.phase)
        if view.ended:
            return self._outcome(view)
        self.defer(
            trigger=HermesAppTrigger(
                app_id, hermes_conn_id=self.hermes_conn_id, poll_s=self.poll_s
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        return self._outcome(AppView.model_validate(self.check_event(event)["app"]))

    def _outcome(self, view: AppView) -> Any:
        if view.phase is AppViewPhase.FAILED:
            raise AirflowException(
                f"{self._where()}: program run {view.app_id!r} of class {view.app_class!r} "
                f"failed: {view.error or 'no error given'}"
            )
        return view.result
