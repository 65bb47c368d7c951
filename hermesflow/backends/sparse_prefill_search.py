"""The offline sparse-prefill search of a whole model, and the configuration it writes.

MInference chooses every head's pattern once per model, on the model's own attention over a long
real prompt, and ships the result with the model. `search_model` does that here: dense prefills
of consecutive stretches of `tokens` tokens of real text (`haystack_ids`, `prompts` of them)
capture each layer's queries and keys after rotary embedding (`capture_layer_inputs`), and
`search_layer` picks each head's cheapest pattern whose online index keeps the recall target
plus a margin on every one. `measure_model` checks a configuration on another prompt
(`held_out_ids`: the stretch after the searched ones), which the margin and the second prompt
are there for.

    python -m hermesflow.backends.sparse_prefill_search --model FOLDER --tokens 8192 --out FILE

writes the `SparsePrefillConfig` (default model: SmolLM2-135M-Instruct). Its `break_even` stays
empty: the length from which sparse prefill pays is measured on the device that runs it.
Capturing every layer at once holds `prompts x layers x L x (query_heads + 2 kv_heads) x dim`
float32 (about 1 GB per prompt for SmolLM2 at 8192 tokens).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Collection
from importlib import resources
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hermesflow.backends.attention_capture import capture_layer_inputs
from hermesflow.backends.haystack import haystack_ids
from hermesflow.backends.model_files import ensure_smollm2
from hermesflow.kernels.head_weights import Kept
from hermesflow.kernels.pattern_search import (
    DEFAULT_GRID,
    DEFAULT_MARGIN,
    DEFAULT_TARGET,
    HeadChoice,
    SearchGrid,
    measure_layer,
    search_layer,
)
from hermesflow.kernels.sparse_prefill import SparsePrefillConfig


def shipped_config(model_name: str) -> Path:
    """Where the configuration searched for the model folder named `model_name` ships:
    `hermesflow/data/sparse_prefill_<model_name>.json`."""
    return Path(str(resources.files("hermesflow.data"))) / f"sparse_prefill_{model_name}.json"


SEARCH_PROMPTS = 2
"""Two prompts: a head's cheapest budget on one prompt can suit that prompt alone. On SmolLM2 at
8192 tokens, searched on two stretches of text and checked on the third, 1 head of 270 fell below
0.95 (to 0.94); searched on one and checked on the second, 2 did (`DEFAULT_MARGIN`). The second
prompt costs 4% more products."""

LayerDone = Callable[[int, list[HeadChoice], float], None]
"""Called after each layer with its index, its heads' choices and the seconds it took."""


def search_model(
    model_folder: Path,
    tokens: int = 8192,
    target: float = DEFAULT_TARGET,
    margin: float = DEFAULT_MARGIN,
    grid: SearchGrid = DEFAULT_GRID,
    layers: Collection[int] | None = None,
    prompts: int = SEARCH_PROMPTS,
    on_layer: LayerDone | None = None,
) -> SparsePrefillConfig:
    """Every head's pattern for the model in `model_folder`, searched on the first `prompts`
    stretches of `tokens` tokens of real text (module docstring); `layers` limits the search to
    some layers (all by default), and the configuration then holds those, in order."""
    if prompts < 1 or tokens < 1:
        raise ValueError(f"search at least 1 prompt of 1 token; got {prompts} of {tokens}")
    tokenizer, model = _load(model_folder)
    text = haystack_ids(tokenizer, prompts * tokens)
    captured = [
        capture_layer_inputs(model, text[p * tokens : (p + 1) * tokens], layers)
        for p in range(prompts)
    ]
    longest = int(getattr(model.config, "max_position_embeddings", tokens))
    patterns, recall = [], []
    for layer in sorted(captured[0]):
        started = time.perf_counter()
        inputs = [prompt.pop(layer) for prompt in captured]
        q = torch.cat([i.q for i in inputs])  # one batch row per prompt
        k = torch.cat([i.k for i in inputs])
        choices = search_layer(q, k, inputs[0].scale, target, margin, grid, dense_length=longest)
        patterns.append([choice.pattern for choice in choices])
        recall.append([choice.recall for choice in choices])
        if on_layer is not None:
            on_layer(layer, choices, time.perf_counter() - started)
    return SparsePrefillConfig(
        model=model_folder.name,
        recall_target=target,
        search_tokens=tokens,
        search_prompts=prompts,
        layers=patterns,
        recall=recall,
    )


