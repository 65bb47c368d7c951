"""MInference inside a transformers model: the attention plan of one sparse prefill.

A prompt whose call asks for `minference` is prefilled alone (batch 1, so no padding and every
query's keys are its own prompt's). Each layer then runs `sparse_prefill` with its heads'
offline patterns (`SparsePrefillConfig`), which estimates the index from the prompt's own queries
and keys and attends sparsely: the Triton kernels on CUDA, their PyTorch references elsewhere.
Below `min_length` tokens (the break-even length measured on the device) the layer runs the
model's dense SDPA, so the method is never slower than dense; `applied` tells the backend which
of the two ran, for the call's observation.
"""

from __future__ import annotations

from typing import Any

import torch

from hermesflow.backends.attention_methods import dense_attention
from hermesflow.kernels.sparse_prefill import HeadPattern, sparse_prefill


class SparsePrefillPlan:
    """Sparse prefill of one prompt with each layer's head patterns `layers` (module docstring)."""

    def __init__(self, layers: list[list[HeadPattern]], min_length: int | None) -> None:
        self.layers = layers
        self.min_length = min_length
        self.applied = False

    def runs_sparse(self, length: int) -> bool:
        """Whether a prompt of `length` tokens is long enough for the sparse path (the gate);
        `min_length` None means no break-even length is known on this device: always dense."""
        return self.min_length is not None and length >= self.min_length

    def attend(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        **kwargs: Any,
    ) -> torch.Tensor:
        batch, _, length, _ = query.shape
        if batch != 1 or key.shape[-2] != length:
            raise ValueError(
                "a sparse prefill runs one whole prompt (batch 1, no cached tokens); the backend "
                "prefills each minference call alone"
            )
        if not self.runs_sparse(length):
            return dense_attention(module, query, key, value, attention_mask, scaling, **kwargs)
        self.applied = True
        heads = self.layers[int(module.layer_idx)]
        out = sparse_prefill(query, key, value, heads, length, scaling)
        return out.transpose(1, 2).to(query.dtype).contiguous()
