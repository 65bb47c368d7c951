"""Tests for hermesflow.pdgraph.sampler and .demand: sampled runs, the visit-hazard loop model,
Monte-Carlo remaining demand, and the cached estimator the policies read."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from hermesflow.pdgraph.costs import AttentionCost, CostModel, LLMEngineCost
from hermesflow.pdgraph.demand import DemandEstimator, GraphState
from hermesflow.pdgraph.model import END, AttentionMethod, PDGraph
from hermesflow.pdgraph.sampler import CompiledGraph, RunPlan
from hermesflow.pdgraph.workload_file import hermes_mix

MIX = hermes_mix()
ALL_CLASSES = sorted(MIX)


@pytest.fixture(scope="module")
def costs() -> CostModel:
    return CostModel()


@pytest.fixture(scope="module")
def compiled(costs: CostModel) -> dict[str, CompiledGraph]:
    return {name: CompiledGraph(graph, costs) for name, graph in MIX.items()}


@pytest.fixture(scope="module")
def demand(costs: CostModel) -> DemandEstimator:
    return DemandEstimator(MIX, costs, draws=512, seed=7)


def _runs(graph: CompiledGraph, n: int, seed: int) -> list[RunPlan]:
    rng = np.random.default_rng(seed)
    return [graph.sample_run(rng) for _ in range(n)]


def _states_along(graph: CompiledGraph, plan: RunPlan) -> Iterator[GraphState]:
    """Every state an application following `plan` passes through, as the simulator builds
    them: each stage starts with all its requests pending, and they finish one by one."""
    visits = [0] * graph.end
    for stage in plan.stages:
        visits[graph.index[stage.stage]] += 1
        for pending in range(len(stage.requests), 0, -1):
            yield GraphState(plan.app_class, stage.stage, tuple(visits), pending)


# --------------------------------------------------------------------------- sample_run


@pytest.mark.parametrize("app_class", ALL_CLASSES)
def test_sample_run_is_deterministic_under_a_seed(
    compiled: dict[str, CompiledGraph], app_class: str
) -> None:
    assert _runs(compiled[app_class], 5, seed=3) == _runs(compiled[app_class], 5, seed=3)
    assert _runs(compiled[app_class], 5, seed=3) != _runs(compiled[app_class], 5, seed=4)


@pytest.mark.parametrize("app_class", ALL_CLASSES)
def test_every_sampled_run_is_a_path_to_the_end(
    compiled: dict[str, CompiledGraph], app_class: str
) -> None:
    graph: PDGraph = MIX[app_class]
    for plan in _runs(compiled[app_class], 100, seed=11):
        names = [s.stage for s in plan.stages]
        assert plan.app_class == app_class
        assert graph.entry.get(names[0], 0.0) > 0
        for here, there in zip(names, names[1:]):
            assert graph.stages[here].next.get(there, 0.0) > 0, (here, there)
        assert graph.stages[names[-1]].next.get(END, 0.0) > 0
        for stage in plan.stages:
            spec = graph.stages[stage.stage]
            assert stage.backend == graph.backend_of(stage.stage)
            fanouts = {1} if spec.fanout is None else {max(1, round(v)) for v in spec.fanout.values}
            assert len(stage.requests) in fanouts
            assert all(r.work_s >= 0 for r in stage.requests)
        assert plan.work_s == pytest.approx(sum(s.work_s for s in plan.stages))


def test_loop_visits_follow_the_observed_loop_counts(compiled: dict[str, CompiledGraph]) -> None:
    """The visit-hazard model reproduces react_alfw's observed thought counts, where a
    memoryless 0.9 self-loop would give a geometric count of mean 10."""
    observed = MIX["react_alfw"].stages["thought"].visits.values
    counts = np.array(
        [len(plan.stages) for plan in _runs(compiled["react_alfw"], 2000, seed=5)]
    )
    assert counts.mean() == pytest.approx(observed.mean(), rel=0.10)
    assert counts.min() >= observed.min()
    assert counts.max() <= observed.max()
    assert np.quantile(counts, 0.5) == pytest.approx(np.quantile(observed, 0.5), rel=0.15)


def test_got_docmerge_scores_run_exactly_twice(compiled: dict[str, CompiledGraph]) -> None:
    for plan in _runs(compiled["got_docmerge"], 300, seed=2):
        names = [s.stage for s in plan.stages]
        assert names.count("score1") == 2
        assert names.count("score2") == 2
        assert names.count("score3") == 1


@pytest.mark.parametrize("app_class", ["react_fever", "langchain_mapreduce", "factool_kbqa"])
def test_remaining_from_the_start_matches_sampled_runs(
    compiled: dict[str, CompiledGraph], app_class: str
) -> None:
    """`remaining` and `sample_run` share the transition code, so their means agree."""
    graph = compiled[app_class]
    runs = np.array([plan.work_s for plan in _runs(graph, 4000, seed=21)])
    draws = graph.remaining(None, (0,) * graph.end, 0, 4000, np.random.default_rng(22))
    assert draws.work_s.mean() == pytest.approx(runs.mean(), rel=0.05)
    by_backend = sum(draws.work_by_backend_s.values())
    np.testing.assert_allclose(by_backend, draws.work_s)


def test_remaining_first_need_is_zero_for_pending_work_and_inf_for_unused(
    compiled: dict[str, CompiledGraph],
) -> None:
    graph = compiled["factool_code"]
    rng = np.random.default_rng(0)
    draws = graph.remaining(graph.index["code_execution"], (1, 1, 1), 1, 64, rng)
    assert np.all(draws.first_need_s["code:factool_code"] == 0.0)
    assert np.all(np.isinf(draws.first_need_s["llm"]))
    assert np.all(draws.work_by_backend_s["llm"] == 0.0)


def _long_prompt_graph(attention: dict[str, float] | None) -> PDGraph:
    return PDGraph.model_validate(
        {
            "name": "long_prompt",
            "entry": {"read": 1.0},
            "stages": {
                "read": {
                    "kind": "llm",
                    "next": {END: 1.0},
                    "input_tokens": {"samples": [30_000, 50_000]},
                    "output_tokens": {"samples": [100]},
                    "attention": attention,
                }
            },
        }
    )


def test_requests_are_priced_by_the_attention_method_they_draw() -> None:
    """A stage whose prompts run sparse prefill needs less work, in the sampled ground truth
    and in the remaining demand alike; a method without measured rates is priced dense."""
    sparse = AttentionCost(prefill_s_per_token=1e-5)
    costs = CostModel(llm={"llm": LLMEngineCost(attention={AttentionMethod.MINFERENCE: sparse})})
    dense = CompiledGraph(_long_prompt_graph(None), costs)
    half = CompiledGraph(_long_prompt_graph({"minference": 0.5, "dense": 0.5}), costs)
    every = CompiledGraph(_long_prompt_graph({"minference": 1.0}), costs)
    unmeasured = CompiledGraph(_long_prompt_graph({"retrieval": 1.0}), costs)
    engine = costs.engine("llm")
    runs = _runs(every, 200, seed=3)
    for request in (r for plan in runs for stage in plan.stages for r in stage.requests):
        assert request.attention is AttentionMethod.MINFERENCE
        assert request.work_s == pytest.approx(request.input_tokens * 1e-5 + 100 * engine.decode_s_per_token)
    means = {
        name: graph.remaining(None, (0,), 0, 4000, np.random.default_rng(5)).work_s.mean()
        for name, graph in (("dense", dense), ("half", half), ("every", every), ("unmeasured", unmeasured))
    }
    decode = 100 * engine.decode_s_per_token
    assert means["dense"] == pytest.approx(40_000 * engine.prefill_s_per_token + decode, rel=0.02)
    assert means["every"] == pytest.approx(40_000 * 1e-5 + decode, rel=0.02)
    assert means["half"] == pytest.approx((means["dense"] + means["every"]) / 2, rel=0.03)
    assert means["unmeasured"] == pytest.approx(means["dense"], rel=0.02)


# --------------------------------------------------------------------------- DemandEstimator


def _some_states() -> list[GraphState]:
    graph = CompiledGraph(MIX["react_fever"], CostModel())
    states = [s for plan in _runs(graph, 3, seed=1) for s in _states_along(graph, plan)]
    return states + [GraphState("factool_code", None, (0, 0, 0), 0)]


def test_estimator_draws_do_not_depend_on_query_order(costs: CostModel) -> None:
    states = _some_states()
    forward = DemandEstimator(MIX, costs, draws=128, seed=3)
    backward = DemandEstimator(MIX, costs, draws=128, seed=3)
    first = {forward.key(s): forward.draws_for(s).work_s.copy() for s in states}
    second = {backward.key(s): backward.draws_for(s).work_s.copy() for s in reversed(states)}
    assert first.keys() == second.keys()
    for key, work in first.items():
        np.testing.assert_array_equal(work, second[key])
    other_seed = DemandEstimator(MIX, costs, draws=128, seed=4)
    assert not np.array_equal(other_seed.draws_for(states[0]).work_s, first[forward.key(states[0])])


def test_a_prepared_graph_holds_the_draws_and_ranks_a_first_look_up_would_make(
    costs: CostModel,
) -> None:
    graph = CompiledGraph(MIX["react_fever"], costs)
    prepared_estimator = DemandEstimator(MIX, costs, draws=128, seed=3)
    prepared = prepared_estimator.prepare(MIX["react_fever"], sample_runs=50)
    walked = [s for plan in _runs(graph, 20, seed=5) for s in _states_along(graph, plan)]
    assert {prepared_estimator.key(s) for s in walked} <= set(prepared.draws)
    assert ("react_fever", None, (0,) * graph.end, 0) in prepared.draws  # before the first stage
    prepared_estimator.install(prepared)
    lazy = DemandEstimator(MIX, costs, draws=128, seed=3)
    misses = prepared_estimator.ranks.misses
    for state in walked:
        assert prepared_estimator.draws_for(state) is prepared.draws[prepared_estimator.key(state)]
        np.testing.assert_array_equal(
            prepared_estimator.draws_for(state).work_s, lazy.draws_for(state).work_s
        )
        assert prepared_estimator.gittins(state) == lazy.gittins(state)
    assert prepared_estimator.ranks.misses == misses  # every rank was installed, none computed
    prepared_estimator.install(prepared_estimator.prepare(MIX["factool_code"], sample_runs=5))
    prepared_estimator.gittins(walked[0])  # another class's refit keeps this class's ranks
    assert prepared_estimator.ranks.misses == misses


def test_preparing_changes_nothing_until_installed(costs: CostModel) -> None:
    estimator = DemandEstimator(MIX, costs, draws=128, seed=3)
    state = GraphState("react_fever", None, (0,) * estimator.compiled("react_fever").end, 0)
    before = estimator.draws_for(state)
    changed = MIX["react_fever"].model_copy(update={"entry": dict(MIX["react_fever"].entry)})
    prepared = estimator.prepare(changed, sample_runs=5)
    assert estimator.draws_for(state) is before
    assert estimator.compiled("react_fever") is not prepared.compiled
    assert estimator.prepare(changed).draws == {}  # no sampled runs: compiled only
    estimator.install(prepared)  # the state was asked before: the new graph's draws answer now
    assert estimator.draws_for(state) is prepared.draws[estimator.key(state)]


def test_visits_beyond_the_cap_share_one_key(demand: DemandEstimator) -> None:
    cap = demand.compiled("react_alfw").visit_caps[0]
    observed_max = int(MIX["react_alfw"].stages["thought"].visits.values.max())
    assert cap == observed_max + 1

    def state(v: int) -> GraphState:
        return GraphState("react_alfw", "thought", (v,), 1)

    assert demand.key(state(cap)) == demand.key(state(cap + 1)) == demand.key(state(10 * cap))
    assert demand.key(state(cap - 1)) != demand.key(state(cap))
    assert demand.draws_for(state(cap + 3)) is demand.draws_for(state(cap + 40))


def test_visits_of_stages_without_loop_counts_do_not_split_keys(demand: DemandEstimator) -> None:
    assert demand.compiled("factool_code").visit_caps == (0, 0, 0)
    once = GraphState("factool_code", "code_execution", (1, 1, 1), 1)
    again = GraphState("factool_code", "code_execution", (3, 2, 5), 1)
    assert demand.key(once) == demand.key(again)


def test_remaining_demand_falls_along_a_linear_class(demand: DemandEstimator) -> None:
    """factool_code: generate_queries -> generate_solutions (3 requests) -> code_execution."""
    path = [
        GraphState("factool_code", "generate_queries", (1, 0, 0), 1),
        GraphState("factool_code", "generate_solutions", (1, 1, 0), 3),
        GraphState("factool_code", "generate_solutions", (1, 1, 0), 2),
        GraphState("factool_code", "generate_solutions", (1, 1, 0), 1),
        GraphState("factool_code", "code_execution", (1, 1, 1), 1),
    ]
    start = demand.mean_remaining(demand.initial_state("factool_code"))
    means = [demand.mean_remaining(s) for s in path]
    assert means[0] == pytest.approx(start, rel=0.02)  # nothing is done before the first finishes
    assert all(later < earlier for earlier, later in zip(means, means[1:])), means
    assert means[-1] == pytest.approx(1.0)  # code_execution takes 1 s in every trace


def test_need_probability_is_one_for_the_current_backend(demand: DemandEstimator) -> None:
    state = GraphState("factool_code", "generate_solutions", (1, 1, 0), 3)
    assert demand.need_probabilities(state, 0.0, {"llm": 1.0})["llm"] == 1.0


def test_need_probability_of_the_current_backend_after_the_stage_started(
    demand: DemandEstimator,
) -> None:
    """The stage's own requests are still pending on the LLM engine, so the application needs
    it whatever time has passed."""
    state = GraphState("factool_code", "generate_solutions", (1, 1, 0), 3)
    assert demand.need_probabilities(state, 2.0, {"llm": 1.0})["llm"] == 1.0


def test_need_probability_of_an_overdue_next_stage(demand: DemandEstimator) -> None:
    """factool_code always runs code_execution after generate_solutions. A stage that has run
    longer than every Monte-Carlo draw (its requests queued behind others) still needs the code
    backend next, and sooner than ever."""
    state = GraphState("factool_code", "generate_solutions", (1, 1, 0), 3)
    latest = float(demand.draws_for(state).first_need_s["code:factool_code"].max())
    p = demand.need_probabilities(state, latest + 5.0, {"code:factool_code": 4.0})["code:factool_code"]
    assert p == 1.0


def test_need_probability_is_zero_for_a_backend_the_class_never_uses(
    demand: DemandEstimator,
) -> None:
    state = GraphState("factool_math", "extract_claims", (1, 0), 1)
    assert demand.need_probabilities(state, 0.0, {"code:factool_code": 100.0})["code:factool_code"] == 0.0
    assert demand.need_probabilities(state, 0.0, {"no-such-backend": 100.0})["no-such-backend"] == 0.0
    assert demand.backend_use_probabilities("factool_math").get("code:factool_code", 0.0) == 0.0
    assert demand.backend_use_probabilities("factool_code")["code:factool_code"] == 1.0


def test_need_probability_grows_with_the_horizon(demand: DemandEstimator) -> None:
    state = GraphState("factool_code", "generate_solutions", (1, 1, 0), 3)
    probs = [
        demand.need_probabilities(state, 0.0, {"code:factool_code": h})["code:factool_code"] for h in (0.1, 2.0, 5.0, 60.0)
    ]
    assert probs == sorted(probs)
    assert probs[0] < probs[-1] == 1.0


@pytest.mark.parametrize("app_class", ALL_CLASSES)
def test_gittins_is_at_most_the_mean_remaining(demand: DemandEstimator, app_class: str) -> None:
    graph = demand.compiled(app_class)
    states = [demand.initial_state(app_class)]
    states += [s for plan in _runs(graph, 3, seed=9) for s in _states_along(graph, plan)]
    for state in states:
        rank, mean = demand.gittins(state), demand.mean_remaining(state)
        assert np.isfinite(rank)
        assert 0.0 <= rank <= mean + 1e-12, state


def test_unknown_class_names_the_known_ones(demand: DemandEstimator) -> None:
    with pytest.raises(KeyError, match="factool_code"):
        demand.compiled("no_such_class")


@pytest.mark.parametrize("elapsed_s", [0.0, 0.5, 3.0, 12.0])
def test_need_bounds_hold_the_need_probability_over_each_lookahead(
    demand: DemandEstimator, elapsed_s: float
) -> None:
    """Every need probability on a fine grid of later elapsed times lies within the bounds of
    each lookahead that covers it, the bounds widen with the lookahead, and a lookahead of 0
    gives the probability itself."""
    state = GraphState("factool_code", "generate_solutions", (1, 1, 0), 3)
    horizons = {"code:factool_code": 4.0, "llm": 1.0, "search": 2.0}
    lookaheads = np.array([0.0, 1.0, 4.0, 16.0])
    bounds = demand.need_bounds(state, elapsed_s, horizons, lookaheads)
    for backend, (low, high) in bounds.items():
        assert np.all(np.diff(low) <= 0) and np.all(np.diff(high) >= 0), backend
        now = demand.need_probabilities(state, elapsed_s, {backend: horizons[backend]})[backend]
        assert low[0] == pytest.approx(now) and high[0] == pytest.approx(now), backend
        for later in elapsed_s + np.linspace(0.0, lookaheads[-1], 161):
            p = demand.need_probabilities(state, float(later), {backend: horizons[backend]})[backend]
            covering = lookaheads >= later - elapsed_s - 1e-12
            assert np.all(low[covering] <= p + 1e-12) and np.all(p <= high[covering] + 1e-12), (backend, later)
    code_low, code_high = bounds["code:factool_code"]
    if elapsed_s > float(demand.draws_for(state).first_need_s["code:factool_code"].max()):
        assert np.all(code_low == 1.0) and np.all(code_high == 1.0)  # overdue: needed for sure
    else:
        assert code_low[-1] < code_high[-1]  # the code backend's need really moves with time
