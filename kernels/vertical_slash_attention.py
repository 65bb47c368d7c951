"""Vertical-slash prefill attention: a Triton kernel, its PyTorch reference, and the dispatcher.

A vertical-slash index keeps, for each query `i`, the keys `j <= i` that lie in one of its
columns (`j` in `vertical`) or on one of its diagonals (`i - j` in `slash`). For a block of
queries `[s, e)` a diagonal at offset `o` touches the keys `[s - o, e - 1 - o]`, so the index
turns into two lists per query block, as in MInference's kernel:

* the **key blocks** that its diagonals touch (at most three per diagonal), run as dense tiles
  under the exact element mask (a key is kept if its column is vertical or its offset is a
  slash: two table look-ups per tile);
* the **columns** that lie outside those blocks, gathered a tile at a time; each is kept for
  every query at or after it.

Both lists are `O(query blocks x budget)`, never `O(length^2)`. The kernel walks both with one
online softmax (as `block_sparse_attention`) and writes the output and its log-sum-exp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hermesflow.kernels.attention_reference import PartialAttention, masked_attention
from hermesflow.kernels.flash_tiles import (
    KernelCall,
    attend_rows,
    compact_lists,
    query_tile,
    store_tile,
)
from hermesflow.kernels.sparse_patterns import VerticalSlashIndex


def _first_of_runs(sorted_rows: torch.Tensor) -> torch.Tensor:
    """True where a value differs from the one before it in its (ascending) row."""
    first = torch.ones_like(sorted_rows, dtype=torch.bool)
    first[..., 1:] = sorted_rows[..., 1:] != sorted_rows[..., :-1]
    return first


def vertical_slash_lists(
    index: VerticalSlashIndex, length: int, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's lists (module docstring), each `[batch, heads, query blocks, ...]`: key-block
    counts and numbers (ascending), then column counts and positions (ascending)."""
    n_blocks = -(-length // block)
    device = index.slash.device
    starts = torch.arange(n_blocks, device=device) * block  # query block starts
    ends = (starts + block).clamp(max=length) - 1  # their last query
    offsets = index.slash[:, :, None, :]  # [b, h, 1, n_slash]
    first_key = (starts[None, None, :, None] - offsets).clamp(min=0)
    last_key = ends[None, None, :, None] - offsets
    touched = last_key >= 0
    # a diagonal spans at most block + 1 keys of a query block: three key blocks at most
    spans = [first_key // block + step for step in range(3)]
    candidates = torch.stack(spans, dim=-1).flatten(-2)  # [b, h, qb, n_slash * 3]
    reach = torch.stack(
        [touched & (s <= last_key.clamp(min=0) // block) for s in spans], -1
    ).flatten(-2)
    numbers = torch.where(reach, candidates, torch.full_like(candidates, n_blocks)).sort(-1).values
    unique = _first_of_runs(numbers) & (numbers < n_blocks)
    block_counts, block_numbers = compact_lists(numbers, unique, n_blocks)

    columns = index.vertical.sort(dim=-1).values[:, :, None, :].expand(-1, -1, n_blocks, -1)
    column_block = (columns // block).contiguous()
    found = torch.searchsorted(block_numbers.long(), column_block).clamp(
        max=block_numbers.shape[-1] - 1
    )
    in_blocks = block_numbers.long().gather(-1, found) == column_block
    visible = columns <= ends[None, None, :, None]
    keep = visible & ~in_blocks & _first_of_runs(columns)
    column_counts, column_positions = compact_lists(columns, keep, length)
    return block_counts, block_numbers, column_counts, column_positions


@triton.jit
def _vertical_slash_forward(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    vertical_flag_ptr, slash_flag_ptr,
    block_count_ptr, block_number_ptr, column_count_ptr, column_ptr,
    heads, group, length, head_dim, n_blocks, max_blocks, max_columns, scale,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    query_block, row, offs_m, offs_d, d_ok, m_ok, q, k_base, v_base = query_tile(
        q_ptr, k_ptr, v_ptr, heads, group, length, head_dim, BLOCK, BLOCK_D
    )
    offs_n = tl.arange(0, BLOCK)
    flags_at = row * length
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    list_at = row * n_blocks + query_block

    # the key blocks the diagonals touch, under the exact element mask
    for i in range(tl.load(block_count_ptr + list_at)):
        offs_k = tl.load(block_number_ptr + list_at * max_blocks + i) * BLOCK + offs_n
        k_ok = offs_k < length
        causal = k_ok[None, :] & (offs_k[None, :] <= offs_m[:, None]) & m_ok[:, None]
        on_column = tl.load(vertical_flag_ptr + flags_at + offs_k, mask=k_ok, other=0)
        offset = tl.where(causal, offs_m[:, None] - offs_k[None, :], 0)
        on_slash = tl.load(slash_flag_ptr + flags_at + offset, mask=causal, other=0)
        allowed = causal & ((on_column[None, :] != 0) | (on_slash != 0))
        m_i, l_i, acc = attend_rows(
            q, k_base, v_base, offs_k, k_ok, offs_d, d_ok, head_dim, allowed, scale, m_i, l_i, acc
        )

    # the columns outside those blocks, a tile at a time
    columns = tl.load(column_count_ptr + list_at)
    for start in range(0, columns, BLOCK):
        at = start + offs_n
        at_ok = at < columns
        offs_k = tl.load(column_ptr + list_at * max_columns + at, mask=at_ok, other=0)
        allowed = at_ok[None, :] & (offs_k[None, :] <= offs_m[:, None]) & m_ok[:, None]
        m_i, l_i, acc = attend_rows(
            q, k_base, v_base, offs_k, at_ok, offs_d, d_ok, head_dim, allowed, scale, m_i, l_i, acc
        )
    store_tile(out_ptr, lse_ptr, row, offs_m, m_ok, offs_d, d_ok, length, head_dim, acc, m_i, l_i)


def vertical_slash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: VerticalSlashIndex,
    scale: float | None = None,
    kernel: bool | None = None,
    block: int = 64,
) -> PartialAttention:
    """Vertical-slash (and A-shape) attention: the Triton kernel when `kernel` (by default on
    CUDA tensors), with query and key tiles of `block` tokens (a power of two of at least 16),
    otherwise the PyTorch reference."""
    if not (q.is_cuda if kernel is None else kernel):
        return masked_attention(q, k, v, index.mask(q.shape[-2]), scale)
    batch, heads, length, head_dim = q.shape
    call = KernelCall.prepare(q, k, v, block, index.vertical.shape[:2], scale)
    columns_flag, slash_flag = index.flags(length)
    block_counts, block_numbers, column_counts, columns = vertical_slash_lists(index, length, block)
    n_blocks = block_counts.shape[-1]
    _vertical_slash_forward[(n_blocks, batch * heads)](
        call.q, call.k, call.v, call.out, call.lse,
        columns_flag.to(torch.int8).contiguous(), slash_flag.to(torch.int8).contiguous(),
        block_counts.contiguous(), block_numbers.contiguous(),
        column_counts.contiguous(), columns.contiguous(),
        heads, call.group, length, head_dim, n_blocks, block_numbers.shape[-1], columns.shape[-1],
        call.scale,
        BLOCK=block, BLOCK_D=call.block_d,
    )  # fmt: skip
    return call.result()
