"""Whether a call can run on a backend: checked when a client submits it, and again right before
the backend runs it.

The scheduler checks every step a client sends against the backend it names, so a call that
cannot run there — an LLM call on a tool backend or the reverse, a tool the backend does not
have, arguments that do not fit the tool's signature, a long-context attention method on a
backend that runs dense attention only — is refused at submission, before
anything is stored or queued, with a message that says what to change. It knows a backend's
call kind from its type, and a tool backend's signatures once the backend has been loaded (a
tool pool learns them by importing its tools). The backend actor runs the same check before
every call, so a call queued while the signatures were not known yet is refused the same way:
as a result whose `error_code` says so, not as a crash with a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

from hermesflow.backends.base import BACKEND_TYPES
from hermesflow.backends.calls import (
    AttentionMethod,
    Call,
    CallKind,
    CallRefused,
    LLMCall,
    ToolCall,
)
from hermesflow.backends.tools import ToolSignature

LLM_BACKEND_TYPES = frozenset({"transformers", "vllm", "openai"})
"""Backend types that serve `LLMCall`s; every other type serves `ToolCall`s."""

LONG_CONTEXT_BACKEND_TYPES = frozenset({"transformers"})
"""LLM backend types that run every `AttentionMethod`; the others run dense attention only (vLLM
picks its attention backend per engine, not per request; an OpenAI-compatible server has no
such option)."""

_SERVED_BY = {
    CallKind.LLM: sorted(LLM_BACKEND_TYPES),
    CallKind.TOOL: sorted(set(BACKEND_TYPES) - LLM_BACKEND_TYPES),
}


def call_kind_of(backend_type: str) -> CallKind:
    """The kind of call a backend of this type serves."""
    return CallKind.LLM if backend_type in LLM_BACKEND_TYPES else CallKind.TOOL


def check_call(
    backend: str,
    backend_type: str,
    signatures: Mapping[str, ToolSignature] | None,
    call: Call,
) -> None:
    """Raise `CallRefused` if `call` cannot run on `backend` of type `backend_type`, with the
    tools `signatures` (None: not known yet, so only the call's kind is checked)."""
    serves = call_kind_of(backend_type)
    if call.kind != serves:
        raise CallRefused(
            f"backend {backend!r} runs {serves.value} calls, not {call.kind} calls; send "
            f"{call.kind} calls to a backend of type {' or '.join(_SERVED_BY[CallKind(call.kind)])}"
        )
    if isinstance(call, LLMCall):
        _check_attention(backend, backend_type, call)
    if not isinstance(call, ToolCall) or signatures is None:
        return
    signature = signatures.get(call.tool)
    if signature is None:
        known = ", ".join(str(s) for s in signatures.values())
        raise CallRefused(f"backend {backend!r} has no tool {call.tool!r}; its tools: {known}")
    try:
        if signature.arguments is None:
            signature.check(call.args)
        else:
            signature.parse(signature.arguments, call.args)
    except ValueError as error:
        raise CallRefused(str(error)) from None


def _check_attention(backend: str, backend_type: str, call: LLMCall) -> None:
    if (
        call.attention in (None, AttentionMethod.DENSE)
        or backend_type in LONG_CONTEXT_BACKEND_TYPES
    ):
        return
    raise CallRefused(
        f"backend {backend!r} (type {backend_type}) runs dense attention only, not "
        f"{call.attention.value!r}; send the call to a backend of type "
        f"{' or '.join(sorted(LONG_CONTEXT_BACKEND_TYPES))}, or leave attention out"
    )
