"""One real experiment on the Ray runtime: a timed stream of applications through a scheduler.

The counterpart of `experiment.simulate` for real runs (the demo and `bench/runtime.py`).
`probe_engine` first times a few calls on a fresh actor of the real LLM backend, so the cost
model that turns a load into an arrival rate is this machine's, not the prior's. `plan_arrivals`
fixes the applications — arrival times, classes and inputs — from a seed alone, so every policy
of a comparison faces the same applications at the same offsets. `run_experiment` starts a
scheduler actor on a fresh store, waits until its pinned backends are warm (start-up is not part
of any application's time), submits each application at its offset, waits for all of them until
a deadline, and reads back from the store how each ended (`runtime_results.AppEnd`) and how
loaded the LLM engine was.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError, RayTaskError

from hermesflow.apps.program import AppProgram
from hermesflow.backends.actor import BackendActor
from hermesflow.backends.base import BackendSpec
from hermesflow.backends.calls import CallResult, LLMCall
from hermesflow.journal import RunJournal
from hermesflow.pdgraph.costs import LLMEngineCost
from hermesflow.schedulers.calibration import MIN_CALLS, busy_share, calibrate_engine, offered_load
from hermesflow.schedulers.errors import SubmissionError
from hermesflow.schedulers.runtime import start_scheduler
from hermesflow.schedulers.runtime_config import RuntimeConfig
from hermesflow.schedulers.runtime_results import (
    AppOutcome,
    EngineLoad,
    ExperimentError,
    RuntimeResult,
    not_admitted,
    outcome_of,
)
from hermesflow.schedulers.workload import poisson_arrivals
from hermesflow.store import Store
from hermesflow.views import BackendViewPhase


@dataclass(frozen=True, slots=True)
class PlannedApp:
    """An application to submit `at_s` seconds after the experiment starts."""

    at_s: float
    app_class: str
    inputs: dict[str, Any]


PROBE_ROUNDS = 3
"""Identical rounds of probe calls; the fastest one is kept (module docstring of `probe_engine`)."""


@dataclass(frozen=True, slots=True)
class EngineProbe:
    """The speed of one LLM backend, measured on this machine before the runs."""

    backend: str
    prior: LLMEngineCost
    engine: LLMEngineCost
    """The prior refitted from the fastest round's calls by `calibration.calibrate_engine`."""
    results: tuple[CallResult, ...]
    """The calls of the fastest round."""
    seconds: float
    """Wall time of the fastest round (the model's load excluded)."""
    round_seconds: tuple[float, ...]
    """Wall time of every round, in order."""

    @property
    def slowdown(self) -> float:
        """Engine-seconds of decode work per token, measured over the prior's (>1: slower)."""
        return self.engine.decode_s_per_token / self.prior.decode_s_per_token

    def summary(self) -> dict[str, Any]:
        """What the probe measured, JSON-ready."""
        return {
            "engine_backend": self.backend,
            "engine_decode_s_per_token": self.engine.decode_s_per_token,
            "engine_prefill_s_per_token": self.engine.prefill_s_per_token,
            "engine_slowdown_vs_prior": self.slowdown,
            "probe_calls": len(self.results),
            "probe_s": self.seconds,
            "probe_round_s": list(self.round_seconds),
        }


def probe_engine(
    spec: BackendSpec, prior: LLMEngineCost, calls: Sequence[LLMCall], rounds: int = PROBE_ROUNDS
) -> EngineProbe:
    """Time `calls` on a fresh actor of the LLM backend `spec` and fit its engine timing.

    Each call joins once the previous one has produced its first text, so every call is
    prefilled alone (an unbiased prefill rate) while the decode batch grows call by call (decode
    iterations timed at several batch sizes, which the fit splits into a fixed and a per-sequence
    part). The calls are greedy, so every round does the same work: the fastest of `rounds` is
    kept, as `timeit` keeps its best — a machine that stays busy is slow in every round and is
    measured slow, a burst of someone else's work during one round is not taken for the engine.
    """
    if len(calls) < MIN_CALLS:
        raise ValueError(f"{len(calls)} probe calls; give at least {MIN_CALLS} for a calibration")
    if rounds < 1:
        raise ValueError(f"{rounds} probe rounds; give at least 1")
    actor = BackendActor.options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_restarts=0).remote(
        spec.model_dump(mode="json")
    )
    try:
        ray.get(actor.load.remote())
        timed = [_probe_round(actor, calls) for _ in range(rounds)]
    except RayError as error:
        raise ExperimentError(f"the speed probe of backend {spec.name!r} failed: {_message(error)}") from None
    finally:
        ray.kill(actor)
    seconds, results = min(timed, key=lambda round_: round_[0])
    failed = [r.error for r in results if r.finish_reason == "error"]
    if failed:
        raise ExperimentError(f"the speed probe of backend {spec.name!r} failed: {failed[0]}")
    engine = calibrate_engine(results, prior)
    return EngineProbe(spec.name, prior, engine, tuple(results), seconds, tuple(s for s, _ in timed))


