"""Fixtures for the scheduler tests: the Hermes classes, one shared demand estimator, and
factories for application and request records. Imports no Ray or Airflow."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import pytest

from hermesflow.pdgraph.costs import CostModel
from hermesflow.pdgraph.demand import DemandEstimator, GraphState
from hermesflow.pdgraph.model import PDGraph
from hermesflow.pdgraph.workload_file import hermes_mix
from hermesflow.schedulers.interface import AppRecord, RequestRecord

ESTIMATOR_DRAWS = 256
"""Monte-Carlo draws per state: enough for stable ranks, small enough for fast tests."""


@pytest.fixture(scope="session")
def graphs() -> Mapping[str, PDGraph]:
    """The nine Hermes application classes shipped with the package."""
    return hermes_mix()


@pytest.fixture(scope="session")
def demand(graphs: Mapping[str, PDGraph]) -> DemandEstimator:
    """One estimator for every test: its answers depend only on (seed, state), not on the
    order states are asked in, so sharing it across tests keeps them independent."""
    return DemandEstimator(graphs, CostModel(), draws=ESTIMATOR_DRAWS, seed=0)


@pytest.fixture
def make_app(demand: DemandEstimator) -> Callable[..., AppRecord]:
    """Build an `AppRecord`; ids are unique within a test. `stage=None` gives the initial
    state; a stage name gives a state in that stage with the given visits and pending count."""
    ids = itertools.count()

    def build(
        app_class: str = "factool_code",
        *,
        arrival_s: float = 0.0,
        stage: str | None = None,
        visits: tuple[int, ...] | None = None,
        pending: int = 1,
        attained_s: float = 0.0,
        running_since_s: float | None = None,
        true_remaining_s: float | None = None,
    ) -> AppRecord:
        if stage is None:
            state = demand.initial_state(app_class)
        else:
            compiled = demand.compiled(app_class)
            counts = visits if visits is not None else _visits_up_to(compiled.stage_names, stage)
            state = GraphState(app_class, stage, counts, pending)
        return AppRecord(
            app_id=next(ids),
            app_class=app_class,
            arrival_s=arrival_s,
            state=state,
            attained_s=attained_s,
            stage_running_since_s=running_since_s,
            true_remaining_s=true_remaining_s,
        )

    return build


def _visits_up_to(stage_names: tuple[str, ...], stage: str) -> tuple[int, ...]:
    """Visit counts of a linear class that has run every stage up to and including `stage`."""
    last = stage_names.index(stage)
    return tuple(1 if i <= last else 0 for i in range(len(stage_names)))


@pytest.fixture
def make_request() -> Callable[..., RequestRecord]:
    """Build a `RequestRecord` of an application; ids increase in creation order."""
    ids = itertools.count()

    def build(app: AppRecord, *, backend: str = "llm", ready_s: float = 0.0) -> RequestRecord:
        return RequestRecord(request_id=next(ids), app=app, backend=backend, ready_s=ready_s)

    return build
