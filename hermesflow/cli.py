"""The `hermesflow` command: simulate policies, inspect PDGraphs, list policies, run the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import PDGraph, StageKind
from hermesflow.pdgraph.workload_file import WorkloadFileError, hermes_mix, load_workload
from hermesflow.schedulers.experiment import ArrivalProcess, simulate
from hermesflow.schedulers.policies import POLICIES
from hermesflow.schedulers.prewarm import PLANNERS
from hermesflow.schedulers.simulator import SimulationConfig, SimulationResult

app = typer.Typer(help="Hermesflow: serve multi-step LLM applications sooner.", no_args_is_help=True)
pdgraph_app = typer.Typer(help="Inspect application classes (PDGraphs).", no_args_is_help=True)
app.add_typer(pdgraph_app, name="pdgraph")
console = Console(stderr=True)

WorkloadOption = Annotated[
    Path | None,
    typer.Option(help="workload file (schema hermesflow.app_workload.v1); default: the Hermes mix"),
]


def _graphs(workload: Path | None) -> dict[str, PDGraph]:
    try:
        return hermes_mix() if workload is None else load_workload(workload)
    except WorkloadFileError as err:
        raise typer.BadParameter(str(err), param_hint="--workload") from None


def _run(label: str, apps: int, quiet: bool, **kwargs: object) -> SimulationResult:
    """One simulation with a progress bar on stderr."""
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=quiet, transient=True,
    ) as progress:
        task = progress.add_task(label, total=apps)
        return simulate(apps=apps, on_progress=lambda done: progress.update(task, completed=done), **kwargs)


def _print_summaries(rows: list[dict[str, object]]) -> None:
    table = Table("policy", "planner", "apps", "mean ACT s", "P95 ACT s", "cold share", "warm backend-s", "µs/decision")
    for r in rows:
        table.add_row(
            str(r["policy"]), str(r["planner"]), str(r["apps_completed"]), f"{r['mean_act_s']:.1f}",
            f"{r['p95_act_s']:.1f}", f"{r['cold_start_share']:.2%}", f"{r['warm_backend_s']:.0f}",
            f"{r['decision_us']:.1f}",
        )
    Console().print(table)


@app.command("simulate")
def simulate_command(
    policy: Annotated[str, typer.Option(help=f"one of: {', '.join(POLICIES)}")] = "gittins",
    load: Annotated[float, typer.Option(help="offered LLM work / LLM capacity, e.g. 0.9")] = 0.9,
    apps: Annotated[int, typer.Option(help="applications to simulate")] = 500,
    seed: Annotated[int, typer.Option()] = 0,
    workload: WorkloadOption = None,
    planner: Annotated[str, typer.Option(help=f"prewarm planner, one of: {', '.join(PLANNERS)}")] = "pdgraph",
    arrivals: Annotated[ArrivalProcess, typer.Option(help="arrival process")] = ArrivalProcess.POISSON,
    max_warm: Annotated[int | None, typer.Option(help="budget of warm backends (default: none)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="end with one JSON line")] = False,
) -> None:
    """Simulate the application mix under one policy and print mean and P95 ACT."""
    for name, known in ((policy, POLICIES), (planner, PLANNERS)):
        if name not in known:
            raise typer.BadParameter(f"unknown name {name!r}; choose one of: {', '.join(known)}")
    result = _run(
        f"{policy} @ load {load}", apps, json_output, graphs=_graphs(workload), policy=policy,
        planner=planner, load=load, seed=seed, arrivals=arrivals, max_warm=max_warm,
    )
    summary = result.summary()
    _print_summaries([summary])
    if json_output:
        print(json.dumps(summary))


@app.command("policies")
def policies_command() -> None:
    """List the scheduling policies and prewarm planners."""
    table = Table("kind", "name", "what it does")
    for name, cls in POLICIES.items():
        table.add_row("policy", name, cls.description)
    for name, cls in PLANNERS.items():
        table.add_row("prewarm", name, cls.description)
    Console().print(table)


@pdgraph_app.command("show")
def pdgraph_show(app_class: Annotated[str, typer.Argument(help="application class name")], workload: WorkloadOption = None) -> None:
    """Show one class's stages, backends, sizes and successor probabilities."""
    graphs = _graphs(workload)
    if app_class not in graphs:
        raise typer.BadParameter(f"unknown class {app_class!r}; known: {', '.join(graphs)}")
    graph = graphs[app_class]
    table = Table("stage", "kind", "backend", "size (mean)", "fan-out", "visits", "next")
    for name in graph.reachable:
        stage = graph.stages[name]
        if stage.kind is StageKind.LLM:
            size = f"{stage.input_tokens.mean:.0f} in / {stage.output_tokens.mean:.0f} out tokens"
        else:
            size = f"{stage.exec_s.mean:.2f} s"
        table.add_row(
            name, stage.kind.value, graph.backend_of(name), size,
            f"{stage.fanout.mean:.1f}" if stage.fanout else "1",
            f"{stage.visits.mean:.1f}" if stage.visits else "-",
            ", ".join(f"{s} {p:.2f}" for s, p in stage.next.items()),
        )
    out = Console()
    out.print(f"[bold]{graph.name}[/] entry: {graph.entry}")
    out.print(table)
    config = SimulationConfig()
    demand = DemandEstimator({graph.name: graph}, config.costs).total_demand(graph.name)
    out.print(f"demand per run (backend-seconds): mean {demand.mean():.2f}, P95 {np.percentile(demand, 95):.2f}")


@app.command("demo")
def demo_command(
    load: Annotated[float, typer.Option()] = 0.9,
    apps: Annotated[int, typer.Option()] = 500,
    seed: Annotated[int, typer.Option()] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="end with one JSON line (bench format)")] = False,
) -> None:
    """Hermesflow-Gittins with prewarm against request-FCFS with load-on-demand, same arrivals."""
    graphs = hermes_mix()
    runs = [("gittins", "pdgraph"), ("fcfs", "on-demand")]
    rows = [
        _run(f"{policy} + {planner}", apps, json_output, graphs=graphs, policy=policy, planner=planner,
             load=load, seed=seed).summary()
        for policy, planner in runs
    ]
    _print_summaries(rows)
    gittins, fcfs = rows
    Console().print(
        f"Hermesflow / request-FCFS: mean ACT x{gittins['mean_act_s'] / fcfs['mean_act_s']:.2f}, "
        f"P95 ACT x{gittins['p95_act_s'] / fcfs['p95_act_s']:.2f} (simulated, load {load}, {apps} apps)"
    )
    if json_output:
        results = [{"name": r["policy"], **{k: v for k, v in r.items() if k != "policy"}} for r in rows]
        print(json.dumps({"bench": "demo", "results": results}))
