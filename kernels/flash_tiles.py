"""What the attention kernels share: FlashAttention's forward pass one tile of keys at a time
(Dao et al., "FlashAttention", Algorithm 1, in float32), and the launch's set-up.

For a tile of scores `S` (disallowed entries -inf) and the running row maximum `m`, sum `l` and
output accumulator `O`:

    m' = max(m, rowmax S),  P = exp(S - m'),  l' = l exp(m - m') + rowsum P,
    O' = O exp(m - m') + P V

and at the end `out = O / l`, `lse = m + log l`. A row with no allowed key yet keeps `m = -inf`
and adds nothing (its exponentials are taken against 0, not against -inf).

The kernels read queries, keys and values as contiguous `[batch, heads, length, head_dim]`
tensors and write a float32 output of the queries' shape and a `[batch, heads, length]`
log-sum-exp. One program computes one query tile of one (batch row, query head): program ids
`(query tile, batch row x query heads + head)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from hermesflow.kernels.attention_reference import PartialAttention, group_size


@dataclass(frozen=True)
class KernelCall:
    """The tensors and sizes a kernel launch takes (module docstring)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    lse: torch.Tensor
    group: int
    scale: float
    block_d: int

    @classmethod
    def prepare(
        cls,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        block: int,
        index_heads: tuple[int, ...],
        scale: float | None,
    ) -> KernelCall:
        """Check the shapes against the tile and the index, and allocate the outputs."""
        batch, heads, length, head_dim = q.shape
        if block < 16 or block & (block - 1):
            raise ValueError(f"the kernel's tile must be a power of two >= 16 tokens; got {block}")
        if tuple(index_heads) != (batch, heads):
            raise ValueError(
                f"the index covers [batch, heads] {tuple(index_heads)}, the queries {(batch, heads)}"
            )
        return cls(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            torch.empty(batch, heads, length, head_dim, device=q.device, dtype=torch.float32),
            torch.empty(batch, heads, length, device=q.device, dtype=torch.float32),
            group_size(heads, k.shape[1]),
            1.0 / math.sqrt(head_dim) if scale is None else scale,
            max(16, triton.next_power_of_2(head_dim)),
        )

    def result(self) -> PartialAttention:
        return PartialAttention(self.out, self.lse)


def compact_lists(
    values: torch.Tensor, keep: torch.Tensor, fill: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lists a kernel walks, built on the host: per row, the kept values first in ascending
    order, then `fill`; with the kept counts (int32, as the kernels read them)."""
    ranked = torch.where(keep, values, torch.full_like(values, fill))
    return keep.sum(dim=-1, dtype=torch.int32), ranked.sort(dim=-1).values.to(torch.int32)


@triton.jit
def load_rows(base, rows, rows_ok, offs_d, d_ok, head_dim):
    """Rows `rows` of a `[length, head_dim]` matrix at `base`, in float32; 0 outside it."""
    tile = base + rows[:, None] * head_dim + offs_d[None, :]
    return tl.load(tile, mask=rows_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def query_tile(
    q_ptr, k_ptr, v_ptr, heads, group, length, head_dim, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr
):  # fmt: skip
    """This program's query tile and where its key/value head starts (module docstring)."""
    query_block = tl.program_id(0)
    row = tl.program_id(1)
    kv_row = (row // heads) * (heads // group) + (row % heads) // group
    offs_m = query_block * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    m_ok = offs_m < length
    q = load_rows(q_ptr + row * length * head_dim, offs_m, m_ok, offs_d, d_ok, head_dim)
    kv_at = kv_row * length * head_dim
    return query_block, row, offs_m, offs_d, d_ok, m_ok, q, k_ptr + kv_at, v_ptr + kv_at


@triton.jit
def attend_rows(q, k_base, v_base, rows, rows_ok, offs_d, d_ok, head_dim, allowed, scale, m_i, l_i, acc):  # fmt: skip
    """Load the keys and values at `rows` and fold them into `(m, l, O)` (module docstring);
    `allowed` is the tile's `[queries, rows]` mask."""
    k = load_rows(k_base, rows, rows_ok, offs_d, d_ok, head_dim)
    v = load_rows(v_base, rows, rows_ok, offs_d, d_ok, head_dim)
    scores = tl.where(allowed, tl.dot(q, tl.trans(k)) * scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - safe)
    p = tl.exp(scores - safe[:, None])
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc * alpha[:, None] + tl.dot(p, v)


@triton.jit
def store_tile(out_ptr, lse_ptr, row, offs_m, m_ok, offs_d, d_ok, length, head_dim, acc, m_i, l_i):
    """Write `out = O / l` and `lse = m + log l`. Rows past the prompt's end saw no key (`l = 0`):
    they are not stored, and are divided by 1 so that they hold no NaN."""
    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    tile = out_ptr + row * length * head_dim + offs_m[:, None] * head_dim + offs_d[None, :]
    tl.store(tile, acc / l_safe[:, None], mask=m_ok[:, None] & d_ok[None, :])
    lse = tl.where(seen, m_i + tl.log(l_safe), float("-inf"))
    tl.store(lse_ptr + row * length + offs_m, lse, mask=m_ok)
