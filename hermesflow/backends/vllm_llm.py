"""The GPU language-model backend: vLLM's asynchronous engine (`AsyncLLM`, vLLM 0.32) with its
priority scheduler, so the order our policy computes also orders vLLM's own queue.

vLLM is the optional `gpu` extra and is imported inside `load`, never at module import: the
module (and the spec naming it) can be used on a machine without a GPU until it is loaded.

Why priorities. Our scheduler dispatches at most `capacity` calls; vLLM then decides which of
them run each step and which wait or are preempted when the KV cache is short. With
`scheduling_policy="priority"` it takes requests in ascending `priority` (ties first come, first
served) — the same "lower is earlier" as our policy keys (a Gittins index turned into a rank).
vLLM wants an int, so `run`'s float `priority` becomes `round(priority * priority_scale)`: keys
closer than `1 / priority_scale` tie and fall back to arrival order.

Why dense attention only. Hermesflow's long-context methods choose per call, and vLLM chooses its
attention backend once per engine, for every layer and request in its batch; its paged KV cache
and CUDA-graph capture assume the backend's own kernels and layout. Running sparse prefill in
vLLM cleanly means a vLLM attention backend (a plugin registered at engine start, applying one
configuration to every request) and, for retrieval, a KV connector that moves the middle of the
cache to host memory. Neither is per-request, and neither can be built or tested without a GPU,
so a call that asks for `minference` or `retrieval` is refused on this backend (`call_checks`),
never run dense unasked.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import inspect
import os
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar, Literal

from hermesflow.backends.base import Backend, DeltaSink
from hermesflow.backends.calls import AttentionMethod, Call, CallResult, LLMCall
from hermesflow.backends.llm_text import encode_call
from hermesflow.backends.model_files import ensure_smollm2

VLLM_INSTALL = "pip install 'hermesflow[gpu]'"
MULTIPROC_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"


def missing_gpu_stack() -> str | None:
    """Why this machine cannot run the vLLM backend (no CUDA GPU, or no vLLM), or None; checked
    without importing vLLM, so a command can refuse up front instead of failing at `load`."""
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if importlib.util.find_spec("vllm") is None:
        return f"needs vLLM: `{VLLM_INSTALL}`"
    return None
DEFAULT_PRIORITY = 0
"""vLLM's priority for a call that carries none."""


def vllm_priority(priority: float | None, scale: float) -> int:
    """vLLM's integer request priority for one of our policy keys (lower runs earlier)."""
    return DEFAULT_PRIORITY if priority is None else round(priority * scale)