def _probe_round(actor: Any, calls: Sequence[LLMCall]) -> tuple[float, list[CallResult]]:
    """One round of staggered probe calls (see `probe_engine`): its wall time and results."""
    started = time.perf_counter()
    streams = []
    for call in calls:
        stream = actor.stream.options(num_returns="streaming").remote(call.model_dump(mode="json"))
        streams.append((ray.get(next(stream)), stream))
    results = [_stream_result(first, stream) for first, stream in streams]
    return time.perf_counter() - started, results


def _stream_result(first: dict[str, Any], stream: Any) -> CallResult:
    """The result item of a backend actor's stream whose first item was `first`."""
    item = first
    for ref in stream:
        item = ray.get(ref)
    return CallResult.model_validate(item["result"])


def plan_arrivals(
    programs: Mapping[str, AppProgram], mix: Mapping[str, float], rate: float, n: int, seed: int
) -> list[PlannedApp]:
    """`n` Poisson arrivals at `rate` per second with inputs drawn by each class's program."""
    rng = np.random.default_rng([seed, 1])
    return [
        PlannedApp(a.time_s, a.app_class, programs[a.app_class].sample_inputs(rng).model_dump(mode="json"))
        for a in poisson_arrivals(rate, n, mix, seed)
    ]


def run_experiment(
    config: RuntimeConfig,
    apps: Sequence[PlannedApp],
    on_progress: Callable[[int], None] | None = None,
    timeout_s: float = 1800.0,
) -> RuntimeResult:
    """Run `apps` through a new scheduler built from `config` (Ray must be initialised).

    Applications still unfinished `timeout_s` after the last submission are given up on and
    reported `UNFINISHED`; a submission the scheduler refuses is reported `NOT_ADMITTED`. Every
    application gets an outcome, so one failure never hides the others' figures."""
    name = f"experiment-{uuid.uuid4().hex[:8]}"
    handle = start_scheduler(config, name=name)
    try:
        _wait_warm(handle, config.warm_at_start, timeout_s=300.0)
        start = time.time()
        submitted: list[str | AppOutcome] = []
        for app in apps:
            time.sleep(max(0.0, start + app.at_s - time.time()))
            try:
                submitted.append(ray.get(handle.submit.remote(app.app_class, app.inputs)).app_id)
            except (SubmissionError, RayError) as error:
                submitted.append(not_admitted(app.app_class, _message(error)))
        keys = [k for k in submitted if isinstance(k, str)]
        waited_from = time.time()
        _wait_all(handle, keys, len(submitted) - len(keys), waited_from + timeout_s, on_progress)
        waited_s = time.time() - waited_from
        makespan = time.time() - start
        stats = ray.get(handle.stats.remote())
        warmups = {b.name: b.warmup_s for b in ray.get(handle.backends.remote())}
    finally:
        ray.get(handle.shutdown.remote())
        ray.kill(handle, no_restart=True)
    db_url = config.db_url or ""
    runs = {r.key: r for r in RunJournal(Store(db_url)).runs_by_keys(keys)}
    outcomes = [k if isinstance(k, AppOutcome) else outcome_of(runs[k], waited_s) for k in submitted]
    span_s = apps[-1].at_s if apps else 0.0
    return RuntimeResult(
        stats.policy, stats.planner, outcomes, stats.overhead_ms_per_step,
        stats.overhead_wall_ms_per_step, stats.journal_ms_per_step, stats.completed_calls,
        makespan, warmups, db_url, _engine_load(config, db_url, span_s, start, start + makespan),
    )


def _wait_all(
    handle: Any, keys: Sequence[str], done: int, deadline: float, on_progress: Callable[[int], None] | None
) -> None:
    """Wait until every application in `keys` has ended or `deadline` (unix s) has passed."""
    pending = {handle.wait.remote(key, max(deadline - time.time(), 0.0)): key for key in keys}
    if on_progress is not None and done:
        on_progress(done)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(deadline - time.time(), 0.0))
        if not ready:
            return
        for ref in ready:
            pending.pop(ref)
            done += 1
            if on_progress is not None:
                on_progress(done)


def _engine_load(config: RuntimeConfig, db_url: str, span_s: float, start_s: float, end_s: float) -> EngineLoad | None:
    """The load of the busiest configured LLM engine at the cost model the run used (the
    probe's, in the demo); None without LLM backends or arrivals."""
    served = {b.name for b in config.backends}
    loads = [
        EngineLoad(name, offered_load(db_url, name, engine, span_s), busy_share(db_url, name, start_s, end_s))
        for name, engine in config.costs.llm.items()
        if name in served and span_s > 0 and end_s > start_s
    ]
    return max(loads, key=lambda load: load.offered, default=None)


def _message(error: Exception) -> str:
    """An error in one line: a remote task's own exception, not Ray's wrapper and traceback."""
    cause = error.cause if isinstance(error, RayTaskError) and error.cause is not None else error
    return f"{type(cause).__name__}: {cause}"


def _wait_warm(handle: Any, names: Sequence[str], timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while True:
        views = {b.name: b for b in ray.get(handle.backends.remote())}
        if all(views[n].phase is BackendViewPhase.WARM for n in names):
            return
        errors = [f"{n}: {views[n].last_error}" for n in names if views[n].last_error]
        if errors or time.time() > deadline:
            raise ExperimentError(
                f"the pinned backends did not warm up, so no application was submitted: {errors or names}"
            )
        time.sleep(0.2)
