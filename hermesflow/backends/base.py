"""The backend contract: what every backend (an LLM engine, a tool pool, a search index) does.

A backend is a plain Python object with three jobs — `load` (the warm-up: load a model, start
a worker pool, open an index), `run` one call, `unload` — so it can be used from a plain
program, wrapped in a Ray actor by the runtime (`hermesflow.backends.actor`), or driven by a
test. The lifecycle cold → warming → warm → draining (`BackendPhase`) is the runtime's: a cold
backend has no actor, warming is actor start plus `load`, draining waits for in-flight calls
before the actor is killed.

`capacity` is how many calls the backend runs at once; the scheduler never dispatches more, so
the order of everything beyond it is the scheduler's (policy) order. An LLM backend batches the
calls it holds (`capacity` = its maximum batch).

Backends are built from a `BackendSpec` by type name through `BACKEND_TYPES`, an explicit
registry filled in this module: the module of each type is imported only when a spec names it,
so vLLM (a GPU extra) or the embedding model are never imported unless used.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from hermesflow.backends.calls import Call, CallResult

DeltaSink = Callable[[str], None]
"""Receives generated text as it is produced (streaming); called from the backend's thread."""


class BackendSpec(BaseModel):
    """How to build and place one backend: its name in PDGraphs, its type, the type's options,
    and the Ray resources of its actor."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1)]
    type: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = Field(default_factory=dict)
    num_cpus: Annotated[float, Field(ge=0)] = 0.0
    num_gpus: Annotated[float, Field(ge=0)] = 0.0
    expected_warmup_s: Annotated[float, Field(gt=0)] = 5.0


class Backend(ABC):
    """One backend. Subclasses set `type_name` and implement `load`, `run` and `unload`."""

    type_name: ClassVar[str]

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"backend {name!r}: capacity {capacity}; it must run at least 1 call")
        self.name = name
        self.capacity = capacity

    @abstractmethod
    async def load(self) -> None:
        """The warm-up: after it returns, `run` serves calls without further start-up cost."""

    @abstractmethod
    async def run(self, call: Call, on_delta: DeltaSink | None = None) -> CallResult:
        """Serve one call; LLM backends pass generated text to `on_delta` as it comes."""

    @abstractmethod
    async def unload(self) -> None:
        """Free what `load` took (memory, processes). The backend may be loaded again."""


BACKEND_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "transformers": "hermesflow.backends.transformers_llm:TransformersLLM",
        "vllm": "hermesflow.backends.vllm_llm:VLLMBackend",
        "openai": "hermesflow.backends.openai_client:OpenAIClientBackend",
        "python-tools": "hermesflow.backends.tools:PythonToolPool",
        "code": "hermesflow.backends.code_exec:CodeExecutor",
        "search": "hermesflow.backends.search:SearchIndex",
    }
)
"""Backend type name → `module:Class`; each class takes `(name, **spec.options)`."""


OMP_WAIT_POLICY = "OMP_WAIT_POLICY"


def wait_passively() -> None:
    """Make this process's OpenMP threads sleep at a barrier instead of spinning, unless the
    deployment set the policy itself. A backend shares its cores with the scheduler, the other
    backends and the API, and a thread spinning at one of a decode step's hundreds of barriers
    holds the core its preempted sibling needs: a SmolLM2 decode step took about 1.95 s instead
    of 0.2 s beside one busy process on 2 cores. OpenMP reads the variable once, when torch
    loads it, so this runs before anything imports torch."""
    os.environ.setdefault(OMP_WAIT_POLICY, "PASSIVE")


def make_backend(spec: BackendSpec) -> Backend:
    """Build the backend a spec describes (its module is imported here, not before)."""
    try:
        target = BACKEND_TYPES[spec.type]
    except KeyError:
        raise ValueError(
            f"backend {spec.name!r}: unknown type {spec.type!r}; choose one of: {', '.join(BACKEND_TYPES)}"
        ) from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(spec.name, **spec.options)
    except TypeError as error:
        raise ValueError(f"backend {spec.name!r} of type {spec.type!r}: bad options ({error})") from None
