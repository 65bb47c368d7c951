"""The vertical-slash Triton kernel against its reference, under the interpreter on the CPU
(tiny shapes) and compiled on a GPU: estimated and A-shape indexes, grouped-query heads, a prompt
whose length is no multiple of the tile, columns inside and outside the diagonals' blocks; and
the lists it walks."""

from __future__ import annotations

import pytest
import torch

from hermesflow.kernels.attention_reference import masked_attention
from hermesflow.kernels.sparse_estimate import estimate_vertical_slash
from hermesflow.kernels.sparse_patterns import VerticalSlashIndex
from hermesflow.kernels.vertical_slash_attention import (
    vertical_slash_attention,
    vertical_slash_lists,
)

pytestmark = pytest.mark.kernels
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TILE = 16


def _qkv(length: int, q_heads: int = 4, kv_heads: int = 2, dim: int = 16):
    generator = torch.Generator().manual_seed(length)
    shapes = ((2, q_heads, length, dim), (2, kv_heads, length, dim), (2, kv_heads, length, dim))
    return [torch.randn(s, generator=generator).to(DEVICE) for s in shapes]


def _check(q, k, v, index: VerticalSlashIndex) -> None:
    got = vertical_slash_attention(q, k, v, index, kernel=True, block=TILE)
    want = masked_attention(q, k, v, index.mask(q.shape[-2]))
    torch.testing.assert_close(got.out, want.out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.lse, want.lse, atol=1e-4, rtol=1e-4)


def test_the_lists_hold_the_diagonals_blocks_and_the_other_columns_once() -> None:
    # one query block of 16 over 40 keys; diagonals 0 and 20, columns 3, 5 (twice), 30 and 39
    index = VerticalSlashIndex(torch.tensor([[[3, 5, 5, 30, 39]]]), torch.tensor([[[0, 20]]]))
    block_counts, blocks, column_counts, columns = vertical_slash_lists(index, 40, TILE)
    # queries 32..39: offset 0 touches block 2; offset 20 touches keys 12..19, blocks 0 and 1
    assert blocks[0, 0, 2, : block_counts[0, 0, 2]].tolist() == [0, 1, 2]
    assert columns[0, 0, 2, : column_counts[0, 0, 2]].tolist() == []  # all inside those blocks
    # queries 16..31: offset 0 touches block 1; offset 20 keys 0..11, block 0; column 30 is in 1
    assert blocks[0, 0, 1, : block_counts[0, 0, 1]].tolist() == [0, 1]
    assert columns[0, 0, 1, : column_counts[0, 0, 1]].tolist() == []
    # queries 0..15: only offset 0, block 0; columns 30 and 39 come later than every query
    assert blocks[0, 0, 0, : block_counts[0, 0, 0]].tolist() == [0]
    assert columns[0, 0, 0, : column_counts[0, 0, 0]].tolist() == []


def test_columns_outside_the_diagonals_blocks_are_listed_for_the_queries_after_them() -> None:
    index = VerticalSlashIndex(torch.tensor([[[0, 5, 20]]]), torch.tensor([[[0]]]))
    block_counts, blocks, column_counts, columns = vertical_slash_lists(index, 64, TILE)
    assert blocks[0, 0, 3, : block_counts[0, 0, 3]].tolist() == [3]
    assert columns[0, 0, 3, : column_counts[0, 0, 3]].tolist() == [0, 5, 20]
    assert columns[0, 0, 1, : column_counts[0, 0, 1]].tolist() == [0, 5]  # 20 is in block 1


@pytest.mark.parametrize("length", [16, 53])
def test_the_kernel_matches_the_reference_on_an_estimated_index(length: int) -> None:
    q, k, v = _qkv(length)
    _check(q, k, v, estimate_vertical_slash(q, k, n_vertical=3, n_slash=4, last_queries=8))


def test_the_kernel_matches_the_reference_on_an_a_shape() -> None:
    q, k, v = _qkv(70, q_heads=2, kv_heads=1)
    _check(q, k, v, VerticalSlashIndex.a_shape(2, 2, sink=4, window=9))


def test_far_diagonals_and_late_columns_match_the_reference() -> None:
    q, k, v = _qkv(48)
    vertical = torch.tensor([2, 17, 40]).expand(2, 4, 3).contiguous()
    slash = torch.tensor([0, 1, 33]).expand(2, 4, 3).contiguous()
    _check(q, k, v, VerticalSlashIndex(vertical.to(DEVICE), slash.to(DEVICE)))


def test_the_dispatcher_runs_the_reference_on_the_cpu() -> None:
    q, k, v = (t.cpu() for t in _qkv(32))
    index = estimate_vertical_slash(q, k, n_vertical=2, n_slash=2)
    torch.testing.assert_close(
        vertical_slash_attention(q, k, v, index).out, masked_attention(q, k, v, index.mask(32)).out
    )
