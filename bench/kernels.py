"""Long-context kernels benchmark: MInference sparse prefill and RetrievalAttention.

Measures, in one run, on the device it finds:

* `prefill`: one layer's prefill attention, sparse (the patterns the search found on SmolLM2,
  cycled over the heads) against dense SDPA, and on CUDA against FlexAttention too, as ratios.
  On the CPU: small shapes, the sparse path being the PyTorch reference. On CUDA: Llama-3-8B's
  head shapes (32 query heads, 8 key/value heads, dim 128) from 4K tokens up to 1M as time
  allows, the Triton kernels, and the break-even length (the shortest measured length from which
  sparse is at least as fast as dense at every longer one).
* `minference recall`: the shipped configuration's online indexes on a real SmolLM2 prompt the
  search never saw: per head, the share of softmax mass kept (min and mean over heads), and the
  share of q·k products computed.
* `retrieval recall`: RetrievalAttention replayed on the real model's captured vectors: recall
  per head, the exact top-k ceiling, the share of middle keys scanned, build and step times;
  on CUDA also the decode time per token at 128K with the KV cache in host memory.
* `needle` (full run only): SmolLM2 at 8K tokens through the CPU backend, dense, minference and
  retrieval: the needle at several depths (wherever dense finds it, the others must) and each
  method's last-token distribution against dense (total variation distance).

    python bench/kernels.py --quick    # under a minute on 2 cores
    python bench/kernels.py            # + 8K prompts and the needle (about 15 min on 2 cores)
    python bench/kernels.py --json     # last line: {"bench": "kernels", "results": [...]}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder leads sys.path, and transformers probes for Hugging Face's package
# `kernels` by importing that name: it would import this file again. The folder is not needed.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import torch
import torch.nn.functional as F

from hermesflow.backends.attention_capture import capture_layer_inputs
from hermesflow.backends.attention_gap import minference_gap, retrieval_gap
from hermesflow.backends.calls import AttentionMethod, LLMCall
from hermesflow.backends.haystack import haystack_ids
from hermesflow.backends.long_context import shipped_sparse_prefill
from hermesflow.backends.model_files import ensure_smollm2
from hermesflow.backends.needle import finds_needle, needle_prompt
from hermesflow.backends.sparse_prefill_search import held_out_ids, measure_model
from hermesflow.backends.transformers_llm import TransformersLLM
from hermesflow.kernels.retrieval_attention import RetrievalLayer, RetrievalSettings
from hermesflow.kernels.retrieval_recall import replay_decode
from hermesflow.kernels.sparse_prefill import HeadPattern, sparse_prefill

RESULTS = Path(__file__).resolve().parent / "results"
LLAMA3_HEADS = (32, 8, 128)
"""Llama-3-8B's query heads, key/value heads and head dim: the issue's GPU shapes."""
GPU_LENGTHS = (4096, 16384, 65536, 131072, 262144, 1048576)
NEEDLE_DEPTHS = (0.1, 0.5, 0.9)


def timed(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of `run` after one warm-up (CUDA-synchronised on a GPU)."""
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def layer_patterns(heads: int) -> list[HeadPattern]:
    """The shipped SmolLM2 configuration's patterns of a middle layer, cycled over `heads`."""
    config = shipped_sparse_prefill()
    found = config.layers[len(config.layers) // 2]
    return [found[h % len(found)] for h in range(heads)]


def bench_prefill(device: torch.device, lengths: tuple[int, ...], shape: tuple[int, int, int],
                  budget_s: float) -> list[dict]:
    """Sparse against dense prefill attention of one layer at each length (module docstring)."""
    patterns = layer_patterns(shape[0])
    rows: list[dict] = []
    deadline = time.perf_counter() + budget_s
    for length in lengths:
        if time.perf_counter() > deadline:
            print(f"  {length:>8} tokens: not measured (the time budget ran out)")
            break
        row = prefill_at(device, length, shape, patterns)
        rows.append(row)
        print(f"  {length:>8} tokens: dense {row['dense_s'] * 1e3:9.2f} ms, sparse "
              f"{row['sparse_s'] * 1e3:9.2f} ms, x{row['speedup']:.2f}"
              + (f", flex {row['flex_s'] * 1e3:.2f} ms" if "flex_s" in row else ""))
    return rows


def prefill_at(device: torch.device, length: int, shape: tuple[int, int, int],
               patterns: list[HeadPattern]) -> dict:
    """One length of `bench_prefill`: random queries, keys and values of `shape`."""
    heads, kv_heads, dim = shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(length)
    q = torch.randn(1, heads, length, dim, device=device, dtype=dtype, generator=generator)
    k = torch.randn(1, kv_heads, length, dim, device=device, dtype=dtype, generator=generator)
    v = torch.randn(1, kv_heads, length, dim, device=device, dtype=dtype, generator=generator)
    repeats = 3 if length <= 131072 else 1
    dense_s = timed(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        repeats, device,
    )
    sparse_s = timed(lambda: sparse_prefill(q, k, v, patterns, 1), repeats, device)
    row = {"name": f"minference:prefill:{length}", "tokens": length, "dense_s": dense_s,
           "sparse_s": sparse_s, "speedup": dense_s / sparse_s, "device": device.type}
    if device.type == "cuda":
        row["flex_s"] = timed(lambda: _flex_causal(q, k, v), repeats, device)
        row["speedup_vs_flex"] = row["flex_s"] / sparse_s
    return row


def _flex_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    length = q.shape[-2]
    mask = create_block_mask(lambda b, h, i, j: i >= j, None, None, length, length, device=q.device)
    return flex_attention(q, k, v, block_mask=mask, enable_gqa=True)


def break_even(rows: list[dict]) -> int | None:
    """The shortest measured length from which sparse is at least as fast at every longer one."""
    found = None
    for row in reversed(rows):
        if row["speedup"] < 1.0:
            break
        found = row["tokens"]
    return found


def bench_minference_recall(folder: Path, tokenizer: object, tokens: int) -> dict:
    config = shipped_sparse_prefill()
    measured = measure_model(folder, config, held_out_ids(tokenizer, config)[:tokens])
    recalls = [kept.recall for layer in measured for kept in layer]
    costs = [kept.cost for layer in measured for kept in layer]
    row = {"name": "minference", "tokens": tokens, "recall": min(recalls),
           "recall_mean": statistics.fmean(recalls), "heads_below_0.95": sum(r < 0.95 for r in recalls),
           "heads": len(recalls), "products": statistics.fmean(costs)}
    print(f"  held-out prompt of {tokens} tokens: recall min {row['recall']:.3f}, mean "
          f"{row['recall_mean']:.3f}, heads below 0.95: {row['heads_below_0.95']}/{len(recalls)}; "
          f"q.k products computed {row['products']:.1%} of dense")
    return row


def bench_retrieval_recall(model: object, tokenizer: object, tokens: int, layers: tuple[int, ...],
                           decoded: int) -> dict:
    settings = RetrievalSettings()
    captured = capture_layer_inputs(model, haystack_ids(tokenizer, tokens), layers)
    replays = {layer: replay_decode(c.q[0], c.k[0], c.v[0], c.scale, settings, decoded)
               for layer, c in captured.items()}
    recall = torch.cat([r.recall for r in replays.values()])
    kept = torch.cat([r.recall / r.ceiling for r in replays.values()])
    row = {"name": "retrieval", "tokens": tokens, "layers": list(layers), "top_k": settings.top_k,
           "recall": float(recall.min()), "recall_mean": float(recall.mean()),
           "of_ceiling": float(kept.min()),
           "scanned": max(r.scanned_fraction for r in replays.values()),
           "build_s": statistics.fmean(r.build_s for r in replays.values()),
           "step_ms": 1e3 * statistics.fmean(r.decode_s for r in replays.values())}
    for layer, r in replays.items():
        print(f"  layer {layer:2}: recall min {float(r.recall.min()):.3f} (ceiling of top-{settings.top_k} "
              f"{float(r.ceiling.min()):.3f}), scanned {r.scanned_fraction:.1%}, build {r.build_s:.1f} s, "
              f"{r.decode_s * 1e3:.1f} ms per step")
    return row


def bench_retrieval_decode_gpu(device: torch.device, budget_s: float) -> list[dict]:
    """Decode time per token of one Llama-3-8B-shaped layer with the middle of the KV cache in
    host memory, against dense SDPA decode on the GPU: at 16K tokens, then at 128K if the index
    build, which grows with the square of the middle (each key's nearest keys), fits the budget."""
    rows = [retrieval_decode_at(device, 16384)]
    projected = rows[0]["build_s"] * (131072 / 16384) ** 2
    if projected < budget_s:
        rows.append(retrieval_decode_at(device, 131072))
    else:
        print(f"  131072 tokens: not measured; the index build took {rows[0]['build_s']:.0f} s at "
              f"16K and grows with the square of the length, past the {budget_s:.0f} s budget")
    return rows


def retrieval_decode_at(device: torch.device, tokens: int) -> dict:
    heads, kv_heads, dim = LLAMA3_HEADS
    generator = torch.Generator().manual_seed(tokens)
    k = torch.randn(kv_heads, tokens, dim, generator=generator)
    v = torch.randn(kv_heads, tokens, dim, generator=generator)
    q = torch.randn(heads, tokens, dim, generator=generator)
    started = time.perf_counter()
    layer = RetrievalLayer.build(k, v, q, RetrievalSettings(), dim**-0.5)
    build_s = time.perf_counter() - started
    step = torch.randn(heads, dim, generator=generator)
    new = torch.randn(kv_heads, dim, generator=generator)
    retrieval_s = timed(lambda: layer.decode(step, new, new), 5, torch.device("cpu"))
    kd, vd = k[None].to(device, torch.bfloat16), v[None].to(device, torch.bfloat16)
    qd = step[None, :, None].to(device, torch.bfloat16)
    dense_s = timed(lambda: F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True), 5, device)
    print(f"  {tokens} tokens, one layer: retrieval {retrieval_s * 1e3:.2f} ms per token (KV middle "
          f"in host memory), dense on the GPU {dense_s * 1e3:.3f} ms; index built in {build_s:.0f} s")
    return {"name": f"retrieval:decode:{tokens}", "tokens": tokens, "layer_step_s": retrieval_s,
            "dense_layer_step_s": dense_s, "build_s": build_s}


