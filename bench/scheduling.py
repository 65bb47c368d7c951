"""Scheduling benchmark: every policy on the Hermes mix, light to heavy load, same arrivals.

Measures, in one run:
* mean and P95 application completion time (ACT) per policy and load, pooled over seeds, with
  ratios to request-level FCFS (the "vLLM" baseline) and to clairvoyant SRPT;
* the prewarm planners at load 0.9 under Hermesflow-Gittins: cold-start share of ACT and warm
  backend-seconds (what keeping backends warm costs);
* decision time of each policy with 1,000 live applications in a queue (pop + re-key);
* the scheduling engine's own time per decision with 1,000 and 10,000 live applications;
and checks the targets of the scheduling-core issue. Writes bench/results/scheduling.{csv,png}.

    python bench/scheduling.py            # 4 loads x 3 seeds x 500 apps
    python bench/scheduling.py --quick    # under a minute on 2 cores
    python bench/scheduling.py --json     # last line: {"bench": "scheduling", "results": [...]}
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.demand import DemandEstimator, GraphState
from hermesflow.pdgraph.sampler import RunPlan
from hermesflow.pdgraph.workload_file import hermes_mix
from hermesflow.schedulers.engine import BackendState, SchedulingEngine
from hermesflow.schedulers.experiment import simulate
from hermesflow.schedulers.interface import AppRecord, BackendPhase, RequestRecord
from hermesflow.schedulers.policies import POLICIES, make_policy
from hermesflow.schedulers.prewarm import PLANNERS, make_planner
from hermesflow.schedulers.queues import RequestQueue
from hermesflow.schedulers.simulator import begin_planned_stage

RESULTS = Path(__file__).parent / "results"
TARGET_LOAD = 0.9
ENGINE_LIVE_APPS = (1_000, 10_000)


def _acts(job: tuple[str, str, float, int, int]) -> tuple[tuple[str, str, float], np.ndarray, dict]:
    policy, planner, load, apps, seed = job
    result = simulate(hermes_mix(), policy=policy, planner=planner, load=load, apps=apps, seed=seed)
    return (policy, planner, load), result.acts, result.summary()


def run_grid(jobs: list[tuple[str, str, float, int, int]], workers: int) -> dict:
    """Pool ACTs over seeds per (policy, planner, load); sum cold time and warm seconds."""
    pooled: dict[tuple[str, str, float], dict] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for key, acts, summary in pool.map(_acts, jobs):
            entry = pooled.setdefault(key, {"acts": [], "cold": 0.0, "warm": 0.0, "decision_us": []})
            entry["acts"].append(acts)
            entry["cold"] += summary["cold_start_share"] * float(acts.sum())
            entry["warm"] += summary["warm_backend_s"]
            entry["decision_us"].append(summary["decision_us"])
    return {
        key: {
            "mean_act_s": float(np.concatenate(e["acts"]).mean()),
            "p95_act_s": float(np.percentile(np.concatenate(e["acts"]), 95)),
            "cold_start_share": e["cold"] / float(np.concatenate(e["acts"]).sum()),
            "warm_backend_s": e["warm"] / len(e["acts"]),
            "sim_decision_us": float(np.mean(e["decision_us"])),
        }
        for key, e in pooled.items()
    }


def decision_time_us(policy_name: str, live_apps: int = 1000, decisions: int = 2000, seed: int = 0) -> float:
    """Mean time of one decision (pop the first request, then the application's state changes
    and its remaining requests are re-keyed) with `live_apps` applications waiting, after the
    states have been seen once (the steady state of a long-running scheduler)."""
    demand = DemandEstimator(hermes_mix(), CostModel(), seed=seed)
    rng = np.random.default_rng(seed)
    classes = demand.classes
    policy = make_policy(policy_name, demand)
    queue = RequestQueue(policy)
    ids = iter(range(10**9))
    for app_id in range(live_apps):
        app_class = classes[app_id % len(classes)]
        compiled = demand.compiled(app_class)
        plan = compiled.sample_run(rng)
        upto = int(rng.integers(0, len(plan.stages)))
        visits = [0] * compiled.end
        for planned in plan.stages[: upto + 1]:
            visits[compiled.index[planned.stage]] += 1
        stage = plan.stages[upto]
        state = GraphState(app_class, stage.stage, tuple(visits), len(stage.requests))
        app = AppRecord(app_id, app_class, float(app_id), state, attained_s=float(rng.random() * 10),
                        true_remaining_s=float(rng.random() * 100))
        policy.on_admit(app, float(app_id))
        for request in stage.requests:
            queue.push(RequestRecord(next(ids), app, stage.backend, float(app_id), request.work_s))

    def one_decision() -> None:
        request = queue.pop()
        app = request.app
        app.attained_s += 0.01
        app.version += 1
        queue.rekey(app)
        queue.push(RequestRecord(next(ids), app, request.backend, request.ready_s, request.work_s))

    for _ in range(decisions):  # warm the caches
        one_decision()
    start = time.perf_counter()
    for _ in range(decisions):
        one_decision()
    return 1e6 * (time.perf_counter() - start) / decisions


ENGINE_STEP_S = 0.01
"""Simulated seconds between two engine decisions in `engine_decision_us`: 100 completions per
second, so the planner (every `EngineConfig.planner_interval_s`, 1 s) runs once per 100 decisions."""


def engine_decision_us(live_apps: int, decisions: int = 2000, seed: int = 0) -> float:
    """Mean engine time per decision with `live_apps` live applications, Hermesflow's policy
    and planner: one request completes, its application begins its next stage (or finishes and
    a new one is admitted, so the population stays), and `schedule()` dispatches — with the
    prewarm planner on its timer. Only the engine's own time counts (its `meter`), measured
    after `decisions` warm-up decisions (the steady state of a long-running scheduler)."""
    demand = DemandEstimator(hermes_mix(), CostModel(), seed=seed)
    engine_cost = CostModel().engine("llm")
    rng = np.random.default_rng(seed)
    clock = [0.0]
    backends = {"llm": BackendState("llm", 30.0, engine_cost.max_batch, phase=BackendPhase.WARM,
                                    warm_since_s=0.0, kv_tokens=engine_cost.kv_tokens)}
    for app_class in demand.classes:
        graph = demand.compiled(app_class).graph
        for stage in graph.stages:
            name = graph.backend_of(stage)
            backends.setdefault(name, BackendState(name, 2.0, 8, phase=BackendPhase.WARM, warm_since_s=0.0))
    engine = SchedulingEngine(make_policy("gittins", demand), make_planner("pdgraph", demand),
                              backends.values(), clock=lambda: clock[0])
    ids = iter(range(10**12))
    plans: dict[int, tuple[RunPlan, int]] = {}

    def begin(app_id: int) -> None:
        plan, index = plans[app_id]
        if index == len(plan.stages):
            engine.finish(app_id)
            del plans[app_id]
            admit(next(ids))
            return
        plans[app_id] = (plan, index + 1)
        begin_planned_stage(engine, demand, app_id, plan.stages[index], ids)

    def admit(app_id: int) -> None:
        app_class = demand.classes[int(rng.integers(len(demand.classes)))]
        plans[app_id] = (demand.compiled(app_class).sample_run(rng), 0)
        engine.admit(app_id, demand.initial_state(app_class))
        begin(app_id)

    for _ in range(live_apps):
        admit(next(ids))
    running = deque(d.request for d in engine.schedule().dispatch)

    def one_decision() -> None:
        clock[0] += ENGINE_STEP_S
        request = running.popleft()
        completion = engine.complete(request.request_id, request.work_s)
        if completion is not None and completion.stage_done:
            begin(request.app.app_id)
        running.extend(d.request for d in engine.schedule().dispatch)

    for _ in range(decisions):
        one_decision()
    spent, made = engine.meter.wall_s, engine.decisions
    for _ in range(decisions):
        one_decision()
    return 1e6 * (engine.meter.wall_s - spent) / (engine.decisions - made)


def write_outputs(grid: dict, loads: list[float]) -> None:
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "scheduling.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["policy", "planner", "load", "mean_act_s", "p95_act_s", "cold_start_share", "warm_backend_s"])
        for (policy, planner, load), r in sorted(grid.items()):
            writer.writerow([policy, planner, load, r["mean_act_s"], r["p95_act_s"], r["cold_start_share"], r["warm_backend_s"]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for policy in POLICIES:
        for axis, metric in zip(axes, ("mean_act_s", "p95_act_s"), strict=True):
            ys = [grid[(policy, "pdgraph", load)][metric] for load in loads if (policy, "pdgraph", load) in grid]
            if ys:
                axis.plot(loads[: len(ys)], ys, marker="o", label=policy)
    for axis, title in zip(axes, ("mean ACT (s)", "P95 ACT (s)"), strict=True):
        axis.set_xlabel("load (offered LLM work / capacity)")
        axis.set_title(title)
        axis.set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "scheduling.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 loads, 1 seed, 200 apps")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    loads = [0.5, TARGET_LOAD] if args.quick else [0.3, 0.5, 0.7, TARGET_LOAD]
    seeds = [0] if args.quick else [0, 1, 2]
    apps = 200 if args.quick else 500
    started = time.perf_counter()
    jobs = [(p, "pdgraph", load, apps, s) for load in loads for p in POLICIES for s in seeds]
    jobs += [("gittins", pl, TARGET_LOAD, apps, s) for pl in PLANNERS if pl != "pdgraph" for s in seeds]
    jobs += [("fcfs", "on-demand", TARGET_LOAD, apps, s) for s in seeds]
    grid = run_grid(jobs, args.workers)
    write_outputs(grid, loads)

    results: list[dict] = []
    print(f"Hermes mix, {apps} apps x {len(seeds)} seeds per point; ratios to request-FCFS and to SRPT")
    print(f"{'load':>5} {'policy':18} {'mean s':>8} {'P95 s':>8} {'mean/fcfs':>9} {'P95/fcfs':>9} {'mean/srpt':>9}")
    for load in loads:
        fcfs, srpt = grid[("fcfs", "pdgraph", load)], grid[("srpt", "pdgraph", load)]
        for policy in POLICIES:
            r = grid[(policy, "pdgraph", load)]
            row = {"name": policy, "load": load, "mean_act_s": r["mean_act_s"], "p95_act_s": r["p95_act_s"],
                   "mean_vs_fcfs": r["mean_act_s"] / fcfs["mean_act_s"], "p95_vs_fcfs": r["p95_act_s"] / fcfs["p95_act_s"],
                   "mean_vs_srpt": r["mean_act_s"] / srpt["mean_act_s"]}
            results.append(row)
            print(f"{load:5.2f} {policy:18} {row['mean_act_s']:8.1f} {row['p95_act_s']:8.1f} "
                  f"{row['mean_vs_fcfs']:9.3f} {row['p95_vs_fcfs']:9.3f} {row['mean_vs_srpt']:9.3f}")

    print(f"\nPrewarm planners at load {TARGET_LOAD} (policy gittins; fcfs+on-demand for reference)")
    print(f"{'policy':8} {'planner':14} {'mean s':>8} {'cold share':>10} {'warm backend-s':>14}")
    for (policy, planner, load), r in sorted(grid.items()):
        if load == TARGET_LOAD and (policy == "gittins" or planner == "on-demand"):
            results.append({"name": f"{policy}+{planner}", "load": load, "mean_act_s": r["mean_act_s"],
                            "cold_start_share": r["cold_start_share"], "warm_backend_s": r["warm_backend_s"]})
            print(f"{policy:8} {planner:14} {r['mean_act_s']:8.1f} {r['cold_start_share']:10.2%} {r['warm_backend_s']:14.0f}")

    print("\nDecision time with 1,000 live applications (pop + re-key)")
    for policy in POLICIES:
        us = decision_time_us(policy, decisions=500 if args.quick else 2000)
        results.append({"name": f"decision:{policy}", "decision_us": us})
        print(f"  {policy:18} {us:7.1f} µs")

    print("\nThe engine on its own (gittins + pdgraph; complete, next stage, schedule, planner on its timer)")
    engine_us = {}
    for live in ENGINE_LIVE_APPS:
        engine_us[live] = engine_decision_us(live, decisions=500 if args.quick else 2000)
        results.append({"name": f"engine:{live}", "live_apps": live, "decision_us": engine_us[live]})
        print(f"  {live:>6,} live applications {engine_us[live]:7.1f} µs per decision")

    g, h = grid[("gittins", "pdgraph", TARGET_LOAD)], grid[("hermes", "pdgraph", TARGET_LOAD)]
    f, s = grid[("fcfs", "pdgraph", TARGET_LOAD)], grid[("srpt", "pdgraph", TARGET_LOAD)]
    gittins_us = next(r["decision_us"] for r in results if r["name"] == "decision:gittins")
    checks = [  # (what, measured, bound, strict)
        ("mean ACT <= 0.30 x fcfs", g["mean_act_s"] / f["mean_act_s"], 0.30, False),
        ("P95 ACT <= 0.50 x fcfs", g["p95_act_s"] / f["p95_act_s"], 0.50, False),
        ("mean ACT <= 1.15 x srpt", g["mean_act_s"] / s["mean_act_s"], 1.15, False),
        ("mean ACT < hermes (scalar Gittins)", g["mean_act_s"] / h["mean_act_s"], 1.0, True),
        ("cold starts < 5 % of ACT", g["cold_start_share"], 0.05, True),
        ("decision < 1 ms at 1,000 live apps", gittins_us / 1000.0, 1.0, True),
        *((f"engine < 1 ms per decision at {n:,} live apps", engine_us[n] / 1000.0, 1.0, True) for n in ENGINE_LIVE_APPS),
    ]
    print(f"\nTargets at load {TARGET_LOAD} (Hermesflow-Gittins + pdgraph prewarm)")
    for label, value, bound, strict in checks:
        met = value < bound if strict else value <= bound
        print(f"  {'met   ' if met else 'MISSED'} {label}: {value:.3f} (bound {bound})")
    print(f"\n{len(jobs)} simulations in {time.perf_counter() - started:.0f} s; outputs in {RESULTS}/scheduling.{{csv,png}}")
    if args.json:
        print(json.dumps({"bench": "scheduling", "results": results}))


if __name__ == "__main__":
    main()
