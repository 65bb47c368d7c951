"""`LLMStepOperator`: one generation on a Hermesflow LLM backend, as a deferrable task.

The prompt (or each chat message) is a Jinja template that the operator renders itself, with
Airflow's task context plus the task's `inputs`:

    LLMStepOperator(
        task_id="summarize",
        prompt="Summarise this passage in one sentence.\\n\\nPassage: {{ passage }}\\nSummary:",
        inputs={"passage": split.output},   # templated; XComArgs resolve; expandable
    )

`inputs` is an ordinary templated field (its strings see the task context, its XComArgs are
pulled, and it can be `expand`ed for dynamic task mapping); the prompt is not, so its slots may
name `inputs` entries, which Airflow's own rendering would reject. The static text before the
prompt's first Jinja tag is the node's shared prefix in the application graph. The task's
XCom is the generated text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jinja2
from airflow.sdk import Context

from hermesflow.apps.app_graph import NodeKind
from hermesflow.backends.calls import CallResult, ChatMessage, LLMCall
from hermesflow.operators.airflow_compat import ArgNotSet
from hermesflow.operators.step_base import StepOperator
from hermesflow.operators.validation import HermesDagError, check_fields, check_template_slots
from hermesflow.pdgraph.model import LLM_BACKEND

DEFAULT_MAX_TOKENS = 64
Messages = Sequence[Mapping[str, str] | ChatMessage]


class LLMStepOperator(StepOperator):
    """Generate with `prompt` (a completion) or `messages` (a chat) on `backend` (module
    docstring). `max_tokens`, `temperature` (0: greedy, so a replay gives the same text) and
    `stop` are the call's options."""

    node_kind: ClassVar[NodeKind] = NodeKind.LLM
    template_fields: Sequence[str] = ("inputs",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"inputs": "json"}

    def __init__(
        self,
        *,
        prompt: str | None = None,
        messages: Messages | None = None,
        inputs: Mapping[str, Any] | None = None,
        backend: str = LLM_BACKEND,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backend=backend, **kwargs)
        self.prompt = prompt
        self.messages = _as_dicts(messages) if isinstance(messages, (list, tuple)) else messages
        self.inputs = inputs
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.stop = list(stop or [])
        self._check()

    def _arguments(self) -> dict[str, Any]:
        return {
            **super()._arguments(),
            "prompt": self.prompt,
            "messages": self.messages,
            "inputs": self.inputs,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": self.stop,
        }

    @classmethod
    def check_arguments(
        cls, where: str, args: Mapping[str, Any], env: jinja2.Environment, complete: bool
    ) -> None:
        super().check_arguments(where, args, env, complete)
        prompt, messages = args.get("prompt"), args.get("messages")
        if prompt is not None and messages is not None:
            raise HermesDagError(
                f"{where}: give prompt (a completion) or messages (a chat), not both"
            )
        if complete and prompt is None and messages is None:
            raise HermesDagError(
                f"{where}: no prompt; give prompt='...' (a completion) or messages=[...] (a chat)"
            )
        for name, value, shape in (("prompt", prompt, str), ("messages", messages, (list, tuple))):
            if value is not None and not isinstance(value, (shape, ArgNotSet)):
                raise HermesDagError(
                    f"{where}: {name} is a {type(value).__name__}; give a literal template here, "
                    "or compute the prompt at run time with @task.hermes_llm"
                )
        options = {
            k: args[k] for k in ("max_tokens", "temperature", "stop") if args.get(k) is not None
        }
        check_fields(where, LLMCall, {"prompt": "", **options})
        if isinstance(messages, (list, tuple)):
            check_fields(where, LLMCall, {"messages": _as_dicts(messages)})
        if "inputs" not in args:
            return  # expanded: its names are known when the task runs
        inputs = args["inputs"]
        check_template_slots(where, "inputs", inputs, env)
        if inputs is None or isinstance(inputs, Mapping):
            templates = _templates(prompt, messages)
            check_template_slots(where, "the prompt", templates, env, inputs=inputs or {})

    @classmethod
    def static_prefix(cls, prompt: Any) -> str | None:
        return prompt_prefix(prompt)

    def build_call(self, context: Context) -> LLMCall:
        values = self._template_values(context)
        if isinstance(self.prompt, str):
            return LLMCall(prompt=self._render(self.prompt, values), **self.call_options())
        messages = [
            ChatMessage(role=m["role"], content=self._render(m["content"], values))
            for m in self.messages or []
        ]
        return LLMCall(messages=messages, **self.call_options())

    def call_options(self) -> dict[str, Any]:
        """The generation options of the call, beside its prompt or messages."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "stop": self.stop}

    def _template_values(self, context: Context) -> dict[str, Any]:
        if self.inputs is None:
            return dict(context)
        if not isinstance(self.inputs, Mapping):
            raise HermesDagError(
                f"{self._where()}: inputs rendered to a {type(self.inputs).__name__}; give a "
                "dict of template variables (or expand over a list of dicts)"
            )
        return {**context, **self.inputs}

    def _render(self, template: str, values: dict[str, Any]) -> str:
        return str(self.render_template(template, values))

    def result_of(self, result: CallResult) -> str:
        return result.text


def _as_dicts(messages: Messages) -> list[Any]:
    """Chat messages as dicts (other items are left for validation to refuse)."""
    return [
        m.model_dump() if isinstance(m, ChatMessage) else dict(m) if isinstance(m, Mapping) else m
        for m in messages
    ]


def _templates(prompt: Any, messages: Any) -> list[str]:
    """The Jinja templates the operator renders itself (none for a decorated task's prompt,
    which its function computes at run time)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(messages, (list, tuple)):
        return [str(m["content"]) for m in _as_dicts(messages)]
    return []


def prompt_prefix(prompt: Any) -> str | None:
    """The static text before a prompt's first Jinja tag: what every request of the node
    starts with, and so the prefix the backend can share. None when there is none."""
    if not isinstance(prompt, str):
        return None
    cut = min(
        (i for tag in ("{{", "{%", "{#") if (i := prompt.find(tag)) >= 0), default=len(prompt)
    )
    return prompt[:cut] or None