def bench_output_gap(model: object, tokenizer: object, tokens: int, decoded: int) -> dict:
    """Each method's next-token distribution against dense on a held-out real prompt."""
    ids = held_out_ids(tokenizer, shipped_sparse_prefill())[:tokens]
    gap = {
        "minference": minference_gap(model, ids, shipped_sparse_prefill().layers),
        "retrieval": retrieval_gap(model, ids, RetrievalSettings(), decoded),
    }
    print(f"  {tokens} tokens: total variation from dense, minference {gap['minference']:.4f} "
          f"(first generated token), retrieval {gap['retrieval']:.4f} (mean over {decoded} steps)")
    return gap


def bench_needle(tokens: int) -> list[dict]:
    """The needle and the output difference at `tokens` through the CPU backend (module docstring)."""
    # the needle and the question add about 30 tokens to the text; 6 are generated
    llm = TransformersLLM("needle", max_batch=1, dtype="bfloat16", max_input_tokens=tokens + 48,
                          sparse_min_length=1)

    async def run() -> list[dict]:
        await llm.load()
        try:
            rows = []
            for depth in NEEDLE_DEPTHS:
                prompt = needle_prompt(llm.tokenizer, tokens, depth)
                found = {}
                for method in AttentionMethod:
                    started = time.perf_counter()
                    result = await llm.run(LLMCall(prompt=prompt, max_tokens=6, attention=method))
                    if result.attention is not method:
                        raise RuntimeError(f"{method} ran as {result.attention}")
                    found[method] = finds_needle(result.text)
                    print(f"  depth {depth:.1f} {method.value:10} found={found[method]!s:5} "
                          f"{result.text!r} ({time.perf_counter() - started:.0f} s)")
                rows.append({"name": f"needle:{depth}", "depth": depth,
                             **{method.value: found[method] for method in AttentionMethod}})
            return rows
        finally:
            await llm.unload()

    return asyncio.run(run())


