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


def _config(**changes) -> SparsePrefillConfig:
    fields = {
        "model": "SmolLM2-135M-Instruct",
        "break_even": {"cuda": 4096},
        "recall_target": 0.95,
        "search_tokens": 8192,
        "search_prompts": 2,
        "layers": [HEADS, HEADS],
        "recall": [[0.97, 0.96, 0.99, 1.0]] * 2,
    }
    return SparsePrefillConfig(**(fields | changes))


def test_the_configuration_round_trips_and_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    config = _config()
    assert config.break_even.get(torch.device("cuda").type) == 4096
    assert config.break_even.get(torch.device("cpu").type) is None  # not measured: dense
    path = tmp_path / "sparse.json"
    config.save(path)
    assert SparsePrefillConfig.load(path) == config
    with pytest.raises(ValueError, match="run the pattern search"):
        SparsePrefillConfig.load(tmp_path / "missing.json")
    path.write_text(config.model_dump_json().replace('"a-shape"', '"diagonal"'))
    with pytest.raises(ValueError, match="is not a sparse prefill configuration"):
        SparsePrefillConfig.load(path)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"layers": [HEADS, HEADS[:3]]}, "the same number in each"),
        ({"recall": [[0.97] * 4]}, "one figure per head pattern"),
        ({"recall": [[0.97] * 4, [0.97, 0.94, 0.97, 0.97]]}, r"\[\(1, 1\)\] reached less"),
        ({"break_even": {"tpu": 1024}}, "break_even"),
    ],
)
def test_a_configuration_that_breaks_the_search_s_promises_is_refused(changes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        _config(**changes)
