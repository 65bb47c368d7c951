"""Online estimation of a sparse prefill's index from the prompt's own queries and keys.

* **Vertical-slash** (MInference §3.2): the last `last_queries` queries attend to every key (a
  small `[m, length]` attention). Summing their softmax down each key column scores the columns;
  summing it along each diagonal (offset `q - k`) scores the slashes. The top `n_vertical` columns
  and `n_slash` diagonals form the index; column 0 (the attention sink) and offset 0 (the query
  itself) are always kept. The budgets come from the offline search, which also records the
  share of the last queries' mass they covered there (`coverage`); a prompt on which they cover
  clearly less is harder than the searched ones, and both budgets grow until they cover it
  (Hermesflow's rule, `estimate_vertical_slash`: fixed budgets missed the recall target on new
  text in the heads whose coverage had dropped).
* **Block-sparse**: each (query block, key block) tile of `block` x `block` tokens gets a score,
  and each query block keeps its top `n_blocks` key blocks; its own block and the first block are
  always kept, beyond the budget if it is 1. Two scorings (`BlockScoring`):

  - **pooled** (the default): queries and keys are mean-pooled per block and the pooled queries
    attend to the pooled keys (block-causal). About `(L / B)^2 d` multiply-adds for `L` tokens of
    dimension `d`, but a mean washes out a few strong keys among many weak ones.
  - **antidiagonal** (XAttention, arXiv 2503.16428): every tile is read along its antidiagonals
    (lower left to upper right), sampled every `stride` (`S`) rows. An antidiagonal of an `S` x `S`
    sub-tile crosses each of its rows and each of its columns once, so a strong key column or a
    strong diagonal inside the tile weighs one product in `S` of every group pair it crosses
    (one in `B` of a pooled block's mean), while only one product in `S` is computed.
    With the queries of each group of `S` in reverse order, query group `g` against key group `h`:

        a[g, h] = scale / S * sum_{i < S} q[g S + S - 1 - i] . k[h S + i]

    which is one matmul of `[L / S, S d]` by `[S d, L / S]` (about `L^2 d / S` multiply-adds:
    `B^2 / S` times pooled's). The `1 / S` makes `a` a mean of ordinary logits, so the softmax
    over each row's causal key groups runs at attention's own temperature; the softmax summed
    over each tile's `B / S` x `B / S` entries scores the tile, i.e. estimates the share of
    attention mass the tile holds. A query group's own key group counts its whole antidiagonal,
    part of it after the query, as XAttention does: it lies in the always-kept diagonal tile and
    only weighs the row's softmax. Padding past the prompt is left out of each mean (a group pair
    with no real product is left out of the softmax).

  Pooled stays the default: on SmolLM2's own queries and keys (`bench/block_scoring.py`, 8K
  tokens, block 64, 10-30% of the blocks) antidiagonal scoring at stride 8 raises the mean recall
  by 0.002 (0.2-0.3%) over pooled at the same budget, for about 500 times pooled's multiply-adds
  (12.5% of dense attention's q·k products); the oracle raises it by 0.036-0.045. Most of
  that gap is in layer 7, whose heads' heaviest blocks neither a block mean nor a stride-8
  antidiagonal picks out; stride 2 recovers part of it, at half of dense attention's products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from hermesflow.kernels.attention_reference import scores
from hermesflow.kernels.sparse_patterns import BlockSparseIndex, VerticalSlashIndex

COVERAGE_SLACK = 0.005
"""How far a prompt's last-query coverage may fall below the head's searched coverage before its
budgets grow: below this, the shortfall is within what the search prompts themselves differ by."""
BUDGET_GROWTH = 1.5
"""The factor both vertical-slash budgets grow by per step."""
MAX_GROWTHS = 6
"""At most this many steps (about 11x the searched budgets); past them the index is kept as is."""


@dataclass(frozen=True)
class _LastQueries:
    """The last queries' causal softmax over every key (`weights`, `[batch, heads, m, length]`)
    and, per key, the mass they put on its column and on its diagonal (offset `q - k`)."""

    weights: torch.Tensor
    offset: torch.Tensor
    column_mass: torch.Tensor
    diagonal_mass: torch.Tensor

    @classmethod
    def of(
        cls, q: torch.Tensor, k: torch.Tensor, last_queries: int, scale: float | None
    ) -> _LastQueries:
        if last_queries < 1:
            raise ValueError(f"last_queries must be at least 1; got {last_queries}")
        length = q.shape[-2]
        first = length - min(last_queries, length)
        logits = scores(q[..., first:, :], k, scale)  # [batch, heads, m, length]
        query_positions = torch.arange(first, length, device=q.device)
        key_positions = torch.arange(length, device=q.device)
        offset = query_positions[:, None] - key_positions[None, :]  # [m, length]
        weights = torch.softmax(logits.masked_fill(offset < 0, float("-inf")), dim=-1)
        diagonal_mass = torch.zeros(weights.shape[:2] + (length,), device=q.device)
        diagonal_mass.scatter_add_(
            -1, offset.clamp(min=0).reshape(-1).expand(*weights.shape[:2], -1), weights.flatten(-2)
        )
        return cls(weights, offset, weights.sum(dim=-2), diagonal_mass)

    def rankings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The column and diagonal scores, column 0 and offset 0 raised to `inf`."""
        column_score, diagonal_score = self.column_mass.clone(), self.diagonal_mass.clone()
        column_score[..., 0] = float("inf")
        diagonal_score[..., 0] = float("inf")
        return column_score, diagonal_score

    def covered(self, vertical: torch.Tensor, slash: torch.Tensor) -> torch.Tensor:
        """`[batch, heads]`: the share of the last queries' mass on the `vertical` columns or the
        `slash` diagonals (index tensors `[batch, heads, n]`), by inclusion-exclusion:
        columns' mass + diagonals' mass - the mass on both, the last read at the columns only
        (`m x n_vertical` entries, never the whole `[m, length]` mask)."""
        kept_diagonals = torch.zeros_like(self.diagonal_mass, dtype=torch.bool)
        kept_diagonals.scatter_(-1, slash, True)
        m = self.weights.shape[-2]
        at_columns = self.weights.gather(-1, vertical[..., None, :].expand(-1, -1, m, -1))
        offsets = self.offset[:, :1] - vertical[..., None, :]  # q - k, [batch, heads, m, n]
        on_both = kept_diagonals.gather(-1, offsets.clamp(min=0).flatten(-2)).view(offsets.shape)
        both = (at_columns * (on_both & (offsets >= 0))).sum(dim=(-1, -2))
        columns = self.column_mass.gather(-1, vertical).sum(dim=-1)
        diagonals = self.diagonal_mass.gather(-1, slash).sum(dim=-1)
        return (columns + diagonals - both) / m


