"""The `hermesflow` command: simulate policies, inspect PDGraphs, list policies, run the demo,
serve the scheduler and its HTTP API on Ray, submit runs to it."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hermesflow.api.models.lifecycle import DEFAULT_GRACE_S, DEFAULT_READY_TIMEOUT_S
from hermesflow.cli_options import (
    AT_LEAST_ONE,
    LOAD,
    MAX_SIMULATED_APPS,
    PORT,
    POSITIVE,
    SEED,
    SIMULATED_APPS,
    Bounds,
    OneOf,
    database_url,
    existing_file,
    http_url,
    not_blank,
)
from hermesflow.client_records import AppViewPhase
from hermesflow.config import TOKEN_ENV
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import PDGraph, StageKind
from hermesflow.pdgraph.workload_file import WorkloadFileError, hermes_mix, load_workload
from hermesflow.schedulers.experiment import MAX_REAL_APPS, ArrivalProcess, simulate
from hermesflow.schedulers.policies import POLICIES
from hermesflow.schedulers.prewarm import PLANNERS
from hermesflow.schedulers.runtime_config import SERVABLE_POLICIES, RuntimeConfig, servable_policy
from hermesflow.schedulers.simulator import SimulationConfig, SimulationResult

app = typer.Typer(help="Hermesflow: serve multi-step LLM applications sooner.", no_args_is_help=True)
pdgraph_app = typer.Typer(help="Inspect application classes (PDGraphs).", no_args_is_help=True)
app.add_typer(pdgraph_app, name="pdgraph")
console = Console(stderr=True)

WorkloadOption = Annotated[
    Path | None,
    typer.Option(
        help="workload file (schema hermesflow.app_workload.v1); default: the Hermes mix",
        callback=existing_file,
    ),
]
PolicyOption = Annotated[
    str, typer.Option(help=f"one of: {', '.join(POLICIES)}", callback=OneOf("policy", tuple(POLICIES)))
]
PlannerOption = Annotated[
    str,
    typer.Option(
        help=f"prewarm planner, one of: {', '.join(PLANNERS)}",
        callback=OneOf("prewarm planner", tuple(PLANNERS)),
    ),
]
LoadOption = Annotated[
    float, typer.Option(help="offered LLM work / LLM capacity, 0.01 to 100, e.g. 0.9", callback=LOAD)
]
SimulatedAppsOption = Annotated[
    int,
    typer.Option(help=f"applications to simulate, 1 to {MAX_SIMULATED_APPS:,}", callback=SIMULATED_APPS),
]
SeedOption = Annotated[int, typer.Option(help="random seed, 0 or more", callback=SEED)]


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
    policy: PolicyOption = "gittins",
    load: LoadOption = 0.9,
    apps: SimulatedAppsOption = 500,
    seed: SeedOption = 0,
    workload: WorkloadOption = None,
    planner: PlannerOption = "pdgraph",
    arrivals: Annotated[ArrivalProcess, typer.Option(help="arrival process")] = ArrivalProcess.POISSON,
    max_warm: Annotated[
        int | None, typer.Option(help="budget of warm backends, 1 or more (default: none)", callback=AT_LEAST_ONE)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="end with one JSON line")] = False,
) -> None:
    """Simulate the application mix under one policy and print mean and P95 ACT."""
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
        raise typer.BadParameter(
            f"unknown class {app_class!r}; known: {', '.join(graphs)}", param_hint="APP_CLASS"
        )
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


@app.command("compare")
def compare_command(
    load: LoadOption = 0.9,
    apps: SimulatedAppsOption = 500,
    seed: SeedOption = 0,
    json_output: Annotated[bool, typer.Option("--json", help="end with one JSON line (bench format)")] = False,
) -> None:
    """Simulated: Hermesflow-Gittins with prewarm against request-FCFS with load-on-demand on the
    Hermes mix, same arrivals (seconds; the real thing is `hermesflow demo`)."""
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
        print(json.dumps({"bench": "compare", "results": results}))


# -- serving: the scheduler and the HTTP API on Ray -----------------------------------------------

DEFAULT_API_URL = "http://127.0.0.1:8000"
URL_ENVVAR = "HERMES_API_URL"

AddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster to join, e.g. 'auto' or '127.0.0.1:6379' (default: start a local loopback one)"),
]
SchedulerNameOption = Annotated[str, typer.Option(help="Ray actor name of the scheduler", callback=not_blank)]
GatewayNameOption = Annotated[str, typer.Option(help="Ray actor name of the HTTP gateway", callback=not_blank)]
GracePeriodOption = Annotated[
    float,
    typer.Option(
        "--grace-period",
        help="seconds the API lets open requests and streams finish when stopping, 0 to 3600; "
        "new requests get 503 meanwhile, and what is still open at the end gets an error",
        callback=Bounds(low=0, high=3600, why="an hour at most: a longer stop looks hung"),
    ),
]


@app.command("demo")
def demo_command(
    apps: Annotated[
        int,
        typer.Option(
            help=f"applications per run, 1 to {MAX_REAL_APPS}",
            callback=Bounds(low=1, high=MAX_REAL_APPS, why="each takes 2-4 s of real time per scheduler on 2 cores"),
        ),
    ] = 32,
    load: Annotated[
        float,
        typer.Option(help="offered LLM work / engine capacity at the engine speed measured before the runs, 0.01 to 100", callback=LOAD),
    ] = 1.2,
    seed: SeedOption = 0,
    reports: Annotated[Path, typer.Option(help="folder for the HTML report")] = Path("reports"),
    json_output: Annotated[bool, typer.Option("--json", help="end with one JSON line (bench format)")] = False,
) -> None:
    """Serve the reference application mix for real (SmolLM2 on the CPU, real tools, local Ray)
    twice with the same arrivals: Hermesflow-Gittins with PDGraph prewarm, then request-FCFS with
    load on demand. The LLM engine is timed first, so --load means the same on any machine.
    Prints mean and P95 ACT of the completed applications, their ratio, the cold-start share,
    the measured load and every failed application with its error; writes an HTML report under
    --reports. Exits 1 when an application failed for an infrastructure reason."""
    from hermesflow.demo import demo_json, print_demo, run_demo
    from hermesflow.schedulers.runtime_results import ExperimentError

    out = Console(stderr=json_output)
    try:
        demo = run_demo(apps, load, seed, reports, show_progress=not json_output)
    except ExperimentError as error:
        out.print(f"[bold red]The demo could not run:[/] {error}")
        raise typer.Exit(1) from None
    print_demo(demo, out)
    if json_output:
        print(json.dumps(demo_json(demo)))
    if demo.failed:
        raise typer.Exit(1)


def _warm_names(warm: str, known: list[str]) -> tuple[str, ...]:
    names = tuple(n.strip() for n in warm.split(",") if n.strip())
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise typer.BadParameter(f"unknown backend(s) {unknown}; the suite's backends are: {', '.join(known)}", param_hint="--warm")
    return names


def _program_classes(paths: list[str]) -> dict[str, str]:
    """Application class → `module:attr` of each --program, checked here so a typo fails before
    Ray starts: the path must import and name an object with an `app_class`."""
    classes = {}
    for path in paths:
        module, _, attr = path.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as error:
            raise typer.BadParameter(
                f"cannot import {path!r} ({error}); give `module:attr` importable from here "
                "(set PYTHONPATH to the folder that holds the module)",
                param_hint="--program",
            ) from None
        name = getattr(target, "app_class", None)
        if not isinstance(name, str):
            raise typer.BadParameter(
                f"{path!r} is not a program: it has no `app_class`; name an AppProgram or a "
                "Semantic-Variable program",
                param_hint="--program",
            )
        classes[name] = path
    return classes


def _servable_policy(name: str) -> str:
    """Option callback of `serve --policy`: the configuration's own check, as a usage error."""
    try:
        return servable_policy(name)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


