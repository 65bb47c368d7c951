"""TaskFlow decorators for Hermesflow steps: the function computes the request, Hermesflow serves
it, the task returns the result.

    @task.hermes_llm(max_tokens=48)
    def summarize(passage: str) -> str:
        return f"Summarise in one sentence: {passage}"          # a prompt, or chat messages

    @task.hermes_tool(tool="calculator")
    def calculate(expression: str) -> dict:
        return {"expression": expression}                      # the tool's arguments

The function runs when the task does (its return value is not Jinja-rendered again: it is
Python already). Everything else — idempotent submission, deferral, mapping with `.expand`,
the node in the DAG's application graph — is the operator's (`LLMStepOperator`,
`ToolStepOperator`). Registered as `task-decorators` in the provider info.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory
from airflow.sdk.definitions.context import context_merge

from hermesflow.backends.calls import ChatMessage, LLMCall, ToolCall
from hermesflow.operators.airflow_compat import SET_DURING_EXECUTION
from hermesflow.operators.llm_step import LLMStepOperator
from hermesflow.operators.tool_step import ToolStepOperator
from hermesflow.operators.validation import HermesDagError


def _templated(operator: type[BaseOperator]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The template fields (and their renderers) of a decorated `operator`: the function's
    arguments and the operator's own fields."""
    return (
        (*DecoratedOperator.template_fields, *operator.template_fields),
        {**DecoratedOperator.template_fields_renderers, **operator.template_fields_renderers},
    )


class _HermesDecoratedOperator(DecoratedOperator):
    """Calls the decorated function to build the step's request."""

    def produce(self, context: Context) -> Any:
        context_merge(context, self.op_kwargs)
        return self.python_callable(*self.op_args, **self.determine_kwargs(context))


class _HermesLLMDecoratedOperator(_HermesDecoratedOperator, LLMStepOperator):
    """`@task.hermes_llm`: the function returns the prompt (str) or chat messages (list)."""

    custom_operator_name = "@task.hermes_llm"
    template_fields, template_fields_renderers = _templated(LLMStepOperator)

    def __init__(self, *, python_callable: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(python_callable=python_callable, prompt=SET_DURING_EXECUTION, **kwargs)

    def build_call(self, context: Context) -> LLMCall:
        produced = self.produce(context)
        options = self.call_options()
        if isinstance(produced, str):
            return LLMCall(prompt=produced, **options)
        if isinstance(produced, Sequence) and all(
            isinstance(m, (Mapping, ChatMessage)) for m in produced
        ):
            return LLMCall(messages=[ChatMessage.model_validate(m) for m in produced], **options)
        raise HermesDagError(
            f"{self._where()}: the function returned a {type(produced).__name__}; return the "
            "prompt (a str) or the chat messages (a list of {'role': ..., 'content': ...})"
        )


class _HermesToolDecoratedOperator(_HermesDecoratedOperator, ToolStepOperator):
    """`@task.hermes_tool(tool=...)`: the function returns the tool's arguments (a dict)."""

    custom_operator_name = "@task.hermes_tool"
    template_fields, template_fields_renderers = _templated(ToolStepOperator)

    def __init__(self, *, python_callable: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(python_callable=python_callable, args=SET_DURING_EXECUTION, **kwargs)

    def build_call(self, context: Context) -> ToolCall:
        produced = self.produce(context)
        if not isinstance(produced, Mapping):
            raise HermesDagError(
                f"{self._where()}: the function returned a {type(produced).__name__}; return "
                f"the arguments of tool {self.tool!r} as a dict"
            )
        return ToolCall(tool=self.tool, args=dict(produced), timeout_s=self.timeout_s)


def hermes_llm_task(
    python_callable: Callable[..., Any] | None = None, **kwargs: Any
) -> TaskDecorator:
    """`@task.hermes_llm(...)`: keyword arguments are `LLMStepOperator`'s."""
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=False,
        decorated_operator_class=_HermesLLMDecoratedOperator,
        **kwargs,
    )


def hermes_tool_task(
    python_callable: Callable[..., Any] | None = None, **kwargs: Any
) -> TaskDecorator:
    """`@task.hermes_tool(tool=...)`: keyword arguments are `ToolStepOperator`'s."""
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=False,
        decorated_operator_class=_HermesToolDecoratedOperator,
        **kwargs,
    )
