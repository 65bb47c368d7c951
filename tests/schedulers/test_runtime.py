"""The Ray scheduler actor end to end: real Ray actors, real tool processes, a real store."""

from __future__ import annotations

import os
import signal
import sys
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

ray = pytest.importorskip("ray")

from support.serving import serving, wait_warm  # noqa: E402

from hermesflow.apps.map_reduce import MapReduceSummarizer  # noqa: E402
from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.client_records import AppViewPhase, StepState  # noqa: E402
from hermesflow.journal import RunJournal, StoredCall  # noqa: E402
from hermesflow.pdgraph.distributions import Empirical  # noqa: E402
from hermesflow.pdgraph.model import END, PDGraph, Stage, StageKind  # noqa: E402
from hermesflow.schedulers.engine import EngineConfig  # noqa: E402
from hermesflow.schedulers.errors import SubmissionError  # noqa: E402
from hermesflow.schedulers.runtime import start_scheduler  # noqa: E402
from hermesflow.schedulers.runtime_config import RuntimeConfig  # noqa: E402
from hermesflow.schedulers.runtime_state import load_program  # noqa: E402
from hermesflow.store import CallPhase, Store  # noqa: E402
from hermesflow.views import AppView, ClassDeclaration  # noqa: E402

T = TypeVar("T")
TOOLS = BackendSpec(name="tools", type="python-tools", options={"workers": 4}, expected_warmup_s=2.0)


def _config(db_url: str, **overrides) -> RuntimeConfig:
    return RuntimeConfig(
        db_url=db_url,
        backends=[TOOLS],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        refit_interval_s=1.0,
        **overrides,
    )


@pytest.fixture
def scheduler(ray_cluster, tmp_path):
    """A fresh scheduler actor (unique name) over a fresh SQLite store."""
    db_url = f"sqlite:///{tmp_path / 'hermes.db'}"
    name = f"scheduler-{uuid.uuid4().hex[:8]}"
    handle = start_scheduler(_config(db_url), name=name)
    yield handle, db_url, name
    ray.get(handle.shutdown.remote())
    ray.kill(handle, no_restart=True)


def _submit(handle, steps: int, seconds: float, key: str | None = None, fanout: int = 1) -> str:
    inputs = {"steps": steps, "seconds": seconds, "fanout": fanout}
    return ray.get(handle.submit.remote("sleep_chain", inputs, key)).app_id


def _wait_all(handle, keys, timeout_s: float = 60.0) -> list[AppView]:
    deadline = time.time() + timeout_s
    views = []
    for key in keys:
        views.append(ray.get(handle.wait.remote(key, max(deadline - time.time(), 0.1))))
    return views


def test_runs_complete_with_their_results_observations_and_decisions(scheduler):
    handle, db_url, _ = scheduler
    keys = [_submit(handle, steps=3, seconds=0.05, fanout=2) for _ in range(4)]
    views = _wait_all(handle, keys)
    assert [v.phase for v in views] == [AppViewPhase.FINISHED] * 4
    assert all(v.result == {"steps": 3, "calls": 2} for v in views)
    assert all(v.act_s > 0 and v.attained_s > 0 for v in views)
    store = Store(db_url)
    journal = RunJournal(store)
    run = journal.run(keys[0])
    kinds = Counter(e.kind for e in journal.events(run.id))
    assert kinds["admit"] == 1 and kinds["finish"] == 1
    assert kinds["dispatch"] == kinds["complete"] == 6
    observations = store.observations("sleep_chain", limit=100)
    assert len(observations) == 12
    assert {o.next_stage for o in observations} == {"nap", "__end__"}
    assert all(o.fanout == 2 and len(o.exec_s) == 2 for o in observations)
    backend_kinds = {d.kind for d in store.decisions() if d.backend == "tools"}
    assert "warm" in backend_kinds


def test_same_key_is_one_run(scheduler):
    handle, _, _ = scheduler
    first = ray.get(handle.submit.remote("sleep_chain", {"steps": 1, "seconds": 0.0}, "same-key"))
    again = ray.get(handle.submit.remote("sleep_chain", {"steps": 5, "seconds": 0.0}, "same-key"))
    assert first.app_id == again.app_id == "same-key"
    assert ray.get(handle.wait.remote("same-key", 30)).result["steps"] == 1


