"""Sparse prefill for a whole attention layer: each head's pattern and budget, the length gate,
and the configuration saved per model.

MInference assigns every head one pattern offline (A-shape, vertical-slash or block-sparse, with
its budget; `pattern_search`) and estimates that pattern's index online for each prompt. A
layer's heads therefore run in groups: the heads that share a pattern and budget are estimated
and attended together, and their outputs are put back in head order. Below `min_length` tokens
(the break-even length measured on the device, `SparsePrefillConfig.break_even`) the whole layer
runs dense attention, so the method is never slower than dense.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from hermesflow.kernels.attention_reference import group_size, masked_attention
from hermesflow.kernels.block_sparse_attention import block_sparse_attention
from hermesflow.kernels.sparse_estimate import estimate_block_sparse, estimate_vertical_slash
from hermesflow.kernels.sparse_patterns import (
    BlockSparseIndex,
    SparsePattern,
    VerticalSlashIndex,
)
from hermesflow.kernels.vertical_slash_attention import vertical_slash_attention


class _Pattern(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AShape(_Pattern):
    """The first `sink` keys and the `window` keys up to each query."""

    pattern: Literal[SparsePattern.A_SHAPE] = SparsePattern.A_SHAPE
    sink: PositiveInt
    window: PositiveInt


class VerticalSlash(_Pattern):
    """`n_vertical` columns and `n_slash` diagonals, estimated from the last `last_queries`.
    `coverage`, the lowest share of the last queries' mass the budgets covered on the search
    prompts, lets a harder prompt grow them (`estimate_vertical_slash`); None keeps them fixed."""

    pattern: Literal[SparsePattern.VERTICAL_SLASH] = SparsePattern.VERTICAL_SLASH
    n_vertical: PositiveInt
    n_slash: PositiveInt
    last_queries: PositiveInt = 64
    coverage: Annotated[float, Field(gt=0.0, le=1.0)] | None = None


class BlockSparse(_Pattern):
    """`n_blocks` key blocks of `block` tokens per query block, from pooled block scores."""

    pattern: Literal[SparsePattern.BLOCK_SPARSE] = SparsePattern.BLOCK_SPARSE
    block: PositiveInt = 64
    n_blocks: PositiveInt


HeadPattern = Annotated[AShape | VerticalSlash | BlockSparse, Field(discriminator="pattern")]


class DeviceType(StrEnum):
    """The devices a break-even length is measured on, named as `torch.device.type` names them
    (so `config.break_even.get(device.type)` finds the entry)."""

    CPU = "cpu"
    CUDA = "cuda"


class SparsePrefillConfig(BaseModel):
    """Every layer's head patterns for one model, as the offline search chose them, and the
    prompt lengths from which they pay.

    `layers[l][h]` is query head `h`'s pattern in layer `l`, and `recall[l][h]` the recall its
    online index reached on the search prompts (`search_prompts` of `search_tokens` tokens; the
    lowest, as the share of causal softmax mass kept); each is at least `recall_target`.
    `break_even` maps a device type to the measured prompt length from which sparse prefill
    beats dense there; a device it does not name runs dense.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    break_even: dict[DeviceType, PositiveInt] = {}
    recall_target: Annotated[float, Field(gt=0.0, le=1.0)]
    search_tokens: PositiveInt
    search_prompts: PositiveInt
    layers: list[list[HeadPattern]]
    recall: list[list[Annotated[float, Field(ge=0.0, le=1.0)]]]

    @model_validator(mode="after")
    def _one_searched_pattern_per_head(self) -> SparsePrefillConfig:
        counts = {len(heads) for heads in self.layers}
        if len(counts) > 1 or 0 in counts:
            raise ValueError(
                f"every layer must give one pattern per query head, the same number in each; got "
                f"{sorted(counts)} heads per layer"
            )
        if [len(heads) for heads in self.recall] != [len(heads) for heads in self.layers]:
            raise ValueError(
                "recall must give one figure per head pattern, layer by layer; run the pattern "
                "search again to write both"
            )
        below = [
            (layer, head)
            for layer, figures in enumerate(self.recall)
            for head, figure in enumerate(figures)
            if figure < self.recall_target
        ]
        if below:
            raise ValueError(
                f"heads (layer, head) {below} reached less than the recall target "
                f"{self.recall_target}; run the pattern search again, which gives such a head a "
                "dense pattern"
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


def estimate_index(
    q: torch.Tensor, k: torch.Tensor, pattern: HeadPattern, scale: float | None = None
) -> VerticalSlashIndex | BlockSparseIndex:
    """The index `pattern` gives on this prompt: fixed for an A-shape (capped at the prompt's
    length), estimated from `q` and `k` (heads matched one to one) otherwise."""
    batch, heads, length = q.shape[:3]
    match pattern:
        case AShape(sink=sink, window=window):
            return VerticalSlashIndex.a_shape(
                batch, heads, min(sink, length), min(window, length), q.device
            )
        case VerticalSlash(
            n_vertical=n_vertical, n_slash=n_slash, last_queries=last, coverage=floor
        ):
            return estimate_vertical_slash(q, k, n_vertical, n_slash, last, scale, floor)
        case BlockSparse(block=block, n_blocks=n_blocks):
            return estimate_block_sparse(q, k, block, n_blocks, scale)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: HeadPattern, scale: float | None
) -> torch.Tensor:
    index = estimate_index(q, k, pattern, scale)
    if isinstance(index, BlockSparseIndex):
        return block_sparse_attention(q, k, v, index, scale).out
    return vertical_slash_attention(q, k, v, index, scale).out
