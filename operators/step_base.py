"""What every Hermesflow operator shares, and the submit-then-defer flow of a single step.

`HermesOperator` holds the connection and the poll window and runs the parse-time checks: in
`__init__` for a plain task, and in `partial()` for a mapped one (whose `__init__` only runs when
the task does). `StepOperator` is one step of the DAG run's application:

1. declare the DAG's compiled PDGraph as the class's prior (`PUT /v1/classes/{dag_id}/graph`;
   a no-op while the DAG's structure is unchanged, so what the scheduler learned is kept);
2. submit the step under its idempotent id (`PUT /v1/apps/{dag_id}:{run_id}/steps/{task}`) — a
   retried task gets its existing step back, a failed step is attempted again;
3. return the result if the step is already done, else defer on `HermesStepTrigger`, which
   awaits it in the triggerer without holding a worker slot;
4. `execute_complete` turns the step into the task's XCom, or fails the task with the server's
   error.

Subclasses say which call the step makes (`build_call`) and what of its result the task
returns (`result_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, ClassVar

import jinja2.sandbox
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from hermesflow import client
from hermesflow.api.models.control import StepSubmission, StepView
from hermesflow.apps.app_graph import NodeKind
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.client import MAX_POLL_S, HermesApiError, Route
from hermesflow.client_records import StepState
from hermesflow.operators import naming
from hermesflow.operators.airflow_compat import DagContext, DependencyMixin, OperatorPartial
from hermesflow.operators.dag_graph import dag_pdgraph
from hermesflow.operators.hook import DEFAULT_CONN_ID, HermesHook
from hermesflow.operators.triggers import DEFAULT_POLL_S, HermesStepTrigger, step_of
from hermesflow.operators.validation import (
    HermesDagError,
    check_backend,
    check_connection,
    check_edge,
    task_label,
)

RETRYABLE_CLIENT_STATUS = frozenset({404, 408, 429})
"""4xx answers a later try may not get (a step not stored yet, a timeout, rate limiting); any
other 4xx is a refusal no retry changes, so the task fails without using its retries."""


class HermesOperator(BaseOperator):
    """Base of the Hermesflow operators: the connection and the parse-time checks."""

    ui_color = "#dbe9f6"

    def __init__(
        self,
        *,
        hermes_conn_id: str = DEFAULT_CONN_ID,
        poll_s: float = DEFAULT_POLL_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hermes_conn_id = hermes_conn_id
        self.poll_s = poll_s

    # -- parse-time checks --------------------------------------------------------------------

    @classmethod
    def check_arguments(
        cls, where: str, args: Mapping[str, Any], env: jinja2.Environment, complete: bool
    ) -> None:
        """Raise `HermesDagError` for a wrong argument in `args`. `complete` is false for the
        arguments of `partial()`, where a missing one may still come from `expand()`.
        Subclasses extend this (and call it)."""
        if "hermes_conn_id" in args:
            check_connection(where, args["hermes_conn_id"])
        poll_s = args.get("poll_s", DEFAULT_POLL_S)
        if not isinstance(poll_s, (int, float)) or not 0 < poll_s <= MAX_POLL_S:
            raise HermesDagError(
                f"{where}: poll_s={poll_s!r}; give seconds in (0, {MAX_POLL_S:g}] (the server "
                "holds a long poll at most that long)"
            )

    def update_relative(
        self, other: DependencyMixin, upstream: bool = True, edge_modifier: Any = None
    ) -> None:
        """Airflow calls this on the far side of `other >> self` (`upstream`) or `other << self`
        before it adds the edge: refuse an edge that would close a cycle."""
        super().update_relative(other, upstream, edge_modifier=edge_modifier)
        node_id = getattr(other, "node_id", None)
        if node_id is not None and self.has_dag():
            first, then = (node_id, self.task_id) if upstream else (self.task_id, node_id)
            check_edge(self._where(), self.dag, first, then)

    def set_downstream(self, task_or_task_list: Any, edge_modifier: Any = None) -> None:
        """`self >> other`; afterwards no loop may run through this task."""
        super().set_downstream(task_or_task_list, edge_modifier)
        self._check_no_loop()

    def set_upstream(self, task_or_task_list: Any, edge_modifier: Any = None) -> None:
        """`self << other`; afterwards no loop may run through this task."""
        super().set_upstream(task_or_task_list, edge_modifier)
        self._check_no_loop()

    def _check_no_loop(self) -> None:
        for child in sorted(self.downstream_task_ids):
            check_edge(self._where(), self.dag, self.task_id, child)

    def _arguments(self) -> dict[str, Any]:
        """This task's arguments that `check_arguments` checks (subclasses extend)."""
        return {"hermes_conn_id": self.hermes_conn_id, "poll_s": self.poll_s}

    def _check(self) -> None:
        """Run the checks on this task's own arguments (end of each subclass's `__init__`)."""
        self.check_arguments(
            self._where(), self._arguments(), self.get_template_env(), complete=True
        )

    @classmethod
    def partial(cls, **kwargs: Any) -> OperatorPartial:  # type: ignore[override]
        """`BaseOperator.partial`, after checking the arguments it is given."""
        dag = kwargs.get("dag") or DagContext.get_current()
        env = dag.get_template_env() if dag else jinja2.sandbox.SandboxedEnvironment()
        where = task_label(str(kwargs.get("task_id")), dag.dag_id if dag else None)
        cls.check_arguments(where, kwargs, env, complete=False)
        return super().partial(**kwargs)

    # -- the API ------------------------------------------------------------------------------

    @cached_property
    def hook(self) -> HermesHook:
        return HermesHook(self.hermes_conn_id)

    def call_api(self, route: Route[Any]) -> Any:
        """Send `route`; a refusal no retry can change fails the task without retries."""
        try:
            return self.hook.run(route)
        except HermesApiError as error:
            if 400 <= error.status < 500 and error.status not in RETRYABLE_CLIENT_STATUS:
                raise AirflowFailException(f"{self._where()}: {error}") from error
            raise

    def check_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """A trigger's event, unless it says why waiting stopped (then the task fails)."""
        if event["status"] == "error":
            raise AirflowException(f"{self._where()}: {event['message']}")
        return event

    def _where(self) -> str:
        return task_label(self.task_id, self.dag_id if self.has_dag() else None)


