"""How a transformers model attends: Hermesflow's one attention function, registered with
transformers' attention interface, so no model code is forked.

`use_hermesflow_attention(model)` switches a loaded Llama- or Qwen-family model to the attention
implementation named `hermesflow`. Every forward then calls `hermesflow_attention`, which runs
PyTorch's SDPA exactly as the model's own `sdpa` implementation would, unless the forward was
given an `attention_plan` keyword: transformers passes unknown keywords of the model's `forward`
down to its attention function, so one plan object travels from the caller to every layer. A plan
(`AttentionPlan`) decides, per layer and per forward, how its queries meet the keys: sparse
prefill (MInference), retrieval over the KV cache (RetrievalAttention), or a capture of the
queries, keys and values for the offline pattern search.

The attention mask is built as for `sdpa` (the same mask function is registered under the same
name), so padding and causality are what the model's `sdpa` path sees.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ATTENTION_IMPLEMENTATION = "hermesflow"
"""The name `hermesflow_attention` is registered under (attention and mask interfaces)."""


@dataclass(frozen=True)
class LayerAttention:
    """What one layer hands its attention function: `query` `[batch, query_heads, length, dim]`
    and the layer's whole `key`/`value` `[batch, kv_heads, cached + length, dim]` (after rotary
    embedding and the cache update), the mask as built for SDPA, the softmax `scaling`, and the
    other keywords transformers passed (`extra`)."""

    module: torch.nn.Module
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attention_mask: torch.Tensor | None
    scaling: float
    extra: dict[str, Any]

    @property
    def layer(self) -> int:
        """The layer's index in the model."""
        return int(self.module.layer_idx)

    def dense(self) -> torch.Tensor:
        """The model's own SDPA attention `[batch, length, query_heads, dim]`, for plans that
        fall back to it (a decode step, a prompt below the gate)."""
        return sdpa_attention_forward(
            self.module,
            self.query,
            self.key,
            self.value,
            self.attention_mask,
            scaling=self.scaling,
            **self.extra,
        )[0]

    def rows(self, rows: torch.Tensor) -> LayerAttention:
        """The same call for the batch rows `rows` only."""
        mask = self.attention_mask[rows] if self.attention_mask is not None else None
        return replace(
            self,
            query=self.query[rows],
            key=self.key[rows],
            value=self.value[rows],
            attention_mask=mask,
        )


class AttentionPlan(Protocol):
    """What one forward's layers do instead of dense attention (module docstring)."""

    def attend(self, call: LayerAttention) -> torch.Tensor:
        """The layer's attention output `[batch, length, query_heads, dim]` in the query's
        dtype."""
        ...


def hermesflow_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    attention_plan: AttentionPlan | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function transformers calls in every layer (module docstring)."""
    if dropout:
        raise ValueError(
            "Hermesflow's attention serves inference only (dropout 0); put the model in eval mode"
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    call = LayerAttention(module, query, key, value, attention_mask, scale, kwargs)
    if attention_plan is None:
        return call.dense(), None
    return attention_plan.attend(call), None


AttentionInterface.register(ATTENTION_IMPLEMENTATION, hermesflow_attention)
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


def use_hermesflow_attention(model: Any) -> None:
    """Switch `model` to `hermesflow_attention`; a model whose code does not dispatch through
    transformers' attention interface is refused, since its plans would be silently ignored."""
    if not model._can_set_attn_implementation():
        raise ValueError(
            f"{type(model).__name__} does not dispatch attention through transformers' "
            "AttentionInterface, so Hermesflow's attention methods cannot run in it; use a Llama- "
            "or Qwen-family model, or attention='dense'"
        )
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
