"""Block-sparse index estimation: XAttention's antidiagonal scoring against pooled scoring.

A block-sparse prefill keeps, for each query block, the key blocks its online estimate ranks
highest (`hermesflow.kernels.sparse_estimate`). Measured here, in one run, on SmolLM2-135M's own
queries and keys (after rotary embedding) on a long real text, for every query head of a few
layers, at equal budgets (the same number of key blocks per query block for every method):

* `recall`: the share of the causal softmax mass, averaged over all queries, that the chosen
  blocks keep (min and mean over heads), for pooled scoring (the baseline), antidiagonal scoring
  at strides 8 and 16, and the oracle (each query block's truly heaviest blocks);
* `cost`: each scorer's estimation, as q·k multiply-adds (pooled `(L / B)^2 d / 2`,
  antidiagonal `L^2 d / (2 S)`, the causal halves; pooling's `L d` additions left out) and as
  measured CPU time, both as ratios to pooled's; and the whole index's q·k products (kept
  blocks plus estimation) as a share of dense.

    python bench/block_scoring.py --quick   # 2K tokens, layers 0, 15, 29: under a minute on 2 cores
    python bench/block_scoring.py           # 8K tokens, layers 0, 7, 15, 23, 29 (about 75 s)
    python bench/block_scoring.py --json    # last line: {"bench": "block_scoring", "results": [..]}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this folder leads sys.path, and transformers probes for Hugging Face's package
# `kernels` by importing that name: it would import bench/kernels.py. The folder is not needed.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import torch

from hermesflow.backends.attention_capture import LayerInputs, capture_layer_inputs
from hermesflow.backends.haystack import haystack_ids
from hermesflow.backends.model_files import ensure_smollm2
from hermesflow.kernels.attention_reference import group_size
from hermesflow.kernels.head_weights import (
    HeadWeights,
    causal_products,
    estimation_products,
    kept_by,
)
from hermesflow.kernels.sparse_estimate import (
    antidiagonal_block_scores,
    block_scores,
    top_blocks,
)
from hermesflow.kernels.sparse_patterns import SparsePattern

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 64
STRIDES = (8, 16)
BUDGETS = (0.1, 0.2, 0.3)
"""Shares of the causal key blocks kept, every method at the same per-query-block budget."""
POOLED, ORACLE = "pooled", "oracle"
REPEATS = 7
"""Timed rounds of the scorers per layer (each one's median counts): pooled takes milliseconds,
which a busy neighbour on a shared machine can multiply."""


@dataclass(frozen=True)
class Scorer:
    """One online estimate of the tiles' ranking: pooled (`stride` None) or antidiagonal."""

    name: str
    stride: int | None

    def rank(self, inputs: LayerInputs) -> torch.Tensor:
        if self.stride is None:
            return block_scores(inputs.q, inputs.k, BLOCK, inputs.scale)
        return antidiagonal_block_scores(inputs.q, inputs.k, BLOCK, self.stride, inputs.scale)

    def products(self, length: int) -> int:
        """The causal q·k dot products of the estimation (each `d` multiply-adds): pooled blocks
        against theirs, or every group pair's `S` antidiagonal products."""
        if self.stride is None:
            return estimation_products(length, SparsePattern.BLOCK_SPARSE, BLOCK)
        groups = -(-length // BLOCK) * BLOCK // self.stride
        return causal_products(groups) * self.stride


SCORERS = (Scorer(POOLED, None), *(Scorer(f"antidiagonal/{s}", s) for s in STRIDES))


def n_blocks_for(budget: float, count: int) -> int:
    """The fewest key blocks per query block (its own and the first included) that keep at least
    `budget` of the `count (count + 1) / 2` causal blocks: query block `i` keeps `min(n, i + 1)`."""
    causal = causal_products(count)
    for n in range(1, count + 1):
        if sum(min(n, i + 1) for i in range(count)) >= budget * causal:
            return n
    return count


def timed_rounds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs taken in turn `repeats` times after one warm-up each:
    a neighbour's burst on the shared machine then slows every run of a round, not one alone."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


@dataclass
class LayerResult:
    """One layer's measurements: `recall[method][budget]` and `cost[method][budget]` per head,
    `seconds[scorer]` to score all its heads."""

    recall: dict[str, dict[float, list[float]]]
    cost: dict[str, dict[float, list[float]]]
    seconds: dict[str, float]


def measure_layer(inputs: LayerInputs, budgets: dict[float, int], repeats: int) -> LayerResult:
    """Every scorer's index of every head at every budget, judged on the head's true softmax."""
    heads, length = inputs.q.shape[1], inputs.q.shape[2]
    group = group_size(heads, inputs.k.shape[1])
    rankings = {scorer.name: scorer.rank(inputs) for scorer in SCORERS}
    seconds = timed_rounds(
        {scorer.name: lambda scorer=scorer: scorer.rank(inputs) for scorer in SCORERS}, repeats
    )
    methods = [*rankings, ORACLE]
    recall = {m: {b: [] for b in budgets} for m in methods}
    cost = {m: {b: [] for b in budgets} for m in methods}
    estimation = {s.name: s.products(length) for s in SCORERS} | {ORACLE: 0}
    for h in range(heads):
        head = HeadWeights.of(inputs.q[0, h], inputs.k[0, h // group], inputs.scale)
        ranking = {name: r[:, h : h + 1] for name, r in rankings.items()}
        ranking[ORACLE] = head.block_sums(BLOCK)[None, None]
        for method in methods:
            for budget, n_blocks in budgets.items():
                index = top_blocks(ranking[method], BLOCK, n_blocks)
                kept = kept_by(head, index, estimation[method])
                recall[method][budget].append(kept.recall)
                cost[method][budget].append(kept.cost)
        del head
    return LayerResult(recall, cost, seconds)


def summarise(
    layers: dict[int, LayerResult], budgets: dict[float, int], length: int, dim: int
) -> list[dict]:
    """The result rows: per method and budget the recall over all heads, against pooled's; per
    scorer its estimation cost against pooled's."""
    count = -(-length // BLOCK)
    rows: list[dict] = []
    methods = [*next(iter(layers.values())).recall]
    for budget, n_blocks in budgets.items():
        pooled = [r for lr in layers.values() for r in lr.recall[POOLED][budget]]
        kept_share = sum(min(n_blocks, i + 1) for i in range(count)) / causal_products(count)
        for method in methods:
            recalls = [r for lr in layers.values() for r in lr.recall[method][budget]]
            costs = [c for lr in layers.values() for c in lr.cost[method][budget]]
            rows.append({
                "name": f"{method}:{budget:.0%}", "method": method, "budget": budget,
                "n_blocks": n_blocks, "blocks_kept": kept_share, "tokens": length,
                "heads": len(recalls), "recall_min": min(recalls),
                "recall_mean": statistics.fmean(recalls),
                "recall_min_vs_pooled": min(recalls) / min(pooled),
                "recall_mean_vs_pooled": statistics.fmean(recalls) / statistics.fmean(pooled),
                "heads_above_pooled": sum(r > p for r, p in zip(recalls, pooled, strict=True)),
                "heads_below_pooled": sum(r < p for r, p in zip(recalls, pooled, strict=True)),
                "cost": statistics.fmean(costs),
            })  # fmt: skip
    pooled_s = statistics.fmean(lr.seconds[POOLED] for lr in layers.values())
    pooled_products = SCORERS[0].products(length)
    for scorer in SCORERS:
        seconds = statistics.fmean(lr.seconds[scorer.name] for lr in layers.values())
        products = scorer.products(length)
        rows.append({
            "name": f"{scorer.name}:estimation", "method": scorer.name, "tokens": length,
            "multiply_adds": products * dim,
            "multiply_adds_vs_pooled": products / pooled_products,
            "products_vs_dense": products / causal_products(length),
            "layer_s": seconds, "time_vs_pooled": seconds / pooled_s,
        })  # fmt: skip
    return rows


def print_tables(
    rows: list[dict], layers: dict[int, LayerResult], budgets: dict[float, int]
) -> None:
    recall_rows = [r for r in rows if "budget" in r]
    print(
        f"\n{'budget':>6} {'n/row':>5} {'method':<16} {'min':>6} {'mean':>6} {'min/pooled':>10} "
        f"{'mean/pooled':>11} {'heads +/-':>9} {'cost':>6}"
    )
    for r in recall_rows:
        print(
            f"{r['blocks_kept']:>6.1%} {r['n_blocks']:>5} {r['method']:<16} "
            f"{r['recall_min']:>6.3f} {r['recall_mean']:>6.3f} {r['recall_min_vs_pooled']:>10.3f} "
            f"{r['recall_mean_vs_pooled']:>11.3f} "
            f"{r['heads_above_pooled']:>4}/{r['heads_below_pooled']:<4} {r['cost']:>6.1%}"
        )
    print(
        "  (budget: share of the causal blocks kept; heads +/-: heads above / below pooled; "
        "cost: q.k products of the kept blocks plus the estimation, share of dense)"
    )
    if min(budgets.values()) <= 2:
        print(
            "  (at 2 blocks per query block only its own and the first are kept, whatever the "
            "scoring: the methods tie there)"
        )
    middle = sorted(budgets)[len(budgets) // 2]
    methods = [*next(iter(layers.values())).recall]
    print(f"\nMean recall per layer at the {middle:.0%} budget")
    print(f"{'layer':>5} " + " ".join(f"{m:>16}" for m in methods))
    for layer, lr in layers.items():
        print(
            f"{layer:>5} "
            + " ".join(f"{statistics.fmean(lr.recall[m][middle]):>16.3f}" for m in methods)
        )
    print(
        f"\n{'estimation':<16} {'multiply-adds':>13} {'/pooled':>8} {'of dense':>8} "
        f"{'CPU ms/layer':>12} {'/pooled':>8}"
    )
    for r in rows:
        if "layer_s" in r:
            print(
                f"{r['method']:<16} {r['multiply_adds']:>13.3g} "
                f"{r['multiply_adds_vs_pooled']:>8.1f} {r['products_vs_dense']:>8.2%} "
                f"{r['layer_s'] * 1e3:>12.2f} {r['time_vs_pooled']:>8.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2K tokens, 3 layers")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument(
        "--layers", type=int, nargs="+", help="layers to measure (default: by mode)"
    )
    args = parser.parse_args()
    tokens = 2048 if args.quick else 8192
    layer_ids = args.layers or ([0, 15, 29] if args.quick else [0, 7, 15, 23, 29])
    started = time.perf_counter()

    folder = ensure_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, local_files_only=True
    ).eval()
    captured = capture_layer_inputs(model, haystack_ids(tokenizer, tokens), layer_ids)
    del model
    dim = next(iter(captured.values())).q.shape[-1]
    print(
        f"SmolLM2-135M on {tokens} tokens of real text, layers {layer_ids} captured "
        f"({time.perf_counter() - started:.0f} s); block {BLOCK}"
    )

    count = -(-tokens // BLOCK)
    budgets = {b: n_blocks_for(b, count) for b in BUDGETS}
    layers: dict[int, LayerResult] = {}
    for layer in layer_ids:
        section = time.perf_counter()
        layers[layer] = measure_layer(captured.pop(layer), budgets, REPEATS)
        scored = ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in layers[layer].seconds.items())
        elapsed = time.perf_counter() - section
        print(f"  layer {layer:2}: scored all heads in {scored} ({elapsed:.0f} s)")
    any_layer = next(iter(layers.values()))
    heads = len(any_layer.recall[POOLED][BUDGETS[0]])
    print(f"{heads} query heads per layer, {heads * len(layers)} in all")
    rows = summarise(layers, budgets, tokens, dim)
    print_tables(rows, layers, budgets)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "block_scoring.json").write_text(json.dumps(rows, indent=1))
    if args.json:
        print(json.dumps({"bench": "block_scoring", "results": rows}))


if __name__ == "__main__":
    main()
