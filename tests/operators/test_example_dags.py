"""The example DAGs of `dags/` end to end: `airflow dags test` (a real Airflow 3 process on
SQLite, triggers run inline) against the real Hermesflow API with the CPU LLM, search and the
tool pool. Each DAG runs once per module; the tests read that run from Airflow's database and
from Hermesflow — the steps it dispatched, and what the listener recorded: every task's outcome
and the application's end."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

pytest.importorskip("airflow")
pytest.importorskip("ray")

from airflow.dag_processing.dagbag import DagBag
from provider_support import EXAMPLE_DAGS, DagRunResult, Hermes, dags_test

from hermesflow.operators.dag_graph import dag_pdgraph
from hermesflow.pdgraph.model import PDGraph
from hermesflow.schedulers.open_apps import structure_of

EXAMPLES: dict[str, dict[str, Any]] = {
    "react_agent": {"question": "What is 12 * 7 + 5?"},
    "rag_answer": {"question": "When was smallpox declared eradicated?"},
    "summarize_map_reduce": {"doc_id": "water-cycle", "text": None, "max_chunks": 2},
}
"""Each example DAG with the params of its test run (water-cycle has two chunks)."""
SLOW_EXAMPLES = ("react_agent", "summarize_map_reduce")
"""Run by `make test-slow` only: 20-30 s each of real LLM calls; `make test` runs `rag_answer`."""
DAG_IDS = [
    pytest.param(dag_id, marks=pytest.mark.slow) if dag_id in SLOW_EXAMPLES else dag_id
    for dag_id in sorted(EXAMPLES)
]


@pytest.fixture(scope="module")
def run_example(airflow_db: object, hermes: Hermes) -> Any:
    """`dags test` of an example DAG, once per DAG for the whole module."""

    @cache
    def run(dag_id: str) -> DagRunResult:
        result = dags_test(dag_id, conf=EXAMPLES[dag_id])
        print(f"airflow dags test {dag_id}: {result.state} in {result.seconds:.1f} s")
        return result

    return run


def _check_success(result: DagRunResult) -> None:
    assert result.state == "success", result.output[-6000:]


@pytest.mark.slow
def test_map_reduce_summarises_each_chunk_and_combines(run_example: Any, hermes: Hermes) -> None:
    result = run_example("summarize_map_reduce")
    _check_success(result)
    summaries = [i["xcom"] for i in result.tasks["summarize"]]
    assert len(summaries) == 2 and all(isinstance(s, str) for s in summaries)
    assert isinstance(result.xcom("combine"), str) and result.xcom("combine").strip()
    assert hermes.calls(result.app_id) == [
        ("summarize", "llm"),
        ("summarize", "llm"),
        ("combine", "llm"),
    ]


def test_rag_answer_retrieves_then_answers(run_example: Any, hermes: Hermes) -> None:
    result = run_example("rag_answer")
    _check_success(result)
    assert "smallpox" in result.xcom("retrieve").lower()  # the passages, as text
    assert result.xcom("answer").strip()
    assert hermes.calls(result.app_id) == [("retrieve", "search"), ("answer", "llm")]


@pytest.mark.slow
def test_react_agent_follows_one_way_per_round(run_example: Any, hermes: Hermes) -> None:
    result = run_example("react_agent")
    _check_success(result)
    states = result.states()
    assert states["think_1"] == "success" and states["answer"] == "success"
    assert result.xcom("answer")["answer"]
    for k in (1, 2):  # a round either acted with one tool, or answered and skipped the rest
        acted = [states[f"{tool}_{k}"] for tool in ("search", "calculate")]
        assert sorted(acted) in (["skipped", "success"], ["skipped", "skipped"]), states
    served = [
        t
        for t, s in states.items()
        if s == "success" and t.split("_")[0] in ("think", "search", "calculate")
    ]
    assert len(hermes.dispatches(result.app_id)) == len(served)


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_listener_records_every_task_and_ends_the_application(
    run_example: Any, hermes: Hermes, dag_id: str
) -> None:
    result = run_example(dag_id)
    _check_success(result)
    outcomes = hermes.outcomes(result.app_id)
    recorded = {(o.task_id, o.map_index): o.state.value for o in outcomes}
    expected = {
        (task, instance["map_index"]): instance["state"]
        for task, instances in result.tasks.items()
        for instance in instances
    }
    assert recorded == expected
    steps = {o.task_id: o.step_id for o in outcomes if o.step_id is not None}
    assert steps and all(step.startswith(task) for task, step in steps.items())
    assert hermes.app(result.app_id)["phase"] == "finished"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_the_scheduler_ranks_the_runs_over_the_graph_the_dag_declares(
    run_example: Any, hermes: Hermes, dag_id: str
) -> None:
    _check_success(run_example(dag_id))
    bag = DagBag(dag_folder=EXAMPLE_DAGS)
    with hermes.client() as api:
        served = PDGraph.model_validate(api.get(f"/v1/classes/{dag_id}/graph").json())
    assert structure_of(served) == structure_of(dag_pdgraph(bag.dags[dag_id]))
