"""The sparse prefill configuration shipped for SmolLM2: it loads, fits the model, and every head
reached the recall target on the search prompts; and (slow) a search on the real model's
attention inputs gives heads whose online indexes keep the target, checked on their full masks."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hermesflow.backends.attention_capture import capture_layer_inputs
from hermesflow.backends.haystack import haystack_ids
from hermesflow.backends.model_files import SMOLLM2_FOLDER_NAME, ensure_smollm2
from hermesflow.backends.sparse_prefill_search import (
    SEARCH_PROMPTS,
    search_model,
    shipped_config,
)
from hermesflow.kernels.attention_reference import recall
from hermesflow.kernels.pattern_search import DEFAULT_MARGIN, DEFAULT_TARGET
from hermesflow.kernels.sparse_prefill import SparsePrefillConfig, estimate_index


def test_the_shipped_configuration_fits_smollm2_and_every_head_reached_the_target() -> None:
    config = SparsePrefillConfig.load(shipped_config(SMOLLM2_FOLDER_NAME))
    model = AutoConfig.from_pretrained(ensure_smollm2(), local_files_only=True)
    assert config.model == SMOLLM2_FOLDER_NAME
    assert len(config.layers) == len(config.recall) == model.num_hidden_layers == 30
    assert {len(heads) for heads in config.layers} == {model.num_attention_heads} == {9}
    assert config.recall_target == DEFAULT_TARGET
    assert (config.search_tokens, config.search_prompts) == (8192, SEARCH_PROMPTS)
    assert min(min(heads) for heads in config.recall) >= config.recall_target
    assert config.break_even == {}  # measured on a GPU, not here


@pytest.mark.slow
def test_a_search_on_the_real_model_keeps_the_target_on_the_full_masks() -> None:
    tokens, layers = 2048, (3, 20)
    folder = ensure_smollm2()
    config = search_model(folder, tokens=tokens, layers=layers)
    assert len(config.layers) == len(layers)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    first_prompt = haystack_ids(tokenizer, tokens)  # the figures are the lowest over 2 prompts
    captured = capture_layer_inputs(model, first_prompt, layers)
    for layer, heads, figures in zip(layers, config.layers, config.recall, strict=True):
        inputs = captured[layer]
        group = inputs.q.shape[1] // inputs.k.shape[1]
        for head, (pattern, figure) in enumerate(zip(heads, figures, strict=True)):
            q, k = inputs.q[:, [head]], inputs.k[:, [head // group]]
            mask = estimate_index(q, k, pattern, inputs.scale).mask(tokens)
            kept = float(recall(q, k, mask, inputs.scale))
            assert kept >= figure - 1e-4, (layer, head, pattern)
            assert figure >= DEFAULT_TARGET + DEFAULT_MARGIN - 1e-6, (layer, head, pattern)