@pytest.mark.parametrize(
    ("app_class", "inputs", "message"),
    [
        ("no_such_class", {}, "unknown application class 'no_such_class'"),
        ("sleep_chain", {"steps": 0, "seconds": 1}, "invalid inputs for class 'sleep_chain'"),
        ("sleep_chain", {"steps": 1}, "seconds"),
    ],
)
def test_malformed_submissions_are_refused_with_a_clear_error(scheduler, app_class, inputs, message):
    handle, _, _ = scheduler
    with pytest.raises(SubmissionError, match=message):
        ray.get(handle.submit.remote(app_class, inputs))


def test_open_application_steps_run_as_one_application(scheduler):
    handle, db_url, _ = scheduler
    call = {"kind": "tool", "tool": "calculator", "args": {"expression": "6*7"}}
    first = ray.get(handle.submit_step.remote("open-1", "notebook", "calc", call, "tools"))
    second = ray.get(handle.submit_step.remote("open-1", "notebook", "calc", call, "tools"))
    assert first.value == second.value == 42
    view = ray.get(handle.finish_app.remote("open-1"))
    assert view.phase is AppViewPhase.FINISHED
    observations = Store(db_url).observations("notebook", limit=10)
    assert [o.next_stage for o in observations] == ["calc", "__end__"]
    with pytest.raises(SubmissionError, match="has finished"):
        ray.get(handle.submit_step.remote("open-1", "notebook", "calc", call, "tools"))


def test_a_session_key_reopens_as_its_next_application(scheduler):
    handle, db_url, _ = scheduler
    call = {"kind": "tool", "tool": "calculator", "args": {"expression": "1+1"}}
    ray.get(handle.submit_step.remote("session", "notebook", "calc", call, "tools", None, True))
    ray.get(handle.finish_app.remote("session"))
    ray.get(handle.submit_step.remote("session", "notebook", "calc", call, "tools", None, True))
    ray.get(handle.submit_step.remote("session", "notebook", "calc", call, "tools", None, True))
    assert ray.get(handle.app.remote("session")).phase is AppViewPhase.FINISHED
    assert ray.get(handle.app.remote("session#2")).phase is AppViewPhase.RUNNING
    assert ray.get(handle.app.remote("session#2")).step == 1


def test_an_open_class_grows_a_stage_per_new_name_while_its_runs_go_on(scheduler):
    handle, _, _ = scheduler
    call = {"kind": "tool", "tool": "calculator", "args": {"expression": "2*3"}}
    for stage in ("plan", "act") * 4:
        ray.get(handle.submit_step.remote("grower", "growing", stage, call, "tools"))
    deadline = time.time() + 30
    while "act" not in ray.get(handle.graph.remote("growing")).stages:
        assert time.time() < deadline, "the open class never learned its second stage"
        time.sleep(0.5)
    # the live run is restated in the grown graph and keeps being served
    assert ray.get(handle.submit_step.remote("grower", "growing", "act", call, "tools")).value == 6
    assert ray.get(handle.submit_step.remote("other", "growing", "plan", call, "tools")).value == 6
    assert set(ray.get(handle.graph.remote("growing")).stages["act"].next) <= {"plan", "act", "__end__"}
    time.sleep(2.5)  # the planner timer has looked at the live runs since the graph grew
    assert ray.get(handle.stats.remote()).task_failures == 0


def test_killed_scheduler_restarts_and_every_run_completes_exactly_once(scheduler):
    handle, db_url, name = scheduler
    keys = [_submit(handle, steps=4, seconds=0.3) for _ in range(6)]
    time.sleep(1.5)  # some steps done, some running, some queued
    ray.kill(handle, no_restart=False)
    views = _wait_all(handle, keys, timeout_s=90)
    assert [v.phase for v in views] == [AppViewPhase.FINISHED] * 6
    assert all(v.result["steps"] == 4 for v in views)
    journal = RunJournal(Store(db_url))
    for key in keys:
        run = journal.run(key)
        calls = journal.calls(run.id)
        assert [(c.step, c.phase) for c in calls] == [(s, CallPhase.DONE) for s in range(4)]
        kinds = Counter(e.kind for e in journal.events(run.id))
        assert kinds["finish"] == 1 and kinds["complete"] == 4
    assert any(d.kind == "recover" for d in Store(db_url).decisions())


