"""`RunState`: the typed state the journal stores with each run. A state in the untyped shape
the scheduler stored before validates, and is stored again with the same keys and values, so a
store written by the previous version recovers; one that cannot be resumed says what to do."""

from __future__ import annotations

from typing import Any

import pytest

from hermesflow.apps.program import StepPlan
from hermesflow.journal import RunJournal
from hermesflow.pdgraph.workload_file import hermes_mix
from hermesflow.schedulers.runtime_state import RunState
from hermesflow.store import DecisionKind, DecisionRow, Store

PLAN = {
    "stage": "thought",
    "backend": "llm",
    "calls": [
        {
            "kind": "llm",
            "messages": None,
            "prompt": "Question: why?",
            "max_tokens": 64,
            "temperature": 0.0,
            "stop": ["\n"],
            "truncation": "disabled",
        }
    ],
}
"""A step plan as `StepPlan.model_dump(mode="json")` stored it."""

PREVIOUS_STATES = {
    "program run": {
        "step": 2,
        "program": {"history": ["a", "b"], "tries": 1},
        "visits": {"thought": 2, "act": 1},
        "attained_s": 3.5,
        "cold_s": 0.25,
        "plan": PLAN,
    },
    "finished program run": {
        "step": 3,
        "program": {"answer": 42},
        "visits": {"thought": 2},
        "attained_s": 4.0,
        "cold_s": 0.0,
    },
    "open run before its first step": {
        "step": -1,
        "open": True,
        "visits": {},
        "attained_s": 0.0,
        "cold_s": 0.0,
    },
    "named open run": {
        "step": 4,
        "open": True,
        "visits": {"ask": 3, "answer": 2},
        "attained_s": 1.25,
        "cold_s": 0.5,
        "named": True,
    },
}
"""The untyped run states of the previous version, one of each kind of run."""


@pytest.mark.parametrize("stored", PREVIOUS_STATES.values(), ids=PREVIOUS_STATES)
def test_a_previous_state_validates_and_is_stored_again_unchanged(stored: dict[str, Any]) -> None:
    state = RunState.load("run", stored)

    again = state.stored()
    assert {key: again[key] for key in stored} == stored
    assert set(again) - set(stored) <= {"open", "named"}
    assert RunState.load("run", again) == state


def test_the_typed_fields_hold_what_the_run_uses() -> None:
    program = RunState.load("run", PREVIOUS_STATES["program run"])
    assert isinstance(program.plan, StepPlan) and program.plan.calls[0].prompt == "Question: why?"
    assert (program.open, program.named, program.visits["thought"]) == (False, False, 2)

    named = RunState.load("run", PREVIOUS_STATES["named open run"])
    assert (named.open, named.named, named.plan, named.program) == (True, True, None, None)


def test_an_unresumable_state_names_the_run_and_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"(?s)run 'broken'.*let that version finish its runs"):
        RunState.load("broken", {"step": "three", "visits": {}})
    with pytest.raises(ValueError, match="run 'empty'"):
        RunState.load("empty", None)


def test_a_previous_state_in_the_store_is_reloaded(tmp_path) -> None:
    """Through the journal, as a restarted scheduler reads it (`RunJournal.live_runs`)."""
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        store.save_pdgraph(hermes_mix()["react_fever"], "workload:hermes_apps.json")
        journal = RunJournal(store)
        stored = PREVIOUS_STATES["program run"]
        admit = DecisionRow(0.0, DecisionKind.ADMIT, detail={"class": "react_fever", "key": "old"})
        journal.admit("old", "react_fever", "gittins", 0.0, {}, None, stored, admit)

        [(run, _)] = journal.live_runs()
        state = RunState.load(run.key, run.state)
        assert state.step == 2 and state.plan == StepPlan.model_validate(PLAN)
    finally:
        store.close()
