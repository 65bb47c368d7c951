"""The application graph: validation, data-flow facts, and its mapping onto a PDGraph."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hermesflow.apps.app_graph import AppGraph, AppNode, LoopSpec, NodeKind
from hermesflow.pdgraph.model import END, StageKind


def graph(name: str, *nodes: AppNode, loops: tuple[LoopSpec, ...] = ()) -> AppGraph:
    return AppGraph(name=name, nodes={n.name: n for n in nodes}, loops=loops)


def llm(name: str, *deps: str, **kw) -> AppNode:
    return AppNode(name=name, kind=NodeKind.LLM, backend="llm", deps=deps, **kw)


def tool(name: str, *deps: str, **kw) -> AppNode:
    return AppNode(name=name, kind=NodeKind.TOOL, backend="tools", deps=deps, **kw)


def native(name: str, *deps: str, **kw) -> AppNode:
    return AppNode(name=name, kind=NodeKind.NATIVE, deps=deps, **kw)


def react(iterations: int) -> AppGraph:
    """ReAct unrolled as Airflow spells it: think → decide (branch) → act → think ..."""
    nodes = [llm("think_1", prefix="You are an agent.")]
    for k in range(1, iterations):
        nodes += [
            native(f"decide_{k}", f"think_{k}", branch=True),
            tool(f"act_{k}", f"decide_{k}"),
            llm(f"think_{k + 1}", f"act_{k}", prefix="You are an agent."),
        ]
    joins = [f"decide_{k}" for k in range(1, iterations)] + [f"think_{iterations}"]
    nodes.append(llm("answer", *joins, join="any"))
    return graph("react", *nodes)


def test_order_is_topological_with_authoring_order_for_ties() -> None:
    g = graph("g", native("split"), llm("b", "split"), llm("a", "split"), llm("join", "a", "b"))
    assert g.order() == ("split", "b", "a", "join")
    assert g.downstream["split"] == ("b", "a")


def test_deps_are_normalised_so_two_spellings_compare_equal() -> None:
    assert llm("x", "b", "a", "b").deps == ("a", "b")
    assert graph("g", native("a"), native("b"), llm("x", "b", "a")) == graph(
        "g", native("a"), native("b"), llm("x", "a", "b")
    )


def test_cycle_names_its_nodes_and_the_fix() -> None:
    with pytest.raises(ValidationError, match=r"dependency cycle among nodes \['a', 'b'\].*loop"):
        graph("g", native("a", "b"), native("b", "a"), native("c"))


def test_unknown_dependency_is_named() -> None:
    with pytest.raises(ValidationError, match="node 'x': depends on unknown node 'nope'"):
        graph("g", llm("x", "nope"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": NodeKind.NATIVE, "backend": "llm"}, "native node runs in the client"),
        ({"kind": NodeKind.LLM}, "needs the backend"),
        ({"kind": NodeKind.LLM, "backend": "llm", "branch": True}, "only native nodes can branch"),
        ({"kind": NodeKind.TOOL, "backend": "tools", "prefix": "x"}, "only LLM nodes"),
    ],
)
def test_node_checks(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AppNode(name="n", **kwargs)


def test_branch_paths_follow_airflow_trigger_rules() -> None:
    paths = {path: prob for prob, path in react(3).paths()}
    assert sum(paths.values()) == pytest.approx(1.0) and len(paths) == 3
    assert paths[("think_1", "answer")] == pytest.approx(0.5)
    assert paths[("think_1", "act_1", "think_2", "answer")] == pytest.approx(0.25)
    assert paths[("think_1", "act_1", "think_2", "act_2", "think_3", "answer")] == pytest.approx(0.25)


def test_react_pdgraph_has_branch_successors_and_ends() -> None:
    pd = react(3).to_pdgraph()
    assert pd.entry == {"think_1": 1.0}
    assert pd.stages["think_1"].next == pytest.approx({"act_1": 0.5, "answer": 0.5})
    assert pd.stages["act_1"].next == {"think_2": 1.0}
    assert pd.stages["think_3"].next == {"answer": 1.0}
    assert pd.stages["answer"].next == {END: 1.0}
    assert pd.stages["act_1"].kind is StageKind.TOOL and pd.stages["act_1"].backend == "tools"
    assert "decide_1" not in pd.stages  # native nodes cost no backend time


def test_all_join_behind_exclusive_choices_can_never_run() -> None:
    g = graph("g", llm("a"), native("pick", "a", branch=True), llm("x", "pick"), llm("y", "pick"), llm("z", "x", "y"))
    with pytest.raises(ValueError, match=r"\['z'\] can never run.*join='any'"):
        g.to_pdgraph()


def test_parallel_branches_become_a_chain_of_additive_demand() -> None:
    g = graph("g", native("split"), llm("a", "split"), tool("b", "split"), llm("join", "a", "b"))
    pd = g.to_pdgraph(kind_of=lambda backend: StageKind.SEARCH)
    assert pd.entry == {"a": 1.0}
    assert pd.stages["a"].next == {"b": 1.0} and pd.stages["b"].next == {"join": 1.0}
    assert pd.stages["b"].kind is StageKind.SEARCH


def test_map_node_gets_a_fanout_prior_and_max_tokens_the_output_prior() -> None:
    g = graph("g", native("split"), llm("summ", "split", fanout="map", max_tokens=48), llm("combine", "summ"))
    stage = g.to_pdgraph().stages["summ"]
    assert stage.fanout is not None and min(stage.fanout.samples) >= 2
    assert stage.output_tokens.samples == (48.0,)


def test_loop_becomes_a_back_edge_with_visit_counts() -> None:
    g = graph("g", llm("plan"), llm("try", "plan"), tool("check", "try"), llm("report", "check"),
              loops=(LoopSpec(body=("try", "check"), max_iters=3),))
    pd = g.to_pdgraph()
    assert pd.stages["check"].next == pytest.approx({"try": 0.5, "report": 0.5})
    assert pd.stages["try"].visits.samples == (1.0, 2.0, 3.0)
    assert "check" in pd.loop_successors["check"] or "try" in pd.loop_successors["check"]


def test_loop_checks() -> None:
    with pytest.raises(ValidationError, match="unknown node 'zz'"):
        graph("g", llm("a"), loops=(LoopSpec(body=("zz",), max_iters=2),))
    with pytest.raises(ValidationError, match="in two loops"):
        graph("g", llm("a"), loops=(LoopSpec(body=("a",), max_iters=2), LoopSpec(body=("a",), max_iters=3)))


def test_only_native_nodes_means_nothing_to_schedule() -> None:
    with pytest.raises(ValueError, match="nothing to schedule"):
        graph("g", native("a")).to_pdgraph()


def test_prefix_groups_and_critical_path() -> None:
    g = react(3)
    assert g.prefix_groups() == {"You are an agent.": ("think_1", "think_2", "think_3")}
    single_map = graph("m", native("s"), llm("summ", "s", fanout="map", prefix="Summarise: "))
    assert single_map.prefix_groups() == {"Summarise: ": ("summ",)}
    diamond = graph("d", native("s"), llm("slow", "s"), llm("fast", "s"), llm("join", "slow", "fast"))
    cost = {"s": 0.0, "slow": 5.0, "fast": 1.0, "join": 2.0}
    assert diamond.critical_path(lambda n: cost[n.name]) == (("s", "slow", "join"), 7.0)