class VLLMBackend(Backend):
    """A vLLM engine on the GPU behind the backend contract.

    Options: `model` — a local Hugging Face folder or a model id vLLM can load (default: the
    SmolLM2 folder of `model_files`); `max_batch` — the capacity, also vLLM's `max_num_seqs`;
    `dtype` ("auto", "bfloat16", "float16"); `gpu_memory_utilization`; `max_model_len`;
    `max_input_tokens` — the longest prompt (a longer one, or one that leaves no room for its
    `max_tokens` in `max_model_len`, is refused with `ContextLengthExceeded` unless the call asks
    for `truncation: auto`, which keeps its last tokens); `priority_scale` (see the module
    docstring); `seed`; `engine_options` — any further `AsyncEngineArgs` fields.

    `load` builds the engine on the calling event loop (vLLM's async client binds to it) and so
    blocks that loop for the engine's start-up. `CallResult` timings are measured around the
    request stream (`prefill_s` = time to the first token); `batch_size` is 1 because vLLM does
    not report the batch a request ran in.
    """

    type_name: ClassVar[str] = "vllm"

    def __init__(
        self,
        name: str,
        *,
        model: str | Path | None = None,
        max_batch: int = 64,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        max_input_tokens: int = 2048,
        priority_scale: float = 1000.0,
        seed: int = 0,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, capacity=max_batch)
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                f"backend {name!r}: gpu_memory_utilization {gpu_memory_utilization}; give (0, 1]"
            )
        if not 0 < max_input_tokens < max_model_len:
            raise ValueError(
                f"backend {name!r}: max_input_tokens {max_input_tokens} must be positive and "
                f"below max_model_len {max_model_len}, leaving room to generate"
            )
        if priority_scale <= 0:
            raise ValueError(f"backend {name!r}: priority_scale {priority_scale}; give > 0")
        self.model = model
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.max_input_tokens = max_input_tokens
        self.priority_scale = priority_scale
        self.seed = seed
        self.engine_options = dict(engine_options or {})
        self._engine: Any = None
        self._tokenizer: Any = None
        self._sampling: tuple[Any, Any] | None = None  # (SamplingParams, RequestOutputKind)

    async def load(self) -> None:
        if self._engine is not None:
            return
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.sampling_params import RequestOutputKind, SamplingParams
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as error:
            raise RuntimeError(
                f"backend {self.name!r} needs vLLM, the gpu extra: `{VLLM_INSTALL}` on a machine "
                f"with a CUDA GPU ({error})"
            ) from error
        model = self.model if self.model is not None else await asyncio.to_thread(ensure_smollm2)
        # vLLM runs its engine in a child process, forked by default. A process that already
        # touched CUDA (a `torch.cuda` check, a Ray GPU worker) leaves a forked child unable to
        # use it ("Cannot re-initialize CUDA in forked subprocess", seen on an H200), so start
        # the child fresh unless the user chose otherwise.
        os.environ.setdefault(MULTIPROC_METHOD_ENV, "spawn")
        args = AsyncEngineArgs(
            model=str(model),
            dtype=self.dtype,
            max_num_seqs=self.capacity,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            scheduling_policy="priority",
            seed=self.seed,
            disable_log_stats=True,
            **self.engine_options,
        )
        engine = AsyncLLM.from_engine_args(args)
        tokenizer = engine.get_tokenizer()
        if inspect.isawaitable(tokenizer):  # a coroutine in some vLLM releases
            tokenizer = await tokenizer
        self._engine, self._tokenizer = engine, tokenizer
        self._sampling = (SamplingParams, RequestOutputKind)

    async def run(
        self,
        call: Call,
        on_delta: DeltaSink | None = None,
        priority: float | None = None,
        *,
        seed: int | None = None,
    ) -> CallResult:
        """Generate for one call. `priority` is the call's policy key (lower runs earlier);
        `seed` fixes its sampling."""
        if not isinstance(call, LLMCall):
            raise ValueError(
                f"backend {self.name!r} generates text; it cannot run a {call.kind} call"
            )
        if self._engine is None or self._sampling is None:
            raise RuntimeError(f"backend {self.name!r} is not loaded; await load() first")
        sampling_params, output_kind = self._sampling
        prompt = encode_call(self._tokenizer, call, self.max_input_tokens, self.max_model_len)
        params = sampling_params(
            max_tokens=call.max_tokens,  # encode_call left room for them
            temperature=call.temperature,
            stop=list(call.stop) or None,
            seed=seed,
            output_kind=output_kind.DELTA,
        )
        started = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        output_tokens = 0
        finish_reason: str | None = None
        async for output in self._engine.generate(
            {"prompt_token_ids": prompt.ids},
            params,
            f"{self.name}-{uuid.uuid4().hex}",
            priority=vllm_priority(priority, self.priority_scale),
        ):
            completion = output.outputs[0]
            output_tokens += len(completion.token_ids)
            if completion.text:
                first = first or time.perf_counter()
                parts.append(completion.text)
                if on_delta is not None:
                    on_delta(completion.text)
            finish_reason = completion.finish_reason or finish_reason
        finished = time.perf_counter()
        first = first or finished
        return CallResult(
            text="".join(parts),
            input_tokens=len(prompt.ids),
            output_tokens=output_tokens,
            seconds=finished - started,
            prefill_s=first - started,
            decode_s=finished - first,
            batch_size=1,
            finish_reason=_finish_reason(finish_reason),
            attention=AttentionMethod.DENSE,
        )

    async def unload(self) -> None:
        engine, self._engine = self._engine, None
        self._tokenizer = self._sampling = None
        if engine is not None:
            engine.shutdown()  # stops the engine-core process, which holds the GPU memory
            del engine
            gc.collect()


def _finish_reason(reason: str | None) -> Literal["stop", "length"]:
    return "length" if reason == "length" else "stop"
