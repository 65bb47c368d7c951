"""One query head's causal softmax weights on one prompt, and what an index keeps of them.

The pattern search scores many candidate indexes of the same head. Each candidate's recall is the
softmax mass it keeps, averaged over queries; since every causal row sums to 1,

    recall = (1 / L) * sum_{(i, j) kept} W[i, j]

for the `[L, L]` causal softmax `W`. So `W` is computed once per head and each candidate is read
off it, never attended:

* a vertical-slash index (an A-shape too) keeps the columns `V` and the diagonals `S`:
  `sum_kept W = sum_{j in V} C[j] + sum_{d in S} D[d] - sum_{j in V, d in S} W[j + d, j]`, with
  `C` the column sums and `D` the diagonal sums of `W`, the last term the entries on both;
* a block-sparse index keeps whole blocks: `sum_kept W = sum_{kept (a, b)} B[a, b]`, with `B`
  the sums of `W` over each block.

Its cost is the share of the `L (L + 1) / 2` causal q·k products it computes: the causal pairs it
keeps (counted by the same formulas with 1 for `W`) plus the products of its online estimation
(the last `m` queries against their keys, or the pooled blocks against theirs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hermesflow.kernels.attention_reference import scores
from hermesflow.kernels.sparse_patterns import (
    BlockSparseIndex,
    SparsePattern,
    VerticalSlashIndex,
    causal_mask,
)

QUERY_CHUNK = 1024
"""Queries whose weights are computed at a time: bounds the scratch to `L x 1024` logits."""


@dataclass(frozen=True)
class HeadWeights:
    """The causal softmax `W` of one query head, stored key-major: `by_key[j, i] = W[i, j]`
    (`[L, L]` float32, 0 for `j > i`), so that the weights down one key column are contiguous
    for the reads of `on_columns_and_diagonals`. `columns` `[L]` holds its column sums `C`,
    `diagonals` `[L]` its sums along each offset `d = i - j` (`D`)."""

    by_key: torch.Tensor
    columns: torch.Tensor
    diagonals: torch.Tensor

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> HeadWeights:
        """The weights of query head `q` `[L, dim]` over its key head `k` `[L, dim]`: only the
        causal part is computed, a chunk of queries at a time."""
        length = q.shape[-2]
        by_key = torch.zeros(length, length, dtype=torch.float32, device=q.device)
        for first in range(0, length, QUERY_CHUNK):
            last = min(first + QUERY_CHUNK, length)
            # keys 0..last-1 against queries first..last-1: `scores(k, q)` is `k q^T`
            logits = scores(k[None, None, :last], q[None, None, first:last], scale)[0, 0]
            after = ~causal_mask(last - first, q.device).T  # key j after query i, in the chunk
            logits[first:].masked_fill_(after, float("-inf"))
            by_key[:last, first:last] = torch.softmax(logits, dim=0)
        return cls(by_key, by_key.sum(dim=1), _diagonal_sums(by_key))

    @property
    def length(self) -> int:
        return self.by_key.shape[-1]

    def on_columns_and_diagonals(
        self, columns: torch.Tensor, offsets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`W[j + d, j]` for each column `j` in `columns` (rows) and offset `d` in `offsets`
        (columns of the result), 0 where `j + d` is past the prompt; and whether it is inside."""
        rows = columns[:, None] + offsets[None, :]
        inside = rows < self.length
        flat = columns[:, None] * self.length + rows.clamp(max=self.length - 1)
        return self.by_key.reshape(-1)[flat] * inside, inside

    def block_sums(self, block: int) -> torch.Tensor:
        """`B` `[blocks, blocks]`: the sum of `W` over each block of `block` x `block` tokens,
        `B[query block, key block]`."""
        count = _block_count(self.length, block)
        padding = count * block - self.length
        padded = self.by_key
        if padding:
            padded = torch.nn.functional.pad(self.by_key, (0, padding, 0, padding))
        return padded.reshape(count, block, count, block).sum(dim=(1, 3)).T


def causal_products(length: int) -> int:
    """The q·k products of dense causal attention: `L (L + 1) / 2`."""
    return length * (length + 1) // 2


def block_pairs(length: int, block: int) -> torch.Tensor:
    """`[blocks, blocks]` int64: the causal (query, key) pairs inside each block — full blocks
    below the diagonal, `n (n + 1) / 2` on it (`n` its size; the last block may be partial)."""
    count = _block_count(length, block)
    sizes = torch.full((count,), block, dtype=torch.int64)
    sizes[-1] = length - (count - 1) * block
    below = torch.outer(sizes, sizes).tril(diagonal=-1)
    return below + torch.diag(sizes * (sizes + 1) // 2)


def estimation_products(length: int, pattern: SparsePattern, size: int) -> int:
    """The q·k products the online estimation spends: none for a (fixed) A-shape; the last
    `size` queries against their keys for a vertical-slash; the pooled blocks of `size` tokens
    against theirs for a block-sparse."""
    match pattern:
        case SparsePattern.A_SHAPE:
            return 0
        case SparsePattern.VERTICAL_SLASH:
            m = min(size, length)
            return causal_products(length) - causal_products(length - m)
        case SparsePattern.BLOCK_SPARSE:
            return causal_products(_block_count(length, size))


@dataclass(frozen=True)
class Kept:
    """What an index keeps of a head: its `recall` and its `cost` (module docstring)."""

    recall: float
    cost: float


def kept_by(
    head: HeadWeights, index: VerticalSlashIndex | BlockSparseIndex, estimation: int
) -> Kept:
    """The recall and cost of a one-head index (batch 1, head 1) on `head`'s prompt; `estimation`
    is the products its online estimation spent (`estimation_products`)."""
    length = head.length
    if isinstance(index, BlockSparseIndex):
        index.check_covers(length)
        blocks = index.blocks[0, 0]
        mass = head.block_sums(index.block)[blocks].sum()
        pairs = int(block_pairs(length, index.block)[blocks].sum())
    else:
        index.flags(length)  # refuses positions past the prompt
        columns, offsets = index.vertical[0, 0], index.slash[0, 0]
        overlap, inside = head.on_columns_and_diagonals(columns, offsets)
        mass = head.columns[columns].sum() + head.diagonals[offsets].sum() - overlap.sum()
        pairs = int((length - columns).sum() + (length - offsets).sum() - inside.sum())
    return Kept(float(mass) / length, (pairs + estimation) / causal_products(length))


def _block_count(length: int, block: int) -> int:
    return -(-length // block)


def _diagonal_sums(by_key: torch.Tensor) -> torch.Tensor:
    """`D[d] = sum_j W[j + d, j]`, as column sums of a strided view of `by_key`, without a copy.

    Viewed with row stride `L + 1`, row `r` column `d` of the view is the element at flat
    position `r L + (r + d)`: `by_key[r, r + d] = W[r + d, r]` while `r + d < L`, else
    `by_key[r + 1, r + d - L]`, below `by_key`'s diagonal and so 0. Rows `0..L-2` fit in the
    storage; the last row adds only `W[L-1, L-1]`, to offset 0.
    """
    length = by_key.shape[-1]
    view = by_key.contiguous().as_strided((length - 1, length), (length + 1, 1))
    diagonals = view.sum(dim=0)
    diagonals[0] += by_key[-1, -1]
    return diagonals
