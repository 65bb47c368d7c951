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

import torch

from hermesflow.backends.attention_methods import LayerAttention
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

    def attend(self, call: LayerAttention) -> torch.Tensor:
        batch, _, length, _ = call.query.shape
        if batch != 1 or call.key.shape[-2] != length:
            raise ValueError(
                "a sparse prefill runs one whole prompt (batch 1, no cached tokens); the backend "
                "prefills each minference call alone"
            )
        if not self.runs_sparse(length):
            return call.dense()
        self.applied = True
        heads = self.layers[call.layer]
        out = sparse_prefill(call.query, call.key, call.value, heads, length, call.scaling)
        return out.transpose(1, 2).to(call.query.dtype).contiguous()
