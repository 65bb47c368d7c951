"""Configuration of the Ray runtime: policy, prewarm planner, backends, programs, store.

Kept apart from `runtime.py` so the CLI and the HTTP layer can build and validate a
configuration without importing Ray.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from hermesflow.backends.base import BackendSpec
from hermesflow.pdgraph.costs import CostModel, LLMEngineCost
from hermesflow.pdgraph.model import LLM_BACKEND
from hermesflow.schedulers.engine import EngineConfig
from hermesflow.schedulers.policies import POLICIES
from hermesflow.schedulers.prewarm import PLANNERS

SCHEDULER_NAME = "scheduler"
NAMESPACE = "hermesflow"

CPU_MODEL_COST = CostModel(
    llm={
        LLM_BACKEND: LLMEngineCost(
            prefill_s_per_token=1.5e-3,
            decode_s_per_token=8e-3,
            max_batch=8,
            kv_tokens=16_384,
            prefill_stalls=True,
        )
    }
)
"""SmolLM2-135M on 2 CPU cores in bf16, batch 8 (measured; see docs/benchmarks.md): the work
of an LLM call in engine-seconds at full batch; admission prefills in a pass of its own.
`schedulers/calibration.py` refits it from a real run."""

VLLM_MODEL_COST = CostModel(
    llm={
        LLM_BACKEND: LLMEngineCost(
            prefill_s_per_token=2e-5,
            decode_s_per_token=6e-4,
            max_batch=8,
            kv_tokens=65_536,
            prefill_stalls=False,
        )
    }
)
"""The prior for SmolLM2-135M in vLLM on one GPU, batch 8: a decode iteration of a few
milliseconds (a tiny model's iteration is mostly fixed per-step cost) and prefill chunked into
the batch. A starting point only: the demo's engine probe and `calibration` refit it."""


SERVABLE_POLICIES = tuple(name for name, cls in POLICIES.items() if not cls.needs_oracle)
"""Policies a live scheduler can run: the others need to know the future (simulation only)."""


def servable_policy(name: str) -> str:
    """`name` if a live scheduler can run that policy; else a ValueError that says which can."""
    if name in POLICIES and name not in SERVABLE_POLICIES:
        raise ValueError(
            f"policy {name!r} needs to know each application's future demand, so it runs only in "
            f"the simulator (`hermesflow simulate`); choose one of: {', '.join(SERVABLE_POLICIES)}"
        )
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(SERVABLE_POLICIES)}")
    return name


def known_planner(name: str) -> str:
    """`name` if it is a prewarm planner; else a ValueError that lists them."""
    if name not in PLANNERS:
        raise ValueError(f"unknown prewarm planner {name!r}; choose one of: {', '.join(PLANNERS)}")
    return name


class RuntimeConfig(BaseModel):
    """Everything the scheduler actor is built from; it is stored with the actor, so a
    restarted actor comes back with the same configuration.

    `programs` maps application classes to their `AppProgram` (`module:Class`); `warm_at_start`
    backends are warmed when the scheduler starts and pinned warm. `engine` holds the planner's
    interval, the admission-rate window and the retry limits, shared with the simulator. `policy`
    and `planner` are checked here, so a policy that needs the future fails where the
    configuration is written (the command line), not in the actor. An open application ends
    after `open_app_idle_s` without steps; one whose client names its steps (an Airflow DAG run, whose
    listener finishes it when the run ends) gets the longer `named_app_idle_s`, so a long native
    task between two steps does not end it.
    """

    model_config = ConfigDict(extra="forbid")

    policy: Annotated[str, AfterValidator(servable_policy)] = "gittins"
    planner: Annotated[str, AfterValidator(known_planner)] = "pdgraph"
    planner_options: dict[str, Any] = Field(default_factory=dict)
    db_url: str | None = None
    backends: list[BackendSpec] = Field(default_factory=list)
    programs: dict[str, str] = Field(default_factory=dict)
    warm_at_start: tuple[str, ...] = ()
    costs: CostModel = CPU_MODEL_COST
    engine: EngineConfig = Field(default_factory=EngineConfig)
    refit_interval_s: PositiveFloat = 10.0
    refit_window: PositiveInt = 500
    refit_min_samples: PositiveInt = 5
    open_app_idle_s: PositiveFloat = 300.0
    named_app_idle_s: PositiveFloat = 3600.0
