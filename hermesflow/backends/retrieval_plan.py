"""RetrievalAttention inside a transformers model: the attention plans of a call that asks for
`retrieval`.

Its prompt is prefilled alone and densely (`RetrievalPrefillPlan`); while each layer attends, the
plan builds that layer's `RetrievalLayer` from the prompt's keys, values and queries (the sample
queries that make the index attention-aware). Each later decode step of the running batch passes
a `RetrievalDecodePlan` holding every row's layers (None for a dense row): dense rows attend
through SDPA over the shared cache as usual, and a retrieval row's new query attends through its
own layers, which take the step's new key and value, attend to the sink and recent tokens
exactly and to the retrieved middle keys, and merge the two by their log-sum-exp.

On this CPU backend the shared KV cache still holds the retrieval row's whole prompt (the batch
cache is one tensor per layer); the row's attention reads only its `RetrievalLayer`s. Keeping the
middle of the cache off the accelerator is what the method buys on a GPU.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from hermesflow.backends.attention_methods import LayerAttention
from hermesflow.kernels.retrieval_attention import RetrievalLayer, RetrievalSettings

RowLayers = dict[int, RetrievalLayer]
"""One sequence's retrieval state: its `RetrievalLayer` per layer index."""


class RetrievalPrefillPlan:
    """Dense prefill of one prompt that leaves each layer's `RetrievalLayer` in `layers`."""

    def __init__(self, settings: RetrievalSettings, pool: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.pool = pool
        self.layers: RowLayers = {}

    def attend(self, call: LayerAttention) -> torch.Tensor:
        if call.query.shape[0] != 1 or call.key.shape[-2] != call.query.shape[-2]:
            raise ValueError(
                "a retrieval prefill runs one whole prompt (batch 1, no cached tokens); the "
                "backend prefills each retrieval call alone"
            )
        key, value, query = call.key[0].float(), call.value[0].float(), call.query[0].float()
        self.layers[call.layer] = RetrievalLayer.build(
            key, value, query, self.settings, call.scaling, self.pool
        )
        return call.dense()


class RetrievalDecodePlan:
    """One decode step of a batch in which some rows (`rows[i]` not None) decode by retrieval."""

    def __init__(self, rows: list[RowLayers | None]) -> None:
        self.rows = rows
        self.dense_rows = [i for i, layers in enumerate(rows) if layers is None]

    def attend(self, call: LayerAttention) -> torch.Tensor:
        query = call.query
        if query.shape[-2] != 1:
            raise ValueError("a retrieval decode plan serves one new token per row")
        out = query.new_empty(query.shape[0], 1, query.shape[1], query.shape[-1])
        if self.dense_rows:
            rows = torch.tensor(self.dense_rows, device=query.device)
            out[rows] = call.rows(rows).dense()
        for i, layers in enumerate(self.rows):
            if layers is not None:
                step = layers[call.layer].decode(
                    query[i, :, 0].float(), call.key[i, :, -1].float(), call.value[i, :, -1].float()
                )
                out[i, 0] = step.to(out.dtype)
        return out
