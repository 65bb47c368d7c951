"""How well RetrievalAttention keeps one layer's attention on a real sequence.

`replay_decode` builds a `RetrievalLayer` from the first `length - decoded` tokens of a layer's
captured queries, keys and values, then decodes the last `decoded` tokens one at a time (each
token leaving the window joins the index, as in serving). For each query head it reports

    recall  = mean over steps of exp(lse_kept - lse_exact),

the share of the exact causal softmax mass that the static part plus the retrieved keys keep
(RetrievalAttention's accuracy measure), and the `ceiling` the same static part reaches with the
*exact* top `top_k` middle keys: what any index retrieving `top_k` keys could keep at best. The
scanned fraction is the mean share of the middle's keys the searches scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hermesflow.kernels.attention_reference import group_size
from hermesflow.kernels.retrieval_attention import RetrievalLayer, RetrievalSettings


@dataclass(frozen=True)
class RetrievalRecall:
    """One layer's replay (module docstring): per query head `recall` and `ceiling`, the mean
    `scanned_fraction`, and the mean seconds of one decode step of the layer (`decode_s`)."""

    recall: torch.Tensor
    ceiling: torch.Tensor
    scanned_fraction: float
    build_s: float
    decode_s: float


def replay_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    settings: RetrievalSettings,
    decoded: int,
) -> RetrievalRecall:
    """Replay the decoding of the last `decoded` tokens of `q` `[query_heads, L, dim]`, `k` and
    `v` `[kv_heads, L, dim]` (module docstring)."""
    length = q.shape[1]
    if not 0 < decoded < length:
        raise ValueError(f"decode between 1 and {length - 1} of the {length} tokens; got {decoded}")
    prefill = length - decoded
    started = time.perf_counter()
    layer = RetrievalLayer.build(k[:, :prefill], v[:, :prefill], q[:, :prefill], settings, scale)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    kept = torch.stack(
        [
            layer.decode_partial(q[:, t], k[:, t], v[:, t]).lse[0, :, 0]
            for t in range(prefill, length)
        ],
        dim=1,
    )
    decode_s = (time.perf_counter() - started) / decoded
    weights, exact_lse = _exact(q[:, prefill:], k, scale, prefill)
    recall = torch.exp(kept - exact_lse).mean(dim=1)
    return RetrievalRecall(
        recall=recall,
        ceiling=_ceiling(weights, prefill, settings),
        scanned_fraction=layer.scanned_fraction,
        build_s=build_s,
        decode_s=decode_s,
    )


def _exact(
    q: torch.Tensor, k: torch.Tensor, scale: float, first: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal softmax weights `[query_heads, steps, L]` of the queries at positions
    `first, first + 1, ...` over all keys, and their log-sum-exps `[query_heads, steps]`."""
    group = group_size(q.shape[0], k.shape[0])
    logits = torch.einsum("htd,hsd->hts", q, k.repeat_interleave(group, 0)) * scale
    causal = torch.arange(k.shape[1]) <= torch.arange(first, first + q.shape[1])[:, None]
    logits = logits.masked_fill(~causal, -torch.inf)
    return torch.softmax(logits, dim=-1), torch.logsumexp(logits, dim=-1)


def _ceiling(weights: torch.Tensor, first: int, settings: RetrievalSettings) -> torch.Tensor:
    """Per query head, the mean mass of the static part plus the exact top `top_k` middle keys."""
    positions = torch.arange(weights.shape[-1])
    steps = torch.arange(first, first + weights.shape[1])[:, None]
    static = (positions <= steps) & (
        (positions < settings.sink) | (positions > steps - settings.window)
    )
    middle = weights.masked_fill(static, 0).topk(settings.top_k, dim=-1).values
    return ((weights * static).sum(-1) + middle.sum(-1)).mean(-1)