@app.command("serve")
def serve_command(
    address: AddressOption = None,
    host: Annotated[str, typer.Option(help="address the HTTP API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port, 0 to 65535 (0: any free port)", callback=PORT)] = 8000,
    token: Annotated[
        str | None, typer.Option(envvar=TOKEN_ENV, help="require 'Authorization: Bearer <token>' on the API")
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            help=f"one of: {', '.join(SERVABLE_POLICIES)} (the others run only in `simulate`)",
            callback=_servable_policy,
        ),
    ] = "gittins",
    planner: PlannerOption = "pdgraph",
    db_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL of the store (default: HERMES_DB_URL or SQLite)", callback=database_url),
    ] = None,
    warm: Annotated[
        str,
        typer.Option(
            help="backends warmed at start and kept warm, comma-separated ('' for none); the API is "
            "ready, and its URL printed, once they are warm"
        ),
    ] = "llm",
    detach: Annotated[
        bool, typer.Option(help="once ready, leave the scheduler and API running and exit (needs --address)")
    ] = False,
    dashboard: Annotated[bool, typer.Option(help="start Ray's dashboard (local cluster only; needed by `ray job submit`)")] = False,
    num_cpus: Annotated[
        int | None, typer.Option(help="logical CPUs of a local cluster, 1 or more (default: all)", callback=AT_LEAST_ONE)
    ] = None,
    scheduler_name: SchedulerNameOption = "scheduler",
    gateway_name: GatewayNameOption = "gateway",
    program: Annotated[
        list[str] | None,
        typer.Option(
            help="also run this program (`module:attr`, an AppProgram or Semantic-Variable program; "
            "repeatable); the module must be importable by Ray's workers, e.g. PYTHONPATH=$PWD"
        ),
    ] = None,
    grace_period: GracePeriodOption = DEFAULT_GRACE_S,
    ready_timeout: Annotated[
        float,
        typer.Option(
            help="seconds to wait for the --warm backends before giving up (exit 1)",
            callback=Bounds(low=0, low_open=True, high=3600, why="an hour at most"),
        ),
    ] = DEFAULT_READY_TIMEOUT_S,
) -> None:
    """Run the scheduler and the HTTP API (OpenAI-compatible and control API) on Ray.

    The scheduler runs the reference application suite on its backends, plus any --program.
    Once the --warm backends are warm (`GET /readyz` answers 200), the API's URL is printed on
    stdout. It serves until Ctrl-C or SIGTERM, or until `hermesflow stop` stops it from another
    shell: the API drains (new requests get 503, open ones may finish within --grace-period,
    the rest end with an error), then the scheduler and its backends stop. With --detach it
    exits once ready and leaves both running.
    """
    from hermesflow.apps.suite import program_paths, suite_backends
    from hermesflow.cli_options import check_can_listen
    from hermesflow.serve_session import ServedNames, ServePlan, serve

    if detach and address is None:
        raise typer.BadParameter(
            "a local cluster started by `serve` ends with it; start Ray first (`ray start --head`) and pass "
            "--address auto to leave the scheduler running",
            param_hint="--detach",
        )
    backends = suite_backends()
    config = RuntimeConfig(
        policy=policy,
        planner=planner,
        db_url=db_url,
        backends=backends,
        programs={**program_paths(), **_program_classes(program or [])},
        warm_at_start=_warm_names(warm, [b.name for b in backends]),
    )
    check_can_listen(host, port)
    names = ServedNames(scheduler=scheduler_name, gateway=gateway_name)
    plan = ServePlan(
        config=config,
        names=names,
        host=host,
        port=port,
        token=token,
        detach=detach,
        grace_s=grace_period,
        ready_timeout_s=ready_timeout,
        stop_hint=f"stop it with `hermesflow stop --address {address} --scheduler-name {scheduler_name} "
        f"--gateway-name {gateway_name}`",
    )
    _connect(address, dashboard=dashboard, num_cpus=num_cpus)
    status = serve(plan)
    if not detach:
        from hermesflow.ray_cluster import disconnect

        disconnect()
    raise typer.Exit(status)


