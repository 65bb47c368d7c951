"""Calibrating the simulator's engine model from measured call timings."""

from __future__ import annotations

import numpy as np
import pytest

from hermesflow.backends.calls import AttentionMethod, CallResult
from hermesflow.pdgraph.costs import LLMEngineCost
from hermesflow.schedulers.calibration import MIN_CALLS, calibrate_engine

PRIOR = LLMEngineCost(prefill_s_per_token=1e-3, decode_s_per_token=1e-2, max_batch=8, kv_tokens=16384)


def _calls(t_fixed: float, t_seq: float, prefill: float, rng: np.random.Generator, n: int = 40) -> list[CallResult]:
    calls = []
    for _ in range(n):
        batch = int(rng.integers(1, 9))
        out = int(rng.integers(5, 60))
        inp = int(rng.integers(20, 400))
        calls.append(
            CallResult(
                input_tokens=inp,
                output_tokens=out,
                prefill_s=prefill * inp,
                decode_s=(t_fixed + t_seq * batch) * (out - 1),
                batch_size=batch,
            )
        )
    return calls


def test_recovers_the_iteration_time_line_and_the_prefill_rate():
    rng = np.random.default_rng(0)
    engine = calibrate_engine(_calls(0.02, 0.005, 2e-3, rng), PRIOR)
    full = 0.02 + 0.005 * 8
    assert engine.decode_s_per_token == pytest.approx(full / 8, rel=1e-6)
    assert engine.fixed_fraction == pytest.approx(0.02 / full, rel=1e-6)
    assert engine.prefill_s_per_token == pytest.approx(2e-3, rel=1e-6)
    assert engine.iteration_s(3) == pytest.approx(0.02 + 0.005 * 3, rel=1e-6)


def test_each_long_context_method_gets_its_own_rates_and_leaves_the_dense_ones_alone():
    """A sparse prefill is cheaper per token than the dense one; a retrieval decode iteration
    slower. Each method is fitted from its own calls, and neither moves the dense rates."""
    rng = np.random.default_rng(2)
    dense = [c.model_copy(update={"attention": AttentionMethod.DENSE}) for c in _calls(0.02, 0.005, 2e-3, rng)]
    sparse = [
        c.model_copy(update={"attention": AttentionMethod.MINFERENCE})
        for c in _calls(0.02, 0.005, 2e-4, rng)
    ]
    retrieval = [
        c.model_copy(update={"attention": AttentionMethod.RETRIEVAL})
        for c in _calls(0.04, 0.010, 3e-3, rng)
    ]
    alone = calibrate_engine(dense, PRIOR)
    engine = calibrate_engine(dense + sparse + retrieval, PRIOR)
    assert engine.model_copy(update={"attention": {}}) == alone
    assert alone.attention == {}
    minference = engine.attention[AttentionMethod.MINFERENCE]
    assert minference.prefill_s_per_token == pytest.approx(2e-4, rel=1e-6)
    assert minference.decode_s_per_token == pytest.approx(alone.decode_s_per_token, rel=1e-6)
    retrieval_rates = engine.attention[AttentionMethod.RETRIEVAL]
    assert retrieval_rates.prefill_s_per_token == pytest.approx(3e-3, rel=1e-6)
    assert retrieval_rates.decode_s_per_token == pytest.approx(2 * alone.decode_s_per_token, rel=1e-6)
    assert engine.work_s(1000, 10, AttentionMethod.MINFERENCE) == pytest.approx(0.2 + 10 * alone.decode_s_per_token)
    assert engine.work_s(1000, 10) == pytest.approx(2.0 + 10 * alone.decode_s_per_token)


def test_a_method_seen_too_rarely_is_priced_like_dense():
    rng = np.random.default_rng(3)
    dense = _calls(0.02, 0.005, 2e-3, rng)
    sparse = [
        c.model_copy(update={"attention": AttentionMethod.MINFERENCE})
        for c in _calls(0.02, 0.005, 2e-4, rng, n=MIN_CALLS - 1)
    ]
    engine = calibrate_engine(dense + sparse, PRIOR)
    assert AttentionMethod.MINFERENCE not in engine.attention
    assert engine.work_s(1000, 10, AttentionMethod.MINFERENCE) == engine.work_s(1000, 10)


def test_too_few_calls_keep_the_prior():
    rng = np.random.default_rng(1)
    assert calibrate_engine(_calls(0.02, 0.005, 2e-3, rng, n=MIN_CALLS - 1), PRIOR) == PRIOR


def test_a_single_batch_size_keeps_the_priors_split():
    calls = [
        CallResult(input_tokens=100, output_tokens=11, prefill_s=0.1, decode_s=0.5, batch_size=4)
        for _ in range(10)
    ]
    engine = calibrate_engine(calls, PRIOR)
    assert engine.iteration_s(4) == pytest.approx(0.05, rel=1e-6)
    assert engine.fixed_fraction > 0
