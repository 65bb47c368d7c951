"""The reference application suite: four real application classes, the backends they run on,
and the mix the demo and the benchmarks draw from.

    fact_check  extract claims → search per claim → verdict per claim           small
    react       think → search | calculate → think ... (1-5 rounds)            medium, looping
    code_gen    write → run tests → fix → run tests ... (1-3 runs)              medium, looping
    map_reduce  load document → one summary per chunk (2-10) → combine          large, wide

Sizes differ by design: most runs are small, most work is in a few big ones, and how big a run
is becomes known only as it goes (rounds, tries, chunk counts) — what Gittins scheduling on the
PDGraph state exploits. `REFERENCE_APPS` is an explicit, read-only registry; to run another
program, pass its `module:Class` to the runtime configuration instead of changing this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from hermesflow.apps.code_gen import CodeGenTestLoop
from hermesflow.apps.fact_check import FactCheckChain
from hermesflow.apps.map_reduce import MapReduceSummarizer
from hermesflow.apps.program import AppProgram
from hermesflow.apps.react import ReActToolLoop
from hermesflow.apps.suite_steps import (
    CODE_BACKEND,
    LOAD_DOCUMENT_TOOL,
    SEARCH_BACKEND,
    TOOLS_BACKEND,
)
from hermesflow.apps.tools import load_document
from hermesflow.backends.base import BackendSpec
from hermesflow.backends.builtin_tools import BUILTIN_TOOLS
from hermesflow.pdgraph.model import LLM_BACKEND

REFERENCE_APPS: Mapping[str, type[AppProgram]] = MappingProxyType(
    {
        program.app_class: program
        for program in (FactCheckChain, ReActToolLoop, CodeGenTestLoop, MapReduceSummarizer)
    }
)
"""Application class name → its program."""

DEMO_MIX: Mapping[str, float] = MappingProxyType(
    {"fact_check": 0.35, "react": 0.25, "code_gen": 0.2, "map_reduce": 0.2}
)
"""Share of each class among arriving applications: the small classes are most of the runs,
the big ones (map_reduce about 3.5 times fact_check's prior demand) most of the work."""

LLM_MAX_BATCH = 8
LLM_WARMUP_S = 5.0
"""Ray actor start plus loading SmolLM2-135M from saved safetensors (measured 4.8 s)."""
VLLM_WARMUP_S = 30.0
"""Ray actor start plus a vLLM engine for SmolLM2-135M (its engine process, weights, KV cache
and, unless eager, CUDA graphs): tens of seconds; replaced by the measured moving average."""
VLLM_MEMORY_SHARE = 0.3
"""vLLM's share of the GPU's memory: SmolLM2-135M needs a fraction of any data-centre GPU."""
VLLM_MAX_MODEL_LEN = 4096


class LLMEngine(StrEnum):
    """Which engine serves the suite's LLM steps: the same model either way."""

    CPU = "cpu"
    """SmolLM2-135M-Instruct in transformers on the CPU: the default, needs nothing more."""
    GPU = "gpu"
    """SmolLM2-135M-Instruct in vLLM on a CUDA GPU: needs the `gpu` extra."""
SEARCH_WARMUP_S = 8.0
"""Actor start, load the sentence encoder and embed the 228-passage corpus: 5 s alone on
2 cores, 7-17 s beside a busy LLM actor (measured). The scheduler replaces it by its own
moving average of measured warm-ups after the first one."""

TOOL_FUNCTIONS: Mapping[str, str] = MappingProxyType(
    {**BUILTIN_TOOLS, LOAD_DOCUMENT_TOOL: f"{load_document.__module__}:{load_document.__name__}"}
)
"""The tool pool's tools: name → `module:function` (the builtin ones and `load_document`)."""


def get_program(name: str) -> AppProgram:
    """A fresh program of the reference class `name`."""
    try:
        return REFERENCE_APPS[name]()
    except KeyError:
        raise ValueError(
            f"no reference application class {name!r}; known classes: {', '.join(REFERENCE_APPS)}"
        ) from None


def program_paths() -> dict[str, str]:
    """Class name → `module:Class` of each program, the form the runtime configuration takes."""
    return {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in REFERENCE_APPS.items()}


def llm_backend(engine: LLMEngine = LLMEngine.CPU, *, eager: bool = False) -> BackendSpec:
    """The suite's LLM backend on `engine`; `eager` runs vLLM without CUDA graphs or
    torch.compile (a start in seconds instead of a minute, slower decoding)."""
    if engine is LLMEngine.GPU:
        return BackendSpec(
            name=LLM_BACKEND,
            type="vllm",
            options={
                "max_batch": LLM_MAX_BATCH,
                "gpu_memory_utilization": VLLM_MEMORY_SHARE,
                "max_model_len": VLLM_MAX_MODEL_LEN,
                "engine_options": {"enforce_eager": eager},
            },
            num_cpus=1,
            num_gpus=1,
            expected_warmup_s=VLLM_WARMUP_S,
        )
    return BackendSpec(
        name=LLM_BACKEND,
        type="transformers",
        options={"max_batch": LLM_MAX_BATCH},
        num_cpus=1,
        expected_warmup_s=LLM_WARMUP_S,
    )


def suite_backends(engine: LLMEngine = LLMEngine.CPU, *, eager: bool = False) -> list[BackendSpec]:
    """The backends the suite's stages name: the LLM (on `engine`, see `llm_backend`), search,
    code execution, the tool pool."""
    return [
        llm_backend(engine, eager=eager),
        BackendSpec(name=SEARCH_BACKEND, type="search", expected_warmup_s=SEARCH_WARMUP_S),
        BackendSpec(name=CODE_BACKEND, type="code"),
        BackendSpec(
            name=TOOLS_BACKEND, type="python-tools", options={"tools": dict(TOOL_FUNCTIONS)}
        ),
    ]
