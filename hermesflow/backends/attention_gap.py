"""How far a long-context method moves the model's output from dense attention's.

The gap is the total variation distance between the next-token distributions,
`TV(p, q) = 1/2 * sum_t |p_t - q_t|` (0: the same distribution, 1: disjoint), where it matters
for each method:

* `minference_gap`: after a sparse prefill of the prompt, the distribution of the first generated
  token (a sparse prefill changes nothing else).
* `retrieval_gap`: RetrievalAttention changes decoding, so the prompt's first tokens are
  prefilled densely (building the retrieval layers) and its last `decoded` tokens are fed one at a
  time as decode steps, teacher-forced; the gap is the mean over those steps, against the dense
  model's distributions at the same positions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from transformers import DynamicCache

from hermesflow.backends.attention_methods import use_hermesflow_attention
from hermesflow.backends.retrieval_plan import RetrievalDecodePlan, RetrievalPrefillPlan
from hermesflow.backends.sparse_prefill_plan import SparsePrefillPlan
from hermesflow.kernels.retrieval_attention import RetrievalSettings
from hermesflow.kernels.sparse_prefill import HeadPattern


def total_variation(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """`TV` of the softmax distributions of two logit tensors, over the last axis."""
    return 0.5 * (logits_a.float().softmax(-1) - logits_b.float().softmax(-1)).abs().sum(-1)


@torch.inference_mode()
def minference_gap(model: Any, input_ids: list[int], layers: list[list[HeadPattern]]) -> float:
    """The first generated token's `TV` between dense and sparse prefill (module docstring)."""
    use_hermesflow_attention(model)
    ids = torch.tensor([input_ids], device=model.device)
    dense = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
    plan = SparsePrefillPlan(layers, min_length=1)
    sparse = model(input_ids=ids, logits_to_keep=1, attention_plan=plan).logits[0, -1]
    return float(total_variation(dense, sparse))


@torch.inference_mode()
def retrieval_gap(
    model: Any, input_ids: list[int], settings: RetrievalSettings, decoded: int
) -> float:
    """The mean `TV` over the last `decoded` tokens fed as retrieval decode steps."""
    if not 0 < decoded < len(input_ids):
        raise ValueError(f"decode between 1 and {len(input_ids) - 1} tokens; got {decoded}")
    use_hermesflow_attention(model)
    ids = torch.tensor([input_ids], device=model.device)
    prefill = len(input_ids) - decoded
    dense = model(input_ids=ids).logits[0, prefill:]
    with ThreadPoolExecutor(max_workers=model.config.num_key_value_heads) as pool:
        building = RetrievalPrefillPlan(settings, pool)
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :prefill], cache=cache, use_cache=True, attention_plan=building)
        decoding = RetrievalDecodePlan([building.layers])
        logits = []
        for position in range(prefill, len(input_ids)):
            step = model(
                input_ids=ids[:, position : position + 1],
                position_ids=torch.tensor([[position]], device=model.device),
                cache=cache,
                use_cache=True,
                attention_plan=decoding,
            )
            logits.append(step.logits[0, -1])
    return float(total_variation(dense, torch.stack(logits)).mean())
