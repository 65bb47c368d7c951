"""A DAG as an application: each example DAG compiles to its application graph (LLM and tool
nodes, branches, joins, mapped fan-out) and to a PDGraph; mistakes fail DAG parsing with a
message that names the task and the fix (seen as DagBag import errors, as Airflow shows them)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest.importorskip("airflow")

from airflow.dag_processing.dagbag import DagBag
from provider_support import EXAMPLE_DAGS

from hermesflow.apps.app_graph import AppNode, NodeKind
from hermesflow.operators.dag_graph import compile_dag, dag_pdgraph
from hermesflow.pdgraph.model import END, StageKind

LLM, TOOL, NATIVE = NodeKind.LLM, NodeKind.TOOL, NodeKind.NATIVE


@pytest.fixture(scope="module")
def examples() -> DagBag:
    bag = DagBag(dag_folder=EXAMPLE_DAGS)
    assert not bag.import_errors, bag.import_errors
    return bag


def test_map_reduce_maps_the_summaries_and_shares_their_prefix(examples: DagBag) -> None:
    graph = compile_dag(examples.dags["summarize_map_reduce"])
    assert list(graph.nodes.values()) == [
        AppNode(name="split", kind=NATIVE),
        AppNode(
            name="summarize",
            kind=LLM,
            backend="llm",
            deps=("split",),
            fanout="map",
            prefix="Summarise this passage in one sentence.\n\nPassage: ",
            max_tokens=48,
        ),
        AppNode(
            name="combine",
            kind=LLM,
            backend="llm",
            deps=("summarize",),
            prefix="Combine these summaries into one short paragraph.\n\nSummaries:\n",
            max_tokens=96,
        ),
    ]
    assert list(graph.prefix_groups().values()) == [("summarize",)]
    pdgraph = dag_pdgraph(examples.dags["summarize_map_reduce"])
    assert pdgraph.entry == {"summarize": 1.0}
    assert pdgraph.stages["summarize"].fanout is not None
    assert pdgraph.stages["combine"].next == {END: 1.0}


def test_rag_answer_is_a_search_then_an_answer(examples: DagBag) -> None:
    graph = compile_dag(examples.dags["rag_answer"])
    assert [(n.name, n.kind, n.backend, n.deps) for n in graph.nodes.values()] == [
        ("retrieve", TOOL, "search", ()),
        ("answer", LLM, "llm", ("retrieve",)),
    ]
    pdgraph = dag_pdgraph(examples.dags["rag_answer"])
    assert pdgraph.stages["retrieve"].kind is StageKind.SEARCH


def test_react_agent_branches_each_round_and_joins_any_way(examples: DagBag) -> None:
    graph = compile_dag(examples.dags["react_agent"])
    nodes = graph.nodes
    assert [name for name in nodes] == [
        "think_1", "decide_1", "search_1", "calculate_1",
        "think_2", "decide_2", "search_2", "calculate_2",
        "think_3", "answer",
    ]  # fmt: skip
    assert all(nodes[f"decide_{k}"].branch and nodes[f"decide_{k}"].kind is NATIVE for k in (1, 2))
    assert nodes["think_2"].join == "any" and nodes["think_2"].deps == ("calculate_1", "search_1")
    assert nodes["answer"].join == "any" and nodes["answer"].deps == (
        "decide_1",
        "decide_2",
        "think_3",
    )
    assert (nodes["search_1"].backend, nodes["calculate_1"].backend) == ("search", "tools")
    pdgraph = dag_pdgraph(examples.dags["react_agent"])
    # each round: answer, search or calculate, equally likely a priori
    assert pdgraph.stages["think_1"].next == pytest.approx(
        {"search_1": 1 / 3, "calculate_1": 1 / 3, END: 1 / 3}
    )
    assert pdgraph.stages["search_1"].next == {"think_2": 1.0}
    assert pdgraph.stages["think_3"].next == {END: 1.0}


# -- mistakes fail the parse ------------------------------------------------------------------

HEADER = """
import pendulum
from airflow.sdk import DAG
from hermesflow.operators.llm_step import LLMStepOperator
from hermesflow.operators.tool_step import ToolStepOperator

