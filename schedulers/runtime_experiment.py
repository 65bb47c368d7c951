"""One real experiment on the Ray runtime: a timed stream of applications through a scheduler.

The counterpart of `experiment.simulate` for real runs (the demo and `bench/runtime.py`).
`plan_arrivals` fixes the applications — arrival times, classes and inputs — from a seed
alone, so every policy of a comparison faces the same applications at the same offsets.
`run_experiment` starts a scheduler actor on a fresh store, waits until its pinned backends
are warm (start-up is not part of any application's time), submits each application at its
offset, waits for all of them, and reads the outcomes back from the store.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from hermesflow.apps.program import AppProgram
from hermesflow.journal import RunJournal
from hermesflow.store import Store
from hermesflow.schedulers.runtime import start_scheduler
from hermesflow.schedulers.runtime_config import RuntimeConfig
from hermesflow.schedulers.workload import poisson_arrivals


@dataclass(frozen=True, slots=True)
class PlannedApp:
    """An application to submit `at_s` seconds after the experiment starts."""

    at_s: float
    app_class: str
    inputs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AppOutcome:
    key: str
    app_class: str
    phase: str
    act_s: float
    cold_start_s: float
    attained_s: float


@dataclass(slots=True)
class RuntimeResult:
    """What one real run measured."""

    policy: str
    planner: str
    outcomes: list[AppOutcome]
    overhead_ms_per_step: float
    overhead_wall_ms_per_step: float
    journal_ms_per_step: float
    completed_calls: int
    makespan_s: float
    warmup_s: dict[str, float]
    db_url: str

    @property
    def acts(self) -> np.ndarray:
        return np.array([o.act_s for o in self.outcomes])

    def summary(self) -> dict[str, float | int | str]:
        acts = self.acts
        return {
            "policy": self.policy,
            "planner": self.planner,
            "apps_completed": sum(o.phase == "finished" for o in self.outcomes),
            "apps_failed": sum(o.phase != "finished" for o in self.outcomes),
            "mean_act_s": float(acts.mean()),
            "p95_act_s": float(np.percentile(acts, 95)),
            "cold_start_share": sum(o.cold_start_s for o in self.outcomes) / float(acts.sum()),
            "overhead_ms_per_step": self.overhead_ms_per_step,
            "overhead_wall_ms_per_step": self.overhead_wall_ms_per_step,
            "journal_ms_per_step": self.journal_ms_per_step,
            "calls": self.completed_calls,
            "makespan_s": self.makespan_s,
        }


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
    """Run `apps` through a new scheduler built from `config` (Ray must be initialised)."""
    name = f"experiment-{uuid.uuid4().hex[:8]}"
    handle = start_scheduler(config, name=name)
    try:
        _wait_warm(handle, config.warm_at_start, timeout_s=300.0)
        start = time.time()
        keys = []
        for app in apps:
            time.sleep(max(0.0, start + app.at_s - time.time()))
            keys.append(ray.get(handle.submit.remote(app.app_class, app.inputs))["app_id"])
        pending = {handle.wait.remote(key, timeout_s): key for key in keys}
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout_s)
            if not ready:
                raise TimeoutError(f"{len(pending)} applications unfinished after {timeout_s:.0f} s")
            for ref in ready:
                pending.pop(ref)
                done += 1
                if on_progress is not None:
                    on_progress(done)
        makespan = time.time() - start
        stats = ray.get(handle.stats.remote())
        warmups = {b["name"]: b["warmup_s"] for b in ray.get(handle.backends.remote())}
    finally:
        ray.get(handle.shutdown.remote())
        ray.kill(handle, no_restart=True)
    journal = RunJournal(Store(config.db_url))
    runs = {r.key: r for r in journal.runs_by_keys(keys)}
    outcomes = [
        AppOutcome(
            key,
            runs[key].app_class,
            runs[key].phase.name.lower(),
            runs[key].act_s or 0.0,
            runs[key].cold_start_s or 0.0,
            runs[key].attained_s or 0.0,
        )
        for key in keys
    ]
    return RuntimeResult(
        stats["policy"], stats["planner"], outcomes, stats["overhead_ms_per_step"],
        stats["overhead_wall_ms_per_step"], stats["journal_ms_per_step"], stats["completed_calls"], makespan, warmups, config.db_url or "",
    )


def _wait_warm(handle: Any, names: Sequence[str], timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while True:
        phases = {b["name"]: b for b in ray.get(handle.backends.remote())}
        if all(phases[n]["phase"] == "warm" for n in names):
            return
        errors = [f"{n}: {phases[n]['last_error']}" for n in names if phases[n]["last_error"]]
        if errors or time.time() > deadline:
            raise RuntimeError(f"backends did not warm up: {errors or names}")
        time.sleep(0.2)
