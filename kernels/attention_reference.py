"""Exact attention over a mask: the PyTorch reference every sparse kernel is checked against.

Shapes follow the model: queries `[batch, query_heads, length, dim]`, keys and values
`[batch, kv_heads, length, dim]`, with grouped-query attention when `query_heads` is a multiple of
`kv_heads`. Scores are computed in float32 whatever the input dtype.

A partial attention keeps its log-sum-exp: for a query with scores `s_j` over the keys `J` it
attended to, `lse = log sum_{j in J} exp(s_j)` and `out = sum_j exp(s_j - lse) v_j`. Two partial
attentions over disjoint key sets merge exactly (RetrievalAttention's static and retrieved parts,
or a kernel's key blocks):

    lse = log(exp(lse_a) + exp(lse_b)),   out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hermesflow.kernels.sparse_patterns import causal_mask


@dataclass(frozen=True)
class PartialAttention:
    """An attention output `[batch, heads, length, dim]` (float32) with its log-sum-exp
    `[batch, heads, length]` (module docstring)."""

    out: torch.Tensor
    lse: torch.Tensor


def group_size(query_heads: int, kv_heads: int) -> int:
    """How many query heads share each key/value head (grouped-query attention)."""
    if query_heads % kv_heads:
        raise ValueError(
            f"{query_heads} query heads cannot share {kv_heads} key/value heads evenly; the model's "
            "num_attention_heads must be a multiple of num_key_value_heads"
        )
    return query_heads // kv_heads


def grouped_matmul(per_query_head: torch.Tensor, per_kv_head: torch.Tensor) -> torch.Tensor:
    """`x @ y` in float32 where query head `h` of `x` `[batch, query_heads, m, r]` meets key/value
    head `h // group` of `y` `[batch, kv_heads, r, n]`: the query heads of a group are stacked
    against their one key/value head, so keys and values are never copied per query head."""
    batch, query_heads, m, r = per_query_head.shape
    kv_heads = per_kv_head.shape[1]
    stacked = per_query_head.float().reshape(
        batch, kv_heads, group_size(query_heads, kv_heads), m, r
    )
    product = torch.matmul(stacked, per_kv_head.float()[:, :, None])
    return product.reshape(batch, query_heads, m, per_kv_head.shape[-1])


def scores(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """`q k^T * scale` in float32, `[batch, query_heads, q_length, k_length]` (scale 1/sqrt(dim))."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return grouped_matmul(q, k.transpose(-1, -2)) * scale


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> PartialAttention:
    """Attention of each query over the keys `mask` allows (`[batch, heads, length, length]` or
    broadcastable), causal when `mask` is None. A query that `mask` gives no key (a part of a
    split attention may) gets `out = 0` and `lse = -inf`, which `merge` weighs 0."""
    logits = scores(q, k, scale)
    if mask is None:
        mask = causal_mask(q.shape[-2], q.device)
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    weights = torch.exp(logits - lse[..., None]).nan_to_num(0.0)
    out = grouped_matmul(weights, v)
    return PartialAttention(out, lse)


def merge(parts: Sequence[PartialAttention]) -> PartialAttention:
    """Merge partial attentions over disjoint key sets exactly by their log-sum-exps (module
    docstring). A part that saw no key for a query carries `lse = -inf` there and weighs 0."""
    if not parts:
        raise ValueError("merge needs at least one partial attention")
    lse = torch.logsumexp(torch.stack([p.lse for p in parts]), dim=0)
    out = sum(torch.exp(p.lse - lse)[..., None].nan_to_num(0.0) * p.out for p in parts)
    return PartialAttention(out, lse)


def recall(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """The share of causal softmax mass that `mask` keeps, averaged over queries:
    `[batch, heads]` in [0, 1]. MInference and RetrievalAttention judge an index by it."""
    logits = scores(q, k, scale).masked_fill(~causal_mask(q.shape[-2], q.device), float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return (weights * mask).sum(dim=-1).mean(dim=-1)
