"""Runtime benchmark: the demo's real application mix on Ray at two loads, and the simulator's
fidelity to it.

For each load, the same arrivals (classes, inputs, times) are served twice by a real scheduler
actor with real backends (SmolLM2-135M on the CPU, a Python tool pool, a code sandbox, an
embedding search): Hermesflow (Gittins + PDGraph prewarm) and the baseline (request-FCFS, load
on demand). It reports mean and P95 ACT and their ratio, the cold-start share, the scheduler's
own time per step, then calibrates the simulator from each run (engine timing from the LLM
calls, PDGraphs refitted from the observations, measured warm-ups), replays in it the very runs
that happened at the same arrival times, and reports the simulated mean ACT and its difference
from the real one.

The engine's speed is measured first (a few calls timed on the real LLM backend,
`hermesflow.demo.measure_engine`), and each load is turned into an arrival rate at that speed,
so a load means the same on any machine; every point reports the load its run really offered and
how busy the engine was. An application that fails is never a figure: ACT counts completed
applications only, each failure is printed with its class and error, the JSON carries
`apps_failed` and `failures`, and the benchmark exits 1.

Targets (runtime issue): mean ACT gittins <= 0.5 x fcfs; cold starts < 5 % of ACT; scheduler
overhead < 2 ms per step; simulated mean ACT within 20 % of the real one, per policy.

    python bench/runtime.py            # 2 loads x 32 apps, about 8 minutes on 2 cores
    python bench/runtime.py --quick    # 1 load x 6 apps, 75-95 s on a quiet 2-core machine (over
                                       # the one-minute target: docs/benchmarks.md says why)
    python bench/runtime.py --json     # last line: {"bench": "runtime", "engine": {...}, "results": [...]}

Times grow on a slower or busier machine: arrivals are spaced at the speed the probe measured.
    python bench/runtime.py --gpu      # the LLM in vLLM on a CUDA GPU (the gpu extra); --eager: no
                                       # CUDA graphs or torch.compile (faster engine starts)

GPU mode serves the same model with vLLM (`hermesflow.apps.suite.LLMEngine.GPU`); the scheduler
passes each call's Gittins rank to vLLM as its request priority. Its engine probe starts from the
vLLM prior (`VLLM_MODEL_COST`); everything else is as on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from hermesflow.apps.suite import REFERENCE_APPS, LLMEngine
from hermesflow.backends.vllm_llm import missing_gpu_stack
from hermesflow.demo import (
    EngineSetup,
    calibrated_costs,
    demo_arrivals,
    measure_engine,
    print_failures,
    run_comparison,
)
from hermesflow.pdgraph.model import StageKind
from hermesflow.ray_cluster import connect
from hermesflow.schedulers.calibration import fidelity, learned_from_run, observed_plans
from hermesflow.schedulers.experiment import MAX_REAL_APPS
from hermesflow.schedulers.workload import Arrival

LOADS = (0.8, 1.2)
SUMMARY_FIELDS = (
    "apps", "apps_completed", "apps_failed", "act_scope", "mean_act_s", "p95_act_s", "cold_start_share",
    "overhead_ms_per_step", "overhead_wall_ms_per_step", "journal_ms_per_step", "calls", "makespan_s",
    "offered_load", "llm_busy_share", "failures",
)


def _kinds(priors) -> dict[str, str]:
    """Backend name -> stage kind, from the classes' graphs (the simulator keys warm-ups by kind)."""
    kinds = {}
    for graph in priors.values():
        for stage in graph.reachable:
            kind = graph.stages[stage].kind
            kinds[graph.backend_of(stage)] = "tool" if kind is StageKind.TOOL else kind.value
    return kinds


def _apps(text: str) -> int:
    apps = int(text)
    if not 1 <= apps <= MAX_REAL_APPS:
        raise argparse.ArgumentTypeError(f"{apps} applications; give 1 to {MAX_REAL_APPS}")
    return apps


def _replay(run, arrivals, priors, kinds, setup: EngineSetup) -> dict[str, float | None]:
    """The simulator calibrated from `run` replaying it (None when no application completed)."""
    summary = run.summary()
    if summary["mean_act_s"] is None:
        return {"sim_mean_act_s": None, "sim_difference": None, "sim_srpt_mean_act_s": None, "llm_decode_s_per_token": None}
    graphs, costs = learned_from_run(run.db_url, priors, setup.prior)
    plans = observed_plans(run.db_url, costs)
    warmups = {kinds[name]: seconds for name, seconds in run.warmup_s.items() if name in kinds}
    check = fidelity(
        policy=run.policy, planner=run.planner, graphs=graphs, costs=costs, arrivals=arrivals,
        warmup_by_kind=warmups, warm_at_start=("llm",) if run.planner != "on-demand" else (),
        real_mean_act_s=summary["mean_act_s"], plans=plans,
    )
    bound = None
    if run.policy == "gittins":  # what a clairvoyant SRPT would reach on the same model
        bound = fidelity(
            policy="srpt", planner=run.planner, graphs=graphs, costs=costs, arrivals=arrivals,
            warmup_by_kind=warmups, warm_at_start=("llm",), real_mean_act_s=summary["mean_act_s"], plans=plans,
        ).simulated_mean_act_s
    return {
        "sim_mean_act_s": check.simulated_mean_act_s,
        "sim_difference": check.difference,
        "sim_srpt_mean_act_s": bound,
        "llm_decode_s_per_token": costs.llm["llm"].decode_s_per_token,
    }


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"x{a / b:.2f}"


