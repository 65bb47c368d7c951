"""The queries, keys and values every attention layer of a real model sees on a real prompt.

The offline pattern search (MInference) and the retrieval index (RetrievalAttention) are judged on
the model's own attention inputs, after rotary embedding: `capture_layer_inputs` runs one dense
prefill with a plan that keeps each chosen layer's inputs and attends densely, so the model's
output is unchanged.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from hermesflow.backends.attention_methods import LayerAttention, use_hermesflow_attention


@dataclass(frozen=True)
class LayerInputs:
    """One layer's attention inputs on one prompt, float32 on the CPU: `q` `[1, query_heads,
    length, dim]`, `k` and `v` `[1, kv_heads, length, dim]`, and the model's softmax `scale`."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float


class _CapturePlan:
    def __init__(self, layers: Collection[int] | None) -> None:
        self.layers = layers
        self.captured: dict[int, LayerInputs] = {}

    def attend(self, call: LayerAttention) -> torch.Tensor:
        if self.layers is None or call.layer in self.layers:
            self.captured[call.layer] = LayerInputs(
                q=call.query.detach().float().cpu(),
                k=call.key.detach().float().cpu(),
                v=call.value.detach().float().cpu(),
                scale=call.scaling,
            )
        return call.dense()


@torch.inference_mode()
def capture_layer_inputs(
    model: Any, input_ids: list[int], layers: Collection[int] | None = None
) -> dict[int, LayerInputs]:
    """Each chosen layer's attention inputs (all layers when `layers` is None) on the prompt
    `input_ids`, by layer index. The model is switched to Hermesflow's attention function."""
    if not input_ids:
        raise ValueError("capture needs a prompt of at least one token")
    use_hermesflow_attention(model)
    plan = _CapturePlan(layers)
    ids = torch.tensor([input_ids], dtype=torch.long, device=model.device)
    model(input_ids=ids, use_cache=False, logits_to_keep=1, attention_plan=plan)
    return plan.captured
