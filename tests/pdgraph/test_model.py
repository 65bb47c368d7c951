"""Tests for hermesflow.pdgraph.model: PDGraph validation, loop edges, backends, reachability."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, LLM_BACKEND, AttentionMethod, PDGraph
from hermesflow.pdgraph.workload_file import SCHEMA, WorkloadFileError, hermes_mix, parse_workload

CLASS = "demo"


def _llm(next_: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {
        "kind": "llm",
        "next": next_,
        "input_tokens": {"samples": [100, 200]},
        "output_tokens": {"samples": [10, 20]},
        **extra,
    }


def _tool(next_: dict[str, float], kind: str = "tool", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "next": next_, "exec_s": {"samples": [0.5, 1.5]}, **extra}


def _graph(stages: dict[str, dict[str, Any]], entry: dict[str, float] | None = None) -> PDGraph:
    return PDGraph.model_validate(
        {"name": CLASS, "entry": entry or {next(iter(stages)): 1.0}, "stages": stages}
    )


def _assert_names(err: pytest.ExceptionInfo[BaseException], *parts: str) -> None:
    message = str(err.value)
    for part in parts:
        assert part in message, f"{part!r} missing from: {message}"


@pytest.fixture(scope="module")
def mix() -> dict[str, PDGraph]:
    return hermes_mix()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("probability", [1.5, -0.5])
def test_probability_outside_unit_interval_names_class_stage_field(probability: float) -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({END: probability, "a": 1.0 - probability})})
    _assert_names(err, f"class {CLASS!r}", "stage 'a'", "field 'next'", "[0, 1]")


def test_probabilities_must_sum_to_one() -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({"b": 0.5}), "b": _tool({END: 0.7, "a": 0.2})})
    _assert_names(err, f"class {CLASS!r}", "stage 'a'", "field 'next'", "sum to 0.5")


def test_entry_probabilities_must_sum_to_one() -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({END: 1.0})}, entry={"a": 0.9})
    _assert_names(err, f"class {CLASS!r}", "field 'entry'", "sum to 0.9")


def test_empty_entry_is_rejected() -> None:
    with pytest.raises(ValueError) as err:
        PDGraph.model_validate({"name": CLASS, "entry": {}, "stages": {"a": _llm({END: 1.0})}})
    _assert_names(err, f"class {CLASS!r}", "field 'entry'", "empty")


def test_unknown_successor() -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({"nowhere": 1.0})})
    _assert_names(err, f"class {CLASS!r}", "stage 'a'", "field 'next'", "'nowhere'")


def test_unknown_entry_stage() -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({END: 1.0})}, entry={"ghost": 1.0})
    _assert_names(err, f"class {CLASS!r}", "field 'entry'", "'ghost'", "known stages")


def test_end_is_reserved() -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({END: 1.0}), END: _llm({END: 1.0})}, entry={"a": 1.0})
    _assert_names(err, f"class {CLASS!r}", repr(END))


def test_cycle_without_exit_has_no_path_to_end() -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({"b": 1.0}), "b": _tool({"a": 1.0})})
    _assert_names(err, f"class {CLASS!r}", "no path", "['a', 'b']")


def test_a_zero_probability_exit_is_no_exit() -> None:
    with pytest.raises(ValueError, match="no path"):
        _graph({"a": _llm({"a": 1.0, END: 0.0})})


def test_an_unreachable_dead_end_is_not_an_error() -> None:
    graph = _graph({"a": _llm({END: 1.0}), "orphan": _tool({"orphan": 1.0})}, entry={"a": 1.0})
    assert graph.reachable == ("a",)


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens"])
def test_llm_stage_needs_tokens(field: str) -> None:
    stage = _llm({END: 1.0})
    del stage[field]
    with pytest.raises(ValueError) as err:
        _graph({"a": stage})
    _assert_names(err, f"class {CLASS!r}", "stage 'a'", f"field {field!r}", "LLM stage")


def test_llm_stage_rejects_exec_s() -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({END: 1.0}, exec_s={"samples": [1.0]})})
    _assert_names(err, "stage 'a'", "field 'exec_s'")


def test_attention_shares_must_be_a_distribution_over_the_methods() -> None:
    graph = _graph({"a": _llm({END: 1.0}, attention={"minference": 0.75, "dense": 0.25})})
    assert graph.stages["a"].attention == {AttentionMethod.MINFERENCE: 0.75, AttentionMethod.DENSE: 0.25}
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({END: 1.0}, attention={"minference": 0.5})})
    _assert_names(err, "stage 'a'", "field 'attention'", "sum to 0.5", "missing method, e.g. 'dense'")
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({END: 1.0}, attention={"sparse": 1.0})})
    _assert_names(err, "attention", "'dense', 'minference' or 'retrieval'")


def test_only_llm_stages_have_an_attention_method() -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _tool({END: 1.0}, attention={"dense": 1.0})})
    _assert_names(err, "stage 'a'", "field 'attention'", "only an LLM stage")


@pytest.mark.parametrize("kind", ["tool", "search", "code", "dnn"])
def test_tool_stage_needs_exec_s(kind: str) -> None:
    stage = _tool({END: 1.0}, kind=kind)
    del stage["exec_s"]
    with pytest.raises(ValueError) as err:
        _graph({"a": stage})
    _assert_names(err, f"class {CLASS!r}", "stage 'a'", "field 'exec_s'", kind)


@pytest.mark.parametrize("samples", [[0], [1, 0.5, 3]])
def test_fanout_below_one_is_rejected(samples: list[float]) -> None:
    with pytest.raises(ValueError) as err:
        _graph({"a": _llm({END: 1.0}, fanout={"samples": samples})})
    _assert_names(err, f"class {CLASS!r}", "stage 'a'", "field 'fanout'", ">= 1")


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_samples_must_be_finite_and_non_negative(bad: float) -> None:
    with pytest.raises(ValueError) as err:
        Empirical(samples=(1.0, bad))
    _assert_names(err, "sample #1", "finite and >= 0")


def test_samples_must_not_be_empty() -> None:
    with pytest.raises(ValueError):
        Empirical(samples=())


def _document(stage: dict[str, Any]) -> dict[str, Any]:
    app = {"entry": {"think": 1.0}, "stages": {"think": stage}}
    return {"schema": SCHEMA, "apps": {CLASS: app}}


@pytest.mark.parametrize(
    ("samples", "field"),
    [
        ([10, -3], "input_tokens"),
        ([10, math.nan], "output_tokens"),
        ([], "input_tokens"),
    ],
    ids=["negative", "nan", "empty"],
)
def test_bad_samples_through_parse_workload_name_class_and_field_path(
    samples: list[float], field: str
) -> None:
    stage = _llm({END: 1.0})
    stage[field] = {"samples": samples, "unit": "tokens"}
    with pytest.raises(WorkloadFileError) as err:
        parse_workload(_document(stage), source="apps.json")
    _assert_names(err, "apps.json", f"class {CLASS!r}", f"stages.think.{field}.samples")


# --------------------------------------------------------------------------- structure


def test_loop_successors_of_a_two_stage_loop_and_a_self_loop() -> None:
    graph = _graph(
        {
            "plan": _llm({"act": 0.6, "finish": 0.4}),
            "act": _tool({"plan": 1.0}),
            "finish": _llm({"finish": 0.3, END: 0.7}),
        }
    )
    assert graph.loop_successors == {
        "plan": frozenset({"act"}),
        "act": frozenset({"plan"}),
        "finish": frozenset({"finish"}),
    }


def test_loop_successors_of_hermes_classes(mix: dict[str, PDGraph]) -> None:
    assert mix["react_alfw"].loop_successors["thought"] == {"thought"}
    assert mix["react_fever"].loop_successors == {"thought": {"search"}, "search": {"thought"}}
    assert all(not loops for loops in mix["factool_code"].loop_successors.values())


def test_backend_of_defaults_and_declared() -> None:
    graph = _graph(
        {
            "ask": _llm({"run": 1.0}),
            "run": _tool({"vision": 1.0}, kind="code"),
            "vision": _tool({"big": 1.0}, kind="dnn"),
            "big": _llm({END: 1.0}, backend="llm-70b"),
        }
    )
    assert graph.backend_of("ask") == LLM_BACKEND == "llm"
    assert graph.backend_of("run") == f"code:{CLASS}"
    assert graph.backend_of("vision") == f"dnn:{CLASS}"
    assert graph.backend_of("big") == "llm-70b"
    assert graph.backends == ("llm", f"code:{CLASS}", f"dnn:{CLASS}", "llm-70b")


def test_backend_of_the_data_files_docker_kind_is_code(mix: dict[str, PDGraph]) -> None:
    code = mix["factool_code"]
    assert code.backend_of("code_execution") == "code:factool_code"
    assert code.backend_of("generate_queries") == "llm"
    assert code.backends == ("llm", "code:factool_code")
    assert mix["factool_kbqa"].backend_of("search") == "search:factool_kbqa"
    assert mix["hugginggpt"].backend_of("dnn_execution") == "dnn:hugginggpt"


def test_reachable_follows_positive_edges_in_discovery_order() -> None:
    graph = _graph(
        {
            "a": _llm({"b": 0.5, "c": 0.5, "skipped": 0.0}),
            "b": _tool({END: 1.0}),
            "c": _llm({"b": 1.0}),
            "skipped": _tool({END: 1.0}),
            "orphan": _tool({END: 1.0}),
        }
    )
    assert graph.reachable == ("a", "b", "c")
    assert graph.backends == ("llm", f"tool:{CLASS}")


def test_reachable_of_hermes_classes_covers_their_stages(mix: dict[str, PDGraph]) -> None:
    for name, graph in mix.items():
        assert set(graph.reachable) == set(graph.stages), name


def test_equal_graphs_compare_equal(mix: dict[str, PDGraph]) -> None:
    """Two PDGraphs built from the same data are equal (pydantic's default `__eq__` would
    compare the private numpy array `Empirical._values` with `==`, which raises)."""
    assert Empirical.of([1, 2, 3]) == Empirical.of([1, 2, 3])
    assert hermes_mix()["factool_code"] == mix["factool_code"]
