"""vLLM priority benchmark: the Gittins rank pushed down as vLLM's request priority, against
vLLM's own first-come-first-served order, on one engine in one run (GPU only).

Why. Hermesflow's scheduler dispatches up to a backend's capacity; inside the vLLM engine the
running batch is then chosen by vLLM's scheduler. `VLLMBackend` starts vLLM with
`scheduling_policy="priority"` and passes each call's policy key as its priority, so vLLM fills
its batch in Hermesflow's order. This benchmark measures what that is worth when more requests
are queued inside the engine than its batch holds.

Set-up. Requests of three classes arrive at once, in a shuffled order; each class's output
length is a distribution the scheduler knows (its PDGraph's), while a request's own length is
drawn from it and unknown to the policy:

* `short`: 16 tokens;
* `chat`: 16 tokens with probability 0.9, else 512 (most chats are short, a few run long);
* `report`: 48 tokens.

Policies (vLLM priority = the key, lower first; ties in arrival order):

* `fcfs`: no priority — vLLM's default order;
* `gittins`: the class's Gittins rank of its length distribution
  (`hermesflow.pdgraph.gittins.gittins_rank`: short 16, chat 17.8, report 48), the rank a fresh
  request of the class gets from Hermesflow's policy;
* `mean` (size-aware, distribution-blind): the class's mean length (short 16, report 48,
  chat 65.6), ranking chats behind reports;
* `srpt`: the request's own drawn length (clairvoyant), the bound.

Each request asks for its drawn length with a prompt that keeps the model writing ("Count from
1 to 1000 ..."); a request that stops early at end-of-sequence is counted with its real length.
Completion time is measured from the common start; the run reports mean and P95 per policy and
their ratio to `fcfs`.

    python bench/vllm_priority.py --quick --json   # 48 requests, batch 4
    python bench/vllm_priority.py                  # 160 requests, batch 8

Without a CUDA GPU or without vLLM it says so and exits 0 with no figures (its JSON line has
`"skipped"`): the CPU engine has no request priorities to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass

import numpy as np

from hermesflow.backends.calls import LLMCall
from hermesflow.backends.vllm_llm import VLLMBackend, missing_gpu_stack
from hermesflow.pdgraph.gittins import gittins_rank

BENCH = "vllm_priority"
CLASSES: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "short": ((16,), (1.0,)),
    "chat": ((16, 512), (0.9, 0.1)),
    "report": ((48,), (1.0,)),
}
"""Class → (output lengths, their probabilities)."""

PROMPT = "Count from 1 to 1000, one number per line, and say nothing else."


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    app_class: str
    length: int


def draw_requests(count: int, seed: int) -> list[Request]:
    """`count` requests, classes in equal shares, lengths drawn from their class, shuffled."""
    rng = random.Random(seed)
    names = [list(CLASSES)[i % len(CLASSES)] for i in range(count)]
    rng.shuffle(names)
    requests = []
    for index, name in enumerate(names):
        lengths, probs = CLASSES[name]
        requests.append(Request(index, name, rng.choices(lengths, probs)[0]))
    return requests


def policy_keys(requests: list[Request]) -> dict[str, list[float | None]]:
    """Each policy's vLLM priority per request (lower runs earlier; None: vLLM's default)."""
    gittins = {name: gittins_rank(lengths, probs) for name, (lengths, probs) in CLASSES.items()}
    mean = {name: float(np.dot(lengths, probs)) for name, (lengths, probs) in CLASSES.items()}
    return {
        "fcfs": [None for _ in requests],
        "gittins": [gittins[r.app_class] for r in requests],
        "mean": [mean[r.app_class] for r in requests],
        "srpt": [float(r.length) for r in requests],
    }


async def serve(backend: VLLMBackend, requests: list[Request], keys: list[float | None]) -> dict[str, float]:
    """Submit every request at once in arrival order; completion times from the common start."""
    started = time.perf_counter()
    done: list[float] = [0.0] * len(requests)
    tokens: list[int] = [0] * len(requests)

    async def one(request: Request, key: float | None) -> None:
        call = LLMCall(prompt=PROMPT, max_tokens=request.length)
        result = await backend.run(call, priority=key)
        done[request.index] = time.perf_counter() - started
        tokens[request.index] = result.output_tokens

    await asyncio.gather(*(one(r, k) for r, k in zip(requests, keys, strict=True)))
    times = np.array(done)
    return {
        "mean_s": float(times.mean()),
        "p95_s": float(np.percentile(times, 95)),
        "makespan_s": float(times.max()),
        "output_tokens": int(sum(tokens)),
    }


async def run(count: int, batch: int, seed: int, eager: bool) -> list[dict[str, object]]:
    backend = VLLMBackend(
        "bench-vllm",
        max_batch=batch,
        gpu_memory_utilization=0.3,
        max_model_len=2048,
        max_input_tokens=1024,
        engine_options={"enforce_eager": eager},
    )
    loading = time.perf_counter()
    await backend.load()
    load_s = time.perf_counter() - loading
    try:
        requests = draw_requests(count, seed)
        await serve(backend, requests[: batch * 2], [None] * (batch * 2))  # warm the kernels
        rows = []
        for name, keys in policy_keys(requests).items():
            rows.append({"name": name, **await serve(backend, requests, keys)})
    finally:
        await backend.unload()
    fcfs = next(r for r in rows if r["name"] == "fcfs")
    for row in rows:
        row["mean_vs_fcfs"] = row["mean_s"] / fcfs["mean_s"]
        row["p95_vs_fcfs"] = row["p95_s"] / fcfs["p95_s"]
        row.update(requests=count, batch=batch, engine_load_s=load_s, eager=eager)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="48 requests, batch 4")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eager", action="store_true", help="vLLM without CUDA graphs or torch.compile (faster start)")
    args = parser.parse_args()
    count, batch = (48, 4) if args.quick else (160, 8)
    missing = missing_gpu_stack()
    if missing:
        print(f"{BENCH}: skipped: {missing}", file=sys.stderr)
        if args.json:
            print(json.dumps({"bench": BENCH, "results": [], "skipped": missing}))
        return
    rows = asyncio.run(run(count, batch, args.seed, args.eager))
    print(f"{count} requests at once into one vLLM engine (batch {batch}), SmolLM2-135M-Instruct:")
    for row in rows:
        print(
            f"  {row['name']:8s} mean {row['mean_s']:.3f} s  P95 {row['p95_s']:.3f} s  "
            f"x{row['mean_vs_fcfs']:.2f} / x{row['p95_vs_fcfs']:.2f} of fcfs  "
            f"({row['output_tokens']} tokens, makespan {row['makespan_s']:.2f} s)"
        )
    if args.json:
        print(json.dumps({"bench": BENCH, "results": rows}))


if __name__ == "__main__":
    main()
