"""Online estimation of a sparse prefill's index from the prompt's own queries and keys.

* **Vertical-slash** (MInference §3.2): the last `last_queries` queries attend to every key (a
  small `[m, length]` attention). Summing their softmax down each key column scores the columns;
  summing it along each diagonal (offset `q - k`) scores the slashes. The top `n_vertical` columns
  and `n_slash` diagonals form the index; column 0 (the attention sink) and offset 0 (the query
  itself) are always kept.
* **Block-sparse**: queries and keys are mean-pooled per block of `block` tokens, the pooled
  queries attend to the pooled keys (block-causal), and each query block keeps its top
  `n_blocks` key blocks; its own block and the first block are always kept, beyond the budget
  if it is 1.
"""

from __future__ import annotations

import torch

from hermesflow.kernels.attention_reference import scores
from hermesflow.kernels.sparse_patterns import BlockSparseIndex, VerticalSlashIndex


def estimate_vertical_slash(
    q: torch.Tensor,
    k: torch.Tensor,
    n_vertical: int,
    n_slash: int,
    last_queries: int = 64,
    scale: float | None = None,
) -> VerticalSlashIndex:
    """The vertical-slash index of one prompt (module docstring); budgets are capped at the
    prompt's length."""
    if n_vertical < 1 or n_slash < 1 or last_queries < 1:
        raise ValueError(
            f"n_vertical, n_slash and last_queries must be at least 1; got {n_vertical}, "
            f"{n_slash} and {last_queries}"
        )
    length = q.shape[-2]
    m = min(last_queries, length)
    first = length - m
    logits = scores(q[..., first:, :], k, scale)  # [batch, heads, m, length]
    query_positions = torch.arange(first, length, device=q.device)
    key_positions = torch.arange(length, device=q.device)
    offset = query_positions[:, None] - key_positions[None, :]  # [m, length]
    weights = torch.softmax(logits.masked_fill(offset < 0, float("-inf")), dim=-1)

    column_score = weights.sum(dim=-2)
    diagonal_score = torch.zeros_like(column_score)
    diagonal_score.scatter_add_(
        -1, offset.clamp(min=0).reshape(-1).expand(*weights.shape[:2], -1), weights.flatten(-2)
    )
    column_score[..., 0] = float("inf")
    diagonal_score[..., 0] = float("inf")
    vertical = column_score.topk(min(n_vertical, length), dim=-1).indices
    slash = diagonal_score.topk(min(n_slash, length), dim=-1).indices
    return VerticalSlashIndex(vertical.sort(dim=-1).values, slash.sort(dim=-1).values)


def estimate_block_sparse(
    q: torch.Tensor, k: torch.Tensor, block: int, n_blocks: int, scale: float | None = None
) -> BlockSparseIndex:
    """The block-sparse index of one prompt (module docstring)."""
    if block < 1 or n_blocks < 1:
        raise ValueError(f"block and n_blocks must be at least 1; got {block} and {n_blocks}")
    pooled_q, pooled_k = _pool(q, block), _pool(k, block)
    count = pooled_q.shape[-2]
    logits = scores(pooled_q, pooled_k, scale)  # [batch, heads, count, count]
    positions = torch.arange(count, device=q.device)
    later = positions[None, :] > positions[:, None]
    always = (positions[None, :] == positions[:, None]) | (positions[None, :] == 0)
    logits = logits.masked_fill(later, float("-inf")).masked_fill(always, float("inf"))
    chosen = logits.topk(min(n_blocks, count), dim=-1).indices
    blocks = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, chosen, True)
    return BlockSparseIndex(block, (blocks | always) & ~later)


def _pool(tensor: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of `block` positions (the last block over the positions it has)."""
    length = tensor.shape[-2]
    count = -(-length // block)
    padded = torch.nn.functional.pad(tensor.float(), (0, 0, 0, count * block - length))
    sums = padded.reshape(*tensor.shape[:-2], count, block, tensor.shape[-1]).sum(dim=-2)
    sizes = torch.full((count,), float(block), device=tensor.device)
    sizes[-1] = length - (count - 1) * block
    return sums / sizes[:, None]
