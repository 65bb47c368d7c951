"""The long-context attention methods inside the CPU transformers backend, on the real SmolLM2.

Each method has a setting where it must give exactly dense attention's answer — a sparse pattern
whose budgets cover a short prompt, a retrieval whose static part and top keys cover every
token — so greedy decoding must produce the dense text token for token: a wrong head order, a
mis-aligned row or a bad merge changes it. The methods' accuracy where they do drop keys is
checked at the model's full context in `test_long_context_accuracy.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from hermesflow.backends.call_checks import check_call
from hermesflow.backends.calls import AttentionMethod, CallErrorCode, CallRefused, LLMCall
from hermesflow.backends.haystack import haystack_ids
from hermesflow.backends.transformers_llm import TransformersLLM

if TYPE_CHECKING:  # the fixture's type; conftest modules are not imported by name
    from conftest import LoopThread

RETRIEVAL = {"sink": 4, "window": 16, "top_k": 4096}
"""A retrieval whose top keys cover every indexed token of these prompts: exact attention."""


@pytest.fixture(scope="module")
def long_context_llm(backend_loop: LoopThread) -> Iterator[TransformersLLM]:
    """SmolLM2 whose minference gate opens at 64 tokens (no break-even is measured on a CPU)."""
    backend = TransformersLLM(
        "long-context", max_batch=4, dtype="float32", sparse_min_length=64, retrieval=RETRIEVAL
    )
    backend_loop.run(backend.load())
    yield backend
    backend_loop.run(backend.unload())


def _prompt(llm: TransformersLLM, tokens: int) -> str:
    """`tokens` tokens of real text, cut mid-sentence: the model goes on writing."""
    return llm.tokenizer.decode(haystack_ids(llm.tokenizer, tokens))


def _run(loop: LoopThread, llm: TransformersLLM, *calls: LLMCall) -> list:
    async def gather() -> list:
        import asyncio

        return list(await asyncio.gather(*(llm.run(call) for call in calls)))

    return loop.run(gather())


def test_minference_with_covering_budgets_decodes_the_dense_text(
    backend_loop: LoopThread, long_context_llm: TransformersLLM
) -> None:
    prompt = _prompt(long_context_llm, 200)
    (dense,) = _run(backend_loop, long_context_llm, LLMCall(prompt=prompt, max_tokens=12))
    prefills = long_context_llm.stats.prefills
    (sparse,) = _run(
        backend_loop,
        long_context_llm,
        LLMCall(prompt=prompt, max_tokens=12, attention=AttentionMethod.MINFERENCE),
    )
    assert sparse.attention is AttentionMethod.MINFERENCE
    assert dense.attention is AttentionMethod.DENSE
    assert long_context_llm.stats.prefills == prefills + 1
    assert sparse.text == dense.text and sparse.output_tokens == 12


def test_minference_below_the_gate_runs_dense_and_says_so(
    backend_loop: LoopThread, cpu_llm: TransformersLLM
) -> None:
    """`cpu_llm` has no sparse_min_length and no break-even is measured for the CPU."""
    call = LLMCall(prompt="Once upon a time", max_tokens=6)
    (dense,) = _run(backend_loop, cpu_llm, call)
    (gated,) = _run(
        backend_loop, cpu_llm, call.model_copy(update={"attention": AttentionMethod.MINFERENCE})
    )
    assert gated.attention is AttentionMethod.DENSE and gated.text == dense.text


def test_retrieval_rows_decode_beside_dense_rows_as_each_would_alone(
    backend_loop: LoopThread, long_context_llm: TransformersLLM
) -> None:
    """A retrieval row and dense rows of other lengths share decode steps (left padding)."""
    long = LLMCall(prompt=_prompt(long_context_llm, 160), max_tokens=10)
    short = LLMCall(prompt="The three primary colours are red, yellow and", max_tokens=10)
    alone = [_run(backend_loop, long_context_llm, call)[0] for call in (long, short)]
    retrieval = long.model_copy(update={"attention": AttentionMethod.RETRIEVAL})
    together = _run(backend_loop, long_context_llm, retrieval, short, retrieval)
    assert [r.attention for r in together] == [
        AttentionMethod.RETRIEVAL,
        AttentionMethod.DENSE,
        AttentionMethod.RETRIEVAL,
    ]
    assert [r.text for r in together] == [alone[0].text, alone[1].text, alone[0].text]


def test_a_method_the_backend_cannot_run_is_refused_with_the_fix(
    backend_loop: LoopThread, tmp_path
) -> None:
    with pytest.raises(ValueError, match="attention 'sparse'; choose one of"):
        TransformersLLM("x", attention="sparse")
    with pytest.raises(ValueError, match="sparse_min_length 0"):
        TransformersLLM("x", sparse_min_length=0)
    with pytest.raises(
        ValueError, match="option retrieval: window: Input should be greater than 0"
    ):
        TransformersLLM("x", retrieval={"window": 0})
    missing = TransformersLLM("x", sparse_prefill=tmp_path / "none.json")
    with pytest.raises(ValueError, match="no sparse prefill configuration at .*none.json"):
        backend_loop.run(missing.load())

    minference = LLMCall(prompt="hi", attention=AttentionMethod.MINFERENCE)
    for backend_type in ("vllm", "openai"):
        with pytest.raises(CallRefused, match="runs dense attention only") as refused:
            check_call("remote", backend_type, None, minference)
        assert refused.value.code is CallErrorCode.INVALID_CALL
    check_call("local", "transformers", None, minference)
    check_call("remote", "vllm", None, LLMCall(prompt="hi", attention=AttentionMethod.DENSE))


def test_capture_keeps_each_chosen_layers_inputs_and_changes_nothing(
    long_context_llm: TransformersLLM,
) -> None:
    import torch

    from hermesflow.backends.attention_capture import capture_layer_inputs

    model, ids = long_context_llm.model, haystack_ids(long_context_llm.tokenizer, 50)
    with torch.inference_mode():
        before = model(input_ids=torch.tensor([ids])).logits[0, -1]
    captured = capture_layer_inputs(model, ids, layers={0, 29})
    assert sorted(captured) == [0, 29]
    inputs = captured[29]
    assert inputs.q.shape == (1, 9, 50, 64) and inputs.k.shape == inputs.v.shape == (1, 3, 50, 64)
    assert inputs.scale == pytest.approx(64**-0.5)
    assert not torch.equal(captured[0].k, inputs.k)
    with torch.inference_mode():
        after = model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.equal(before, after)
