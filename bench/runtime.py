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

Targets (runtime issue): mean ACT gittins <= 0.5 x fcfs; cold starts < 5 % of ACT; scheduler
overhead < 2 ms per step; simulated mean ACT within 20 % of the real one, per policy.

    python bench/runtime.py            # 2 loads x 32 apps, about 8 minutes on 2 cores
    python bench/runtime.py --quick    # 1 load x 6 apps, under a minute after the model is converted
    python bench/runtime.py --json     # last line: {"bench": "runtime", "results": [...]}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hermesflow.apps.suite import REFERENCE_APPS
from hermesflow.demo import demo_arrivals, run_comparison
from hermesflow.pdgraph.model import StageKind
from hermesflow.ray_cluster import connect
from hermesflow.schedulers.calibration import fidelity, learned_from_run, observed_plans
from hermesflow.schedulers.runtime_config import CPU_MODEL_COST
from hermesflow.schedulers.workload import Arrival

LOADS = (0.8, 1.2)


def _kinds(priors) -> dict[str, str]:
    """Backend name -> stage kind, from the classes' graphs (the simulator keys warm-ups by kind)."""
    kinds = {}
    for graph in priors.values():
        for stage in graph.reachable:
            kind = graph.stages[stage].kind
            kinds[graph.backend_of(stage)] = "tool" if kind is StageKind.TOOL else kind.value
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--apps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    loads = LOADS[-1:] if args.quick else LOADS
    apps = args.apps or (6 if args.quick else 32)
    priors = {name: cls().prior() for name, cls in REFERENCE_APPS.items()}
    kinds = _kinds(priors)
    connect(None)
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="hermesflow-bench-") as tmp:
        for load in loads:
            planned = demo_arrivals(apps, load, args.seed)
            arrivals = [Arrival(p.at_s, p.app_class) for p in planned]
            runs = run_comparison(planned, Path(tmp) / f"load-{load}")
            for run in runs:
                graphs, costs = learned_from_run(run.db_url, priors, CPU_MODEL_COST)
                plans = observed_plans(run.db_url, costs)
                warmups = {kinds[name]: seconds for name, seconds in run.warmup_s.items() if name in kinds}
                summary = run.summary()
                check = fidelity(
                    policy=run.policy,
                    planner=run.planner,
                    graphs=graphs,
                    costs=costs,
                    arrivals=arrivals,
                    warmup_by_kind=warmups,
                    warm_at_start=("llm",) if run.planner != "on-demand" else (),
                    real_mean_act_s=summary["mean_act_s"],
                    plans=plans,
                )
                bound = None
                if run.policy == "gittins":  # what a clairvoyant SRPT would reach on the same model
                    bound = fidelity(
                        policy="srpt", planner=run.planner, graphs=graphs, costs=costs, arrivals=arrivals,
                        warmup_by_kind=warmups, warm_at_start=("llm",), real_mean_act_s=summary["mean_act_s"],
                        plans=plans,
                    ).simulated_mean_act_s
                results.append(
                    {
                        "name": run.policy,
                        "load": load,
                        **{k: summary[k] for k in ("mean_act_s", "p95_act_s", "cold_start_share", "overhead_ms_per_step", "overhead_wall_ms_per_step", "journal_ms_per_step", "apps_completed", "apps_failed", "calls", "makespan_s")},
                        "sim_mean_act_s": check.simulated_mean_act_s,
                        "sim_difference": check.difference,
                        "sim_srpt_mean_act_s": bound,
                        "llm_decode_s_per_token": costs.llm["llm"].decode_s_per_token,
                    }
                )
    for load in loads:
        rows = {r["name"]: r for r in results if r["load"] == load}
        g, f = rows["gittins"], rows["fcfs"]
        print(
            f"load {load}: gittins mean ACT {g['mean_act_s']:.1f}s P95 {g['p95_act_s']:.1f}s | fcfs mean "
            f"{f['mean_act_s']:.1f}s P95 {f['p95_act_s']:.1f}s | ratio mean x{g['mean_act_s'] / f['mean_act_s']:.2f} "
            f"(target <= 0.5), P95 x{g['p95_act_s'] / f['p95_act_s']:.2f}; simulated clairvoyant SRPT / "
            f"simulated fcfs: x{g['sim_srpt_mean_act_s'] / f['sim_mean_act_s']:.2f}"
        )
        for r in (g, f):
            print(
                f"  {r['name']}: cold share {r['cold_start_share']:.1%} (target < 5% for gittins), "
                f"overhead {r['overhead_ms_per_step']:.2f} ms CPU/step (target < 2; wall "
                f"{r['overhead_wall_ms_per_step']:.2f}, of which journal {r['journal_ms_per_step']:.2f}), simulated mean ACT "
                f"{r['sim_mean_act_s']:.1f}s ({r['sim_difference']:+.0%} vs real; target within 20%)"
            )
    print(f"total {time.time() - started:.0f} s")
    if args.json:
        print(json.dumps({"bench": "runtime", "results": results}))


if __name__ == "__main__":
    main()
