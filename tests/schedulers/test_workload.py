"""Tests for hermesflow.schedulers.workload: arrival processes, load to rate, traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hermesflow.pdgraph.demand import DemandEstimator
from hermesflow.schedulers.workload import (
    Arrival,
    arrival_rate_for_load,
    bursty_arrivals,
    normalise_mix,
    poisson_arrivals,
    read_trace,
)

MIX = {"factool_code": 0.7, "react_fever": 0.3}


def _times(arrivals: list[Arrival]) -> np.ndarray:
    return np.array([a.time_s for a in arrivals])


def _counts_per_window(times: np.ndarray, window_s: float) -> np.ndarray:
    edges = np.arange(0.0, times[-1], window_s)
    return np.histogram(times, bins=edges)[0]


# --------------------------------------------------------------------------- Poisson


def test_poisson_arrivals_count_order_and_rate() -> None:
    arrivals = poisson_arrivals(rate=2.0, n=5000, mix=MIX, seed=1)
    times = _times(arrivals)
    assert len(arrivals) == 5000
    assert np.all(np.diff(times) > 0) and times[0] > 0
    assert len(arrivals) / times[-1] == pytest.approx(2.0, rel=0.10)


def test_poisson_arrivals_are_deterministic_under_a_seed() -> None:
    assert poisson_arrivals(1.0, 200, MIX, seed=5) == poisson_arrivals(1.0, 200, MIX, seed=5)
    assert poisson_arrivals(1.0, 200, MIX, seed=5) != poisson_arrivals(1.0, 200, MIX, seed=6)


def test_poisson_class_mix_frequencies() -> None:
    arrivals = poisson_arrivals(rate=1.0, n=5000, mix=MIX, seed=2)
    share = sum(a.app_class == "factool_code" for a in arrivals) / len(arrivals)
    assert share == pytest.approx(0.7, abs=0.03)
    assert {a.app_class for a in arrivals} == set(MIX)


# --------------------------------------------------------------------------- bursty


def test_bursty_arrivals_keep_the_mean_rate_and_are_burstier() -> None:
    rate, n, period = 10.0, 20_000, 1.0
    bursty = _times(bursty_arrivals(rate, n, MIX, seed=3, burst_factor=4.0, mean_period_s=period))
    poisson = _times(poisson_arrivals(rate, n, MIX, seed=3))
    assert np.all(np.diff(bursty) >= 0)
    assert n / bursty[-1] == pytest.approx(rate, rel=0.15)
    window = 2.0 * period
    poisson_var = _counts_per_window(poisson, window).var()
    assert _counts_per_window(bursty, window).var() > 1.5 * poisson_var


def test_bursty_with_factor_one_is_poisson_like() -> None:
    times = _times(bursty_arrivals(5.0, 5000, MIX, seed=4, burst_factor=1.0, mean_period_s=2.0))
    counts = _counts_per_window(times, 2.0)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.25)


def test_bursty_rejects_a_factor_below_one() -> None:
    with pytest.raises(ValueError, match="burst_factor"):
        bursty_arrivals(1.0, 10, MIX, seed=0, burst_factor=0.5)


# --------------------------------------------------------------------------- load and mix


def test_arrival_rate_scales_linearly_with_load(demand: DemandEstimator) -> None:
    mix = normalise_mix(demand.classes, None)
    base = arrival_rate_for_load(0.5, demand, mix)
    assert base > 0
    for load in (0.25, 0.9, 1.5):
        assert arrival_rate_for_load(load, demand, mix) == pytest.approx(base * load / 0.5)


@pytest.mark.parametrize("load", [0.0, -0.3])
def test_arrival_rate_needs_a_positive_load(demand: DemandEstimator, load: float) -> None:
    with pytest.raises(ValueError, match="positive load"):
        arrival_rate_for_load(load, demand, MIX)


def test_normalise_mix() -> None:
    classes = ["a", "b", "c", "d"]
    assert normalise_mix(classes, None) == {c: 0.25 for c in classes}
    assert normalise_mix(classes, {"a": 3.0, "b": 1.0, "c": 0.0}) == {"a": 0.75, "b": 0.25}


def test_normalise_mix_names_unknown_classes() -> None:
    with pytest.raises(ValueError, match=r"unknown classes \['nope'\].*known: \['a', 'b'\]"):
        normalise_mix(["a", "b"], {"a": 1.0, "nope": 1.0})


@pytest.mark.parametrize("mix", [{"a": 0.0}, {"a": 2.0, "b": -1.0}])
def test_normalise_mix_rejects_bad_weights(mix: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        normalise_mix(["a", "b"], mix)


# --------------------------------------------------------------------------- traces

_EXPECTED = [Arrival(0.5, "react_fever"), Arrival(1.25, "factool_code"), Arrival(3.0, "hugginggpt")]


def test_read_trace_csv_sorts(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("time_s,app_class\n3.0,hugginggpt\n0.5,react_fever\n1.25,factool_code\n")
    assert read_trace(path) == _EXPECTED


def test_read_trace_json_lines_sorts_and_skips_blank_lines(tmp_path: Path) -> None:
    rows = [{"time_s": 1.25, "app_class": "factool_code"}, {"time_s": 3, "app_class": "hugginggpt"}]
    rows.insert(0, {"time_s": "0.5", "app_class": "react_fever", "extra": 1})
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in reversed(rows)) + "\n\n")
    assert read_trace(str(path)) == _EXPECTED


_BAD_TRACES = {
    "bad-time.csv": "time_s,app_class\n1.0,react_fever\nsoon,factool_code\n",
    "short-row.csv": "time_s,app_class\n1.0,react_fever\n2.0\n",
    "no-class-column.csv": "time_s\n1.0\n",
    "bad-time.jsonl": '{"time_s": 1.0, "app_class": "x"}\n{"time_s": "soon", "app_class": "y"}\n',
    "no-class.jsonl": '{"time_s": 1.0}\n',
    "not-json.jsonl": '{"time_s": 1.0, "app_class": "x"}\n{oops\n',
}


@pytest.mark.parametrize("name", list(_BAD_TRACES))
def test_read_trace_rejects_a_bad_row_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(_BAD_TRACES[name])
    with pytest.raises(ValueError, match="time_s and an app_class") as err:
        read_trace(path)
    assert str(path) in str(err.value)
