"""`hermesflow demo` and its real experiment: a failed application is listed with its class and
error and fails the command; ACT counts completed applications only; `--load` is turned into an
arrival rate at the engine speed measured on this machine, and each run reports the load it
really offered and how busy the engine was."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hermesflow.cli import app
from hermesflow.pdgraph.model import LLM_BACKEND
from hermesflow.schedulers.engine import EngineConfig
from hermesflow.schedulers.experiment import MAX_REAL_APPS
from hermesflow.schedulers.runtime_config import CPU_MODEL_COST
from hermesflow.schedulers.runtime_results import ACT_SCOPE, AppEnd
from hermesflow.store import RunPhase, Store

ray = pytest.importorskip("ray")

import hermesflow.demo as demo_module  # noqa: E402 - imports Ray
from hermesflow.backends.base import BackendSpec  # noqa: E402
from hermesflow.demo import (  # noqa: E402
    PROBE_CALLS,
    DemoRun,
    calibrated_costs,
    demo_arrivals,
    measure_engine,
    write_demo_report,
)
from hermesflow.schedulers.runtime_config import RuntimeConfig  # noqa: E402
from hermesflow.schedulers.runtime_experiment import PlannedApp, run_experiment  # noqa: E402

BROKEN_TOOLS = BackendSpec(
    name="tools", type="python-tools", options={"workers": 1, "tools": {"sleep": "no_such_module_for_tests:nap"}}
)
"""A tool pool whose tool cannot be imported: it never warms, so runs that need it fail."""
LLM = BackendSpec(name=LLM_BACKEND, type="transformers", options={"max_batch": 8}, num_cpus=1, expected_warmup_s=5.0)
PROBE_TEST_ROUNDS = 2
"""Probe rounds in the fixture: the fewest that still test that the fastest round is kept (the
demo's own `PROBE_ROUNDS` is 3; each round is six real LLM calls, 11-30 s on 2 cores)."""
QUESTION = {"question": "Name a prime number."}
APPS = [
    PlannedApp(0.0, "one_reply", QUESTION),
    PlannedApp(0.2, "sleep_chain", {"steps": 1, "seconds": 0.05}),
    PlannedApp(0.4, "one_reply", QUESTION),
    PlannedApp(0.6, "one_reply", QUESTION),
]


@pytest.fixture(scope="module")
def demo_run(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo's engine probe, then one real run on the probed cost model in which three
    applications complete and one fails because its tool backend cannot start."""
    out_dir = tmp_path_factory.mktemp("demo")
    probe = measure_engine(seed=0, rounds=PROBE_TEST_ROUNDS)
    config = RuntimeConfig(
        policy="fcfs",
        planner="on-demand",
        db_url=f"sqlite:///{out_dir / 'run.db'}",
        backends=[LLM, BROKEN_TOOLS],
        programs={"one_reply": "experiment_programs:OneReply", "sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=(LLM_BACKEND,),
        costs=calibrated_costs(probe),
        engine=EngineConfig(max_warm_failures=1),
    )
    result = run_experiment(config, APPS, timeout_s=120.0)
    demo = DemoRun(len(APPS), 1.0, 0, probe, len(APPS) / APPS[-1].at_s, [result], out_dir / "index.html")
    write_demo_report(demo, out_dir)
    return demo


@pytest.mark.slow
def test_a_failed_application_is_listed_with_its_class_and_error_and_left_out_of_act(demo_run: DemoRun) -> None:
    result = demo_run.results[0]
    assert Counter(o.end for o in result.outcomes) == {AppEnd.COMPLETED: 3, AppEnd.FAILED: 1}
    [failure] = result.failures
    assert failure.app_class == "sleep_chain" and failure.act_s is None
    assert "backend 'tools' could not be warmed" in failure.error and "no_such_module_for_tests" in failure.error
    summary = result.summary()
    assert (summary["apps"], summary["apps_completed"], summary["apps_failed"]) == (4, 3, 1)
    assert summary["act_scope"] == ACT_SCOPE
    assert summary["failures"] == [
        {"key": failure.key, "app_class": "sleep_chain", "end": "failed", "error": failure.error}
    ]
    finished = Store(result.db_url).runs(phase=RunPhase.FINISHED)
    assert summary["mean_act_s"] == pytest.approx(np.mean([r.act_s for r in finished]))
    assert demo_run.failed


@pytest.mark.slow
def test_the_report_lists_the_failure_and_says_act_counts_completed_applications(demo_run: DemoRun) -> None:
    text = demo_run.report.read_text()
    assert "Failed applications" in text and "Every application completed" not in text
    failure = demo_run.results[0].failures[0]
    assert f"<td>sleep_chain</td><td>{failure.key}</td><td>failed</td>" in text
    assert "no_such_module_for_tests" in text
    assert "completed applications only" in text
    assert "FAILED for an infrastructure reason" in text


@pytest.mark.slow
def test_the_demo_command_prints_each_failure_and_exits_1(demo_run: DemoRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's own part — printing, JSON, exit status — on the real run above."""
    monkeypatch.setattr(demo_module, "run_demo", lambda *args, **kwargs: demo_run)
    monkeypatch.setenv("COLUMNS", "250")
    done = CliRunner().invoke(app, ["demo", "--apps", "4", "--json"])
    assert done.exit_code == 1, done.output
    failure = demo_run.results[0].failures[0]
    assert f"FAILED fcfs + on-demand: sleep_chain {failure.key} failed:" in done.output
    assert "no_such_module_for_tests" in done.output
    assert "completed applications only" in done.output
    line = json.loads(done.stdout.strip().splitlines()[-1])
    [run] = line["results"]
    assert run["apps_failed"] == 1 and run["failures"][0]["app_class"] == "sleep_chain"
    assert run["act_scope"] == ACT_SCOPE
    assert line["load"]["requested"] == 1.0 and run["offered_load"] > 0


@pytest.mark.slow
def test_the_demo_command_exits_0_when_every_application_completed(demo_run: DemoRun, monkeypatch: pytest.MonkeyPatch) -> None:
    result = demo_run.results[0]
    completed = dataclasses.replace(result, outcomes=result.completed)
    monkeypatch.setattr(demo_module, "run_demo", lambda *args, **kwargs: dataclasses.replace(demo_run, results=[completed]))
    done = CliRunner().invoke(app, ["demo", "--apps", "3"])
    assert done.exit_code == 0, done.output
    assert "FAILED" not in done.output


@pytest.mark.slow
def test_the_probe_times_the_real_engine_with_solo_prefills_and_growing_batches(demo_run: DemoRun) -> None:
    probe = demo_run.probe
    assert len(probe.results) == PROBE_CALLS and all(r.finish_reason != "error" for r in probe.results)
    assert len(probe.round_seconds) == PROBE_TEST_ROUNDS and probe.seconds == min(probe.round_seconds)
    assert max(r.batch_size for r in probe.results) >= 2  # later calls joined a running batch
    # the engine is the prior refitted from these calls: prefill seconds over prefilled tokens
    prefill = sum(r.prefill_s for r in probe.results) / sum(r.input_tokens for r in probe.results)
    assert probe.engine.prefill_s_per_token == pytest.approx(prefill)
    assert probe.engine.decode_s_per_token != probe.prior.decode_s_per_token
    assert demo_run.load_summary()["engine_decode_s_per_token"] == probe.engine.decode_s_per_token


@pytest.mark.slow
def test_the_measured_load_comes_from_the_runs_tokens_at_the_probed_speed_and_the_engine_timings(demo_run: DemoRun) -> None:
    result, engine = demo_run.results[0], demo_run.probe.engine
    load = result.engine_load
    assert load is not None and load.backend == LLM_BACKEND
    store = Store(result.db_url)
    observations = store.observations("one_reply", limit=100)
    assert len(observations) == 3
    work = [engine.work_s(i, o) for obs in observations for i, o in zip(obs.input_tokens, obs.output_tokens, strict=True)]
    assert load.offered == pytest.approx(sum(work) / APPS[-1].at_s)
    prior = CPU_MODEL_COST.engine(LLM_BACKEND)
    priced_by_prior = sum(prior.work_s(i, o) for obs in observations for i, o in zip(obs.input_tokens, obs.output_tokens, strict=True))
    assert load.offered != pytest.approx(priced_by_prior / APPS[-1].at_s)
    seconds = [d.detail["seconds"] for d in store.decisions() if d.kind == "complete" and d.backend == LLM_BACKEND]
    assert len(seconds) == 3
    assert max(seconds) / result.makespan_s <= load.busy_share + 1e-9
    assert load.busy_share <= min(sum(seconds) / result.makespan_s, 1.0) + 1e-9


def test_the_arrival_rate_scales_with_the_measured_engine_speed() -> None:
    """An engine twice as slow as another gets the same applications at twice the offsets."""
    engine = CPU_MODEL_COST.engine(LLM_BACKEND)
    slow = engine.model_copy(
        update={"decode_s_per_token": 2 * engine.decode_s_per_token, "prefill_s_per_token": 2 * engine.prefill_s_per_token}
    )
    slow_costs = CPU_MODEL_COST.model_copy(update={"llm": {LLM_BACKEND: slow}})
    fast, slower = demo_arrivals(8, 1.2, 0, CPU_MODEL_COST), demo_arrivals(8, 1.2, 0, slow_costs)
    assert [a.app_class for a in fast] == [a.app_class for a in slower]
    assert [a.inputs for a in fast] == [a.inputs for a in slower]
    assert np.allclose([2 * a.at_s for a in fast], [a.at_s for a in slower])


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--apps", "0"], "--apps"),
        (["--apps", "-1"], "--apps"),
        (["--apps", str(MAX_REAL_APPS + 1)], "--apps"),
        (["--load", "0"], "--load"),
        (["--load", "nan"], "--load"),
        (["--load", "inf"], "--load"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_demo_options_out_of_range_are_usage_errors_naming_the_option(args: list[str], option: str, tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["demo", "--reports", str(tmp_path), *args])
    assert done.exit_code == 2, done.output
    assert option in done.output and "Traceback" not in done.output
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_demo_help_states_the_cap_on_apps() -> None:
    done = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert f"1 to {MAX_REAL_APPS}" in done.output