def measure_model(
    model_folder: Path, config: SparsePrefillConfig, input_ids: list[int]
) -> list[list[Kept]]:
    """The recall and cost of each head's online index on the prompt `input_ids`, by layer: a
    configuration checked on a prompt it was not searched on (`held_out_ids`)."""
    _, model = _load(model_folder)
    if len(config.layers) != model.config.num_hidden_layers:
        raise ValueError(
            f"the configuration has {len(config.layers)} layers, the model in {model_folder} "
            f"{model.config.num_hidden_layers}; search this model with search_model"
        )
    captured = capture_layer_inputs(model, input_ids)
    return [
        measure_layer(captured[layer].q, captured[layer].k, heads, captured[layer].scale)
        for layer, heads in enumerate(config.layers)
    ]


def held_out_ids(tokenizer: Any, config: SparsePrefillConfig) -> list[int]:
    """The `search_tokens` tokens of real text that follow the search prompts of `config`: a
    prompt the search never saw, of the same kind."""
    searched = config.search_prompts * config.search_tokens
    return haystack_ids(tokenizer, searched + config.search_tokens)[searched:]


def _load(model_folder: Path) -> tuple[Any, Any]:
    if not (model_folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_folder} is not a Hugging Face model folder (no config.json); pass --model a "
            "local folder, or leave it out for SmolLM2"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        model_folder, dtype=torch.float32, local_files_only=True
    )
    return tokenizer, model.eval()


def _print_layer(layer: int, choices: list[HeadChoice], seconds: float) -> None:
    kinds = Counter(_kind(choice) for choice in choices)
    print(
        f"layer {layer:2d} ({seconds:5.1f} s): "
        + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
        + f"; min recall {min(c.recall for c in choices):.4f}, "
        f"mean cost {fmean(c.cost for c in choices):.3f}",
        flush=True,
    )


def _kind(choice: HeadChoice) -> str:
    return "dense" if choice.dense else str(choice.pattern.pattern)


def _print_summary(config: SparsePrefillConfig, choices: list[HeadChoice], seconds: float) -> None:
    kinds = Counter(_kind(choice) for choice in choices)
    figures = [figure for layer in config.recall for figure in layer]
    print(
        f"searched {len(config.layers)} layers x {len(config.layers[0])} heads on "
        f"{config.search_prompts} prompts of {config.search_tokens} tokens in {seconds:.0f} s\n"
        f"patterns: {', '.join(f'{kind} {count}' for kind, count in sorted(kinds.items()))}\n"
        f"mean cost (share of causal q.k products): {fmean(c.cost for c in choices):.3f}\n"
        f"recall on the search prompts (a head's lowest): min {min(figures):.4f}, "
        f"mean {fmean(figures):.4f} (target {config.recall_target})"
    )


def _print_held_out(config: SparsePrefillConfig, measured: list[list[Kept]]) -> None:
    figures = [kept.recall for layer in measured for kept in layer]
    below = [
        (layer, head)
        for layer, heads in enumerate(measured)
        for head, kept in enumerate(heads)
        if kept.recall < config.recall_target
    ]
    print(
        f"recall on the held-out prompt: min {min(figures):.4f}, mean {fmean(figures):.4f}; "
        f"{len(below)} heads below {config.recall_target}: {below}\n"
        f"mean cost there: {fmean(kept.cost for layer in measured for kept in layer):.3f}"
    )
    for layer, heads in enumerate(measured):
        print(f"  layer {layer:2d}: " + " ".join(f"{kept.recall:.3f}" for kept in heads))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Search each attention head's sparse prefill pattern (MInference) on a long "
        "real prompt and write the configuration the backend loads."
    )
    parser.add_argument("--model", type=Path, help="model folder (default: SmolLM2-135M)")
    parser.add_argument("--tokens", type=int, default=8192, help="prompt length to search at")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET, help="recall target")
    parser.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN, help="searched above the target by this"
    )
    parser.add_argument(
        "--prompts", type=int, default=SEARCH_PROMPTS, help="search prompts a head must satisfy"
    )
    parser.add_argument("--out", type=Path, required=True, help="configuration file to write")
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="then measure the configuration on the text that follows the search prompt",
    )
    args = parser.parse_args(argv)
    folder = args.model or ensure_smollm2()
    started = time.perf_counter()
    choices: list[HeadChoice] = []

    def on_layer(layer: int, layer_choices: list[HeadChoice], seconds: float) -> None:
        choices.extend(layer_choices)
        _print_layer(layer, layer_choices, seconds)

    config = search_model(
        folder, args.tokens, args.target, args.margin, prompts=args.prompts, on_layer=on_layer
    )
    config.save(args.out)
    _print_summary(config, choices, time.perf_counter() - started)
    print(f"wrote {args.out}")
    if args.held_out:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        _print_held_out(config, measure_model(folder, config, held_out_ids(tokenizer, config)))


if __name__ == "__main__":
    main()
