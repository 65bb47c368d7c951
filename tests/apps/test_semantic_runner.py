"""Running Semantic-Variable programs: the runner as a pure state machine fed with fabricated
results (fan-out, loops, tools, inline native steps, every failure naming its node), the run
handle over a fake client, and the map-reduce program on the Ray runtime with the CPU model,
submitted through the scheduler actor and through the HTTP API."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from dags.map_reduce_program import program as map_reduce
from hermesflow.api.models.control import AppView
from hermesflow.apps.map_reduce import MapReduceInputs
from hermesflow.apps.program import StepPlan
from hermesflow.apps.semantic import (
    loop,
    native_function,
    semantic_function,
    semantic_program,
    tool_function,
)
from hermesflow.apps.semantic_client import HttpClient, RunFailed, SemanticRun, client_for
from hermesflow.apps.semantic_template import UnreadableReply
from hermesflow.apps.tools import load_document
from hermesflow.backends.calls import CallResult, LLMCall, ToolCall
from hermesflow.client import HermesApiError

PARAGRAPHS = (
    "Rivers carry water from the mountains to the sea. Their valleys have long been trade routes.",
    "Mountains rise where plates of the crust collide. The highest ones are young and growing.",
    "Deserts receive very little rain. Their plants and animals have many ways of saving water.",
)
TEXT = "\n\n".join(PARAGRAPHS)


def says(*texts: str) -> list[CallResult]:
    return [CallResult(text=text) for text in texts]


def numbered(step: StepPlan) -> list[CallResult]:
    return [CallResult(text=f" Summary {i}. ") for i in range(len(step.calls))]


# -- map-reduce as a state machine -------------------------------------------------------------


def test_map_reduce_summarises_every_chunk_then_combines(drive_app, scripted) -> None:
    run = drive_app(
        map_reduce, MapReduceInputs(text=TEXT), scripted(numbered, says(" All of it.\n"))
    )
    assert run.stages == ["summarize", "combine"]
    assert run.fanouts("summarize") == [3]
    mapped = run.steps[0].calls
    assert all(
        isinstance(c, LLMCall) and (c.max_tokens, c.temperature) == (48, 0.0) for c in mapped
    )
    assert [c.prompt for c in mapped] == [
        f"Summarise this passage in one sentence.\n\nPassage: {p}\nSummary:" for p in PARAGRAPHS
    ]
    combine = run.steps[1].calls[0]
    assert combine.max_tokens == 96
    assert combine.prompt == (
        "Combine these summaries into one short paragraph.\n\nSummaries:\n"
        "- Summary 0.\n- Summary 1.\n- Summary 2.\nParagraph:"
    )
    assert run.result == {
        "summary": "All of it.",
        "summaries": ["Summary 0.", "Summary 1.", "Summary 2."],
    }
    assert run.states[0]["values"]["node:split"] == list(PARAGRAPHS)


def test_a_shipped_document_is_split_inline_and_capped(drive_app, scripted) -> None:
    run = drive_app(
        map_reduce, MapReduceInputs(doc_id="caching", max_chunks=4), scripted(numbered, says("x"))
    )
    chunks = load_document("caching")["chunks"]
    assert len(chunks) > 4 and run.fanouts("summarize") == [4]
    assert [c.prompt.split("Passage: ")[1] for c in run.steps[0].calls] == [
        f"{c}\nSummary:" for c in chunks[:4]
    ]


def test_sample_inputs_draw_from_the_examples() -> None:
    import numpy as np

    drawn = {map_reduce.sample_inputs(np.random.default_rng(seed)).doc_id for seed in range(20)}
    assert len(drawn) > 3 and all(isinstance(d, str) for d in drawn)


# -- loops, tools, empty maps ---------------------------------------------------------------------


class Target(BaseModel):
    target: int


@semantic_function(max_tokens=4)
def guess(hint: str) -> int:
    """Guess the number. Last answer was {{hint}}.
    Number: {{number}}"""


@native_function
def hint_for(number: int, target: int) -> str:
    return "too low" if number < target else "too high" if number > target else "right"


@native_function
def found(hint: str, number: int) -> bool:
    return hint == "right"


@semantic_program(inputs=Target, app_class="guessing")
def guessing(target):
    @loop(until=found, max_iters=4)
    def rounds(hint, number):
        number = guess(hint)
        return hint_for(number, target), number

    hint, number = rounds("nothing yet", 0)
    return {"number": number, "hint": hint}


def test_a_loop_repeats_its_body_with_the_carried_variables_until_its_predicate_holds(
    drive_app, scripted
) -> None:
    run = drive_app(guessing, Target(target=7), scripted(says("5"), says("9!"), says("It is 7")))
    assert run.stages == ["guess"] * 3
    assert [s.calls[0].prompt for s in run.steps] == [
        f"Guess the number. Last answer was {hint}.\nNumber:"
        for hint in ("nothing yet", "too low", "too high")
    ]
    assert [state["iters"] for state in run.states] == [{"0": 1}, {"0": 2}, {"0": 3}, {"0": 3}]
    assert run.result == {"number": 7, "hint": "right"}


def test_a_loop_stops_after_max_iters(drive_app, scripted) -> None:
    run = drive_app(guessing, Target(target=100), scripted(*[says("1")] * 4))
    assert run.stages == ["guess"] * 4
    assert run.result == {"number": 1, "hint": "too low"}


class Words(BaseModel):
    text: str


words = tool_function("word_count", timeout_s=5.0)


@native_function
def sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in text.split(".") if s.strip()]


@semantic_program(inputs=Words, app_class="counting")
def counting(text):
    return words.map(text=sentences(text))


def test_a_mapped_tool_node_is_one_step_of_tool_calls(drive_app, scripted) -> None:
    def counted(step: StepPlan) -> list[CallResult]:
        return [CallResult(value=len(c.args["text"].split())) for c in step.calls]

    run = drive_app(counting, Words(text="One two. Three."), scripted(counted))
    assert run.stages == ["word_count"] and run.steps[0].backend == "tools"
    assert run.steps[0].calls == [
        ToolCall(tool="word_count", args={"text": "One two."}, timeout_s=5.0),
        ToolCall(tool="word_count", args={"text": "Three."}, timeout_s=5.0),
    ]
    assert run.result == [2, 1]


def test_a_map_over_an_empty_list_makes_no_request(drive_app, scripted) -> None:
    run = drive_app(counting, Words(text=" "), scripted())
    assert run.stages == [] and run.result == []


# -- failures name their node ---------------------------------------------------------------------


def _step(program, inputs: BaseModel):
    transition = program.start(inputs)
    return transition.state, transition.next


def test_a_failed_call_fails_the_run_naming_node_and_backend() -> None:
    state, step = _step(map_reduce, MapReduceInputs(text=TEXT))
    results = numbered(step)
    results[1] = CallResult(finish_reason="error", error="backend died")
    with pytest.raises(
        RuntimeError, match="node 'summarize', request 1 on backend 'llm' failed: backend died"
    ):
        map_reduce.advance(MapReduceInputs(text=TEXT), state, step, results)


def test_an_unreadable_reply_names_the_function() -> None:
    state, step = _step(guessing, Target(target=3))
    with pytest.raises(
        UnreadableReply, match="semantic function 'guess': no int in the model's reply 'seven'"
    ):
        guessing.advance(Target(target=3), state, step, says("seven"))


def test_results_of_another_step_are_refused() -> None:
    state, step = _step(guessing, Target(target=3))
    other = StepPlan(stage="combine", backend="llm", calls=step.calls)
    with pytest.raises(
        ValueError,
        match="got the results of step 'combine' but the run waits for 'guess'; was the run",
    ):
        guessing.advance(Target(target=3), state, other, says("3"))
    with pytest.raises(ValueError, match="issued 1 call"):
        guessing.advance(Target(target=3), state, step, says("3", "4"))


def test_native_step_failures_name_the_node() -> None:
    @native_function
    def explode(text: str) -> list[str]:
        raise KeyError("boom")

    @native_function
    def setlike(text: str) -> list[str]:
        return {text}  # type: ignore[return-value]

    @native_function
    def pair(text: str) -> list[str]:
        return [text, text]

    @native_function
    def maybe(count: int) -> bool:
        return "yes"  # type: ignore[return-value]

    @loop(until=maybe, max_iters=2)
    def again(count):
        return words(text="a b")

    cases = [
        (
            lambda text: words.map(text=explode(text)),
            RuntimeError,
            r"native function 'explode' \(node 'explode'\) raised KeyError: 'boom'",
        ),
        (
            lambda text: words.map(text=setlike(text)),
            TypeError,
            "native function 'setlike' returned a set, which a run's state cannot store",
        ),
        (
            lambda text: words.map(text=sentences(text), n=pair(text)),
            ValueError,
            r"node 'word_count' maps over lists of different lengths \{'n': 2, 'text': 1\}",
        ),
    ]
    for body, error, message in cases:
        built = semantic_program(inputs=Words, app_class=f"failing-{uuid.uuid4().hex[:6]}")(body)
        with pytest.raises(error, match=message):
            built.start(Words(text="One."))
    looping = semantic_program(inputs=Words, app_class="maybe")(lambda text: again(0))
    state, step = _step(looping, Words(text="x"))
    with pytest.raises(
        TypeError, match="the predicate 'maybe' of loop 'again' returned 'yes'; it must return True"
    ):
        looping.advance(Words(text="x"), state, step, [CallResult(value=2)])


# -- the run handle ------------------------------------------------------------------------------


@dataclass
class FakeClient:
    """A scheduler that finishes (or fails) a run after `polls` waits."""

    result: Any = None
    error: str | None = None
    polls: int = 2

    def view(self, phase: str) -> AppView:
        ended = phase in ("finished", "failed")
        return AppView(
            app_id="run-1", app_class="summarize_map_reduce_program", phase=phase, submitted_at=0.0,
            result=self.result if ended else None, error=self.error if ended else None,
        )  # fmt: skip

    def submit(self, app_class: str, inputs: dict[str, Any], app_id: str | None) -> AppView:
        self.submitted = (app_class, inputs, app_id)
        return self.view("admitted")

    def wait(self, app_id: str, timeout_s: float) -> AppView:
        self.polls -= 1
        if self.polls > 0:
            return self.view("running")
        return self.view("failed" if self.error else "finished")


def test_outputs_of_a_run_block_until_it_ends_then_read_the_result() -> None:
    client = FakeClient(result={"summary": "S", "summaries": ["a", "b"]})
    run = map_reduce.submit(client, app_id="run-1", text=TEXT, max_chunks=2)
    assert client.submitted == (
        "summarize_map_reduce_program",
        {"doc_id": None, "text": TEXT, "title": None, "max_chunks": 2},
        "run-1",
    )
    assert set(run.outputs) == {"summary", "summaries"}
    assert repr(run.outputs["summary"]) == "RunVariable('combine' of run 'run-1')"
    assert run.outputs["summary"].get(timeout_s=5) == "S"
    assert run.outputs["summaries"].get() == ["a", "b"] and client.polls == 0


def test_a_failed_run_raises_its_error_and_a_slow_one_times_out() -> None:
    failed = map_reduce.submit(FakeClient(error="backend 'llm' could not be warmed"), text=TEXT)
    with pytest.raises(RunFailed, match="failed: backend 'llm' could not be warmed"):
        failed.outputs["summary"].get()
    slow = SemanticRun(
        FakeClient(polls=10**6), FakeClient().view("running"), map_reduce.trace.outputs
    )
    with pytest.raises(TimeoutError, match="has not ended after 0.05 s"):
        slow.result(timeout_s=0.05)


def test_inputs_are_checked_before_anything_is_sent() -> None:
    client = FakeClient()
    with pytest.raises(ValidationError, match="give exactly one of 'doc_id'"):
        map_reduce.submit(client)
    with pytest.raises(TypeError, match="cannot submit to 42"):
        map_reduce.submit(42, text=TEXT)
    assert not hasattr(client, "submitted")


# -- on the Ray runtime, with the CPU model ---------------------------------------------------------

TOKEN = f"semantic-{uuid.uuid4().hex}"
SHORT_TEXT = "\n\n".join(PARAGRAPHS[:2])


@dataclass
class Served:
    scheduler: Any
    url: str
    db_url: str


@pytest.fixture(scope="module")
def served(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One scheduler (the CPU LLM, warm; refit after every run) with the map-reduce program
    registered by `module:attribute`, and a gateway in front of it."""
    pytest.importorskip("ray")
    from support.serving import serving

    from hermesflow.backends.base import BackendSpec
    from hermesflow.schedulers.runtime_config import RuntimeConfig

    db_url = f"sqlite:///{tmp_path_factory.mktemp('semantic') / 'hermes.db'}"
    config = RuntimeConfig(
        db_url=db_url,
        backends=[
            BackendSpec(name="llm", type="transformers", options={"max_batch": 4}, num_cpus=1)
        ],
        programs={map_reduce.app_class: "dags.map_reduce_program:program"},
        warm_at_start=("llm",),
        refit_interval_s=0.5,
        refit_min_samples=1,
    )
    with serving(config, TOKEN, "semantic") as served:
        yield Served(served.scheduler, served.url, db_url)


