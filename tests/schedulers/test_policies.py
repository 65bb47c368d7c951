"""Tests for hermesflow.schedulers.policies: the registry and each policy's key."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.schedulers.interface import AppRecord, Policy, RequestRecord
from hermesflow.schedulers.policies import POLICIES, make_policy

AppFactory = Callable[..., AppRecord]
RequestFactory = Callable[..., RequestRecord]

ESTIMATED = ["gittins", "hermes", "hermes-simplified", "srjf-mean"]
"""Policies whose key comes from the PDGraph demand estimates."""


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_builds_by_name(demand: DemandEstimator, name: str) -> None:
    policy = make_policy(name, demand)
    assert isinstance(policy, Policy)
    assert type(policy) is POLICIES[name]
    assert policy.name == name
    assert policy.description
    assert policy.demand is demand


def test_unknown_policy_lists_the_choices(demand: DemandEstimator) -> None:
    with pytest.raises(ValueError, match="unknown policy 'sjf'") as err:
        make_policy("sjf", demand)
    for name in POLICIES:
        assert name in str(err.value)


def test_only_srpt_needs_the_oracle() -> None:
    assert {name for name, cls in POLICIES.items() if cls.needs_oracle} == {"srpt"}


def test_fcfs_orders_by_ready_time(
    demand: DemandEstimator, make_app: AppFactory, make_request: RequestFactory
) -> None:
    policy = make_policy("fcfs", demand)
    early_app, late_app = make_app(arrival_s=0.0), make_app(arrival_s=5.0)
    late_request = make_request(early_app, ready_s=9.0)
    early_request = make_request(late_app, ready_s=6.0)
    assert policy.key(early_request) < policy.key(late_request)


def test_app_fifo_orders_by_app_arrival(
    demand: DemandEstimator, make_app: AppFactory, make_request: RequestFactory
) -> None:
    policy = make_policy("app-fifo", demand)
    old, new = make_app(arrival_s=1.0), make_app(arrival_s=4.0)
    assert policy.key(make_request(old, ready_s=50.0)) < policy.key(make_request(new, ready_s=5.0))


def test_las_orders_by_attained_service(
    demand: DemandEstimator, make_app: AppFactory, make_request: RequestFactory
) -> None:
    policy = make_policy("las", demand)
    served, fresh = make_app(arrival_s=0.0, attained_s=3.0), make_app(arrival_s=9.0)
    assert policy.key(make_request(fresh)) < policy.key(make_request(served))
    served.attained_s = 0.0
    assert policy.key(make_request(fresh)) == policy.key(make_request(served))


def test_vtc_lifts_new_apps_and_charges_service(
    demand: DemandEstimator, make_app: AppFactory, make_request: RequestFactory
) -> None:
    policy = make_policy("vtc", demand)
    a, b, c = make_app(), make_app(), make_app()
    policy.on_admit(a, now=0.0)
    assert policy.key(make_request(a)) == 0.0
    policy.on_service(a, 5.0, now=1.0)
    policy.on_admit(b, now=2.0)  # lifted to the smallest active counter: a's 5
    assert policy.key(make_request(b)) == 5.0
    policy.on_service(a, 1.0, now=3.0)
    policy.on_service(b, 2.5, now=3.0)
    assert policy.key(make_request(a)) == 6.0
    assert policy.key(make_request(b)) == 7.5
    policy.on_admit(c, now=4.0)
    assert policy.key(make_request(c)) == 6.0
    policy.on_finish(a, now=5.0)
    policy.on_finish(c, now=5.0)
    late = make_app()
    policy.on_admit(late, now=6.0)  # only b is active
    assert policy.key(make_request(late)) == 7.5
    policy.on_finish(b, now=7.0)
    policy.on_finish(late, now=7.0)
    alone = make_app()
    policy.on_admit(alone, now=8.0)  # no active client: an idle system starts from zero
    assert policy.key(make_request(alone)) == 0.0


def test_srpt_needs_the_true_remaining_demand(
    demand: DemandEstimator, make_app: AppFactory, make_request: RequestFactory
) -> None:
    policy = make_policy("srpt", demand)
    with pytest.raises(ValueError, match="srpt.*simulator"):
        policy.key(make_request(make_app()))
    short, long = make_app(true_remaining_s=1.5), make_app(true_remaining_s=8.0)
    assert policy.key(make_request(short)) == 1.5 < policy.key(make_request(long))


@pytest.mark.parametrize("name", ESTIMATED)
def test_estimated_keys_are_finite_for_every_class(
    demand: DemandEstimator, make_app: AppFactory, make_request: RequestFactory, name: str
) -> None:
    policy = make_policy(name, demand)
    for app_class in demand.classes:
        for attained in (0.0, 0.5, 100.0):
            key = policy.key(make_request(make_app(app_class, attained_s=attained)))
            assert math.isfinite(key) and key >= 0.0, (app_class, attained, key)


@pytest.mark.parametrize("name", ESTIMATED)
def test_a_later_stage_of_a_linear_class_ranks_first(
    demand: DemandEstimator, make_app: AppFactory, make_request: RequestFactory, name: str
) -> None:
    """factool_code: generate_queries -> generate_solutions -> code_execution. An application
    about to finish (in code_execution, with its LLM work done) goes before a fresh one."""
    plan = demand.compiled("factool_code").sample_run(np.random.default_rng(0))
    done_before_last = sum(stage.work_s for stage in plan.stages[:-1])
    policy = make_policy(name, demand)
    fresh = make_app("factool_code", stage="generate_queries", attained_s=0.0)
    later = make_app("factool_code", stage="code_execution", attained_s=done_before_last)
    assert policy.key(make_request(later, backend="code:factool_code")) < policy.key(
        make_request(fresh)
    )


@pytest.mark.parametrize("app_class", ["factool_code", "react_alfw", "hugginggpt", "code_feedback"])
@pytest.mark.parametrize("attained", [0.0, 0.2, 1.0, 3.0])
def test_hermes_simplified_never_exceeds_the_exact_index(
    demand: DemandEstimator,
    make_app: AppFactory,
    make_request: RequestFactory,
    app_class: str,
    attained: float,
) -> None:
    request = make_request(make_app(app_class, attained_s=attained))
    exact = make_policy("hermes", demand).key(request)
    simplified = make_policy("hermes-simplified", demand).key(request)
    assert simplified <= exact + 1e-12
