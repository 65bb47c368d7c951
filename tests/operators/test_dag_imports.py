"""Every file of `dags/` imports as Airflow's DagBag parses it — the example DAGs and the
Semantic-Variable program that sits beside them — and the provider and plugin are registered
with Airflow through the package's entry points."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("airflow")

from airflow.dag_processing.dagbag import DagBag
from provider_support import EXAMPLE_DAGS

EXAMPLE_DAG_IDS = {"react_agent", "rag_answer", "summarize_map_reduce"}


def test_every_dag_file_imports_without_errors() -> None:
    bag = DagBag(dag_folder=EXAMPLE_DAGS)
    assert bag.import_errors == {}
    assert EXAMPLE_DAG_IDS <= set(bag.dags)
    parsed = {path.rsplit("/", 1)[-1] for path in bag.file_last_changed}
    assert parsed == {path.name for path in EXAMPLE_DAGS.glob("*.py")}


@pytest.mark.parametrize("path", sorted(EXAMPLE_DAGS.glob("*.py")), ids=lambda p: p.name)
def test_every_dag_file_imports_as_a_module(path: Path) -> None:
    """Also outside a DagBag (the program file is registered with Hermesflow as a module)."""
    spec = importlib.util.spec_from_file_location(f"dags_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_airflow_finds_the_provider_and_its_taskflow_decorators() -> None:
    from airflow.sdk import task
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    from hermesflow.operators.decorators import hermes_llm_task, hermes_tool_task

    manager = ProvidersManagerTaskRuntime()
    assert "hermesflow" in manager.providers
    hook = manager.hooks["hermesflow"]
    assert hook is not None and hook.hook_class_name == "hermesflow.operators.hook.HermesHook"
    assert (task.hermes_llm, task.hermes_tool) == (hermes_llm_task, hermes_tool_task)


def test_airflow_loads_the_plugin_with_the_listener() -> None:
    from airflow.plugins_manager import get_plugin_info

    (info,) = [p for p in get_plugin_info() if p["name"] == "hermesflow"]
    assert info["listeners"] == ["hermesflow.operators.listener"]
