"""`hermesflow demo`: the reference application mix, really served, under two schedulers.

One mix of real applications — ReAct tool loops, map-reduce summaries, code generation with a
test loop, fact-check chains; every step a real call of SmolLM2 on the CPU or a real tool — runs
twice with the same arrivals: Hermesflow (Gittins ordering with PDGraph prewarm) and the
baseline (request-FCFS, backends loaded on demand). It prints mean and P95 application
completion time (ACT) of the completed applications, their ratios, the cold-start share and
every application that failed, with its class and error; it writes an HTML report.

`--load` is offered LLM work over the engine's capacity *on this machine*: before the runs,
`probe_engine` times a few calls of the demo's own prompts on the real LLM backend and the
prior cost model is refitted from them (`calibration.calibrate_engine`), so a slower or busier
machine gets proportionally fewer arrivals per second (`workload.arrival_rate_for_load`). Each
run then reports the load it really offered at that speed and how busy the engine was.

The LLM engine is the CPU one by default; `bench/runtime.py --gpu` runs the same comparison
with vLLM on a GPU (`EngineSetup`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hermesflow.apps.program import StepPlan
from hermesflow.apps.suite import DEMO_MIX, REFERENCE_APPS, LLMEngine, program_paths, suite_backends
from hermesflow.backends.base import BackendSpec
from hermesflow.backends.calls import LLMCall
from hermesflow.backends.model_files import ensure_smollm2
from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import LLM_BACKEND
from hermesflow.report import write_report
from hermesflow.schedulers.runtime_config import CPU_MODEL_COST, VLLM_MODEL_COST, RuntimeConfig
from hermesflow.schedulers.runtime_experiment import (
    PROBE_ROUNDS,
    EngineProbe,
    PlannedApp,
    plan_arrivals,
    probe_engine,
    run_experiment,
)
from hermesflow.schedulers.runtime_results import RuntimeResult
from hermesflow.schedulers.workload import arrival_rate_for_load

RUNS: tuple[tuple[str, str], ...] = (("gittins", "pdgraph"), ("fcfs", "on-demand"))
"""(policy, prewarm planner) of Hermesflow and of the baseline, in the order they run."""

PROBE_CALLS = 6
"""Calls of the engine probe: enough for the fit (`calibration.MIN_CALLS`), within one batch."""
PROBE_MAX_TOKENS = 16
"""Tokens each probe call generates: enough decode steps to time, a few seconds in all."""


@dataclass(frozen=True, slots=True)
class EngineSetup:
    """The suite's backends with the LLM on one engine, and that engine's prior cost model
    (the starting point the probe refits)."""

    engine: LLMEngine
    backends: tuple[BackendSpec, ...]
    prior: CostModel

    @classmethod
    def of(cls, engine: LLMEngine = LLMEngine.CPU, *, eager: bool = False) -> EngineSetup:
        prior = VLLM_MODEL_COST if engine is LLMEngine.GPU else CPU_MODEL_COST
        return cls(engine, tuple(suite_backends(engine, eager=eager)), prior)

    @property
    def llm(self) -> BackendSpec:
        return next(b for b in self.backends if b.name == LLM_BACKEND)


CPU_SETUP = EngineSetup.of(LLMEngine.CPU)


def probe_calls(seed: int, n: int = PROBE_CALLS) -> list[LLMCall]:
    """The first LLM calls of demo applications (inputs drawn from the shipped data), greedy and
    cut to `PROBE_MAX_TOKENS`: the probe times prompts of the demo's own lengths."""
    rng = np.random.default_rng([seed, 2])
    programs = [cls() for cls in REFERENCE_APPS.values()]
    calls: list[LLMCall] = []
    for _ in range(n):
        for program in programs:
            first = program.start(program.sample_inputs(rng)).next
            if isinstance(first, StepPlan) and first.backend == LLM_BACKEND and isinstance(first.calls[0], LLMCall):
                calls.append(first.calls[0].model_copy(update={"max_tokens": PROBE_MAX_TOKENS, "temperature": 0.0}))
    if not calls:
        raise ValueError("no reference application starts with an LLM step, so there is no prompt to probe the engine with")
    return calls[:n]


def measure_engine(seed: int, setup: EngineSetup = CPU_SETUP, rounds: int = PROBE_ROUNDS) -> EngineProbe:
    """The demo's LLM backend timed on this machine (Ray must be initialised), the fastest of
    `rounds` identical rounds kept."""
    ensure_smollm2()  # convert the shipped GGUF once, before anything is timed
    return probe_engine(setup.llm, setup.prior.engine(LLM_BACKEND), probe_calls(seed), rounds)


