"""Block-sparse prefill attention: a Triton kernel, its PyTorch reference, and the dispatcher.

The kernel is FlashAttention's forward pass restricted to the kept key blocks: one program per
(query block, batch row x query head) walks the key blocks its query block keeps, in order, with
the online softmax (running maximum `m`, running sum `l`, rescaled accumulator), and writes the
output and its log-sum-exp `m + log l` (`flash_tiles`). Each tile is masked by causality and the
prompt's end; every query block keeps its diagonal (`BlockSparseIndex`), so no row is empty.
Grouped-query heads read their key/value head in place, without copies.

Scores are accumulated in float32 whatever the input dtype, as the reference does; the output
comes back in float32 too. The dispatcher (`block_sparse_attention`) runs the kernel on CUDA
tensors and the reference (`masked_attention` over the index's mask) elsewhere.
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
from hermesflow.kernels.sparse_patterns import BlockSparseIndex


def block_lists(index: BlockSparseIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept key blocks of each query block as the kernel reads them: counts
    `[batch, heads, n_blocks]` (int32) and block numbers `[batch, heads, n_blocks, n_blocks]`
    (int32), ascending, only the first `count` of each row meaningful. Blocks after the diagonal
    are dropped (causal)."""
    kept = index.blocks & torch.ones_like(index.blocks).tril()
    numbers = torch.arange(kept.shape[-1], device=kept.device).expand_as(kept)
    return compact_lists(numbers, kept, kept.shape[-1])


@triton.jit
def _block_sparse_forward(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, count_ptr, number_ptr,
    heads, group, length, head_dim, n_blocks, scale,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    query_block, row, offs_m, offs_d, d_ok, m_ok, q, k_base, v_base = query_tile(
        q_ptr, k_ptr, v_ptr, heads, group, length, head_dim, BLOCK, BLOCK_D
    )
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    list_at = row * n_blocks + query_block
    for i in range(tl.load(count_ptr + list_at)):
        offs_k = tl.load(number_ptr + list_at * n_blocks + i) * BLOCK + tl.arange(0, BLOCK)
        k_ok = offs_k < length
        allowed = k_ok[None, :] & (offs_k[None, :] <= offs_m[:, None])
        m_i, l_i, acc = attend_rows(
            q, k_base, v_base, offs_k, k_ok, offs_d, d_ok, head_dim, allowed, scale, m_i, l_i, acc
        )
    store_tile(out_ptr, lse_ptr, row, offs_m, m_ok, offs_d, d_ok, length, head_dim, acc, m_i, l_i)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockSparseIndex,
    scale: float | None = None,
    kernel: bool | None = None,
) -> PartialAttention:
    """Block-sparse attention: the Triton kernel when `kernel` (by default on CUDA tensors),
    otherwise the PyTorch reference. The index's block is the kernel's tile: a power of two of at
    least 16 tokens (`tl.dot` needs 16)."""
    if not (q.is_cuda if kernel is None else kernel):
        return masked_attention(q, k, v, index.mask(q.shape[-2]), scale)
    batch, heads, length, head_dim = q.shape
    call = KernelCall.prepare(q, k, v, index.block, index.blocks.shape[:2], scale)
    index.check_covers(length)
    counts, numbers = block_lists(index)
    n_blocks = counts.shape[-1]
    _block_sparse_forward[(n_blocks, batch * heads)](
        call.q, call.k, call.v, call.out, call.lse, counts.contiguous(), numbers.contiguous(),
        heads, call.group, length, head_dim, n_blocks, call.scale,
        BLOCK=index.block, BLOCK_D=call.block_d,
    )  # fmt: skip
    return call.result()
