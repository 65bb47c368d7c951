"""Tests for hermesflow.pdgraph.refit: learning a PDGraph from a sliding window of runs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hermesflow.pdgraph.model import END, AttentionMethod, PDGraph
from hermesflow.pdgraph.refit import StageObservation, refit
from hermesflow.pdgraph.workload_file import hermes_mix

CLASS = "react_fever"


@pytest.fixture(scope="module")
def fever() -> PDGraph:
    return hermes_mix()[CLASS]


def _fever_runs(
    rng: np.random.Generator, runs: int, p_search: float, tokens: int, first_run: int = 0
) -> list[StageObservation]:
    """Observations of `runs` ReAct runs: thought -> search with probability `p_search`, else
    the end; search -> thought. Thought sends two requests of about `tokens` input tokens."""
    observations = []
    for run_id in range(first_run, first_run + runs):
        step, visits = 0, {"thought": 0, "search": 0}
        stage = "thought"
        while stage != END:
            visits[stage] += 1
            if stage == "thought":
                after = "search" if rng.random() < p_search else END
                sizes = {
                    "fanout": 2,
                    "input_tokens": tuple(int(t) for t in rng.integers(tokens, 2 * tokens, 2)),
                    "output_tokens": tuple(int(t) for t in rng.integers(10, 50, 2)),
                }
            else:
                after, sizes = "thought", {"exec_s": (float(rng.uniform(0.1, 0.3)),)}
            observations.append(
                StageObservation(
                    app_class=CLASS, run_id=run_id, stage=stage, step=step,
                    visit=visits[stage], next_stage=after, **sizes,
                )
            )
            step, stage = step + 1, after
    return observations


def test_refit_learns_transitions_sizes_and_loop_counts(fever: PDGraph) -> None:
    observations = _fever_runs(np.random.default_rng(0), runs=200, p_search=0.8, tokens=1000)
    fitted = refit(fever, observations, window=len(observations))

    thoughts = [o for o in observations if o.stage == "thought"]
    thought, search = fitted.stages["thought"], fitted.stages["search"]
    assert thought.next["search"] == pytest.approx(0.8, abs=0.03)
    assert thought.next["search"] == sum(o.next_stage == "search" for o in thoughts) / len(thoughts)
    observed_inputs = [t for o in thoughts for t in o.input_tokens]
    assert sorted(thought.input_tokens.samples) == sorted(observed_inputs)
    assert set(thought.fanout.samples) == {2.0}
    assert thought.input_tokens.unit == fever.stages["thought"].input_tokens.unit
    assert search.next == {"thought": 1.0}
    assert search.exec_s.samples == tuple(o.exec_s[0] for o in observations if o.stage == "search")
    assert sorted(thought.visits.samples) == sorted(
        float(max(o.visit for o in thoughts if o.run_id == run)) for run in range(200)
    )
    assert fitted.entry == {"thought": 1.0}
    assert PDGraph.model_validate(fitted.model_dump(mode="json")).name == CLASS


def test_only_the_newest_window_counts(fever: PDGraph) -> None:
    rng = np.random.default_rng(1)
    old = _fever_runs(rng, runs=300, p_search=0.2, tokens=100)
    new = _fever_runs(rng, runs=150, p_search=0.8, tokens=5000, first_run=300)
    window = 400
    assert len(new) > window

    fitted = refit(fever, old + new, window=window)

    thoughts = [o for o in new[-window:] if o.stage == "thought"]
    assert min(fitted.stages["thought"].input_tokens.samples) >= 5000
    assert fitted.stages["thought"].next["search"] == pytest.approx(
        sum(o.next_stage == "search" for o in thoughts) / len(thoughts)
    )
    assert len(fitted.stages["thought"].output_tokens.samples) == 2 * len(thoughts)


def _single_thoughts(runs: int) -> list[StageObservation]:
    """Runs that think once and end."""
    return [
        StageObservation(CLASS, run_id=r, stage="thought", step=0, visit=1, next_stage=END,
                         input_tokens=(7,), output_tokens=(3,))
        for r in range(runs)
    ]


def test_a_stage_with_too_few_executions_keeps_its_prior(fever: PDGraph) -> None:
    fitted = refit(fever, _single_thoughts(6), min_samples=7)
    assert fitted.model_dump() == fever.model_dump()


def test_a_stage_with_enough_executions_follows_them(fever: PDGraph) -> None:
    fitted = refit(fever, _single_thoughts(6), min_samples=6)
    assert fitted.stages["thought"].next == {END: 1.0}
    assert fitted.stages["thought"].visits is None  # no run looped
    assert fitted.stages["search"].model_dump() == fever.stages["search"].model_dump()
    assert fitted.entry == {"thought": 1.0}


def test_observations_of_other_classes_are_ignored(fever: PDGraph) -> None:
    foreign = [
        StageObservation("react_alfw", run_id=r, stage="thought", step=0, visit=1,
                         next_stage=END, input_tokens=(1,), output_tokens=(1,))
        for r in range(10)
    ]
    assert refit(fever, foreign).model_dump() == fever.model_dump()


@pytest.mark.parametrize("field", ["stage", "next_stage"])
def test_an_unknown_stage_is_named(fever: PDGraph, field: str) -> None:
    names = {"stage": "thought", "next_stage": END} | {field: "reflect"}
    observation = StageObservation(CLASS, run_id=1, step=0, visit=1, **names)
    with pytest.raises(ValueError, match="unknown stage 'reflect'.*known stages"):
        refit(fever, [observation])


def test_transitions_that_never_end_are_rejected(fever: PDGraph) -> None:
    looping = _fever_runs(np.random.default_rng(2), runs=50, p_search=0.8, tokens=100)
    unfinished = [o for o in looping if o.next_stage != END]
    with pytest.raises(ValueError, match=r"class 'react_fever'.*no path to '__end__'.*'thought'"):
        refit(fever, unfinished)


def test_invalid_observations_are_refused() -> None:
    with pytest.raises(ValueError, match="visit from 1"):
        StageObservation(CLASS, run_id=1, stage="thought", step=0, visit=0, next_stage=END)
    with pytest.raises(ValueError, match="both must be >= 1"):
        refit(hermes_mix()[CLASS], [], window=0)


def test_refit_learns_each_llm_stages_share_of_attention_methods(fever: PDGraph) -> None:
    """The refit learns what share of a stage's requests ran each method, so the demand prices
    them at that method's rates; all-dense observations mean no shares, and observations that
    record no method keep the prior's."""
    runs = _fever_runs(np.random.default_rng(4), 40, p_search=0.3, tokens=300)
    sparse, dense = AttentionMethod.MINFERENCE, AttentionMethod.DENSE
    cycle = iter([sparse, sparse, sparse, dense] * len(runs))
    marked = [
        replace(o, attention=(next(cycle), next(cycle))) if o.stage == "thought" else o for o in runs
    ]
    shares = refit(fever, marked, window=1000).stages["thought"].attention
    assert shares == {dense: 0.25, sparse: 0.75}
    assert refit(fever, marked, window=1000).stages["search"].attention is None
    all_dense = [replace(o, attention=(dense, dense)) if o.stage == "thought" else o for o in runs]
    learned = refit(fever, marked, window=1000)
    assert refit(learned, all_dense, window=1000).stages["thought"].attention is None
    assert refit(learned, runs, window=1000).stages["thought"].attention == shares


def test_an_observation_records_one_method_per_request() -> None:
    with pytest.raises(ValueError, match="1 attention methods for 2 requests"):
        StageObservation(
            app_class=CLASS, run_id=0, stage="thought", step=0, visit=1, next_stage=END,
            fanout=2, attention=(AttentionMethod.DENSE,),
        )