def calibrated_costs(probe: EngineProbe, setup: EngineSetup = CPU_SETUP) -> CostModel:
    """The engine's prior cost model with the probed engine in place of the prior one."""
    return setup.prior.model_copy(update={"llm": {**setup.prior.llm, probe.backend: probe.engine}})


def arrival_rate(load: float, costs: CostModel) -> float:
    """Applications per second that offer `load` to the LLM engine timed by `costs`."""
    programs = {name: cls() for name, cls in REFERENCE_APPS.items()}
    demand = DemandEstimator({name: p.prior() for name, p in programs.items()}, costs)
    return arrival_rate_for_load(load, demand, DEMO_MIX)


def demo_arrivals(apps: int, load: float, seed: int, costs: CostModel) -> list[PlannedApp]:
    """The demo's applications: the reference mix at `load` on the engine timed by `costs`,
    inputs drawn from the shipped data."""
    programs = {name: cls() for name, cls in REFERENCE_APPS.items()}
    return plan_arrivals(programs, DEMO_MIX, arrival_rate(load, costs), apps, seed)


def run_config(
    policy: str, planner: str, db_url: str, costs: CostModel, setup: EngineSetup = CPU_SETUP
) -> RuntimeConfig:
    """The demo's scheduler: the reference programs and backends, the calibrated cost model;
    Hermesflow pins the LLM warm (its planner), the baseline loads every backend on demand."""
    return RuntimeConfig(
        policy=policy,
        planner=planner,
        db_url=db_url,
        backends=list(setup.backends),
        programs=program_paths(),
        warm_at_start=("llm",) if planner != "on-demand" else (),
        costs=costs,
    )


def run_comparison(
    planned: Sequence[PlannedApp],
    out_dir: Path,
    costs: CostModel,
    on_progress: Callable[[str, int], None] | None = None,
    runs: Sequence[tuple[str, str]] = RUNS,
    setup: EngineSetup = CPU_SETUP,
) -> list[RuntimeResult]:
    """Serve `planned` once per (policy, planner); each run gets its own SQLite store under
    `out_dir`, so its PDGraphs start from the declared priors. Ray must be initialised."""
    results = []
    for policy, planner in runs:
        config = run_config(policy, planner, f"sqlite:///{out_dir / f'{policy}-{planner}.db'}", costs, setup)
        progress = None if on_progress is None else (lambda done, p=policy: on_progress(p, done))
        results.append(run_experiment(config, planned, on_progress=progress))
    return results


@dataclass(frozen=True, slots=True)
class DemoRun:
    """A finished demo: what was asked, what the probe measured, each run's result, the report."""

    apps: int
    load: float
    seed: int
    probe: EngineProbe
    rate_per_s: float
    results: list[RuntimeResult]
    report: Path

    @property
    def failed(self) -> bool:
        """True when an application failed for an infrastructure reason (the exit status)."""
        return any(r.failures for r in self.results)

    def load_summary(self) -> dict[str, Any]:
        """The requested load beside what the probe measured (JSON-ready)."""
        return {"requested": self.load, "arrival_rate_per_s": self.rate_per_s, **self.probe.summary()}

    def notes(self) -> list[str]:
        """What the report and the terminal say beside the table."""
        probe, engine = self.probe, self.probe.engine
        notes = [
            f"{self.apps} applications of the reference mix {dict(DEMO_MIX)}, Poisson arrivals at "
            f"{self.rate_per_s:.3f}/s, seed {self.seed}.",
            f"Load: requested {self.load:g} (offered LLM work / engine capacity). The engine timed "
            f"before the runs (the fastest of {len(probe.round_seconds)} rounds of {len(probe.results)} calls, "
            f"{probe.seconds:.1f} s): decode "
            f"{engine.decode_s_per_token * 1e3:.1f} ms/token at full batch, prefill "
            f"{engine.prefill_s_per_token * 1e3:.2f} ms/token, x{probe.slowdown:.2f} the prior "
            "cost model's decode time; the arrival rate comes from that speed.",
            "Offered load: the LLM work the run's applications really brought (their real token "
            "counts, priced at that speed) per second of their arrivals, over the engine's capacity. "
            "LLM engine busy: the share of the run's makespan in which the engine was computing.",
        ]
        gittins, fcfs = (r.summary() for r in self.results) if len(self.results) == 2 else ({}, {})
        if gittins.get("mean_act_s") and fcfs.get("mean_act_s"):
            notes.append(
                f"Mean ACT ratio gittins/fcfs: {gittins['mean_act_s'] / fcfs['mean_act_s']:.2f}; "
                f"P95 ratio: {gittins['p95_act_s'] / fcfs['p95_act_s']:.2f} (completed applications only)."
            )
        failed = sum(len(r.failures) for r in self.results)
        if failed:
            notes.append(
                f"{failed} application(s) FAILED for an infrastructure reason (each is listed with its error): the "
                "figures count completed applications only, so the runs are not comparable."
            )
        notes.append(
            "Every LLM step is a real call of SmolLM2-135M-Instruct on the CPU; tools are a real "
            "Python worker pool, a network-less code sandbox and an embedding search over the "
            "shipped corpus."
        )
        return notes


