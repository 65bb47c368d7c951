"""The vLLM backend. Option checks and the priority mapping run everywhere; generation runs only
on a CUDA machine with the `gpu` extra (`-m gpu`), on the SmolLM2 folder, so it needs no network.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterator

import pytest
import torch

from hermesflow.backends.base import BackendSpec, make_backend
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.backends.vllm_llm import VLLMBackend, vllm_priority

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
GPU_MARKS = (
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not HAVE_VLLM, reason="needs vLLM: pip install 'hermesflow[gpu]'"),
)


def on_gpu(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test `gpu` and skip it without CUDA or vLLM."""
    for mark in GPU_MARKS:
        test = mark(test)
    return test


CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_priorities_keep_their_order_as_vllm_integers() -> None:
    keys = [-2.5, -0.0004, 0.0, 0.0012, 0.0031, 7.25]
    ranks = [vllm_priority(key, scale=1000.0) for key in keys]
    assert ranks == [-2500, 0, 0, 1, 3, 7250] and all(isinstance(r, int) for r in ranks)
    assert ranks == sorted(ranks), "lower keys must stay earlier"
    assert vllm_priority(None, scale=1000.0) == 0


def test_options_are_checked_without_vllm() -> None:
    backend = make_backend(BackendSpec(name="gpu", type="vllm", options={"max_batch": 32}))
    assert isinstance(backend, VLLMBackend) and backend.capacity == 32
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMBackend("x", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="below max_model_len"):
        VLLMBackend("x", max_input_tokens=4096, max_model_len=4096)
    with pytest.raises(ValueError, match="priority_scale"):
        VLLMBackend("x", priority_scale=0)
    with pytest.raises(RuntimeError, match="not loaded"):
        asyncio.run(VLLMBackend("x").run(LLMCall(prompt="hi")))
    with pytest.raises(ValueError, match="cannot run a tool call"):
        asyncio.run(VLLMBackend("x").run(ToolCall(tool="calculator")))


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_load_without_vllm_names_the_extra() -> None:
    with pytest.raises(RuntimeError, match=r"pip install 'hermesflow\[gpu\]'"):
        asyncio.run(VLLMBackend("x").load())


# ---------------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_llm(async_runner: asyncio.Runner) -> Iterator[VLLMBackend]:
    backend = VLLMBackend(
        "smollm2-gpu",
        max_batch=1,
        gpu_memory_utilization=0.3,
        max_model_len=2048,
        max_input_tokens=1024,
        # No CUDA graphs or torch.compile: the engine starts in seconds rather than a minute,
        # and these tests check behaviour, not speed (bench/vllm_priority.py measures that).
        engine_options={"enforce_eager": True},
    )
    async_runner.run(backend.load())
    yield backend
    async_runner.run(backend.unload())


@on_gpu
def test_chat_streams_and_ends_at_eos(async_runner: asyncio.Runner, gpu_llm: VLLMBackend) -> None:
    deltas: list[str] = []
    result = async_runner.run(gpu_llm.run(LLMCall(messages=CAPITAL, max_tokens=40), deltas.append))
    assert "Paris" in result.text and "".join(deltas) == result.text
    assert result.finish_reason == "stop" and 0 < result.output_tokens < 40
    assert result.input_tokens > 20 and result.prefill_s <= result.seconds


@on_gpu
def test_max_tokens_and_stop_are_respected(
    async_runner: asyncio.Runner, gpu_llm: VLLMBackend
) -> None:
    cut = async_runner.run(gpu_llm.run(LLMCall(prompt="Once upon a time", max_tokens=8)))
    assert cut.output_tokens == 8 and cut.finish_reason == "length"
    stop = cut.text.split()[2]
    stopped = async_runner.run(
        gpu_llm.run(LLMCall(prompt="Once upon a time", max_tokens=8, stop=[stop]))
    )
    assert stopped.text == cut.text[: cut.text.index(stop)] and stopped.finish_reason == "stop"


@on_gpu
def test_a_lower_priority_key_overtakes_the_queue(
    async_runner: asyncio.Runner, gpu_llm: VLLMBackend
) -> None:
    """One sequence at a time (max_batch=1): the urgent call, sent last, finishes before the
    calls queued ahead of it with a larger key."""
    finished: list[str] = []

    async def timed(label: str, priority: float, max_tokens: int) -> CallResult:
        call = LLMCall(prompt=f"Write a long story about {label}.", max_tokens=max_tokens)
        result = await gpu_llm.run(call, priority=priority)
        finished.append(label)
        return result

    async def scenario() -> None:
        background = [asyncio.create_task(timed(f"ship {i}", 5.0, 64)) for i in range(4)]
        await asyncio.sleep(0.05)  # they are queued (the first is running)
        await asyncio.gather(timed("urgent", -1.0, 4), *background)

    async_runner.run(scenario())
    assert finished.index("urgent") < finished.index("ship 3")
    assert finished.index("urgent") <= 1, f"the urgent call waited behind the queue: {finished}"
