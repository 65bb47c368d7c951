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


def vertical_slash_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    last_queries: int = 64,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How much softmax mass the last `last_queries` queries put on each key column and on each
    diagonal (offset `q - k`): two `[batch, heads, length]` float32 tables, column 0 and offset 0
    scored `inf` so that every budget keeps them. The index keeps the top of each table."""
    if last_queries < 1:
        raise ValueError(f"last_queries must be at least 1; got {last_queries}")
    length = q.shape[-2]
    first = length - min(last_queries, length)
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
    return column_score, diagonal_score


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
    if n_vertical < 1 or n_slash < 1:
        raise ValueError(
            f"n_vertical and n_slash must be at least 1; got {n_vertical} and {n_slash}"
        )
    column_score, diagonal_score = vertical_slash_scores(q, k, last_queries, scale)
    length = q.shape[-2]
    vertical = column_score.topk(min(n_vertical, length), dim=-1).indices
    slash = diagonal_score.topk(min(n_slash, length), dim=-1).indices
    return VerticalSlashIndex(vertical.sort(dim=-1).values, slash.sort(dim=-1).values)


def block_scores(
    q: torch.Tensor, k: torch.Tensor, block: int, scale: float | None = None
) -> torch.Tensor:
    """The pooled queries' logits over the pooled keys, `[batch, heads, blocks, blocks]` float32:
    `-inf` after the diagonal (causal), `inf` on the diagonal and the first key block (always
    kept). Each query block keeps the top of its row."""
    if block < 1:
        raise ValueError(f"block must be at least 1 token; got {block}")
    logits = scores(_pool(q, block), _pool(k, block), scale)
    positions = torch.arange(logits.shape[-1], device=q.device)
    later = positions[None, :] > positions[:, None]
    return logits.masked_fill(later, float("-inf")).masked_fill(
        _always_kept(positions), float("inf")
    )


def estimate_block_sparse(
    q: torch.Tensor, k: torch.Tensor, block: int, n_blocks: int, scale: float | None = None
) -> BlockSparseIndex:
    """The block-sparse index of one prompt (module docstring)."""
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be at least 1; got {n_blocks}")
    logits = block_scores(q, k, block, scale)
    positions = torch.arange(logits.shape[-1], device=q.device)
    chosen = logits.topk(min(n_blocks, logits.shape[-1]), dim=-1).indices
    blocks = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, chosen, True)
    later = positions[None, :] > positions[:, None]
    return BlockSparseIndex(block, (blocks | _always_kept(positions)) & ~later)


def _always_kept(positions: torch.Tensor) -> torch.Tensor:
    """`[blocks, blocks]` bool: each query block's own key block and the first key block."""
    return (positions[None, :] == positions[:, None]) | (positions[None, :] == 0)


def _pool(tensor: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of `block` positions (the last block over the positions it has)."""
    length = tensor.shape[-2]
    count = -(-length // block)
    padded = torch.nn.functional.pad(tensor.float(), (0, 0, 0, count * block - length))
    sums = padded.reshape(*tensor.shape[:-2], count, block, tensor.shape[-1]).sum(dim=-2)
    sizes = torch.full((count,), float(block), device=tensor.device)
    sizes[-1] = length - (count - 1) * block
    return sums / sizes[:, None]