def vertical_slash_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    last_queries: int = 64,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How much softmax mass the last `last_queries` queries put on each key column and on each
    diagonal (offset `q - k`): two `[batch, heads, length]` float32 tables, column 0 and offset 0
    scored `inf` so that every budget keeps them. The index keeps the top of each table."""
    return _LastQueries.of(q, k, last_queries, scale).rankings()


def vertical_slash_coverage(
    q: torch.Tensor,
    k: torch.Tensor,
    n_vertical: int,
    n_slash: int,
    last_queries: int = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """`[batch, heads]`: the share of the last queries' attention mass that the top `n_vertical`
    columns and `n_slash` diagonals cover: what the search records per head as its coverage."""
    last = _LastQueries.of(q, k, last_queries, scale)
    return last.covered(*_top(last.rankings(), n_vertical, n_slash))


def estimate_vertical_slash(
    q: torch.Tensor,
    k: torch.Tensor,
    n_vertical: int,
    n_slash: int,
    last_queries: int = 64,
    scale: float | None = None,
    coverage: float | None = None,
) -> VerticalSlashIndex:
    """The vertical-slash index of one prompt (module docstring); budgets are capped at the
    prompt's length.

    With `coverage` (the lowest share of the last queries' mass the budgets covered on the search
    prompts), a prompt on which they cover less than `coverage - COVERAGE_SLACK`, in any batch
    row or head, is harder than the searched ones: both budgets grow by `BUDGET_GROWTH` until
    they cover it (at most `MAX_GROWTHS` steps). The last queries' coverage predicts the whole
    prompt's recall: on SmolLM2's held-out text the heads whose recall fell below the target were
    the ones whose coverage fell below their searched one (docs/benchmarks.md)."""
    if n_vertical < 1 or n_slash < 1:
        raise ValueError(
            f"n_vertical and n_slash must be at least 1; got {n_vertical} and {n_slash}"
        )
    last = _LastQueries.of(q, k, last_queries, scale)
    rankings = last.rankings()
    vertical, slash = _top(rankings, n_vertical, n_slash)
    length = q.shape[-2]
    if coverage is not None:
        for _ in range(MAX_GROWTHS):
            if min(n_vertical, n_slash) >= length:
                break
            if float(last.covered(vertical, slash).min()) >= coverage - COVERAGE_SLACK:
                break
            n_vertical, n_slash = (
                math.ceil(n_vertical * BUDGET_GROWTH),
                math.ceil(n_slash * BUDGET_GROWTH),
            )
            vertical, slash = _top(rankings, n_vertical, n_slash)
    return VerticalSlashIndex(vertical.sort(dim=-1).values, slash.sort(dim=-1).values)


def _top(
    rankings: tuple[torch.Tensor, torch.Tensor], n_vertical: int, n_slash: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top `n_vertical` columns and `n_slash` diagonals, capped at the prompt's length."""
    column_score, diagonal_score = rankings
    length = column_score.shape[-1]
    vertical = column_score.topk(min(n_vertical, length), dim=-1).indices
    slash = diagonal_score.topk(min(n_slash, length), dim=-1).indices
    return vertical, slash


class BlockScoring(Enum):
    """How a block-sparse index scores its tiles (module docstring)."""

    POOLED = "pooled"
    ANTIDIAGONAL = "antidiagonal"


DEFAULT_STRIDE = 8
"""Antidiagonal scoring's stride: XAttention's choice for language models."""