def _connect(address: str | None, **options: Any) -> None:
    """Join the Ray cluster at `address` (or start a local one); one that does not answer is a
    usage error of --address."""
    from hermesflow.ray_cluster import ClusterUnreachable, LocalClusterFailed, connect

    try:
        connect(address, **options)
    except ClusterUnreachable as error:
        raise typer.BadParameter(str(error), param_hint="--address") from None
    except LocalClusterFailed as error:
        console.print(str(error), markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command("stop")
def stop_command(
    address: Annotated[str, typer.Option(help="the Ray cluster the scheduler runs on")] = "auto",
    scheduler_name: SchedulerNameOption = "scheduler",
    gateway_name: GatewayNameOption = "gateway",
    grace_period: GracePeriodOption = DEFAULT_GRACE_S,
) -> None:
    """Stop a `hermesflow serve`, detached or in the foreground of another shell (which then
    exits): the API drains for up to --grace-period seconds, then the API, the scheduler and
    its backends stop."""
    from hermesflow.serve_session import ServedNames, stop_serving

    _connect(address)
    stopped = stop_serving(ServedNames(scheduler=scheduler_name, gateway=gateway_name), grace_period)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command("submit")
def submit_command(
    app_class: Annotated[str, typer.Argument(help="application class, e.g. map_reduce")],
    inputs: Annotated[str, typer.Option(help="the class's inputs as a JSON object")] = "{}",
    wait: Annotated[bool, typer.Option(help="wait until the run ends and print its final state")] = False,
    url: Annotated[
        str, typer.Option(envvar=URL_ENVVAR, help="base URL of the Hermesflow API", callback=http_url)
    ] = DEFAULT_API_URL,
    token: Annotated[str | None, typer.Option(envvar=TOKEN_ENV, help="the API's bearer token")] = None,
    app_id: Annotated[str | None, typer.Option(help="idempotency key: the same id is the same run")] = None,
    timeout: Annotated[
        float, typer.Option(help="with --wait: give up after this many seconds (above 0)", callback=POSITIVE)
    ] = 600.0,
) -> None:
    """Submit a run over the HTTP API and print its state as JSON (exit 1 if it failed)."""
    from pydantic import ValidationError

    from hermesflow import client  # httpx and the API models: only this command needs them
    from hermesflow.api.models.control import AppSubmission

    try:
        parsed = json.loads(inputs)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint="--inputs") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("give a JSON object, e.g. '{\"text\": \"...\"}'", param_hint="--inputs")
    try:
        body = AppSubmission(app_class=app_class, inputs=parsed, app_id=app_id)
    except ValidationError as error:  # a name the API would refuse (empty, too long)
        problem = error.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else "inputs"
        hint = _SUBMISSION_HINTS.get(field, field)
        raise typer.BadParameter(problem["msg"], param_hint=hint) from None
    endpoint = client.ApiEndpoint(url, token, token_setting=f"--token (or {TOKEN_ENV})")
    api = client.ApiClient(endpoint)
    deadline = time.monotonic() + timeout
    try:
        view = api.send(client.submit_app(body))
        while wait and not view.ended and time.monotonic() < deadline:
            poll = min(client.MAX_POLL_S, max(deadline - time.monotonic(), 0.0))
            view = api.send(client.get_app(view.app_id, wait_s=poll))
    except client.HermesApiError as error:  # exit 2: nothing answered; 1: the API refused
        console.print(error.explanation, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2 if error.status == client.NO_ANSWER else 1) from None
    print(view.model_dump_json(indent=2))
    if view.phase is AppViewPhase.FAILED:
        raise typer.Exit(1)
    if wait and not view.ended:
        console.print(f"still {view.phase} after {timeout:.0f} s")
        raise typer.Exit(3)


_SUBMISSION_HINTS = {"app_class": "APP_CLASS", "app_id": "--app-id", "inputs": "--inputs"}
"""The command-line name of each field of a submission, for its usage errors."""

