"""The index of a sparse prefill: which keys each query head attends to.

MInference (arXiv 2407.02490) finds that a long-context model's heads fall into three shapes, and
each shape has an index that is cheap to store and to run:

* **A-shape**: the first `sink` keys and a local window of `window` keys behind each query. It is
  a vertical-slash index with fixed columns `0..sink-1` and diagonals `0..window-1`.
* **Vertical-slash**: a few key columns that every query attends to (`vertical`, key positions)
  and a few diagonals (`slash`, offsets `q - k`), found per prompt.
* **Block-sparse**: for each block of queries, the blocks of keys it attends to.

Both index types hold one entry per (batch row, query head) and apply on top of the causal mask.
Each keeps the diagonal (offset 0, or the diagonal block), so that every query attends to at
least itself and no softmax row is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch


class SparsePattern(StrEnum):
    """MInference's three head patterns."""

    A_SHAPE = "a-shape"
    VERTICAL_SLASH = "vertical-slash"
    BLOCK_SPARSE = "block-sparse"


def causal_mask(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`[length, length]` bool: query `i` may see key `j` iff `j <= i`."""
    positions = torch.arange(length, device=device)
    return positions[None, :] <= positions[:, None]


@dataclass(frozen=True)
class VerticalSlashIndex:
    """Key columns and diagonals per (batch row, query head).

    `vertical`: int64 `[batch, heads, n_vertical]`, key positions. `slash`: int64
    `[batch, heads, n_slash]`, offsets `q - k >= 0`, each row holding 0. `pattern` says whether the
    index was estimated (vertical-slash) or fixed (A-shape); the attention is the same.
    """

    vertical: torch.Tensor
    slash: torch.Tensor
    pattern: SparsePattern = SparsePattern.VERTICAL_SLASH

    def __post_init__(self) -> None:
        for name, index in (("vertical", self.vertical), ("slash", self.slash)):
            if index.dim() != 3 or index.dtype != torch.int64:
                raise ValueError(
                    f"{name} must be an int64 tensor [batch, heads, n]; got {tuple(index.shape)} "
                    f"{index.dtype}"
                )
            if index.numel() and int(index.min()) < 0:
                raise ValueError(f"{name} holds a negative position; positions start at 0")
        if self.vertical.shape[:2] != self.slash.shape[:2]:
            raise ValueError(
                f"vertical and slash must cover the same [batch, heads]: {tuple(self.vertical.shape[:2])} "
                f"against {tuple(self.slash.shape[:2])}"
            )
        if not bool((self.slash == 0).any(dim=-1).all()):
            raise ValueError(
                "every head's slash must hold offset 0 (each query attends to itself); add 0 to it"
            )

    @classmethod
    def a_shape(
        cls, batch: int, heads: int, sink: int, window: int, device: torch.device | str = "cpu"
    ) -> VerticalSlashIndex:
        """The first `sink` keys and the `window` keys up to each query (itself included)."""
        if sink < 0 or window < 1:
            raise ValueError(f"an A-shape needs sink >= 0 and window >= 1; got {sink} and {window}")
        vertical = torch.arange(sink, device=device).expand(batch, heads, sink)
        slash = torch.arange(window, device=device).expand(batch, heads, window)
        return cls(vertical.contiguous(), slash.contiguous(), SparsePattern.A_SHAPE)

    def flags(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two `[batch, heads, length]` bool tables for a prompt of `length` tokens: whether each
        key position is a vertical column, and whether each offset `q - k` is a slash."""
        for name, index in (("vertical", self.vertical), ("slash", self.slash)):
            if index.numel() and int(index.max()) >= length:
                raise ValueError(
                    f"{name} holds position {int(index.max())}, beyond a prompt of {length} tokens; "
                    "estimate the index for this prompt"
                )
        batch, heads = self.vertical.shape[:2]
        device = self.vertical.device
        columns = torch.zeros(batch, heads, length, dtype=torch.bool, device=device)
        offsets = torch.zeros(batch, heads, length, dtype=torch.bool, device=device)
        return columns.scatter_(-1, self.vertical, True), offsets.scatter_(-1, self.slash, True)

    def mask(self, length: int) -> torch.Tensor:
        """`[batch, heads, length, length]` bool: the causal mask narrowed to the index."""
        columns, offsets = self.flags(length)
        positions = torch.arange(length, device=columns.device)
        offset = (positions[:, None] - positions[None, :]).clamp(min=0)
        on_slash = offsets[:, :, offset]  # [batch, heads, length, length]
        return (columns[:, :, None, :] | on_slash) & causal_mask(length, columns.device)


@dataclass(frozen=True)
class BlockSparseIndex:
    """Key blocks per query block, per (batch row, query head).

    `blocks`: bool `[batch, heads, n_blocks, n_blocks]`, `blocks[..., i, j]` says whether query
    block `i` attends to key block `j` (blocks of `block` tokens; the last may be partial). Only
    `j <= i` counts (causal), and the diagonal must be kept.
    """

    block: int
    blocks: torch.Tensor

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError(f"block must be at least 1 token; got {self.block}")
        if self.blocks.dim() != 4 or self.blocks.dtype != torch.bool:
            raise ValueError(
                "blocks must be a bool tensor [batch, heads, query blocks, key blocks]; got "
                f"{tuple(self.blocks.shape)} {self.blocks.dtype}"
            )
        if self.blocks.shape[-1] != self.blocks.shape[-2]:
            raise ValueError(
                f"a prefill has as many key blocks as query blocks; got {tuple(self.blocks.shape[-2:])}"
            )
        if not bool(self.blocks.diagonal(dim1=-2, dim2=-1).all()):
            raise ValueError(
                "every query block must keep its own key block (the diagonal); set it in blocks"
            )

    def check_covers(self, length: int) -> None:
        """Refuse a prompt whose length does not make this index's number of blocks."""
        n_blocks = self.blocks.shape[-1]
        if -(-length // self.block) != n_blocks:
            raise ValueError(
                f"{n_blocks} blocks of {self.block} tokens do not cover a prompt of {length} "
                "tokens; estimate the index for this prompt"
            )

    def mask(self, length: int) -> torch.Tensor:
        """`[batch, heads, length, length]` bool: the causal mask narrowed to the kept blocks."""
        self.check_covers(length)
        of_token = torch.arange(length, device=self.blocks.device) // self.block
        kept = self.blocks[:, :, of_token][:, :, :, of_token]
        return kept & causal_mask(length, self.blocks.device)
