"""The application graph: what a Semantic-Variable program and an Airflow DAG both compile to.

An application is a DAG of *nodes*. LLM and tool nodes are requests Hermesflow serves on a
backend; native nodes are Python that runs in the client (a `@native_function`, an Airflow
Python task) and costs no backend time. Edges are data dependencies (a Semantic Variable that
one node produces and another consumes, an XCom pulled by a downstream task) or plain ordering.
Three more facts come from the data flow, as in Parrot (PAPERS.md §2):

* **fan-out** — a node mapped over a list issues one request per element (`.map` of a
  semantic function, Airflow's dynamic task mapping);
* **branches and loops** — a native *branch* node decides which downstream nodes run (Airflow's
  branch operators); a *loop* repeats a body of nodes until a condition holds (at most
  `max_iters` times);
* **shared prefixes** — requests whose prompts start with the same static text can share the
  prefix's KV cache, so the backend should see them together.

`to_pdgraph` maps the graph onto a PDGraph class, which is what the scheduler ranks by the
Gittins index: every served node becomes a stage, visited in topological order (service demand
is additive, so parallel branches of a DAG add up like a chain), native nodes are contracted
away, branches become successor probabilities (each choice equally likely), and loops become back edges
whose repeat probability and visit counts come from `max_iters`. These are priors: the runtime
refits every stage's sizes and successors from observed runs.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hermesflow.pdgraph.distributions import Empirical
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind
from hermesflow.pdgraph.priors import prior_sizes

PRIOR_MAP_FANOUT = (2.0, 4.0, 8.0)
"""Fan-out prior of a mapped node before any run: 2 to 8 elements (sizes: `pdgraph/priors.py`).
The runtime replaces it with observed values as runs finish."""
MAX_BRANCH_PATHS = 4096
"""Most branch combinations `paths` enumerates."""


class NodeKind(StrEnum):
    """Where a node runs: on an LLM backend, on a tool backend, or in the client (native)."""

    LLM = "llm"
    TOOL = "tool"
    NATIVE = "native"


class AppNode(BaseModel):
    """One step of an application: its kind, backend and upstream nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1)]
    kind: NodeKind
    backend: str | None = None
    deps: tuple[str, ...] = ()
    fanout: Literal["one", "map"] = "one"
    branch: bool = False
    join: Literal["all", "any"] = "all"
    prefix: str | None = None
    max_tokens: int | None = None

    @model_validator(mode="after")
    def _check(self) -> AppNode:
        where = f"node {self.name!r}"
        if self.kind is NodeKind.NATIVE and self.backend is not None:
            raise ValueError(f"{where}: a native node runs in the client; remove backend={self.backend!r}")
        if self.kind is not NodeKind.NATIVE and not self.backend:
            raise ValueError(f"{where}: a {self.kind.value} node needs the backend it runs on")
        if self.branch and self.kind is not NodeKind.NATIVE:
            raise ValueError(f"{where}: only native nodes can branch; decide in a Python step")
        if self.prefix is not None and self.kind is not NodeKind.LLM:
            raise ValueError(f"{where}: only LLM nodes have a prompt prefix")
        if tuple(sorted(set(self.deps))) != self.deps:
            object.__setattr__(self, "deps", tuple(sorted(set(self.deps))))
        return self

    @property
    def served(self) -> bool:
        """Whether a Hermesflow backend runs this node (and so it is a PDGraph stage)."""
        return self.kind is not NodeKind.NATIVE


