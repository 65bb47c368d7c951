"""The suite's registry, backends and demo mix."""

from __future__ import annotations

import importlib

import pytest

from hermesflow.apps.program import AppProgram
from hermesflow.apps.suite import (
    DEMO_MIX,
    REFERENCE_APPS,
    SEARCH_WARMUP_S,
    TOOL_FUNCTIONS,
    get_program,
    program_paths,
    suite_backends,
)
from hermesflow.apps.tools import load_document
from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.schedulers.runtime_config import CPU_MODEL_COST, RuntimeConfig


def test_the_registry_maps_each_class_name_to_its_program() -> None:
    assert set(REFERENCE_APPS) == {"fact_check", "react", "code_gen", "map_reduce"}
    for name, cls in REFERENCE_APPS.items():
        assert issubclass(cls, AppProgram) and cls.app_class == name
        assert isinstance(get_program(name), cls)


def test_the_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        REFERENCE_APPS["mine"] = AppProgram  # type: ignore[index]


def test_an_unknown_class_names_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match="no reference application class 'chat'; known classes: fact_check, react"
    ):
        get_program("chat")


def test_program_paths_import_back_to_the_programs() -> None:
    for name, path in program_paths().items():
        module, _, attribute = path.partition(":")
        assert getattr(importlib.import_module(module), attribute) is REFERENCE_APPS[name]


def test_the_backends_are_exactly_those_the_programs_use() -> None:
    specs = {spec.name: spec for spec in suite_backends()}
    used = {
        stage.backend for cls in REFERENCE_APPS.values() for stage in cls().prior().stages.values()
    }
    assert set(specs) == used == {"llm", "search", "code", "tools"}
    llm = specs["llm"]
    assert (llm.type, llm.options, llm.num_cpus, llm.expected_warmup_s) == (
        "transformers",
        {"max_batch": 8},
        1,
        5,
    )
    assert (specs["search"].type, specs["search"].expected_warmup_s) == ("search", SEARCH_WARMUP_S)
    assert specs["code"].type == "code" and specs["tools"].type == "python-tools"
    assert specs["tools"].options == {"tools": dict(TOOL_FUNCTIONS)}


def test_the_tool_pool_serves_the_builtin_tools_and_load_document() -> None:
    assert set(TOOL_FUNCTIONS) == {"calculator", "word_count", "sleep", "load_document"}
    for name, path in TOOL_FUNCTIONS.items():
        module, _, function = path.partition(":")
        assert getattr(importlib.import_module(module), function).__name__ == name
    module, _, function = TOOL_FUNCTIONS["load_document"].partition(":")
    assert getattr(importlib.import_module(module), function) is load_document


def test_the_suite_fits_a_runtime_configuration() -> None:
    config = RuntimeConfig(backends=suite_backends(), programs=program_paths())
    assert [b.name for b in config.backends] == ["llm", "search", "code", "tools"]


def test_small_classes_are_most_runs_and_big_ones_most_work() -> None:
    assert set(DEMO_MIX) == set(REFERENCE_APPS)
    assert sum(DEMO_MIX.values()) == pytest.approx(1.0)
    graphs = {name: cls().prior() for name, cls in REFERENCE_APPS.items()}
    demand = DemandEstimator(graphs, CPU_MODEL_COST, draws=2048, seed=0)
    work = {name: DEMO_MIX[name] * float(demand.total_demand(name).mean()) for name in graphs}
    small, big = ("fact_check", "react"), ("code_gen", "map_reduce")
    assert sum(DEMO_MIX[n] for n in small) > 0.5
    assert sum(work[n] for n in big) > 0.5 * sum(work.values())
    assert max(DEMO_MIX, key=DEMO_MIX.__getitem__) == "fact_check"