class StepOperator(HermesOperator):
    """One step of the DAG run's application, submitted, deferred and awaited (module
    docstring). `node_kind` is what the step is in the DAG's application graph."""

    node_kind: ClassVar[NodeKind]

    def __init__(self, *, backend: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = backend

    @classmethod
    def check_arguments(
        cls, where: str, args: Mapping[str, Any], env: jinja2.Environment, complete: bool
    ) -> None:
        super().check_arguments(where, args, env, complete)
        if "backend" in args:
            check_backend(where, args["backend"])

    def _arguments(self) -> dict[str, Any]:
        return {**super()._arguments(), "backend": self.backend}

    @classmethod
    def static_prefix(cls, prompt: Any) -> str | None:
        """The static start of every request of this node (the application graph's `prefix`)."""
        return None

    def build_call(self, context: Context) -> LLMCall | ToolCall:
        """The call this step makes, from the rendered task."""
        raise NotImplementedError

    def result_of(self, result: CallResult) -> Any:
        """What the task returns (its XCom) for the step's result."""
        raise NotImplementedError

    def failed_result(self, view: StepView) -> Any:
        """What the task does when its step failed: fail, with the server's error. A failure
        that the same call meets again (the tool raised for these arguments, the backend refused
        the call) fails the task without retries: a retry would only wait `retry_delay` to fail
        the same way. Others (a timeout, a backend that died) leave Airflow's retries to it."""
        message = (
            f"{self._where()}: step {view.step_id!r} of application {view.app_id!r} failed "
            f"(attempt {view.attempt}): {view.error or 'no error given'}"
        )
        code = view.result.error_code if view.result is not None else None
        if code is not None and code.deterministic:
            raise AirflowFailException(f"{message} [{code.value}: a retry would fail the same way]")
        raise AirflowException(message)

    def execute(self, context: Context) -> Any:
        app_id = naming.app_id(self.dag_id, context["run_id"])
        step_id = naming.step_id(self.task_id, context["ti"].map_index)
        self.call_api(client.declare_class(dag_pdgraph(context["dag"])))
        submission = StepSubmission(
            app_class=self.dag_id,
            stage=self.task_id,
            backend=self.backend,
            call=self.build_call(context),
            labels=naming.labels(self.dag_id, context["run_id"]),
        )
        view: StepView = self.call_api(client.put_step(app_id, step_id, submission))
        self.log.info(
            "step %r of application %r is %s (attempt %d)",
            step_id,
            app_id,
            view.state,
            view.attempt,
        )
        if view.ended:
            return self._outcome(view)
        self.defer(
            trigger=HermesStepTrigger(
                app_id, step_id, hermes_conn_id=self.hermes_conn_id, poll_s=self.poll_s
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger fired: the step's result, or the reason it has none."""
        return self._outcome(step_of(self.check_event(event)))

    def _outcome(self, view: StepView) -> Any:
        if view.state is StepState.DONE and view.result is not None:
            return self.result_of(view.result)
        return self.failed_result(view)