class LoopSpec(BaseModel):
    """A body of nodes that repeats until a condition holds, at most `max_iters` times."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    body: Annotated[tuple[str, ...], Field(min_length=1)]
    max_iters: Annotated[int, Field(ge=1)]


class AppGraph(BaseModel):
    """The data-flow graph of one application class (module docstring).

    Nodes keep authoring order, which breaks ties in `order`, so two spellings of the same
    application (a program and a DAG) list their stages identically.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1)]
    nodes: Annotated[dict[str, AppNode], Field(min_length=1)]
    loops: tuple[LoopSpec, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> AppGraph:
        where = f"application {self.name!r}"
        for key, node in self.nodes.items():
            if key != node.name:
                raise ValueError(f"{where}: node stored under {key!r} is named {node.name!r}")
            for dep in node.deps:
                if dep not in self.nodes:
                    raise ValueError(
                        f"{where}, node {key!r}: depends on unknown node {dep!r}; known nodes: "
                        f"{sorted(self.nodes)}"
                    )
        self.order()  # raises on a cycle
        seen: set[str] = set()
        for loop in self.loops:
            for name in loop.body:
                if name not in self.nodes:
                    raise ValueError(f"{where}: loop body names unknown node {name!r}")
                if name in seen:
                    raise ValueError(f"{where}: node {name!r} is in two loops; nest loops in one body")
                seen.add(name)
        return self

    def order(self) -> tuple[str, ...]:
        """The nodes in topological order, ties broken by authoring order (Kahn's algorithm).

        Raises ValueError naming the nodes of a cycle: a dependency cycle never finishes, so a
        program or DAG that has one is refused when it is built."""
        return self._order

    @cached_property
    def _order(self) -> tuple[str, ...]:
        pending = {name: set(node.deps) for name, node in self.nodes.items()}
        done: list[str] = []
        while pending:
            ready = [name for name, deps in pending.items() if not deps]
            if not ready:
                cycle = sorted(pending)
                raise ValueError(
                    f"application {self.name!r}: dependency cycle among nodes {cycle}; remove one "
                    "of these dependencies, or express the repetition as a loop"
                )
            for name in ready:
                del pending[name]
                done.append(name)
            for deps in pending.values():
                deps.difference_update(ready)
        return tuple(done)

    @cached_property
    def downstream(self) -> dict[str, tuple[str, ...]]:
        """Each node's direct consumers, in authoring order."""
        out: dict[str, list[str]] = {name: [] for name in self.nodes}
        for name, node in self.nodes.items():
            for dep in node.deps:
                out[dep].append(name)
        return {name: tuple(users) for name, users in out.items()}

    def paths(self) -> list[tuple[float, tuple[str, ...]]]:
        """Every distinct way a run can go through the served nodes, with its prior probability.

        Each branch node picks one of its direct consumers, all equally likely. A node runs when
        its incoming edges are active — all of them (`join="all"`, Airflow's default trigger
        rule), or at least one (`join="any"`, a join after a branch) — where an edge is active
        when its source ran and, for a branch, picked this node. Branch choices are enumerated,
        so keep branch nodes to a handful (ten two-way branches are 1024 paths)."""
        branches = [name for name in self.order() if self.nodes[name].branch]
        choices = [self.downstream[name] or ("",) for name in branches]
        combos = 1
        for options in choices:
            combos *= len(options)
        if combos > MAX_BRANCH_PATHS:
            raise ValueError(
                f"application {self.name!r}: {combos} branch combinations exceed "
                f"{MAX_BRANCH_PATHS}; fold repeated branches into a loop"
            )
        merged: dict[tuple[str, ...], float] = {}
        for prob, picked in _combinations(choices):
            path = self._run_of(dict(zip(branches, picked)))
            merged[path] = merged.get(path, 0.0) + prob
        return [(prob, path) for path, prob in merged.items()]

    def _run_of(self, picked: dict[str, str]) -> tuple[str, ...]:
        ran: set[str] = set()
        for name in self.order():
            node = self.nodes[name]
            active = [d in ran and picked.get(d, name) == name for d in node.deps]
            if not node.deps or (all(active) if node.join == "all" else any(active)):
                ran.add(name)
        return tuple(name for name in self.order() if name in ran and self.nodes[name].served)

    def prefix_groups(self) -> dict[str, tuple[str, ...]]:
        """Static prompt prefixes shared by more than one request → the nodes issuing them.

        A mapped node shares its prefix across its own requests, so it forms a group alone."""
        groups: dict[str, list[str]] = {}
        for name, node in self.nodes.items():
            if node.prefix:
                groups.setdefault(node.prefix, []).append(name)
        return {
            prefix: tuple(names)
            for prefix, names in groups.items()
            if len(names) > 1 or self.nodes[names[0]].fanout == "map"
        }

    def critical_path(self, cost: Callable[[AppNode], float]) -> tuple[tuple[str, ...], float]:
        """The longest chain of dependent nodes under `cost` (seconds per node) and its length:
        the lower bound on a run's latency however much runs in parallel."""
        best: dict[str, tuple[float, str | None]] = {}
        for name in self.order():
            node = self.nodes[name]
            base, via = max(((best[d][0], d) for d in node.deps), default=(0.0, None))
            best[name] = (base + cost(node), via)
        end = max(best, key=lambda n: best[n][0])
        path = [end]
        while (via := best[path[-1]][1]) is not None:
            path.append(via)
        return tuple(reversed(path)), best[end][0]

    def to_pdgraph(self, kind_of: Callable[[str], StageKind] = lambda _: StageKind.TOOL) -> PDGraph:
        """The PDGraph class the scheduler ranks runs of this application with (module
        docstring). `kind_of(backend)` names the stage kind of a tool node's backend (search,
        code, ...); LLM nodes are LLM stages."""
        stages = [name for name in self.order() if self.nodes[name].served]
        if not stages:
            raise ValueError(
                f"application {self.name!r} has no LLM or tool step, so Hermesflow has nothing to "
                "schedule; add a Hermesflow step or run it as a plain DAG"
            )
        entry, successors = _transition_priors(self.paths())
        never = [name for name in stages if name not in successors]
        if never:
            raise ValueError(
                f"application {self.name!r}: node(s) {never} can never run — they need every "
                "input, but a branch upstream picks only one; let them run on any input "
                "(join='any', Airflow trigger rule none_failed_min_one_success)"
            )
        visits: dict[str, Empirical] = {}
        for loop in self.loops:
            body = [name for name in stages if name in loop.body]
            if not body:
                continue
            repeat = 1.0 - 2.0 / (loop.max_iters + 1)  # mean iterations (1+max)/2, geometric
            last = successors[body[-1]]
            successors[body[-1]] = {body[0]: repeat, **{s: p * (1 - repeat) for s, p in last.items()}}
            for name in body:
                visits[name] = Empirical.of(range(1, loop.max_iters + 1), unit="visits")
        return PDGraph(
            name=self.name,
            entry=entry,
            stages={
                name: self._stage(self.nodes[name], successors[name], visits.get(name), kind_of)
                for name in stages
            },
        )

    @staticmethod
    def _stage(
        node: AppNode,
        next_stage: dict[str, float],
        visits: Empirical | None,
        kind_of: Callable[[str], StageKind],
    ) -> Stage:
        fanout = Empirical(samples=PRIOR_MAP_FANOUT, unit="requests") if node.fanout == "map" else None
        kind = StageKind.LLM if node.kind is NodeKind.LLM else kind_of(node.backend or "")
        sizes = prior_sizes(kind, node.max_tokens)
        return Stage(kind=kind, backend=node.backend, next=next_stage, fanout=fanout, visits=visits, **sizes)


def _combinations(choices: list[tuple[str, ...]]) -> list[tuple[float, tuple[str, ...]]]:
    """Every pick of one option per branch, with its probability (uniform per branch)."""
    combos: list[tuple[float, tuple[str, ...]]] = [(1.0, ())]
    for options in choices:
        combos = [(p / len(options), (*picked, o)) for p, picked in combos for o in options]
    return combos


def _transition_priors(
    paths: list[tuple[float, tuple[str, ...]]],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Entry and successor probabilities of the stages from weighted paths (a path with no
    served node is dropped: such runs never reach the scheduler)."""
    entry: dict[str, float] = {}
    flows: dict[str, dict[str, float]] = {}
    for prob, path in paths:
        if not path:
            continue
        entry[path[0]] = entry.get(path[0], 0.0) + prob
        for here, there in zip(path, (*path[1:], END)):
            out = flows.setdefault(here, {})
            out[there] = out.get(there, 0.0) + prob
    return _normalised(entry), {stage: _normalised(out) for stage, out in flows.items()}


def _normalised(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}
