"""A layer's sparse prefill: heads grouped by pattern give what each head's own index gives, the
length gate runs dense, and the per-model configuration round-trips and refuses what it cannot
use, saying what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hermesflow.kernels.attention_reference import masked_attention
from hermesflow.kernels.sparse_estimate import estimate_block_sparse, estimate_vertical_slash
from hermesflow.kernels.sparse_patterns import VerticalSlashIndex
from hermesflow.kernels.sparse_prefill import (
    AShape,
    BlockSparse,
    SparsePrefillConfig,
    VerticalSlash,
    sparse_prefill,
)

LENGTH = 48
HEADS = [
    AShape(sink=2, window=8),
    VerticalSlash(n_vertical=4, n_slash=4, last_queries=16),
    AShape(sink=2, window=8),
    BlockSparse(block=16, n_blocks=2),
]


def _qkv():
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, LENGTH, 16, generator=generator)
    k, v = (torch.randn(1, 2, LENGTH, 16, generator=generator) for _ in range(2))
    return q, k, v


def _one_head(q, k, v, head: int) -> torch.Tensor:
    """Head `head` alone, with its own pattern's index (its key/value head: head // 2)."""
    q1, k1, v1 = q[:, [head]], k[:, [head // 2]], v[:, [head // 2]]
    pattern = HEADS[head]
    if isinstance(pattern, AShape):
        mask = VerticalSlashIndex.a_shape(1, 1, pattern.sink, pattern.window).mask(LENGTH)
    elif isinstance(pattern, VerticalSlash):
        mask = estimate_vertical_slash(q1, k1, 4, 4, 16).mask(LENGTH)
    else:
        mask = estimate_block_sparse(q1, k1, 16, 2).mask(LENGTH)
    return masked_attention(q1, k1, v1, mask).out[:, 0]


def test_heads_grouped_by_pattern_give_each_heads_own_attention() -> None:
    q, k, v = _qkv()
    out = sparse_prefill(q, k, v, HEADS, min_length=16)
    for head in range(4):
        torch.testing.assert_close(out[:, head], _one_head(q, k, v, head))
    assert not torch.allclose(out, masked_attention(q, k, v).out)  # it is sparse


def test_below_the_gate_the_layer_runs_dense() -> None:
    q, k, v = _qkv()
    torch.testing.assert_close(
        sparse_prefill(q, k, v, HEADS, min_length=LENGTH + 1), masked_attention(q, k, v).out
    )


def test_a_layer_config_that_does_not_fit_the_model_says_so() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="4 query heads but its configuration 2 patterns"):
        sparse_prefill(q, k, v, HEADS[:2], min_length=16)


def test_the_configuration_round_trips_and_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    config = SparsePrefillConfig(
        model="SmolLM2-135M-Instruct", min_length=4096, layers=[HEADS, HEADS]
    )
    path = tmp_path / "sparse.json"
    config.save(path)
    assert SparsePrefillConfig.load(path) == config
    with pytest.raises(ValueError, match="run the pattern search"):
        SparsePrefillConfig.load(tmp_path / "missing.json")
    path.write_text(config.model_dump_json().replace('"a-shape"', '"diagonal"'))
    with pytest.raises(ValueError, match="is not a sparse prefill configuration"):
        SparsePrefillConfig.load(path)
    with pytest.raises(ValueError, match="the same number in each"):
        SparsePrefillConfig(model="m", min_length=1, layers=[HEADS, HEADS[:3]])