LLM = BackendSpec(
    name="llm", type="transformers", options={"max_batch": 4}, num_cpus=1, expected_warmup_s=5.0
)
SESSIONS = {"alice": False, "carol": True}
"""OpenAI sessions (`user`) of the crash test, and whether each streams its chats."""
SESSION_CHATS = 3
CHAT_TOKENS = 48
FLUSH_S = 0.2
"""The planner interval of the crash test, which flushes dispatch marks: well below a chat's
time, so a running chat shows as RUNNING in the store."""
PROGRAM_STEPS = 8


def _chat_session(url: str, user: str, stream: bool) -> list[tuple[str, str | Exception]]:
    """One user's chats, one after another, through the gateway: (content, answer) pairs. A
    streamed chat cut by the crash answers its error, and the session stops there."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    answers: list[tuple[str, str | Exception]] = []
    for index in range(SESSION_CHATS):
        content = f"{user}, request {index}: count from 1 to 100, separated by commas."
        messages = [{"role": "user", "content": content}]
        request = {"model": "llm", "messages": messages, "max_tokens": CHAT_TOKENS, "user": user}
        if not stream:
            reply = client.chat.completions.create(**request)
            answers.append((content, reply.choices[0].message.content))
            continue
        try:
            chunks = client.chat.completions.create(stream=True, **request)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            answers.append((content, text))
        except openai.APIError as error:
            answers.append((content, error))
            break
    return answers


def _session_calls(journal: RunJournal, user: str) -> list[StoredCall]:
    run = journal.run(user)
    return [] if run is None else journal.calls(run.id)


def _in_flight(journal: RunJournal, program_keys: list[str]) -> list[int]:
    """The ids of the sessions' running calls, once every session has an answered request and a
    running one and every program run is part-way; empty before."""
    running = []
    for user in SESSIONS:
        calls = _session_calls(journal, user)
        now = [c.id for c in calls if c.phase is CallPhase.RUNNING]
        if not now or not any(c.phase is CallPhase.DONE for c in calls):
            return []
        running += now
    for key in program_keys:
        done = sum(c.phase is CallPhase.DONE for c in journal.calls(journal.run(key).id))
        if not 0 < done < PROGRAM_STEPS:
            return []
    return running


def _sessions_done(journal: RunJournal) -> bool:
    calls = [c for user in SESSIONS for c in _session_calls(journal, user)]
    return all(c.phase is CallPhase.DONE for c in calls)


def _until(condition: Callable[[], T], what: str, timeout_s: float = 120.0) -> T:
    """`condition()` once it is truthy; fails the test with `what` after `timeout_s`."""
    deadline = time.time() + timeout_s
    while not (found := condition()):
        assert time.time() < deadline, what
        time.sleep(0.05)
    return found


@pytest.mark.slow
def test_killed_scheduler_process_runs_program_runs_and_session_requests_exactly_once(
    ray_cluster, tmp_path
):
    """SIGKILL of the scheduler actor's process while program runs and OpenAI sessions (chats
    with `user`, through the real gateway; one session streams) are in flight. Ray restarts the
    actor and retries the gateway's calls on it: every program step and every chat request has
    exactly one executed `step_calls` row, each non-streamed chat gets one answer — the stored
    one — and the stream cut by the crash ends with an error, not with a spliced answer."""
    db_url = f"sqlite:///{tmp_path / 'hermes.db'}"
    config = RuntimeConfig(
        db_url=db_url,
        backends=[TOOLS, LLM],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=("llm", "tools"),
        engine=EngineConfig(planner_interval_s=FLUSH_S),
    )
    journal = RunJournal(Store(db_url))
    with serving(config, None, "crash") as served:
        handle = served.scheduler
        wait_warm(served.url, None, ("llm", "tools"), timeout_s=180)
        pid = ray.get(handle.pid.remote())
        with ThreadPoolExecutor(len(SESSIONS)) as pool:
            sessions = {
                user: pool.submit(_chat_session, served.url, user, streams)
                for user, streams in SESSIONS.items()
            }
            _until(lambda: _in_flight(journal, []), "the sessions never ran requests together")
            programs = [_submit(handle, steps=PROGRAM_STEPS, seconds=0.5) for _ in range(3)]
            killed = _until(lambda: _in_flight(journal, programs), "no moment had all part-way")
            os.kill(pid, signal.SIGKILL)
            answers = {user: session.result(timeout=600) for user, session in sessions.items()}
        views = _wait_all(handle, programs, timeout_s=120)
        # the cut stream's request too: it runs in the restarted scheduler, unheard
        _until(lambda: _sessions_done(journal), "a session's request never ran after the restart")
        assert ray.get(handle.pid.remote()) != pid
    assert [v.phase for v in views] == [AppViewPhase.FINISHED] * 3
    for key in programs:
        run = journal.run(key)
        calls = [(c.step, c.phase) for c in journal.calls(run.id)]
        assert calls == [(step, CallPhase.DONE) for step in range(PROGRAM_STEPS)]
        assert Counter(e.kind for e in journal.events(run.id))["finish"] == 1
    rerun = []
    for user, stream in SESSIONS.items():
        assert journal.run(f"{user}#2") is None  # the crash did not open a second application
        calls = _session_calls(journal, user)
        by_request: dict[str, list[StoredCall]] = {}
        for call in calls:
            by_request.setdefault(call.call["messages"][-1]["content"], []).append(call)
        assert sorted(by_request) == sorted(content for content, _ in answers[user])
        for content, answer in answers[user]:
            rows = by_request[content]
            assert len(rows) == 1, f"{content!r} has {len(rows)} step_calls rows: {rows}"
            [executed] = rows
            assert executed.phase is CallPhase.DONE
            if isinstance(answer, Exception):
                assert stream and "scheduler" in str(answer)
            else:
                assert answer == executed.result["text"]
        rerun += [c for c in calls if c.id in killed]
    assert len(answers["alice"]) == SESSION_CHATS
    assert isinstance(answers["carol"][-1][1], Exception)  # its stream was cut by the crash
    assert any(c.attempts == 2 for c in rerun)  # a request in flight ran again on its own row


def test_recovered_runs_regain_their_per_application_policy_state(ray_cluster, tmp_path):
    """vtc keeps a counter per application: runs reloaded after a restart must get theirs back,
    or their calls could not be ranked (KeyError) and would never run."""
    db_url = f"sqlite:///{tmp_path / 'hermes.db'}"
    handle = start_scheduler(_config(db_url, policy="vtc"), name=f"scheduler-{uuid.uuid4().hex[:8]}")
    try:
        keys = [_submit(handle, steps=3, seconds=0.3) for _ in range(3)]
        time.sleep(1.0)  # some steps done, some queued
        ray.kill(handle, no_restart=False)
        views = _wait_all(handle, keys, timeout_s=90)
        assert [v.phase for v in views] == [AppViewPhase.FINISHED] * 3
        assert ray.get(handle.stats.remote()).task_failures == 0
    finally:
        ray.get(handle.shutdown.remote())
        ray.kill(handle, no_restart=True)


def test_backend_that_dies_mid_step_is_restarted_and_the_step_retried_once(scheduler):
    handle, db_url, _ = scheduler
    key = _submit(handle, steps=1, seconds=3.0)
    deadline = time.time() + 30
    while (pid := ray.get(handle.backend_pid.remote("tools"))) is None or not _dispatched(db_url, key):
        assert time.time() < deadline, "the tools backend never started the step"
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    view = ray.get(handle.wait.remote(key, 60))
    assert view.phase is AppViewPhase.FINISHED and view.result == {"steps": 1, "calls": 1}
    journal = RunJournal(Store(db_url))
    run = journal.run(key)
    [call] = journal.calls(run.id)
    assert call.phase is CallPhase.DONE and call.attempts == 2
    kinds = Counter(e.kind for e in journal.events(run.id))
    assert kinds["retry"] == 1 and kinds["complete"] == 1
    assert ray.get(handle.backend_pid.remote("tools")) != pid


def _dispatched(db_url: str, key: str) -> bool:
    journal = RunJournal(Store(db_url))
    run = journal.run(key)
    return run is not None and any(c.phase is CallPhase.RUNNING for c in journal.calls(run.id))


@pytest.fixture
def program_module(monkeypatch):
    """A module `test_programs` holding a program class, a program instance and neither."""
    module = types.ModuleType("test_programs")
    module.MapReduceSummarizer, module.NOT_A_PROGRAM = MapReduceSummarizer, object()
    module.INSTANCE = MapReduceSummarizer()
    monkeypatch.setitem(sys.modules, "test_programs", module)
    return module


def test_programs_are_classes_to_instantiate_or_instances_to_use(program_module):
    program = load_program("map_reduce", "test_programs:MapReduceSummarizer")
    assert isinstance(program, MapReduceSummarizer)
    assert load_program("map_reduce", "test_programs:INSTANCE") is program_module.INSTANCE


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("test_programs:NOT_A_PROGRAM", "neither an AppProgram subclass nor an AppProgram instance"),
        ("test_programs:Missing", "cannot be imported"),
        ("no_such_module_here:X", "cannot be imported"),
        ("test_programs", "not a 'module:attribute' path"),
    ],
)
def test_a_program_path_that_names_no_program_says_what_to_give(program_module, path, problem):
    with pytest.raises(ValueError, match=problem) as raised:
        load_program("map_reduce", path)
    assert "RuntimeConfig.programs['map_reduce']" in str(raised.value)


def _tool_stage(next_stage: dict[str, float]) -> Stage:
    return Stage(kind=StageKind.TOOL, backend="tools", next=next_stage, exec_s=Empirical(samples=(0.5,)))


def _declare_etl(handle) -> None:
    """The graph of an Airflow DAG `extract >> transform` (transform mapped: its map indices
    arrive as steps of one stage), as the DAG declares it: transform -> end."""
    graph = PDGraph(
        name="etl",
        entry={"extract": 1.0},
        stages={"extract": _tool_stage({"transform": 1.0}), "transform": _tool_stage({END: 1.0})},
    )
    declaration, first = ray.get(handle.declare_graph.remote("etl", graph.model_dump(mode="json")))
    assert first and declaration == ClassDeclaration(name="etl", version=1, changed=True)


def _refitted(handle, db_url: str, learned: Callable[[PDGraph], bool]) -> PDGraph:
    """The class's graph once a background refit has replaced the declared one and `learned`
    holds of it: a refit that ran between two runs saw only the first (the refit is eventual,
    on its own timer)."""
    deadline = time.time() + 30
    while True:
        graph = ray.get(handle.graph.remote("etl"))
        if Store(db_url).latest_snapshot("etl", "refit") is not None and learned(graph):
            break
        assert time.time() < deadline, f"no refit learned the runs; the class's graph: {graph}"
        time.sleep(0.5)
    assert ray.get(handle.stats.remote()).task_failures == 0
    return graph


CALCULATE = {"kind": "tool", "tool": "calculator", "args": {"expression": "2*3"}}


def _loop_counts(graph: PDGraph, stage: str) -> int:
    """How many runs' loop counts on `stage` the graph has learned (each once the run left it)."""
    visits = graph.stages[stage].visits
    return 0 if visits is None else len(visits.samples)


