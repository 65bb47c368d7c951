"""Block-sparse prefill attention: a Triton kernel, its PyTorch reference, and the dispatcher.

The kernel is FlashAttention's forward pass restricted to the kept key blocks: one program per
(query block, batch row x query head) walks the key blocks its query block keeps, in order, with
the online softmax (running maximum `m`, running sum `l`, rescaled accumulator), and writes the
output and its log-sum-exp `m + log l`. Only the diagonal block needs the causal mask, and every
query block keeps its diagonal (`BlockSparseIndex`), so no row is empty. Grouped-query heads read
their key/value head `h // (query_heads / kv_heads)` in place, without copies.

Scores are accumulated in float32 whatever the input dtype, as the reference does; the output
comes back in float32 too. The dispatcher (`block_sparse_attention`) runs the kernel on CUDA
tensors and the reference (`masked_attention` over the index's mask) elsewhere.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from hermesflow.kernels.attention_reference import PartialAttention, group_size, masked_attention
from hermesflow.kernels.sparse_patterns import BlockSparseIndex


def block_lists(index: BlockSparseIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept key blocks of each query block as the kernel reads them: counts
    `[batch, heads, n_blocks]` (int32) and block numbers `[batch, heads, n_blocks, n_blocks]`
    (int32), ascending, only the first `count` of each row meaningful. Blocks after the diagonal
    are dropped (causal)."""
    kept = index.blocks & torch.ones_like(index.blocks).tril()
    counts = kept.sum(dim=-1, dtype=torch.int32)
    numbers = torch.arange(kept.shape[-1], device=kept.device, dtype=torch.int32)
    # kept blocks first, in ascending order: sort by (not kept, number)
    order = (~kept).to(torch.int32) * kept.shape[-1] + numbers
    return counts, order.sort(dim=-1).values.remainder(kept.shape[-1]).to(torch.int32)


@triton.jit
def _load_rows(base, rows, row_stride, rows_ok, offs_d, d_ok):
    """Rows `rows` of a `[length, head_dim]` matrix at `base`, in float32; 0 outside it."""
    tile = base + rows[:, None] * row_stride + offs_d[None, :]
    return tl.load(tile, mask=rows_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _block_sparse_forward(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, count_ptr, number_ptr,
    q_stride_b, q_stride_h, q_stride_n,
    k_stride_b, k_stride_h, k_stride_n,
    v_stride_b, v_stride_h, v_stride_n,
    o_stride_b, o_stride_h, o_stride_n,
    heads, group, length, head_dim, n_blocks, scale,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    query_block = tl.program_id(0)
    row = tl.program_id(1)
    batch = row // heads
    head = row % heads
    kv_head = head // group

    offs_m = query_block * BLOCK + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    m_ok = offs_m < length

    q = _load_rows(
        q_ptr + batch * q_stride_b + head * q_stride_h, offs_m, q_stride_n, m_ok, offs_d, d_ok
    )
    k_base = k_ptr + batch * k_stride_b + kv_head * k_stride_h
    v_base = v_ptr + batch * v_stride_b + kv_head * v_stride_h

    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)

    list_at = row * n_blocks + query_block
    count = tl.load(count_ptr + list_at)
    for i in range(count):
        key_block = tl.load(number_ptr + list_at * n_blocks + i)
        offs_k = key_block * BLOCK + offs_n
        k_ok = offs_k < length
        k = _load_rows(k_base, offs_k, k_stride_n, k_ok, offs_d, d_ok)
        scores = tl.dot(q, tl.trans(k)) * scale
        allowed = k_ok[None, :] & (offs_k[None, :] <= offs_m[:, None])
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _load_rows(v_base, offs_k, v_stride_n, k_ok, offs_d, d_ok)
        acc = acc * alpha[:, None] + tl.dot(p, v)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(
        out_ptr
        + batch * o_stride_b
        + head * o_stride_h
        + offs_m[:, None] * o_stride_n
        + offs_d[None, :],
        out,
        mask=m_ok[:, None] & d_ok[None, :],
    )
    tl.store(lse_ptr + row * length + offs_m, m_i + tl.log(l_i), mask=m_ok)


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockSparseIndex,
    scale: float | None = None,
) -> PartialAttention:
    """Run the Triton kernel (module docstring). The index's block must be a power of two of at
    least 16 tokens (the kernel's tile; `tl.dot` needs 16)."""
    batch, heads, length, head_dim = q.shape
    block = index.block
    if block < 16 or block & (block - 1):
        raise ValueError(f"the kernel's block must be a power of two >= 16 tokens; got {block}")
    if index.blocks.shape[:2] != (batch, heads):
        raise ValueError(
            f"the index covers [batch, heads] {tuple(index.blocks.shape[:2])}, the queries {(batch, heads)}"
        )
    group = group_size(heads, k.shape[1])
    counts, numbers = block_lists(index)
    n_blocks = counts.shape[-1]
    if -(-length // block) != n_blocks:
        raise ValueError(
            f"{n_blocks} blocks of {block} tokens do not cover a prompt of {length} tokens; "
            "estimate the index for this prompt"
        )
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty(batch, heads, length, head_dim, device=q.device, dtype=torch.float32)
    lse = torch.empty(batch, heads, length, device=q.device, dtype=torch.float32)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    _block_sparse_forward[(n_blocks, batch * heads)](
        q, k, v, out, lse, counts.contiguous(), numbers.contiguous(),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, group, length, head_dim, n_blocks, scale,
        BLOCK=block, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
    )  # fmt: skip
    return PartialAttention(out, lse)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockSparseIndex,
    scale: float | None = None,
) -> PartialAttention:
    """Block-sparse attention: the Triton kernel on CUDA, the PyTorch reference elsewhere."""
    if q.is_cuda:
        return block_sparse_attention_triton(q, k, v, index, scale)
    return masked_attention(q, k, v, index.mask(q.shape[-2]), scale)
