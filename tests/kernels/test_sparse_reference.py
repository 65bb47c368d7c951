"""The sparse-prefill reference: index masks, exact masked attention against PyTorch's own SDPA,
the log-sum-exp merge, recall, and the online estimation finding planted columns, diagonals and
blocks. Tiny shapes, CPU only."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention

from hermesflow.kernels.attention_reference import masked_attention, merge, recall
from hermesflow.kernels.sparse_estimate import estimate_block_sparse, estimate_vertical_slash
from hermesflow.kernels.sparse_patterns import (
    BlockSparseIndex,
    SparsePattern,
    VerticalSlashIndex,
    causal_mask,
)

BATCH, Q_HEADS, KV_HEADS, LENGTH, DIM = 2, 4, 2, 37, 16
"""Grouped-query heads (2 query heads per key/value head) and a length that is no multiple of
the block sizes below."""


@pytest.fixture
def qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, Q_HEADS, LENGTH, DIM, generator=generator)
    k = torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=generator)
    v = torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=generator)
    return q, k, v


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    return scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True
    )


def _per_kv_head(q: torch.Tensor) -> torch.Tensor:
    """The sum of the queries that share each key/value head: a key along it matches them all."""
    return q.reshape(BATCH, KV_HEADS, Q_HEADS // KV_HEADS, LENGTH, DIM).sum(dim=2)


def test_causal_attention_matches_sdpa(qkv) -> None:
    q, k, v = qkv
    torch.testing.assert_close(masked_attention(q, k, v).out, _sdpa(q, k, v, None))


def test_an_a_shape_keeps_the_sink_and_the_window_and_matches_sdpa_on_its_mask(qkv) -> None:
    q, k, v = qkv
    sink, window = 3, 5
    index = VerticalSlashIndex.a_shape(BATCH, Q_HEADS, sink, window)
    assert index.pattern is SparsePattern.A_SHAPE
    mask = index.mask(LENGTH)
    expected = torch.zeros(LENGTH, LENGTH, dtype=torch.bool)
    for i in range(LENGTH):
        for j in range(i + 1):
            expected[i, j] = j < sink or i - j < window
    assert torch.equal(mask, expected.expand_as(mask))
    torch.testing.assert_close(masked_attention(q, k, v, mask).out, _sdpa(q, k, v, mask))


def test_a_vertical_slash_mask_is_its_columns_and_diagonals_under_the_causal_mask() -> None:
    vertical = torch.tensor([[[0, 4]]])
    slash = torch.tensor([[[0, 2]]])
    mask = VerticalSlashIndex(vertical, slash).mask(6)[0, 0]
    for i in range(6):
        for j in range(6):
            assert bool(mask[i, j]) == (j <= i and (j in (0, 4) or i - j in (0, 2))), (i, j)


def test_an_index_that_keeps_everything_is_dense_attention(qkv) -> None:
    q, k, v = qkv
    dense = masked_attention(q, k, v)
    every_column = torch.arange(LENGTH).expand(BATCH, Q_HEADS, LENGTH).contiguous()
    full = VerticalSlashIndex(every_column, torch.zeros(BATCH, Q_HEADS, 1, dtype=torch.int64))
    torch.testing.assert_close(masked_attention(q, k, v, full.mask(LENGTH)).out, dense.out)
    count = -(-LENGTH // 8)
    blocks = BlockSparseIndex(8, torch.ones(BATCH, Q_HEADS, count, count, dtype=torch.bool))
    torch.testing.assert_close(masked_attention(q, k, v, blocks.mask(LENGTH)).out, dense.out)
    assert torch.allclose(recall(q, k, full.mask(LENGTH)), torch.ones(BATCH, Q_HEADS))


def test_partial_attentions_over_disjoint_keys_merge_exactly(qkv) -> None:
    q, k, v = qkv
    causal = causal_mask(LENGTH)
    static = VerticalSlashIndex.a_shape(BATCH, Q_HEADS, 2, 4).mask(LENGTH)
    rest = causal & ~static
    merged = merge([masked_attention(q, k, v, static), masked_attention(q, k, v, rest)])
    whole = masked_attention(q, k, v)
    torch.testing.assert_close(merged.out, whole.out)
    torch.testing.assert_close(merged.lse, whole.lse)
    # query 0 sees only key 0, which the static part holds: the rest gave it nothing
    assert bool(torch.isneginf(masked_attention(q, k, v, rest).lse[..., 0]).all())


def test_recall_is_the_softmax_mass_the_mask_keeps(qkv) -> None:
    q, k, _ = qkv
    mask = VerticalSlashIndex.a_shape(BATCH, Q_HEADS, 1, 3).mask(LENGTH)
    weights = torch.softmax(
        (
            q @ k.repeat_interleave(Q_HEADS // KV_HEADS, dim=1).transpose(-1, -2) / DIM**0.5
        ).masked_fill(~causal_mask(LENGTH), float("-inf")),
        dim=-1,
    )
    expected = (weights * mask).sum(-1).mean(-1)
    torch.testing.assert_close(recall(q, k, mask), expected)
    assert bool((recall(q, k, mask) < 1).all())


def test_vertical_slash_estimation_finds_a_planted_column_and_diagonal(qkv) -> None:
    q, k, _ = qkv
    k = k.clone()
    column, diagonal = 11, 5
    grouped = _per_kv_head(q)
    k[:, :, : LENGTH - diagonal] += 2.0 * grouped[:, :, diagonal:]  # key j matches query j + 5
    shared = torch.randn(DIM, generator=torch.Generator().manual_seed(1))
    q = q + shared  # every query also looks for one direction, which key 11 holds
    k[:, :, column] = 3.0 * shared
    index = estimate_vertical_slash(q, k, n_vertical=2, n_slash=2, last_queries=16)
    assert index.vertical.shape == index.slash.shape == (BATCH, Q_HEADS, 2)
    assert bool((index.vertical == 0).any(-1).all()) and bool((index.slash == 0).any(-1).all())
    assert bool((index.vertical == column).any(-1).all()), index.vertical
    assert bool((index.slash == diagonal).any(-1).all()), index.slash


def test_block_sparse_estimation_finds_a_planted_block_and_keeps_the_diagonal(qkv) -> None:
    q, k, _ = qkv
    k = k.clone()
    block = 8
    grouped = _per_kv_head(q)
    k[:, :, block : 2 * block] += 3.0 * grouped[:, :, 3 * block : 4 * block].mean(-2, keepdim=True)
    index = estimate_block_sparse(q, k, block, n_blocks=3)
    kept = index.blocks
    assert kept.shape == (BATCH, Q_HEADS, 5, 5)
    assert bool(kept[..., 3, 1].all()), kept[0, 0]
    assert bool(kept.diagonal(dim1=-2, dim2=-1).all()) and bool(kept[..., 0].all())
    assert not bool(kept.triu(diagonal=1).any())  # nothing after the diagonal
    assert int(kept.sum(-1).max()) <= 3


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: VerticalSlashIndex(torch.tensor([[[0]]]), torch.tensor([[[1]]])), "offset 0"),
        (
            lambda: VerticalSlashIndex(torch.tensor([[[0]]]), torch.tensor([[[0]]])).mask(0),
            "beyond a prompt",
        ),
        (lambda: BlockSparseIndex(4, torch.zeros(1, 1, 2, 2, dtype=torch.bool)), "diagonal"),
        (
            lambda: BlockSparseIndex(4, torch.ones(1, 1, 2, 2, dtype=torch.bool)).mask(9),
            "do not cover",
        ),
        (
            lambda: masked_attention(
                torch.zeros(1, 3, 2, 4), torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4)
            ),
            "multiple of num_key_value_heads",
        ),
    ],
)
def test_a_malformed_index_says_what_to_fix(build, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        build()