def _num(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--apps", type=_apps, default=None, help=f"applications per run, 1 to {MAX_REAL_APPS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="the LLM in vLLM on a CUDA GPU (needs the gpu extra)")
    parser.add_argument("--eager", action="store_true", help="with --gpu: vLLM without CUDA graphs or torch.compile")
    args = parser.parse_args()
    if args.eager and not args.gpu:
        parser.error("--eager is a vLLM option: give it with --gpu")
    if args.gpu and (missing := missing_gpu_stack()):
        parser.error(f"--gpu {missing}")
    setup = EngineSetup.of(LLMEngine.GPU if args.gpu else LLMEngine.CPU, eager=args.eager)
    loads = LOADS[-1:] if args.quick else LOADS
    apps = args.apps or (6 if args.quick else 32)
    priors = {name: cls().prior() for name, cls in REFERENCE_APPS.items()}
    kinds = _kinds(priors)
    connect(None)
    started = time.time()
    probe = measure_engine(args.seed, setup)
    costs = calibrated_costs(probe, setup)
    results, failed = [], False
    with tempfile.TemporaryDirectory(prefix="hermesflow-bench-") as tmp:
        for load in loads:
            planned = demo_arrivals(apps, load, args.seed, costs)
            arrivals = [Arrival(p.at_s, p.app_class) for p in planned]
            runs = run_comparison(planned, Path(tmp) / f"load-{load}", costs, setup=setup)
            failed = failed or any(run.failures for run in runs)
            for run in runs:
                summary = run.summary()
                results.append(
                    {"name": run.policy, "load": load, **{k: summary[k] for k in SUMMARY_FIELDS},
                     "engine": setup.engine.value, **_replay(run, arrivals, priors, kinds, setup)}
                )
            print_failures(runs, Console())
    engine = probe.engine
    print(
        f"engine probe: fastest of {len(probe.round_seconds)} rounds of {len(probe.results)} calls, {probe.seconds:.1f} s; decode {engine.decode_s_per_token * 1e3:.1f} ms/token "
        f"at full batch, prefill {engine.prefill_s_per_token * 1e3:.2f} ms/token (x{probe.slowdown:.2f} the prior's decode)"
    )
    for load in loads:
        rows = {r["name"]: r for r in results if r["load"] == load}
        g, f = rows["gittins"], rows["fcfs"]
        print(
            f"load {load} (offered: gittins {_num(g['offered_load'], '{:.2f}')}, fcfs {_num(f['offered_load'], '{:.2f}')}): "
            f"completed gittins {g['apps_completed']}/{g['apps']}, fcfs {f['apps_completed']}/{f['apps']}; "
            f"ACT of completed apps: gittins mean {_num(g['mean_act_s'], '{:.1f}s')} P95 {_num(g['p95_act_s'], '{:.1f}s')} | "
            f"fcfs mean {_num(f['mean_act_s'], '{:.1f}s')} P95 {_num(f['p95_act_s'], '{:.1f}s')} | ratio mean "
            f"{_ratio(g['mean_act_s'], f['mean_act_s'])} (target <= 0.5), P95 {_ratio(g['p95_act_s'], f['p95_act_s'])}; "
            f"simulated clairvoyant SRPT / simulated fcfs: {_ratio(g['sim_srpt_mean_act_s'], f['sim_mean_act_s'])}"
        )
        for r in (g, f):
            print(
                f"  {r['name']}: failed {r['apps_failed']}, cold share {_num(r['cold_start_share'], '{:.1%}')} (target < 5% "
                f"for gittins), LLM busy {_num(r['llm_busy_share'], '{:.0%}')}, overhead {r['overhead_ms_per_step']:.2f} ms "
                f"CPU/step (target < 2; wall {r['overhead_wall_ms_per_step']:.2f}, of which journal "
                f"{r['journal_ms_per_step']:.2f}), simulated mean ACT {_num(r['sim_mean_act_s'], '{:.1f}s')} "
                f"({_num(r['sim_difference'], '{:+.0%}')} vs real; target within 20%)"
            )
    print(f"total {time.time() - started:.0f} s")
    if args.json:
        print(json.dumps({"bench": "runtime", "engine": probe.summary(), "results": results}))
    if failed:
        print("FAILED: applications failed for an infrastructure reason (listed above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
