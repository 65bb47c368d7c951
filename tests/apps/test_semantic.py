"""Semantic Variables: the decorators, template and definition errors, tracing into an
application graph (fan-out, loops, reused functions), and the graph's data-flow facts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dags.map_reduce_program import program as map_reduce
from hermesflow.apps.app_graph import AppGraph, AppNode, LoopSpec, NodeKind
from hermesflow.apps.semantic import (
    ProgramDefinitionError,
    SemanticVariable,
    loop,
    native_function,
    semantic_function,
    semantic_program,
    tool_function,
)
from hermesflow.apps.semantic_template import UnreadableReply
from hermesflow.backends.calls import CallResult
from hermesflow.pdgraph.model import END, StageKind


class Topic(BaseModel):
    topic: str
    style: str = "plain"


@semantic_function(max_tokens=16)
def draft(topic: str) -> str:
    """Write two sentences about {{topic}}.

    Text: {{text}}"""


@semantic_function(max_tokens=12)
def shorten(text: str) -> str:
    """Shorten this text.

    Text: {{text}}
    Shorter: {{shorter}}"""


@semantic_function(max_tokens=8)
def title(text: str, style: str) -> str:
    """Shorten this text.

    Text: {{text}}
    Style: {{style}}
    Title: {{title}}"""


words = tool_function("word_count")


@native_function
def short_enough(text: str, count: int) -> bool:
    return count <= 5


@native_function
def sentences(text: str) -> list[str]:
    return [s.strip() for s in text.split(".") if s.strip()]


def program(body, **options) -> Any:
    return semantic_program(inputs=Topic, **options)(body)


# -- semantic functions and their templates ------------------------------------------------------


def test_a_semantic_function_reads_its_template_slots_and_types() -> None:
    assert shorten.template.inputs == ("text",)
    assert shorten.template.output == "shorter"
    assert shorten.prefix == "Shorten this text.\n\nText: "
    assert (shorten.kind, shorten.backend, shorten.max_tokens) == (NodeKind.LLM, "llm", 12)
    assert shorten.__doc__.startswith("Shorten this text.")


def test_the_decorator_works_bare_with_the_defaults() -> None:
    @semantic_function
    def answer(question: str):
        """Q: {{question}}
        A: {{answer}}"""

    assert (answer.backend, answer.max_tokens, answer.output_type) == ("llm", 64, str)
    assert answer.prefix == "Q: " and answer.call({"question": "Why?"}).prompt == "Q: Why?\nA:"


def test_the_prompt_is_the_template_up_to_the_output_slot_with_values_filled_in() -> None:
    @semantic_function(template="Notes:\n{{notes}}\nCount {{n}} of them: {{answer}}")
    def listed(notes: list[str], n: int) -> int: ...

    call = listed.call({"notes": ["a", "b"], "n": 2})
    assert call.prompt == "Notes:\n- a\n- b\nCount 2 of them:"
    assert (call.max_tokens, call.temperature) == (64, 0.0)
    assert listed.read(CallResult(text=" about 2 notes")) == 2


@pytest.mark.parametrize(
    ("annotation", "reply", "value"),
    [
        (str, "  A sentence. \n", "A sentence."),
        (int, "There are -3 of them", -3),
        (float, "roughly 2.5e3 units", 2500.0),
        (bool, "Yes, it is.", True),
        (bool, "false", False),
        (list[str], "- one\n* two\n3. three\n\n", ["one", "two", "three"]),
        (dict, 'Here: {"a": 1}.', {"a": 1}),
    ],
)
def test_replies_are_read_as_the_declared_output_type(annotation, reply, value) -> None:
    def answer(question: str): ...

    answer.__annotations__["return"] = annotation
    fn = semantic_function(template="Q: {{question}}\nA: {{answer}}")(answer)
    assert fn.read(CallResult(text=reply)) == value


def test_an_unreadable_reply_names_the_function_and_the_fix() -> None:
    @semantic_function(template="Q: {{question}}\nA: {{answer}}")
    def count(question: str) -> int: ...

    with pytest.raises(
        UnreadableReply,
        match=r"semantic function 'count': no int in .*'many'.*declare the output as str",
    ):
        count.read(CallResult(text="many"))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "Passage: {{pasage}}\nSummary: {{summary}}",
            (
                r"semantic function 'summarize': template slot \{\{pasage\}\} has no input; "
                r"add a parameter named 'pasage' or fix the slot"
            ),
        ),
        ("Passage: {{passage}}", r"does not end with an output slot.*'Answer: \{\{answer\}\}'"),
        (
            "Passage: {{passage}}\nSummary: {{summary}}\nThanks!",
            r"text after the output slot \{\{summary\}\} is never sent",
        ),
        ("Passage: {{passage}} {{ 1x }}\nSummary: {{summary}}", "malformed slot"),
        ("Summary: {{summary}}\nPassage: {{passage}}", "does not end with an output slot"),
        (
            "Summary: {{summary}}",
            r"parameter\(s\) \['passage'\] are not used by the template; add a slot \{\{passage\}\}",
        ),
        ("", "has no template; write it as the docstring or pass template="),
    ],
)
def test_template_mistakes_fail_the_definition(template: str, message: str) -> None:
    def summarize(passage: str) -> str: ...

    with pytest.raises(ProgramDefinitionError, match=message):
        semantic_function(template=template)(summarize)


def test_function_mistakes_fail_the_definition() -> None:
    def untyped(passage) -> str: ...

    def dated(passage: str) -> bytes: ...

    def starred(*passages: str) -> str: ...

    def summarize(passage: str) -> str: ...

    template = "P: {{passage}}\nS: {{summary}}"
    with pytest.raises(
        ProgramDefinitionError, match="parameter 'passage' has no type; annotate it"
    ):
        semantic_function(template=template)(untyped)
    with pytest.raises(
        ProgramDefinitionError, match="output type bytes cannot be read.*one of: str, int"
    ):
        semantic_function(template=template)(dated)
    with pytest.raises(ProgramDefinitionError, match="parameter 'passages' is variadic positional"):
        semantic_function(template="P: {{passages}}\nS: {{summary}}")(starred)
    with pytest.raises(ProgramDefinitionError, match="max_tokens"):
        semantic_function(template=template, max_tokens=0)(summarize)


def test_functions_other_than_native_ones_only_run_inside_a_program() -> None:
    assert short_enough(text="x", count=3) is True  # the plain function
    with pytest.raises(
        ProgramDefinitionError, match="semantic function 'shorten' was called outside a program"
    ):
        shorten("some text")
    with pytest.raises(
        ProgramDefinitionError, match="tool function 'word_count' was called outside"
    ):
        words(text="some text")


# -- tracing -----------------------------------------------------------------------------------


def test_variables_are_futures_while_the_program_is_built() -> None:
    seen: list[SemanticVariable] = []

    def body(topic):
        text = draft(topic)
        seen.append(text)
        with pytest.raises(
            RuntimeError,
            match="variables are futures while a program is being built; return them, or read them after run",
        ):
            text.get()
        with pytest.raises(
            TypeError, match="decide in a @native_function, or repeat steps with loop"
        ):
            bool(text)
        with pytest.raises(TypeError, match=r"call a function once per element with fn.map"):
            list(text)
        return text

    built = program(body, app_class="futures")
    assert repr(seen[0]) == "SemanticVariable('draft')"
    assert built.trace.outputs.key == "node:draft"


def test_a_reused_function_gets_numbered_nodes_and_deps_follow_the_variables() -> None:
    def body(topic, style):
        first = draft(topic)
        again = draft(topic=first)
        return title(shorten(again), style)

    graph = program(body, app_class="reuse").graph
    assert list(graph.nodes) == ["draft", "draft_2", "shorten", "title"]
    assert [graph.nodes[n].deps for n in graph.nodes] == [
        (),
        ("draft",),
        ("draft_2",),
        ("shorten",),
    ]
    assert graph.order() == ("draft", "draft_2", "shorten", "title")


def test_map_fans_out_over_list_variables_and_passes_the_rest_whole() -> None:
    def body(topic, style):
        parts = sentences(draft(topic))
        titles = title.map(parts, style)
        return titles, words.map(text=titles)

    built = program(body, app_class="fanout")
    nodes = built.graph.nodes
    assert nodes["sentences"].kind is NodeKind.NATIVE and nodes["sentences"].fanout == "one"
    assert nodes["title"].fanout == "map" and nodes["title"].deps == ("sentences",)
    assert built.trace.calls["title"].mapped == frozenset({"text"})
    assert nodes["word_count"].fanout == "map" and nodes["word_count"].kind is NodeKind.TOOL


def test_list_and_map_mistakes_name_the_node_and_the_fix() -> None:
    with pytest.raises(
        ProgramDefinitionError,
        match=r"node 'shorten'\): parameter 'text' takes one value but gets the list variable 'sentences'; call shorten.map",
    ):
        program(lambda topic: shorten(sentences(draft(topic))), app_class="nomap")
    with pytest.raises(
        ProgramDefinitionError, match=r"node 'shorten'\): .map\(...\) needs a list variable"
    ):
        program(lambda topic: shorten.map(draft(topic)), app_class="badmap")
    with pytest.raises(
        ProgramDefinitionError, match="a list or dict of variables is not a variable"
    ):
        program(lambda topic: sentences([draft(topic)]), app_class="listed")
    with pytest.raises(ProgramDefinitionError, match="tool arguments are passed by name"):
        program(lambda topic: words(draft(topic)), app_class="positional")
    with pytest.raises(
        ProgramDefinitionError,
        match=r"semantic function 'shorten': missing a required argument: 'text'; its parameters: \(text: str\)",
    ):
        program(lambda topic: shorten(txt=topic), app_class="keyword")


def test_program_mistakes_fail_its_definition() -> None:
    with pytest.raises(
        ProgramDefinitionError, match=r"parameter\(s\) \['subject'\] are not fields of Topic"
    ):
        program(lambda subject: draft(subject), app_class="fields")
    with pytest.raises(ProgramDefinitionError, match="returns 'done', which is not a variable"):
        program(lambda topic: "done", app_class="constant")
    stolen: list[SemanticVariable] = []
    program(lambda topic: stolen.append(draft(topic)) or stolen[0], app_class="first")
    with pytest.raises(ProgramDefinitionError, match="variable 'draft' belongs to another program"):
        program(lambda topic: shorten(stolen[0]), app_class="second")
    with pytest.raises(ProgramDefinitionError, match="an example is not valid input"):
        program(lambda topic: draft(topic), app_class="examples", examples=[{"subject": "x"}])


def test_an_unknown_backend_names_the_node_and_the_known_backends() -> None:
    gpu = semantic_function(backend="gpu-llm")(draft.__wrapped__)
    with pytest.raises(
        ProgramDefinitionError,
        match=r"program 'unknown', node 'draft': unknown backend 'gpu-llm'; known backends: \['code', 'llm', 'search', 'tools'\]",
    ):
        program(lambda topic: gpu(topic), app_class="unknown")
    built = program(lambda topic: gpu(topic), app_class="known", backends=["gpu-llm"])
    assert built.graph.nodes["draft"].backend == "gpu-llm"


# -- loops ---------------------------------------------------------------------------------------


@loop(until=short_enough, max_iters=3)
def tighten(text, count):
    shorter = shorten(text)
    return shorter, words(text=shorter)


def looping(topic):
    first = draft(topic)
    text, count = tighten(first, words(text=first))
    return {"text": text, "words": count}


def test_a_loop_body_becomes_a_loop_spec_and_a_back_edge_in_the_pdgraph() -> None:
    built = program(looping, app_class="tighten")
    graph = built.graph
    assert graph.loops == (LoopSpec(body=("shorten", "word_count_2", "short_enough"), max_iters=3),)
    assert graph.nodes["shorten"].deps == ("draft",)  # the carried text's first value
    assert graph.nodes["short_enough"].deps == ("shorten", "word_count_2")
    prior = built.prior()
    assert list(prior.stages) == ["draft", "word_count", "shorten", "word_count_2"]
    assert prior.stages["word_count_2"].next == pytest.approx({"shorten": 0.5, END: 0.5})
    assert prior.stages["shorten"].visits.values.tolist() == [1.0, 2.0, 3.0]
    assert prior.stages["word_count"].kind is StageKind.TOOL


def test_loop_mistakes_fail_the_definition() -> None:
    @native_function
    def untyped(text: str, count: int):
        return True

    with pytest.raises(
        ProgramDefinitionError, match="the predicate 'untyped' must be annotated '-> bool'"
    ):
        loop(until=untyped, max_iters=2)(tighten.__wrapped__)
    with pytest.raises(ProgramDefinitionError, match="until= must be a @native_function"):
        loop(until=lambda text: True, max_iters=2)(tighten.__wrapped__)
    with pytest.raises(ProgramDefinitionError, match="max_iters is 0"):
        loop(until=short_enough, max_iters=0)(tighten.__wrapped__)

    @loop(until=short_enough, max_iters=2)
    def drops(text, count):
        return shorten(text)

    with pytest.raises(
        ProgramDefinitionError,
        match=r"loop 'drops': the body takes 2 carried variable\(s\) but returns 1",
    ):
        program(lambda topic: drops(draft(topic), 0), app_class="drops")

    @loop(until=short_enough, max_iters=2)
    def outer(text, count):
        return tighten(text, count)

    with pytest.raises(
        ProgramDefinitionError, match="loop 'tighten' is inside another loop; loops do not nest"
    ):
        program(lambda topic: outer(draft(topic), 0), app_class="nested")


def test_cycles_cannot_be_written_and_loops_are_no_cycles() -> None:
    """A variable exists only once its call is recorded, so every node depends on earlier ones
    (the AppGraph's own cycle error is tested in test_app_graph.py); a loop's repetition is a
    LoopSpec, never a dependency edge."""
    graph = program(looping, app_class="acyclic").graph
    position = {name: i for i, name in enumerate(graph.nodes)}
    assert all(position[d] < position[n] for n, node in graph.nodes.items() for d in node.deps)


# -- the application graph's data-flow facts -------------------------------------------------------


def test_the_map_reduce_program_compiles_to_the_agreed_application_graph() -> None:
    """The graph the Airflow DAG of the same application must equal."""
    expected = AppGraph(
        name="summarize_map_reduce_program",
        nodes={
            "split": AppNode(name="split", kind=NodeKind.NATIVE),
            "summarize": AppNode(
                name="summarize", kind=NodeKind.LLM, backend="llm", deps=("split",), fanout="map",
                prefix="Summarise this passage in one sentence.\n\nPassage: ", max_tokens=48,
            ),
            "combine": AppNode(
                name="combine", kind=NodeKind.LLM, backend="llm", deps=("summarize",),
                prefix="Combine these summaries into one short paragraph.\n\nSummaries:\n", max_tokens=96,
            ),
        },
    )  # fmt: skip
    assert map_reduce.graph == expected
    assert map_reduce.app_class == "summarize_map_reduce_program"
    prior = map_reduce.prior()
    assert prior.entry == {"summarize": 1.0} and list(prior.stages) == ["summarize", "combine"]
    assert prior.stages["summarize"].fanout is not None


def test_shared_prefixes_group_the_nodes_that_issue_them() -> None:
    def body(topic, style):
        text = draft(topic)
        return title(text, style), shorten(text), shorten.map(sentences(text))

    groups = program(body, app_class="prefixes").graph.prefix_groups()
    assert groups == {"Shorten this text.\n\nText: ": ("title", "shorten", "shorten_2")}


def test_the_critical_path_is_the_longest_chain_of_dependent_requests() -> None:
    def body(topic, style):
        text = draft(topic)
        return title(shorten(text), style), words(text=text)

    graph = program(body, app_class="critical").graph
    path, length = graph.critical_path(lambda node: float(node.max_tokens or 1))
    assert path == ("draft", "shorten", "title") and length == 16 + 12 + 8


def test_a_program_without_served_steps_fails_its_definition() -> None:
    with pytest.raises(
        ProgramDefinitionError, match="has no LLM or tool step, so Hermesflow has nothing"
    ):
        program(lambda topic: sentences(topic), app_class="native_only")


def test_programs_import_without_ray_airflow_or_torch() -> None:
    """Programs are imported by the scheduler, the simulator and Airflow's DAG processor."""
    probe = (
        "import sys, json, dags.map_reduce_program; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('ray', 'airflow', 'torch', 'transformers'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
