"""The contract every reference program keeps, checked for all four (parametrized over the
registry): its prior is a valid graph on the suite's backends, every step it emits is a stage of
that graph on the stage's backend, every stage of the graph is reached by some run, runs are
deterministic and JSON-safe, sampled inputs are valid, and the classes differ in size as
designed."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hermesflow.apps.program import AppProgram, StepPlan
from hermesflow.apps.suite import REFERENCE_APPS, suite_backends
from hermesflow.apps.suite_data import corpus
from hermesflow.apps.tools import load_document
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.pdgraph.model import LLM_BACKEND, PDGraph, StageKind
from hermesflow.schedulers.runtime_config import CPU_MODEL_COST

PROGRAMS = sorted(REFERENCE_APPS)
EXPLORATION_SEEDS = 60

LLM_REPLIES = (
    "answer: Canberra",
    "search: capital of Australia",
    "Search[Mount Everest height]",
    "calculate: 17 * 23",
    "It is 12 x 3 I think",
    "blah blah blah",
    "",
    "```python\ndef add(a, b):\n    return a + b\n```",
    "True",
    "False, the evidence says otherwise.",
    "1. Canberra is the capital of Australia.\n2. The Moon is made of cheese.",
    "Summary: the document explains how things work.",
)
"""Replies that exercise every parser: actions, answers, code, verdicts, claim lists, junk."""


def fuzz_responder(seed: int) -> Callable[[StepPlan], list[CallResult]]:
    """Random but well-typed backend results (about one call in eight fails)."""
    rng = np.random.default_rng(seed)
    passages = corpus()

    def error() -> CallResult:
        return CallResult(finish_reason="error", error="backend said no")

    def one(call: LLMCall | ToolCall) -> CallResult:
        if rng.random() < 0.125:
            return error()
        if isinstance(call, LLMCall):
            return CallResult(
                text=LLM_REPLIES[int(rng.integers(len(LLM_REPLIES)))], output_tokens=5
            )
        if call.tool == "search":
            hits = [
                {"id": p.id, "title": p.title, "text": p.text, "score": 1.0}
                for p in passages[: call.args["k"]]
            ]
            return CallResult(text="\n".join(h["text"] for h in hits), value=hits)
        if call.tool == "calculator":
            return CallResult(text="42.0", value=42.0)
        if call.tool == "load_document":
            return CallResult(value=load_document(call.args["doc_id"]))
        if call.tool == "run_python":
            passed = bool(rng.random() < 0.4)
            value = {
                "returncode": 0 if passed else 1,
                "stdout": "ALL TESTS PASSED\n" if passed else "",
                "stderr": "" if passed else "AssertionError",
                "timed_out": False,
            }
            return CallResult(value=value)
        raise AssertionError(f"unexpected tool {call.tool!r}")

    return lambda step: [one(call) for call in step.calls]


def explore(program: AppProgram, seed: int, drive_app: Callable[..., Any]) -> Any:
    inputs = program.sample_inputs(np.random.default_rng(seed))
    return drive_app(program, inputs, fuzz_responder(seed))


@pytest.fixture(params=PROGRAMS)
def program(request: pytest.FixtureRequest) -> AppProgram:
    return REFERENCE_APPS[request.param]()


def test_prior_is_a_valid_graph_on_the_suite_backends(program: AppProgram) -> None:
    graph = program.prior()
    assert graph.name == program.app_class
    assert PDGraph.model_validate_json(graph.model_dump_json()) == graph
    backends = {spec.name for spec in suite_backends()}
    for name, stage in graph.stages.items():
        assert stage.backend in backends, f"stage {name!r} declares no suite backend"
        assert (stage.kind is StageKind.LLM) == (stage.backend == LLM_BACKEND), name
    assert set(graph.reachable) == set(graph.stages)


def test_emitted_steps_are_prior_stages_and_every_stage_is_reached(
    program: AppProgram, drive_app: Callable[..., Any]
) -> None:
    graph = program.prior()
    seen: set[str] = set()
    for seed in range(EXPLORATION_SEEDS):
        run = explore(program, seed, drive_app)
        for step in run.steps:
            assert step.stage in graph.stages, f"{step.stage!r} is not a stage of the prior"
            assert step.backend == graph.stages[step.stage].backend
            kind = graph.stages[step.stage].kind
            assert all((call.kind == "llm") == (kind is StageKind.LLM) for call in step.calls)
        first = run.steps[0].stage
        assert graph.entry.get(first, 0) > 0, f"runs start at {first!r}, which is no entry"
        for before, after in itertools.pairwise(run.stages):
            assert graph.stages[before].next.get(after, 0) > 0, (before, after)
        if graph.stages[run.steps[-1].stage].next.get("__end__", 0) == 0:
            # only a failed call ends a run off the graph's paths, and the result says so
            assert "error" in run.result, (run.stages, run.result)
        seen.update(run.stages)
    assert seen == set(graph.stages), f"never reached: {set(graph.stages) - seen}"


def test_same_results_give_the_same_transitions(
    program: AppProgram, drive_app: Callable[..., Any]
) -> None:
    for seed in range(10):
        assert (
            explore(program, seed, drive_app).record() == explore(program, seed, drive_app).record()
        )


def test_sampled_inputs_are_valid_and_round_trip(program: AppProgram) -> None:
    for seed in range(200):
        inputs = program.sample_inputs(np.random.default_rng(seed))
        assert isinstance(inputs, program.Inputs)
        assert program.validate_inputs(json.loads(inputs.model_dump_json())) == inputs


def test_sampled_budgets_cover_their_range() -> None:
    rng = np.random.default_rng(0)
    react, code_gen = REFERENCE_APPS["react"](), REFERENCE_APPS["code_gen"]()
    assert {react.sample_inputs(rng).max_rounds for _ in range(300)} == {1, 2, 3, 4, 5}
    assert {code_gen.sample_inputs(rng).max_tries for _ in range(300)} == {1, 2, 3}


def test_prior_loops_and_fanouts_follow_the_inputs() -> None:
    priors = {name: cls().prior() for name, cls in REFERENCE_APPS.items()}
    rounds = priors["react"].stages["think"].visits.values
    assert rounds.min() == 1 and rounds.max() == 5
    runs = priors["code_gen"].stages["run_tests"].visits.values
    assert runs.min() == 1 and runs.max() == 3
    chunks = priors["map_reduce"].stages["summarize_chunks"].fanout.values
    assert chunks.min() == 2 and chunks.max() == 10
    claims = priors["fact_check"].stages["search_evidence"].fanout.values
    assert claims.min() == 1 and claims.max() == 4


def test_class_sizes_differ_in_the_designed_order() -> None:
    """Mean demand of a whole run, in CPU-engine seconds: fact_check is the smallest,
    map_reduce the largest by a wide margin."""
    graphs = {name: cls().prior() for name, cls in REFERENCE_APPS.items()}
    demand = DemandEstimator(graphs, CPU_MODEL_COST, draws=2048, seed=0)
    mean = {name: float(demand.total_demand(name).mean()) for name in graphs}
    assert mean["fact_check"] < mean["react"] < mean["map_reduce"]
    assert mean["fact_check"] < mean["code_gen"] < mean["map_reduce"]
    assert mean["map_reduce"] > 2.5 * mean["fact_check"]


def test_the_suite_imports_without_ray_airflow_or_torch() -> None:
    """Programs run inside the scheduler and the simulator: no heavy import behind them."""
    probe = (
        "import sys, json, hermesflow.apps.suite, hermesflow.apps.tools; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('ray', 'airflow', 'torch', 'transformers'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
