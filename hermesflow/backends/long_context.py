"""Which attention plan an LLM call of the transformers backend runs with (`AttentionMethod`).

The backend is given a default method (its `attention` option) and each call may ask for another.
This module holds what the long-context methods need and decides, per call:

* `dense` — no plan: the model's own SDPA.
* `minference` — the heads' offline patterns come from a `SparsePrefillConfig`: the one shipped
  for SmolLM2-135M-Instruct, or the file the backend's `sparse_prefill` option names (written by
  `python -m hermesflow.backends.sparse_prefill_search`). The length gate is the backend's
  `sparse_min_length`, else the break-even length the configuration records for the device; with
  neither, every prompt runs dense (the sparse path is never run where it was not measured to pay).
* `retrieval` — `RetrievalSettings` (the backend's `retrieval` option) for every call.

A method the backend cannot run is refused when the call arrives (`CallRefused`, the API's 400),
with what to change, rather than run dense unasked.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hermesflow.backends.attention_methods import use_hermesflow_attention
from hermesflow.backends.calls import AttentionMethod, CallRefused
from hermesflow.backends.model_files import SMOLLM2_FOLDER_NAME
from hermesflow.backends.retrieval_plan import RetrievalPrefillPlan
from hermesflow.backends.sparse_prefill_plan import SparsePrefillPlan
from hermesflow.backends.sparse_prefill_search import shipped_config
from hermesflow.kernels.retrieval_attention import RetrievalSettings
from hermesflow.kernels.sparse_prefill import SparsePrefillConfig

_log = logging.getLogger(__name__)


def shipped_sparse_prefill() -> SparsePrefillConfig:
    """The configuration the pattern search wrote for SmolLM2-135M-Instruct, which ships."""
    return SparsePrefillConfig.load(shipped_config(SMOLLM2_FOLDER_NAME))


def retrieval_settings(backend: str, options: dict[str, Any] | None) -> RetrievalSettings:
    """The backend's `retrieval` option as settings; a bad option names the field to fix."""
    try:
        return RetrievalSettings.model_validate(options or {})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'retrieval'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"backend {backend!r}: option retrieval: {problems}") from None


@dataclass
class LongContext:
    """What one loaded backend needs to run the long-context methods (module docstring).
    `supported` is False for a model whose code does not dispatch through transformers'
    attention interface: such a backend runs dense calls only."""

    backend: str
    supported: bool
    sparse: SparsePrefillConfig | None
    sparse_min_length: int | None
    retrieval: RetrievalSettings
    pool: ThreadPoolExecutor

    @classmethod
    def load(
        cls,
        backend: str,
        model: Any,
        *,
        default_method: AttentionMethod,
        sparse_file: Path | None,
        default_model: bool,
        sparse_min_length: int | None,
        retrieval: RetrievalSettings,
    ) -> LongContext:
        """Switch `model` to Hermesflow's attention function where its code allows, read the
        sparse prefill configuration (the option's file, else the shipped one for the default
        model) and check it fits the model's layers and heads. A default method the model cannot
        run fails the load; a call's is refused when it arrives (`check`)."""
        supported = bool(model._can_set_attn_implementation())
        if supported:
            use_hermesflow_attention(model)
        model_config = model.config
        sparse = (
            SparsePrefillConfig.load(sparse_file)
            if sparse_file is not None
            else shipped_sparse_prefill()
            if default_model
            else None
        )
        if sparse is not None:
            shape = (len(sparse.layers), len(sparse.layers[0]))
            wanted = (model_config.num_hidden_layers, model_config.num_attention_heads)
            if shape != wanted:
                raise ValueError(
                    f"backend {backend!r}: the sparse prefill configuration for {sparse.model!r} "
                    f"has {shape[0]} layers of {shape[1]} heads, the model {wanted[0]} of "
                    f"{wanted[1]}; run the pattern search for this model "
                    "(python -m hermesflow.backends.sparse_prefill_search)"
                )
        device_type = model.device.type
        min_length = sparse_min_length
        if min_length is None and sparse is not None:
            min_length = sparse.break_even.get(device_type)
            if min_length is None:
                _log.info(
                    "backend %r: no break-even length is measured for %s, so minference calls run "
                    "dense here; set sparse_min_length to force the sparse path",
                    backend,
                    device_type,
                )
        pool = ThreadPoolExecutor(max_workers=model_config.num_key_value_heads)
        long_context = cls(backend, supported, sparse, min_length, retrieval, pool)
        try:
            long_context.check(default_method)
        except ValueError:
            long_context.close()
            raise
        return long_context

    def check(self, method: AttentionMethod) -> None:
        """Refuse a call asking for a method this backend cannot run (module docstring)."""
        if method is AttentionMethod.DENSE:
            return
        if not self.supported:
            raise CallRefused(
                f"backend {self.backend!r}: its model does not dispatch attention through "
                f"transformers' attention interface, so it cannot run attention {method.value!r}; "
                "send attention 'dense' or use a Llama- or Qwen-family model"
            )
        if method is AttentionMethod.MINFERENCE and self.sparse is None:
            raise CallRefused(
                f"backend {self.backend!r} has no sparse prefill configuration for its model; run "
                "python -m hermesflow.backends.sparse_prefill_search --model FOLDER --out FILE "
                "and give the backend the option sparse_prefill: FILE, or send attention 'dense'"
            )

    def prefill_plan(
        self, method: AttentionMethod, length: int
    ) -> SparsePrefillPlan | RetrievalPrefillPlan | None:
        """The plan of a prompt of `length` tokens prefilled alone with `method`; None when it
        joins the dense group (dense, or minference below the gate)."""
        if method is AttentionMethod.RETRIEVAL:
            return RetrievalPrefillPlan(self.retrieval, self.pool)
        if method is AttentionMethod.MINFERENCE and self.sparse is not None:
            plan = SparsePrefillPlan(self.sparse.layers, self.sparse_min_length)
            return plan if plan.runs_sparse(length) else None
        return None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