def test_a_declared_class_is_refitted_from_steps_that_loop_on_a_stage(scheduler):
    """Map indices that run one after another: the runs say transform -> transform."""
    handle, db_url, _ = scheduler
    _declare_etl(handle)
    for run in range(3):
        key = f"etl:run-{run}"
        for stage in ("extract", "transform", "transform", "transform"):
            result = ray.get(handle.submit_step.remote(key, "etl", stage, CALCULATE, "tools"))
            assert result.value == 6
        ray.get(handle.finish_app.remote(key))
    # a refit between a run's last step and its end sees that run's loop without its exit
    learned = _refitted(handle, db_url, lambda graph: _loop_counts(graph, "transform") == 3)
    assert learned.stages["transform"].next == pytest.approx({"transform": 2 / 3, END: 1 / 3})
    assert learned.stages["extract"].next == {"transform": 1.0}  # 3 runs: below min_samples
    assert Store(db_url).latest_snapshot("etl", "declared")[0] == 1
    assert Store(db_url).latest_snapshot("etl", "open-prior") is None  # no vague prior, ever


def test_a_declared_class_is_refitted_from_overlapping_steps_of_a_stage(scheduler):
    """Map indices that run at once, as named steps: each is an execution of transform."""
    handle, db_url, _ = scheduler
    _declare_etl(handle)
    for run in range(2):
        key = f"etl:run-{run}"
        ray.get(handle.submit_step.remote(key, "etl", "extract", CALCULATE, "tools"))
        names = [f"transform[{index}]" for index in range(3)]
        for name in names:
            ray.get(handle.put_step.remote(key, name, "etl", "transform", CALCULATE, "tools"))
        assert [ray.get(handle.step.remote(key, n, 30)).state for n in names] == [StepState.DONE] * 3
        ray.get(handle.finish_app.remote(key))
    learned = _refitted(handle, db_url, lambda graph: graph.stages["transform"].visits is not None)
    # whether a map index ends before the next one arrives is timing: it reads as a loop or not
    assert END in learned.stages["transform"].next
    assert set(learned.stages["transform"].next) <= {"transform", END}
    assert learned.stages["transform"].visits.samples == (3.0, 3.0)
