"""Sparse prefill for a whole attention layer: each head's pattern and budget, the length gate,
and the configuration saved per model.

MInference assigns every head one pattern offline (A-shape, vertical-slash or block-sparse, with
its budget) and estimates that pattern's index online for each prompt. A layer's heads therefore
run in groups: the heads that share a pattern and budget are estimated and attended together,
and their outputs are put back in head order. Below `min_length` tokens (the break-even length
measured for the device) the whole layer runs dense attention, so the method is never slower
than dense.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from hermesflow.kernels.attention_reference import group_size, masked_attention
from hermesflow.kernels.block_sparse_attention import block_sparse_attention
from hermesflow.kernels.sparse_estimate import estimate_block_sparse, estimate_vertical_slash
from hermesflow.kernels.sparse_patterns import SparsePattern, VerticalSlashIndex
from hermesflow.kernels.vertical_slash_attention import vertical_slash_attention


class _Pattern(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AShape(_Pattern):
    """The first `sink` keys and the `window` keys up to each query."""

    pattern: Literal[SparsePattern.A_SHAPE] = SparsePattern.A_SHAPE
    sink: PositiveInt
    window: PositiveInt


class VerticalSlash(_Pattern):
    """`n_vertical` columns and `n_slash` diagonals, estimated from the last `last_queries`."""

    pattern: Literal[SparsePattern.VERTICAL_SLASH] = SparsePattern.VERTICAL_SLASH
    n_vertical: PositiveInt
    n_slash: PositiveInt
    last_queries: PositiveInt = 64


class BlockSparse(_Pattern):
    """`n_blocks` key blocks of `block` tokens per query block, from pooled block scores."""

    pattern: Literal[SparsePattern.BLOCK_SPARSE] = SparsePattern.BLOCK_SPARSE
    block: PositiveInt = 64
    n_blocks: PositiveInt


HeadPattern = Annotated[AShape | VerticalSlash | BlockSparse, Field(discriminator="pattern")]


class SparsePrefillConfig(BaseModel):
    """Every layer's head patterns for one model, and the length below which it runs dense."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    min_length: PositiveInt
    layers: list[list[HeadPattern]]

    @model_validator(mode="after")
    def _same_heads_per_layer(self) -> SparsePrefillConfig:
        counts = {len(heads) for heads in self.layers}
        if len(counts) > 1 or 0 in counts:
            raise ValueError(
                f"every layer must give one pattern per query head, the same number in each; got "
                f"{sorted(counts)} heads per layer"
            )
        return self

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: Path) -> SparsePrefillConfig:
        """The configuration at `path`; a missing or malformed file says which and why."""
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"no sparse prefill configuration at {path}; run the pattern search for the model "
                "or choose attention='dense'"
            ) from None
        except ValidationError as error:
            raise ValueError(f"{path} is not a sparse prefill configuration: {error}") from None


def sparse_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: list[HeadPattern],
    min_length: int,
    scale: float | None = None,
) -> torch.Tensor:
    """One layer's prefill attention, `[batch, query_heads, length, dim]` in float32: dense below
    `min_length` tokens, otherwise each group of heads with the same pattern estimated and
    attended together (module docstring)."""
    if len(heads) != q.shape[1]:
        raise ValueError(
            f"the layer has {q.shape[1]} query heads but its configuration {len(heads)} patterns; "
            "run the pattern search again for this model"
        )
    if q.shape[-2] < min_length:
        return masked_attention(q, k, v, scale=scale).out
    group = group_size(q.shape[1], k.shape[1])
    out = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    for pattern in dict.fromkeys(heads):
        chosen = torch.tensor([h for h, p in enumerate(heads) if p == pattern], device=q.device)
        shared = chosen // group  # each chosen query head's key/value head
        out[:, chosen] = _attend(q[:, chosen], k[:, shared], v[:, shared], pattern, scale)
    return out


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: HeadPattern, scale: float | None
) -> torch.Tensor:
    batch, heads, length = q.shape[:3]
    match pattern:
        case AShape(sink=sink, window=window):
            index = VerticalSlashIndex.a_shape(
                batch, heads, min(sink, length), min(window, length), q.device
            )
            return vertical_slash_attention(q, k, v, index, scale).out
        case VerticalSlash(n_vertical=n_vertical, n_slash=n_slash, last_queries=last):
            index = estimate_vertical_slash(q, k, n_vertical, n_slash, last, scale)
            return vertical_slash_attention(q, k, v, index, scale).out
        case BlockSparse(block=block, n_blocks=n_blocks):
            index = estimate_block_sparse(q, k, block, n_blocks, scale)
            return block_sparse_attention(q, k, v, index, scale).out