def _fmt(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def write_demo_report(demo: DemoRun, out_dir: Path) -> Path:
    """The HTML report of a comparison (summary, failures, ACT CDF, ACT by class)."""
    acts = {r.policy: r.acts for r in demo.results}
    by_class = {
        r.policy: {
            c: float(np.mean([o.act_s for o in r.completed if o.app_class == c]))
            for c in sorted({o.app_class for o in r.completed})
        }
        for r in demo.results
    }
    return write_report(
        out_dir / "index.html",
        "Hermesflow demo: Gittins + PDGraph prewarm vs request-FCFS + load on demand",
        [r.summary() for r in demo.results],
        acts,
        by_class,
        demo.notes(),
    )


def report_dir(root: Path) -> Path:
    return root / f"demo-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def run_demo(apps: int, load: float, seed: int, reports_root: Path, show_progress: bool) -> DemoRun:
    """The whole demo: connect to Ray (a local loopback cluster by default), time the engine,
    serve the mix under each scheduler with a progress bar, write the report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hermesflow.ray_cluster import connect

    connect(None)
    probe = measure_engine(seed)
    costs = calibrated_costs(probe)
    planned = demo_arrivals(apps, load, seed, costs)
    out_dir = report_dir(reports_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not show_progress, transient=False,
    ) as progress:
        progress.console.print(
            f"LLM engine timed: x{probe.slowdown:.2f} the prior cost model's decode time per token; "
            f"{apps} applications at load {load:g} arrive over {planned[-1].at_s / 60:.1f} min per scheduler.",
            highlight=False,
        )
        tasks = {policy: progress.add_task(f"{policy} + {planner}", total=apps) for policy, planner in RUNS}
        results = run_comparison(planned, out_dir, costs, lambda policy, done: progress.update(tasks[policy], completed=done))
    demo = DemoRun(apps, load, seed, probe, arrival_rate(load, costs), results, out_dir / "index.html")
    write_demo_report(demo, out_dir)
    return demo


TERMINAL_ROWS: tuple[tuple[str, str, str], ...] = (
    ("apps_failed", "failed applications", "{:d}"),
    ("mean_act_s", "mean ACT (s)*", "{:.1f}"),
    ("p95_act_s", "P95 ACT (s)*", "{:.1f}"),
    ("cold_start_share", "cold-start share*", "{:.1%}"),
    ("offered_load", "offered load", "{:.2f}"),
    ("llm_busy_share", "LLM engine busy", "{:.0%}"),
    ("overhead_ms_per_step", "scheduler ms/step", "{:.2f}"),
)
"""(summary key, label, format) of the terminal table, one row per figure, one column per run."""


def print_demo(demo: DemoRun, out: Console) -> None:
    """The demo's terminal summary: the table, the load, every failure with its class and error."""
    summaries = [r.summary() for r in demo.results]
    table = Table("", *(f"{s['policy']} + {s['planner']}" for s in summaries), caption="* completed applications only")
    table.add_row("completed applications", *(f"{s['apps_completed']}/{s['apps']}" for s in summaries))
    for key, label, template in TERMINAL_ROWS:
        cells = [_fmt(s[key], template) for s in summaries]
        if key == "apps_failed":
            cells = [f"[bold red]{c}[/]" if s[key] else c for c, s in zip(cells, summaries, strict=True)]
        if key == "offered_load":
            label = f"offered load (requested {demo.load:g})"
        table.add_row(label, *cells)
    out.print(table)
    for note in demo.notes():
        out.print(note, markup=False, highlight=False)
    print_failures(demo.results, out)
    out.print(f"Report: {demo.report}", markup=False, highlight=False)


def print_failures(results: Sequence[RuntimeResult], out: Console) -> None:
    """Every failed application of `results`, one line each: run, class, how it ended, error."""
    for result in results:
        for failure in result.failures:
            out.print(
                Text.assemble(
                    ("FAILED", "bold red"),
                    f" {result.policy} + {result.planner}: {failure.app_class} {failure.key or '(no run)'} "
                    f"{failure.end.value}: {failure.error}",
                )
            )


def demo_json(demo: DemoRun) -> dict[str, Any]:
    """The `--json` line: each run's summary (failures included) and the load."""
    results = [{"name": s["policy"], **{k: v for k, v in s.items() if k != "policy"}} for s in (r.summary() for r in demo.results)]
    return {"bench": "demo", "load": demo.load_summary(), "results": results, "report": str(demo.report)}
