"""The block-sparse Triton kernel against its reference: under the interpreter on the CPU
(tiny shapes), compiled on a GPU; estimated and fixed indexes, grouped-query heads, a prompt
whose length is no multiple of the block, fp32 and bf16 inputs (upcast on load)."""

from __future__ import annotations

import pytest
import torch

from hermesflow.kernels.attention_reference import masked_attention
from hermesflow.kernels.block_sparse_attention import (
    block_lists,
    block_sparse_attention,
)
from hermesflow.kernels.sparse_estimate import estimate_block_sparse
from hermesflow.kernels.sparse_patterns import BlockSparseIndex

pytestmark = pytest.mark.kernels
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = 16


def _qkv(length: int, q_heads: int = 4, kv_heads: int = 2, dim: int = 16, dtype=torch.float32):
    generator = torch.Generator().manual_seed(length)
    shapes = ((2, q_heads, length, dim), (2, kv_heads, length, dim), (2, kv_heads, length, dim))
    return [torch.randn(s, generator=generator).to(DEVICE, dtype) for s in shapes]


def test_block_lists_give_the_kept_causal_blocks_in_order() -> None:
    blocks = torch.tensor([[[[1, 1, 0], [0, 1, 1], [1, 0, 1]]]], dtype=torch.bool)
    counts, numbers = block_lists(BlockSparseIndex(4, blocks))
    assert counts.tolist() == [[[1, 1, 2]]]  # (1, 2) lies after the diagonal: dropped
    assert [
        row[:n] for row, n in zip(numbers[0, 0].tolist(), counts[0, 0].tolist(), strict=True)
    ] == [
        [0],
        [1],
        [0, 2],
    ]


@pytest.mark.parametrize("length", [16, 45])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_matches_the_reference_on_an_estimated_index(length: int, dtype) -> None:
    q, k, v = _qkv(length, dtype=dtype)
    index = estimate_block_sparse(q, k, BLOCK, n_blocks=2)
    got = block_sparse_attention(q, k, v, index, kernel=True)
    want = masked_attention(q, k, v, index.mask(length))
    tolerance = (
        {"atol": 2e-2, "rtol": 2e-2} if dtype is torch.bfloat16 else {"atol": 1e-4, "rtol": 1e-4}
    )
    torch.testing.assert_close(got.out, want.out, **tolerance)
    torch.testing.assert_close(got.lse, want.lse, **tolerance)


def test_every_block_kept_is_dense_attention_with_a_head_dim_to_pad() -> None:
    q, k, v = _qkv(40, q_heads=2, kv_heads=1, dim=24)
    count = 3
    index = BlockSparseIndex(BLOCK, torch.ones(2, 2, count, count, dtype=torch.bool, device=DEVICE))
    torch.testing.assert_close(
        block_sparse_attention(q, k, v, index, kernel=True).out,
        masked_attention(q, k, v).out,
        atol=1e-4,
        rtol=1e-4,
    )


def test_the_dispatcher_runs_the_reference_on_the_cpu() -> None:
    q, k, v = (t.cpu() for t in _qkv(32))
    index = estimate_block_sparse(q, k, BLOCK, n_blocks=1)
    torch.testing.assert_close(
        block_sparse_attention(q, k, v, index).out, masked_attention(q, k, v, index.mask(32)).out
    )


def test_a_block_the_kernel_cannot_tile_is_refused() -> None:
    q, k, v = _qkv(24)
    index = estimate_block_sparse(q, k, 12, n_blocks=1)
    with pytest.raises(ValueError, match="power of two >= 16"):
        block_sparse_attention(q, k, v, index, kernel=True)
