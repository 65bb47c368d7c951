"""The two ways of writing an application compile to one application graph: the map-reduce
summary as an Airflow DAG of Hermesflow operators (`dags/map_reduce.py`) and as a
Semantic-Variable program (`dags/map_reduce_program.py`) give equal `AppGraph`s, and so equal
PDGraph priors: the scheduler ranks their runs the same way."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("airflow")

from airflow.dag_processing.dagbag import DagBag
from provider_support import EXAMPLE_DAGS

from hermesflow.apps.app_graph import AppGraph, NodeKind
from hermesflow.operators.dag_graph import compile_dag, stage_kind


@pytest.fixture(scope="module")
def dag_graph() -> AppGraph:
    bag = DagBag(dag_folder=EXAMPLE_DAGS / "map_reduce.py")
    assert bag.import_errors == {}
    return compile_dag(bag.dags["summarize_map_reduce"])


@pytest.fixture(scope="module")
def program_graph() -> AppGraph:
    spec = importlib.util.spec_from_file_location("map_reduce_program", EXAMPLE_DAGS / "map_reduce_program.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.program.graph


def test_dag_and_program_compile_to_the_same_graph(dag_graph: AppGraph, program_graph: AppGraph) -> None:
    # the class names differ on purpose: a DAG class and a program class cannot share a name
    assert dag_graph.model_copy(update={"name": program_graph.name}) == program_graph
    assert dag_graph.order() == program_graph.order() == ("split", "summarize", "combine")


def test_the_shared_graph_has_the_data_flow_facts(program_graph: AppGraph) -> None:
    nodes = program_graph.nodes
    assert nodes["split"].kind is NodeKind.NATIVE
    assert nodes["summarize"].fanout == "map" and nodes["summarize"].deps == ("split",)
    assert nodes["combine"].deps == ("summarize",)
    assert program_graph.prefix_groups() == {nodes["summarize"].prefix: ("summarize",)}


def test_equal_graphs_give_equal_pdgraph_priors(dag_graph: AppGraph, program_graph: AppGraph) -> None:
    from_dag = dag_graph.to_pdgraph(stage_kind)
    from_program = program_graph.to_pdgraph(stage_kind)
    assert from_dag.stages == from_program.stages and from_dag.entry == from_program.entry
