"""RetrievalAttention on tiny synthetic shapes: exact whenever the retrieval keeps the whole middle
(built, decoded, with keys inserted), the index's search, and the attention-aware links' gain over
a graph of the keys alone on queries out of the keys' distribution."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydantic
import pytest
import torch

from hermesflow.kernels.attention_reference import PartialAttention, masked_attention, merge
from hermesflow.kernels.retrieval_attention import RetrievalLayer, RetrievalSettings
from hermesflow.kernels.retrieval_index import AttentionAwareIndex, IndexSettings

QUERY_HEADS, KV_HEADS, DIM = 4, 2, 16
SCALE = DIM**-0.5


def _sequence(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries `[query_heads, length, dim]`, keys and values `[kv_heads, length, dim]`."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(QUERY_HEADS, length, DIM, generator=generator) * 2
    k = torch.randn(KV_HEADS, length, DIM, generator=generator) * 2
    v = torch.randn(KV_HEADS, length, DIM, generator=generator)
    return q, k, v


def _decode_all(
    layer: RetrievalLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int
) -> torch.Tensor:
    """Decode positions `start:` one by one: `[query_heads, steps, dim]`."""
    steps = [layer.decode(q[:, t], k[:, t], v[:, t]) for t in range(start, q.shape[1])]
    return torch.stack(steps, dim=1)


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """Causal attention of positions `start:` over everything before them."""
    return masked_attention(q[None], k[None], v[None], scale=SCALE).out[0, :, start:]


@pytest.mark.parametrize("prefill", [40, 5, 1])
def test_decode_is_exact_when_top_k_covers_the_middle(prefill: int) -> None:
    # 40: a middle from the start, and keys inserted as they leave the window; 5 and 1: shorter
    # than sink + window, so the first steps have no middle at all
    q, k, v = _sequence(60)
    settings = RetrievalSettings(sink=2, window=8, top_k=64)
    layer = RetrievalLayer.build(k[:, :prefill], v[:, :prefill], q[:, :prefill], settings, SCALE)
    decoded = _decode_all(layer, q, k, v, prefill)
    torch.testing.assert_close(decoded, _exact(q, k, v, prefill), rtol=1e-5, atol=1e-5)
    assert layer.length == 60
    assert layer.scanned_fraction == 1.0  # top_k >= middle: every middle key scored


def test_graph_search_over_everything_is_exact_and_counted() -> None:
    # top_k below the middle's size takes the graph search; a beam as wide as the middle reaches
    # every key of this connected graph, so the result is exact and every key counts as scanned
    q, k, v = _sequence(120, seed=1)
    settings = RetrievalSettings(sink=4, window=8, top_k=100, ef=200)
    layer = RetrievalLayer.build(k[:, :116], v[:, :116], q[:, :116], settings, SCALE)
    decoded = _decode_all(layer, q, k, v, 116)
    torch.testing.assert_close(decoded, _exact(q, k, v, 116), rtol=1e-5, atol=1e-5)
    assert layer.scanned == layer.searched


def test_decode_keeps_only_the_retrieved_mass() -> None:
    # top_k 1 of a middle of 88: the result is the attention over static keys plus one key per
    # query head, not the exact one; the scan stops well short of the middle
    q, k, v = _sequence(101, seed=2)
    index = IndexSettings(degree=8, key_degree=2, sample_top=8, pivots=2)
    settings = RetrievalSettings(sink=4, window=8, top_k=1, ef=1, index=index)
    layer = RetrievalLayer.build(k[:, :100], v[:, :100], q[:, :100], settings, SCALE)
    decoded = layer.decode(q[:, 100], k[:, 100], v[:, 100])
    assert not torch.allclose(decoded, _exact(q, k, v, 100)[:, 0], atol=1e-3)
    assert 0 < layer.scanned_fraction < 0.5


def test_thread_pool_gives_the_same_result() -> None:
    q, k, v = _sequence(90, seed=3)
    settings = RetrievalSettings(sink=4, window=8, top_k=8, ef=8)
    alone = RetrievalLayer.build(k[:, :80], v[:, :80], q[:, :80], settings, SCALE)
    with ThreadPoolExecutor(KV_HEADS) as pool:
        pooled = RetrievalLayer.build(k[:, :80], v[:, :80], q[:, :80], settings, SCALE, pool)
        torch.testing.assert_close(
            _decode_all(pooled, q, k, v, 80), _decode_all(alone, q, k, v, 80), rtol=0, atol=0
        )
    assert pooled.scanned == alone.scanned


def test_merge_of_disjoint_parts_is_the_full_attention() -> None:
    q, k, v = _sequence(32, seed=4)
    chosen = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(5)) < 0.5
    causal = torch.ones(32, 32, dtype=torch.bool).tril()
    parts = [
        masked_attention(q[None], k[None], v[None], chosen & causal, SCALE),
        masked_attention(q[None], k[None], v[None], ~chosen & causal, SCALE),
    ]
    merged: PartialAttention = merge(parts)
    full = masked_attention(q[None], k[None], v[None], scale=SCALE)
    torch.testing.assert_close(merged.out, full.out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.lse, full.lse, rtol=1e-5, atol=1e-5)


def _recall(index: AttentionAwareIndex, keys: torch.Tensor, queries: torch.Tensor, ef: int):
    """Mean recall@10 against brute force, and mean keys scanned."""
    truth = (queries @ keys.T).topk(10).indices
    found = [index.search(query, 10, ef) for query in queries]
    hits = [len(set(f.ids.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)]
    return float(np.mean(hits)), float(np.mean([f.scanned for f in found]))


def test_index_finds_the_top_keys_of_in_distribution_queries() -> None:
    generator = torch.Generator().manual_seed(6)
    keys, queries = (
        torch.randn(500, DIM, generator=generator),
        torch.randn(300, DIM, generator=generator),
    )
    index = AttentionAwareIndex.build(keys, queries[:200], IndexSettings())
    recall, scanned = _recall(index, keys, queries[200:], ef=64)
    assert recall >= 0.95
    assert scanned < 400
    # a key inserted later is found, here as the clear best of a query pointing at it
    new = index.insert(queries[250] * 10)
    assert index.search(queries[250], 10, ef=16).ids[0] == new == 500


def test_attention_aware_links_beat_the_key_graph_out_of_distribution() -> None:
    # keys and queries share no mean (as in a model: keys carry a large common direction);
    # the queries' top keys are spread across the keys' neighbourhoods
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(2000, 32, generator=generator) + 6.0 * torch.eye(32)[0]
    queries = torch.randn(1200, 32, generator=generator) * torch.linspace(0.2, 2, 32)
    queries += 4.0 * torch.eye(32)[1]
    settings = IndexSettings(degree=16, key_degree=4, sample_top=16)
    aware = AttentionAwareIndex.build(keys, queries[:1000], settings)
    plain = AttentionAwareIndex.build(keys, queries[:0], settings)
    aware_recall, aware_scanned = _recall(aware, keys, queries[1000:], ef=8)
    plain_recall, plain_scanned = _recall(plain, keys, queries[1000:], ef=8)
    assert aware_recall > plain_recall + 0.2
    assert aware_scanned < plain_scanned


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_k": 0}, "greater than 0"),
        ({"windows": 8}, "Extra inputs"),
        ({"index": {"degree": 8, "key_degree": 9}}, "key_degree 9 exceeds degree 8"),
        ({"index": {"sample_top": 4, "pivots": 5}}, "pivots 5 exceeds sample_top 4"),
    ],
)
def test_bad_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        RetrievalSettings(**settings)


def test_bad_shapes_are_refused() -> None:
    q, k, v = _sequence(20)
    settings = RetrievalSettings(sink=2, window=4)
    with pytest.raises(ValueError, match="must both be"):
        RetrievalLayer.build(k, v[:, :10], q, settings, SCALE)
    with pytest.raises(ValueError, match="prefill's queries"):
        RetrievalLayer.build(k, v, q[:, :10], settings, SCALE)
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        RetrievalLayer.build(k, v, q[:3], settings, SCALE)
    layer = RetrievalLayer.build(k, v, q, settings, SCALE)
    with pytest.raises(ValueError, match="one token of this layer"):
        layer.decode(q[:, 0], k[:1, 0], v[:1, 0])
    with pytest.raises(ValueError, match="query_heads, dim"):
        layer.decode(q[:, :2, 0], k[:, 0], v[:, 0])