def block_scores(
    q: torch.Tensor, k: torch.Tensor, block: int, scale: float | None = None
) -> torch.Tensor:
    """The pooled queries' logits over the pooled keys, `[batch, heads, blocks, blocks]` float32:
    `-inf` after the diagonal (causal), `inf` on the diagonal and the first key block (always
    kept). Each query block keeps the top of its row."""
    if block < 1:
        raise ValueError(f"block must be at least 1 token; got {block}")
    return _causal_ranking(scores(_pool(q, block), _pool(k, block), scale))


def antidiagonal_block_scores(
    q: torch.Tensor, k: torch.Tensor, block: int, stride: int, scale: float | None = None
) -> torch.Tensor:
    """XAttention's antidiagonal scores of each tile (module docstring), with `block_scores`'
    shape and conventions: `[batch, heads, blocks, blocks]` float32, `-inf` after the diagonal,
    `inf` on the diagonal and the first key block. Every other score is the softmax mass, over
    the query block's rows of group logits, that falls in the tile."""
    if block < 1:
        raise ValueError(f"block must be at least 1 token; got {block}")
    if stride < 1 or block % stride:
        raise ValueError(
            f"stride must be at least 1 and divide block ({block} tokens) so that each tile holds "
            f"whole groups of antidiagonals; got {stride}"
        )
    length, dim = q.shape[-2], q.shape[-1]
    count = -(-length // block)
    groups = count * block // stride
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    # sums[g, h]: the S products along the antidiagonal of query group g and key group h
    sums = scores(_grouped(q, groups, stride, reverse=True), _grouped(k, groups, stride), 1.0)
    real = (torch.arange(groups * stride, device=q.device) < length).float().view(groups, stride)
    products = real.flip(-1) @ real.T  # real (unpadded) products on each antidiagonal
    later = torch.ones(groups, groups, dtype=torch.bool, device=q.device).triu(diagonal=1)
    logits = (sums * (scale / products.clamp(min=1))).masked_fill(
        later | (products == 0), float("-inf")
    )
    # a query group made only of padding has no real product: its row of NaN counts for nothing
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    per_block = block // stride
    tiled = weights.reshape(*weights.shape[:-2], count, per_block, count, per_block)
    return _causal_ranking(tiled.sum(dim=(-3, -1)))


def estimate_block_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    block: int,
    n_blocks: int,
    scale: float | None = None,
    *,
    scoring: BlockScoring = BlockScoring.POOLED,
    stride: int = DEFAULT_STRIDE,
) -> BlockSparseIndex:
    """The block-sparse index of one prompt (module docstring), its tiles scored by `scoring`;
    `stride` is the antidiagonal scoring's (pooled scoring has none)."""
    match scoring:
        case BlockScoring.POOLED:
            ranking = block_scores(q, k, block, scale)
        case BlockScoring.ANTIDIAGONAL:
            ranking = antidiagonal_block_scores(q, k, block, stride, scale)
    return top_blocks(ranking, block, n_blocks)


def top_blocks(ranking: torch.Tensor, block: int, n_blocks: int) -> BlockSparseIndex:
    """Each query block's top `n_blocks` key blocks by `ranking` `[batch, heads, blocks, blocks]`
    (higher first; any score, such as a true block mass), plus its own block and the first key
    block, nothing after the diagonal: the index every scoring, or an oracle, is judged by."""
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be at least 1; got {n_blocks}")
    ranking = _causal_ranking(ranking)
    positions = torch.arange(ranking.shape[-1], device=ranking.device)
    chosen = ranking.topk(min(n_blocks, ranking.shape[-1]), dim=-1).indices
    blocks = torch.zeros_like(ranking, dtype=torch.bool).scatter_(-1, chosen, True)
    later = positions[None, :] > positions[:, None]
    return BlockSparseIndex(block, (blocks | _always_kept(positions)) & ~later)


def _causal_ranking(tile_scores: torch.Tensor) -> torch.Tensor:
    """`tile_scores` `[..., blocks, blocks]` as float32 with `-inf` after the diagonal and `inf`
    on the always-kept tiles, so that a row's top keeps those first and never a later block."""
    positions = torch.arange(tile_scores.shape[-1], device=tile_scores.device)
    later = positions[None, :] > positions[:, None]
    return (
        tile_scores.float()
        .masked_fill(later, float("-inf"))
        .masked_fill(_always_kept(positions), float("inf"))
    )


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


def _grouped(tensor: torch.Tensor, groups: int, stride: int, reverse: bool = False) -> torch.Tensor:
    """`[..., length, dim]` zero-padded to `groups * stride` positions, each group of `stride`
    consecutive positions concatenated into one vector `[..., groups, stride * dim]` (in reverse
    order within the group when `reverse`), so that a dot product of a reversed query group with
    a key group sums the products along one antidiagonal."""
    length, dim = tensor.shape[-2:]
    padded = torch.nn.functional.pad(tensor.float(), (0, 0, 0, groups * stride - length))
    split = padded.reshape(*tensor.shape[:-2], groups, stride, dim)
    if reverse:
        split = split.flip(-2)
    return split.reshape(*tensor.shape[:-2], groups, stride * dim)
