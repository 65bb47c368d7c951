"""`ToolStepOperator`: one tool call on a Hermesflow tool backend, as a deferrable task.

    ToolStepOperator(task_id="retrieve", backend="search", tool="search",
                     args={"query": "{{ params.question }}", "k": 3})

`args` is templated like any Airflow field (Jinja strings, XComArgs, `expand`). The task's XCom
is the tool's JSON value (the text rendering when the tool returns none), or with
`returns="text"` the text rendering — what a prompt wants (search hits as numbered passages).
A tool that raises or
times out fails the task; with `fail_on_error=False` the task instead returns
`"error: <message>"`, so an agent can read the error as an observation and go on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import jinja2
from airflow.sdk import Context

from hermesflow.api.models.control import StepView
from hermesflow.apps.app_graph import NodeKind
from hermesflow.apps.suite_steps import TOOLS_BACKEND
from hermesflow.backends.calls import CallResult, ToolCall
from hermesflow.operators.step_base import StepOperator
from hermesflow.operators.validation import HermesDagError, check_fields, check_template_slots

DEFAULT_TOOL_TIMEOUT_S = 30.0


class ToolStepOperator(StepOperator):
    """Call `tool` with `args` on `backend` within `timeout_s` seconds (module docstring)."""

    node_kind: ClassVar[NodeKind] = NodeKind.TOOL
    template_fields: Sequence[str] = ("args",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"args": "json"}

    def __init__(
        self,
        *,
        tool: str,
        args: Mapping[str, Any] | None = None,
        backend: str = TOOLS_BACKEND,
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        returns: Literal["value", "text"] = "value",
        fail_on_error: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(backend=backend, **kwargs)
        self.tool = tool
        self.args = args if args is not None else {}
        self.timeout_s = timeout_s
        self.returns = returns
        self.fail_on_error = fail_on_error
        self._check()

    def _arguments(self) -> dict[str, Any]:
        return {
            **super()._arguments(),
            "tool": self.tool,
            "args": self.args,
            "timeout_s": self.timeout_s,
            "returns": self.returns,
        }

    @classmethod
    def check_arguments(
        cls, where: str, args: Mapping[str, Any], env: jinja2.Environment, complete: bool
    ) -> None:
        super().check_arguments(where, args, env, complete)
        fields = {k: args[k] for k in ("tool", "timeout_s") if args.get(k) is not None}
        if fields:
            check_fields(where, ToolCall, {"tool": "tool", **fields})
        if "args" in args:
            check_template_slots(where, "args", args["args"], env)
        if args.get("returns", "value") not in ("value", "text"):
            raise HermesDagError(
                f"{where}: returns={args['returns']!r}; use 'value' (the tool's JSON result) or "
                "'text' (its text rendering)"
            )

    def build_call(self, context: Context) -> ToolCall:
        if not isinstance(self.args, Mapping):
            raise HermesDagError(
                f"{self._where()}: args rendered to a {type(self.args).__name__}; the tool takes "
                "a dict of named arguments"
            )
        return ToolCall(tool=self.tool, args=dict(self.args), timeout_s=self.timeout_s)

    def result_of(self, result: CallResult) -> Any:
        if self.returns == "text" or result.value is None:
            return result.text
        return result.value

    def failed_result(self, view: StepView) -> Any:
        if not self.fail_on_error and view.result is not None:
            self.log.warning("tool %r failed; returning the error: %s", self.tool, view.error)
            return f"error: {view.error or view.result.error}"
        return super().failed_result(view)