with DAG("broken", schedule=None, start_date=pendulum.datetime(2025, 1, 1)):
"""


def _import_error(tmp_path: Path, body: str) -> str:
    path = tmp_path / "broken_dag.py"
    path.write_text(HEADER + textwrap.indent(textwrap.dedent(body), "    "))
    bag = DagBag(dag_folder=path)
    assert "broken" not in bag.dags
    (error,) = bag.import_errors.values()
    return error.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            'ToolStepOperator(task_id="lookup", tool="search", backend="serach")',
            [
                "task 'lookup' of DAG 'broken': unknown backend 'serach'",
                "['code', 'llm', 'search', 'tools']",
                "HERMES_BACKENDS",
            ],
            id="unknown backend",
        ),
        pytest.param(
            'LLMStepOperator(task_id="summarize", prompt="Summarise: {{ passage }}")',
            [
                "task 'summarize' of DAG 'broken': the prompt uses {{ passage }} but nothing",
                "inputs={'passage': ...}",
            ],
            id="slot with no input",
        ),
        pytest.param(
            'LLMStepOperator.partial(task_id="summarize", prompt="{{ p }}", backend="gpt")'
            ".expand(inputs=[{'p': 'a'}])",
            ["task 'summarize' of DAG 'broken': unknown backend 'gpt'"],
            id="unknown backend of a mapped task",
        ),
        pytest.param(
            'LLMStepOperator(task_id="ask", prompt="Hi", hermes_conn_id="my conn")',
            [
                "task 'ask' of DAG 'broken': 'my conn' is not a valid connection id",
                "hermesflow_default",
            ],
            id="bad connection id",
        ),
        pytest.param(
            'LLMStepOperator(task_id="ask", prompt="Hi", max_tokens=0)',
            ["task 'ask' of DAG 'broken': max_tokens: Input should be greater than or equal to 1"],
            id="out-of-range option",
        ),
        pytest.param(
            'LLMStepOperator(task_id="chat", messages=[{"role": "robot", "content": "hi"}])',
            ["task 'chat' of DAG 'broken': messages.0.role: Input should be 'system'"],
            id="bad chat role",
        ),
        pytest.param(
            'LLMStepOperator(task_id="ask")',
            ["task 'ask' of DAG 'broken': no prompt; give prompt='...'"],
            id="no prompt",
        ),
        pytest.param(
            """
            first = LLMStepOperator(task_id="first", prompt="a")
            second = LLMStepOperator(task_id="second", prompt="b")
            first >> second >> first
            """,
            [
                "task 'first' of DAG 'broken': `second >> first` closes the cycle "
                "second → first → second",
                "dags/react_agent.py",
                "loop()",
            ],
            id="cycle",
        ),
        pytest.param(
            """
            from airflow.providers.standard.operators.empty import EmptyOperator
            first = LLMStepOperator(task_id="first", prompt="a")
            gather = EmptyOperator(task_id="gather")
            first >> gather >> LLMStepOperator(task_id="second", prompt="b")
            first << gather
            """,
            ["task 'first' of DAG 'broken': `first >> gather` closes the cycle first → gather → first"],
            id="cycle through another operator",
        ),
        pytest.param(
            'LLMStepOperator(task_id="ask", prompt="Hi", hermes_conn_id="elsewhere")',
            [
                "task 'ask' of DAG 'broken': Airflow connection 'elsewhere' has type 'http'",
                "AIRFLOW_CONN_ELSEWHERE='hermesflow://:TOKEN@127.0.0.1:8000'",
                "(read from AIRFLOW_CONN_ELSEWHERE)",
            ],
            id="connection of the wrong type",
        ),
        pytest.param(
            'LLMStepOperator(task_id="ask", prompt="Hi", hermes_conn_id="hostless")',
            ["task 'ask' of DAG 'broken': Airflow connection 'hostless' has no host"],
            id="connection without a host",
        ),
    ],
)
def test_a_mistake_fails_the_parse_naming_the_task_and_the_fix(
    tmp_path: Path, body: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ELSEWHERE", "http://127.0.0.1:8000")
    monkeypatch.setenv("AIRFLOW_CONN_HOSTLESS", '{"conn_type": "hermesflow", "password": "t"}')
    error = _import_error(tmp_path, body)
    for part in expected:
        assert part in error, error


def test_inputs_and_context_names_and_user_macros_fill_the_slots(tmp_path: Path) -> None:
    path = tmp_path / "fine_dag.py"
    path.write_text(
        HEADER.replace(
            "start_date=pendulum.datetime(2025, 1, 1)",
            'start_date=pendulum.datetime(2025, 1, 1), user_defined_macros={"shout": str.upper}',
        )
        + textwrap.indent(
            textwrap.dedent(
                """
                LLMStepOperator(
                    task_id="ask",
                    prompt="{{ shout(params.q) }} {{ passage }} {% for x in items %}{{ x }}{% endfor %}",
                    inputs={"passage": "{{ ds }}", "items": [1, 2]},
                )
                """
            ),
            "    ",
        )
    )
    bag = DagBag(dag_folder=path)
    assert not bag.import_errors, bag.import_errors
    assert compile_dag(bag.dags["broken"]).nodes["ask"].prefix is None