def test_map_reduce_runs_on_the_ray_runtime_and_its_class_is_learned(served: Served) -> None:
    import ray

    from hermesflow.store import Store

    run = map_reduce.submit(served.scheduler, text=SHORT_TEXT)
    summaries = run.outputs["summaries"].get(timeout_s=300)
    summary = run.outputs["summary"].get()
    assert len(summaries) == 2 and all(isinstance(s, str) and s for s in summaries)
    assert isinstance(summary, str) and summary

    observations = Store(served.db_url).observations(map_reduce.app_class, limit=10)
    assert [(o.stage, o.fanout, o.next_stage) for o in observations] == [
        ("summarize", 2, "combine"),
        ("combine", 1, "__end__"),
    ]
    assert all(0 < t <= 48 for t in observations[0].output_tokens)
    assert 0 < observations[1].output_tokens[0] <= 96

    deadline = time.monotonic() + 30
    while (
        graph := ray.get(served.scheduler.graph.remote(map_reduce.app_class))
    ).stages["summarize"].fanout.samples != (2.0,):
        assert time.monotonic() < deadline, f"the class was never refitted from the run: {graph}"
        time.sleep(0.5)
    assert set(graph.stages) == {"summarize", "combine"} and graph.entry == {"summarize": 1.0}


def test_map_reduce_runs_through_the_http_api(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_id = f"semantic-http-{uuid.uuid4().hex[:8]}"
    run = map_reduce.submit(
        HttpClient(served.url, TOKEN), app_id=app_id, text=PARAGRAPHS[0], max_chunks=1
    )
    assert run.app_id == app_id
    result = run.result(timeout_s=300)
    assert len(result["summaries"]) == 1 and result["summary"]

    monkeypatch.setenv("HERMES_API_TOKEN", TOKEN)
    again = map_reduce.submit(served.url, app_id=app_id, text=PARAGRAPHS[0], max_chunks=1)
    assert isinstance(client_for(served.url), HttpClient)
    assert again.outputs["summary"].get(timeout_s=10) == result["summary"]  # the same run
    with pytest.raises(HermesApiError, match="HTTP 401") as refused:
        HttpClient(served.url).wait(app_id, 0)
    assert "set HERMES_API_TOKEN (or HttpClient's token)" in str(refused.value)
    assert not refused.value.transient
