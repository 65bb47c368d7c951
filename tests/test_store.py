"""Tests for hermesflow.store, each on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from hermesflow import store as store_module
from hermesflow.client_records import TaskState
from hermesflow.journal import CompletedCall, NewStep, RunEnd, RunJournal
from hermesflow.pdgraph.model import END, AttentionMethod, PDGraph, Stage
from hermesflow.pdgraph.refit import StageObservation
from hermesflow.pdgraph.workload_file import hermes_mix
from hermesflow.store import CallPhase, DecisionKind, DecisionRow, RunPhase, Store, TaskOutcomeRow

SOURCE = "workload:hermes_apps.json"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    yield store
    store.close()


def _same(a: PDGraph, b: PDGraph) -> bool:
    """Graph equality by content (Empirical holds a numpy array, so `==` on models is ambiguous)."""
    return a.model_dump(mode="json") == b.model_dump(mode="json")


def _observation(run_id: int, step: int, app_class: str = "react_fever") -> StageObservation:
    return StageObservation(
        app_class=app_class,
        run_id=run_id,
        stage="thought",
        step=step,
        visit=step + 1,
        next_stage=END if step == 2 else "thought",
        fanout=2,
        input_tokens=(100 + step, 200 + step),
        output_tokens=(10, 20),
        backend="llm",
        work_s=0.5,
        started_s=float(step),
        finished_s=step + 0.5,
    )


def test_hermes_mix_round_trips(store: Store) -> None:
    graphs = hermes_mix()
    assert store.save_pdgraphs(graphs, SOURCE) == {name: 1 for name in graphs}
    assert store.list_classes() == sorted(graphs)
    for name, graph in graphs.items():
        assert _same(store.load_pdgraph(name), graph)


def test_versions_increase_and_latest_is_default(store: Store) -> None:
    graph = hermes_mix()["react_fever"]
    changed = graph.model_copy(
        update={"stages": {**graph.stages, "thought": graph.stages["thought"].model_copy(
            update={"next": {END: 0.3, "search": 0.7}})}}
    )
    assert store.save_pdgraph(graph, "declared") == 1
    assert store.save_pdgraph(changed, "refit") == 2
    assert store.snapshot_versions("react_fever") == [1, 2]
    assert _same(store.load_pdgraph("react_fever"), changed)
    assert _same(store.load_pdgraph("react_fever", version=1), graph)
    with pytest.raises(KeyError, match=r"no snapshot version 3; it has \[1, 2\]"):
        store.load_pdgraph("react_fever", version=3)


def test_save_pdgraphs_with_an_invalid_graph_writes_nothing(store: Store) -> None:
    graphs = hermes_mix()
    store.save_pdgraph(graphs["factool_math"], SOURCE)
    fever = graphs["react_fever"]
    thought = dict(fever.stages["thought"])
    bad_thought = Stage.model_construct(**thought | {"next": {"search": 1.5}})
    invalid = PDGraph.model_construct(
        name=fever.name, entry=fever.entry, stages={**fever.stages, "thought": bad_thought}
    )
    with pytest.raises(ValueError, match="probability of 'search' is 1.5"):
        store.save_pdgraphs({**graphs, "react_fever": invalid}, SOURCE)
    assert store.list_classes() == ["factool_math"]
    assert store.snapshot_versions("factool_math") == [1]


def test_save_pdgraphs_rolls_back_a_failed_write(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    graphs = hermes_mix()
    store.save_pdgraph(graphs["factool_math"], SOURCE)
    written: list[str] = []

    def fail_on_second(session: Session, document: dict[str, Any], source: str) -> int:
        written.append(document["name"])
        if len(written) == 2:
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        return add_snapshot(session, document, source)

    add_snapshot = store_module._add_snapshot
    monkeypatch.setattr(store_module, "_add_snapshot", fail_on_second)
    with pytest.raises(OperationalError, match="disk I/O error"):
        store.save_pdgraphs({n: graphs[n] for n in ("hugginggpt", "react_alfw")}, SOURCE)
    assert written == ["hugginggpt", "react_alfw"]
    assert store.list_classes() == ["factool_math"]


def test_save_pdgraphs_rejects_a_misfiled_graph(store: Store) -> None:
    graphs = hermes_mix()
    misfiled = {"factool_math": graphs["factool_math"], "hugginggpt": graphs["react_alfw"]}
    with pytest.raises(ValueError, match="'react_alfw' is filed under 'hugginggpt'"):
        store.save_pdgraphs(misfiled, SOURCE)
    assert store.list_classes() == []


def test_unknown_class_names_known_ones_and_the_fix(store: Store) -> None:
    store.save_pdgraph(hermes_mix()["react_alfw"], SOURCE)
    with pytest.raises(KeyError) as err:
        store.load_pdgraph("chatbot")
    message = str(err.value)
    assert "'chatbot'" in message and "['react_alfw']" in message and "save_pdgraph" in message
    with pytest.raises(KeyError, match="chatbot"):
        store.create_run("chatbot")


def test_runs_round_trip_and_filter(store: Store) -> None:
    graphs = hermes_mix()
    store.save_pdgraphs({n: graphs[n] for n in ("react_fever", "hugginggpt")}, SOURCE)
    first = store.create_run("react_fever", policy="gittins", submitted_s=1.5, labels={"user": "a"})
    second = store.create_run("hugginggpt", submitted_s=2.0)
    store.finish_run(first, finished_s=9.0, act_s=7.5, cold_start_s=0.25, attained_s=3.0)

    finished, admitted = store.runs()
    assert (finished.id, finished.app_class, finished.policy) == (first, "react_fever", "gittins")
    assert finished.phase is RunPhase.FINISHED
    assert (finished.submitted_s, finished.finished_s, finished.act_s) == (1.5, 9.0, 7.5)
    assert (finished.cold_start_s, finished.attained_s) == (0.25, 3.0)
    assert finished.labels == {"user": "a"}
    assert (admitted.id, admitted.phase, admitted.labels, admitted.act_s) == (
        second, RunPhase.ADMITTED, None, None
    )
    assert [r.id for r in store.runs(app_class="hugginggpt")] == [second]
    assert [r.id for r in store.runs(phase=RunPhase.FINISHED)] == [first]
    store.finish_run(second, 5.0, None, None, None, phase=RunPhase.FAILED)
    assert [r.id for r in store.runs(app_class="hugginggpt", phase=RunPhase.FAILED)] == [second]
    with pytest.raises(KeyError, match="no run with id 999"):
        store.finish_run(999, 1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="use FINISHED or FAILED"):
        store.finish_run(first, 1.0, 1.0, 0.0, 1.0, phase=RunPhase.RUNNING)


def test_observations_round_trip_newest_window_oldest_first(store: Store) -> None:
    graphs = hermes_mix()
    store.save_pdgraphs({n: graphs[n] for n in ("react_fever", "react_alfw")}, SOURCE)
    runs = [store.create_run("react_fever") for _ in range(3)]
    recorded = [_observation(run, step) for run in runs for step in range(3)]
    for run in runs:
        store.record_observations(run, [o for o in recorded if o.run_id == run])
    other = store.create_run("react_alfw")
    store.record_observations(other, [_observation(other, 0, app_class="react_alfw")])

    assert store.observations("react_fever", limit=100) == recorded
    assert store.observations("react_fever", limit=4) == recorded[-4:]
    assert store.observations("react_alfw", limit=100) == [
        _observation(other, 0, app_class="react_alfw")
    ]


def test_observations_keep_the_attention_method_of_each_request(store: Store) -> None:
    """The methods live in a table of their own: an observation that records none reads back
    with none, one that does reads back with its methods in request order."""
    store.save_pdgraph(hermes_mix()["react_fever"], SOURCE)
    run = store.create_run("react_fever")
    methods = (AttentionMethod.MINFERENCE, AttentionMethod.DENSE)
    recorded = [_observation(run, 0), dataclasses.replace(_observation(run, 1), attention=methods)]
    store.record_observations(run, recorded)
    assert store.observations("react_fever", limit=10) == recorded


def test_observations_must_belong_to_the_run(store: Store) -> None:
    store.save_pdgraph(hermes_mix()["react_fever"], SOURCE)
    run = store.create_run("react_fever")
    with pytest.raises(ValueError, match="record it under its own run"):
        store.record_observations(run, [_observation(run + 1, 0)])
    assert store.observations("react_fever", limit=10) == []


def test_decisions_round_trip_in_time_order(store: Store) -> None:
    store.save_pdgraph(hermes_mix()["react_fever"], SOURCE)
    run = store.create_run("react_fever")
    rows = [
        DecisionRow(at_s=2.0, kind=DecisionKind.DISPATCH, backend="llm", run_id=run, detail={"rank": 0.5}),
        DecisionRow(at_s=1.0, kind=DecisionKind.WARM, backend="search:react_fever"),
        DecisionRow(at_s=3.0, kind=DecisionKind.RELEASE, backend="llm"),
    ]
    RunJournal(store).record(rows)
    assert store.decisions() == [rows[1], rows[0], rows[2]]
    assert store.decisions(run_id=run) == [rows[0]]


def test_latest_snapshot_of_a_source_skips_later_refits(store: Store) -> None:
    graph = hermes_mix()["react_fever"]
    assert store.latest_snapshot("react_fever", "declared") is None
    store.save_pdgraph(graph, "declared")
    store.save_pdgraph(graph, "refit")
    version, declared = store.latest_snapshot("react_fever", "declared")
    assert version == 1 and _same(declared, graph)


def _outcome(try_number: int = 1, state: TaskState = TaskState.SUCCESS) -> TaskOutcomeRow:
    return TaskOutcomeRow(
        app_key="etl:run-1",
        app_class="etl",
        task_id="extract",
        map_index=2,
        try_number=try_number,
        state=state,
        duration_s=1.25,
        step_id="extract[2]",
        recorded_s=10.0,
    )


def test_task_outcomes_are_recorded_once_without_a_run(store: Store) -> None:
    retry, success = _outcome(1, TaskState.UP_FOR_RETRY), _outcome(2)
    assert store.record_task_outcome(retry)
    assert not store.record_task_outcome(retry)
    assert store.record_task_outcome(success)
    assert not store.record_task_outcome(dataclasses.replace(success, duration_s=9.0))
    assert store.task_outcomes("etl:run-1") == [retry, success]
    assert store.task_outcomes("etl:other") == []


def _journal_run(store: Store) -> tuple[RunJournal, int]:
    store.save_pdgraph(hermes_mix()["react_fever"], SOURCE)
    journal = RunJournal(store)
    admit = DecisionRow(0.0, DecisionKind.ADMIT)
    run, _ = journal.admit("etl:run-1", "react_fever", None, 0.0, None, None, {"step": 0}, admit)
    return journal, run.id


def _named(step: int, attempt: int, name: str = "extract[0]") -> NewStep:
    call = {"kind": "tool", "tool": "calculator", "args": {"expression": "1+1"}}
    return NewStep(step, "extract", "tools", [call], client_step=name, attempt=attempt)


def test_client_steps_find_the_latest_attempt_of_a_name(store: Store) -> None:
    journal, run_id = _journal_run(store)
    first = journal.start_step(run_id, {"step": 0}, _named(0, 1), 1.0)
    journal.start_step(run_id, {"step": 1}, NewStep(1, "load", "tools", [{"kind": "tool"}]), 1.0)
    second = journal.start_step(run_id, {"step": 2}, _named(2, 2), 2.0)
    run, found = journal.client_step("etl:run-1", "extract[0]")
    assert run.id == run_id and (found.step_id, found.attempt) == ("extract[0]", 2)
    assert found.call == second[0] and found.call != first[0]
    assert journal.client_step("etl:run-1", "load") == (run, None)
    assert journal.client_step("etl:other", "extract[0]") is None
    with pytest.raises(IntegrityError):
        journal.start_step(run_id, {"step": 3}, _named(3, 2), 3.0)


def test_live_runs_bring_back_unfinished_calls_of_earlier_steps(store: Store) -> None:
    journal, run_id = _journal_run(store)
    early, done, current = (
        journal.start_step(run_id, {"step": step}, _named(step, 1, f"s{step}"), 1.0)[0]
        for step in range(3)
    )
    decision = DecisionRow(2.0, DecisionKind.COMPLETE)
    assert journal.complete(done.id, {"text": "2"}, 2.0, decision)
    [(run, calls)] = journal.live_runs()
    assert run.id == run_id and [(c.id, c.phase) for c in calls] == [
        (early.id, CallPhase.QUEUED),
        (current.id, CallPhase.QUEUED),
    ]



def test_a_batch_stores_results_in_one_transaction_or_none(store: Store) -> None:
    journal, run_id = _journal_run(store)
    first, second, third = journal.start_step(
        run_id, {"step": 0}, NewStep(0, "extract", "tools", [{"kind": "tool"}] * 3), 1.0
    )
    commits = []
    event.listen(store.engine, "commit", commits.append)
    decision = DecisionRow(2.0, DecisionKind.COMPLETE)
    with journal.batch():
        assert journal.complete(first.id, {"text": "1"}, 2.0, decision)
        assert journal.complete(second.id, {"text": "2"}, 2.0, decision)
        assert not journal.complete(first.id, {"text": "again"}, 2.0, decision)  # a duplicate
    assert len(commits) == 1
    with pytest.raises(RuntimeError), journal.batch():
        assert journal.complete(third.id, {"text": "3"}, 3.0, decision)
        raise RuntimeError("the scheduler failed before the batch's commit")
    assert len(commits) == 1
    stored = {c.id: (c.phase, c.result) for c in journal.calls(run_id)}
    assert stored == {
        first.id: (CallPhase.DONE, {"text": "1"}),
        second.id: (CallPhase.DONE, {"text": "2"}),
        third.id: (CallPhase.QUEUED, None),
    }


def test_a_step_advances_once_and_a_duplicate_result_writes_nothing(store: Store) -> None:
    journal, run_id = _journal_run(store)
    [call] = journal.start_step(run_id, {"step": 0}, NewStep(0, "extract", "tools", [{"kind": "tool"}]), 1.0)
    complete = DecisionRow(2.0, DecisionKind.COMPLETE, "tools", run_id)
    done = CompletedCall(call.id, {"text": "1"}, complete)
    step = [DecisionRow(2.0, DecisionKind.STEP, "tools")]
    following = NewStep(1, "load", "tools", [{"kind": "tool"}])
    [next_call] = journal.advance(run_id, 0, _observation(run_id, 0), {"step": 1}, following, None, 2.0, step, done)
    assert next_call.step == 1
    # the same result again, or the same step again: the run is past step 0, nothing is written
    assert journal.advance(run_id, 0, _observation(run_id, 0), {"step": 1}, following, None, 3.0, step, done) is None
    assert journal.advance(run_id, 0, None, {"step": 1}, following, None, 3.0) is None
    duplicate = CompletedCall(call.id, {"text": "late"}, complete)  # the current step, a done call
    assert journal.advance(run_id, 1, None, {"step": 2}, following, None, 3.0, step, duplicate) is None
    assert [(c.step, c.phase, c.result) for c in journal.calls(run_id)] == [
        (0, CallPhase.DONE, {"text": "1"}),
        (1, CallPhase.QUEUED, None),
    ]
    assert len(store.observations("react_fever", 10)) == 1
    kinds = [e.kind for e in journal.events(run_id)]
    assert kinds == [DecisionKind.ADMIT, DecisionKind.COMPLETE, DecisionKind.STEP]


def test_a_run_ends_once_with_its_act_and_an_ended_run_does_not_advance(store: Store) -> None:
    journal, run_id = _journal_run(store)  # submitted at 0.0
    [call] = journal.start_step(run_id, {"step": 0}, NewStep(0, "extract", "tools", [{"kind": "tool"}]), 1.0)
    done = CompletedCall(call.id, {"text": "1"}, DecisionRow(4.5, DecisionKind.COMPLETE, "tools", run_id))
    end = RunEnd(RunPhase.FINISHED, {"answer": 42}, None, cold_start_s=0.5, attained_s=3.0)
    finish = [DecisionRow(4.5, DecisionKind.FINISH)]
    assert journal.advance(run_id, 0, None, {"step": 0}, None, end, 4.5, finish, done) == []
    again = RunEnd(RunPhase.FAILED, None, "late", 0.0, 0.0)
    assert journal.advance(run_id, 0, None, {"step": 0}, None, again, 9.0) is None
    run = journal.run("etl:run-1")
    assert (run.phase, run.finished_s, run.act_s, run.result, run.error) == (RunPhase.FINISHED, 4.5, 4.5, {"answer": 42}, None)
    assert (run.cold_start_s, run.attained_s) == (0.5, 3.0)
    assert journal.live_runs() == []


def test_the_journal_reconnects_after_the_database_drops_its_connection(store: Store) -> None:
    """The journal holds one connection for its writes; a statement that finds it dropped
    invalidates it (the error says so), and the next write reconnects."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("only a server drops connections")
    journal, run_id = _journal_run(store)
    [first] = journal.start_step(run_id, {"step": 0}, NewStep(0, "extract", "tools", [{"kind": "tool"}]), 1.0)
    with store.engine.connect() as admin:
        admin.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(OperationalError) as dropped:
        journal.start_step(run_id, {"step": 1}, NewStep(1, "load", "tools", [{"kind": "tool"}]), 2.0)
    assert dropped.value.connection_invalidated
    [call] = journal.start_step(run_id, {"step": 1}, NewStep(1, "load", "tools", [{"kind": "tool"}]), 2.0)
    assert [c.id for c in journal.calls(run_id)] == [first.id, call.id]