def _lap(what: str, since: float) -> float:
    now = time.perf_counter()
    print(f"  ({what}: {now - since:.0f} s)")
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, 2K real prompts, no needle")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the GPU prefill sweep")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    results: list[dict] = []

    print(f"Prefill attention of one layer on {device.type}, sparse against dense SDPA")
    if device.type == "cuda":
        rows = bench_prefill(device, GPU_LENGTHS, LLAMA3_HEADS, args.budget)
        print(f"  break-even length: {break_even(rows)}")
    else:
        lengths = (512, 1024) if args.quick else (1024, 2048, 4096)
        rows = bench_prefill(device, lengths, (8, 2, 64), args.budget)
        print("  (the CPU runs the PyTorch reference, which computes every score: no break-even)")
    results += rows
    results.append({"name": "minference:break_even", "device": device.type, "tokens": break_even(rows)})

    folder = ensure_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    tokens = 2048 if args.quick else 8192
    section = time.perf_counter()
    print("\nMInference on SmolLM2-135M, shipped configuration")
    minference = bench_minference_recall(folder, tokenizer, tokens)
    section = _lap("minference recall", section)
    print("\nRetrievalAttention on SmolLM2-135M's captured vectors")
    layers = (15,) if args.quick else (0, 7, 15, 23, 29)
    retrieval = bench_retrieval_recall(model, tokenizer, tokens, layers, 64 if args.quick else 512)
    if rows and rows[-1]["device"] == "cuda":
        minference["speedup"] = rows[-1]["speedup"]
        minference["speedup_tokens"] = rows[-1]["tokens"]
        results += bench_retrieval_decode_gpu(device, args.budget)
    section = _lap("retrieval recall", section)
    print("\nOutput difference against dense")
    gap = bench_output_gap(model, tokenizer, 1024 if args.quick else tokens, 16 if args.quick else 64)
    minference["output_tv"], retrieval["output_tv"] = gap["minference"], gap["retrieval"]
    _lap("output difference", section)
    results += [minference, retrieval]
    del model

    if not args.quick:
        print(f"\nNeedle in a haystack at {tokens} tokens through the CPU backend")
        needle = bench_needle(tokens - 64)
        results += needle
        missed = [(row["depth"], method.value) for row in needle for method in AttentionMethod
                  if row[AttentionMethod.DENSE.value] and not row[method.value]]
        print(f"  wherever dense finds the needle, the others do: {'yes' if not missed else f'no: {missed}'}")

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernels.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps({"bench": "kernels", "results": results}))


if __name__ == "__main__":
    main()
