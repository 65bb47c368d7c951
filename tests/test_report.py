"""The demo's HTML report: one self-contained file with its summary and plots."""

from __future__ import annotations

import numpy as np

from hermesflow.report import write_report


def test_report_is_one_file_with_summary_rows_and_embedded_plots(tmp_path):
    summaries = [
        {"policy": p, "planner": q, "apps_completed": 3, "mean_act_s": m, "p95_act_s": 2 * m,
         "cold_start_share": 0.01, "overhead_ms_per_step": 1.5, "makespan_s": 60.0}
        for p, q, m in (("gittins", "pdgraph", 10.0), ("fcfs", "on-demand", 25.0))
    ]
    acts = {"gittins": np.array([5.0, 10.0, 15.0]), "fcfs": np.array([20.0, 25.0, 30.0])}
    by_class = {"gittins": {"react": 10.0, "map_reduce": 15.0}, "fcfs": {"react": 25.0, "map_reduce": 30.0}}
    path = write_report(tmp_path / "r" / "index.html", "Demo <test>", summaries, acts, by_class, ["a note & more"])
    text = path.read_text()
    assert "gittins + pdgraph" in text and "fcfs + on-demand" in text
    assert "25.0" in text and "1.0%" in text
    assert text.count('src="data:image/png;base64,') == 2
    assert "Demo &lt;test&gt;" in text and "a note &amp; more" in text


def test_report_lists_failed_applications_and_marks_act_as_completed_only(tmp_path):
    """A run where nothing completed has no ACT figures ("-"), and its failures are listed."""
    failure = {"key": "app-1", "app_class": "code_gen", "end": "failed", "error": "backend 'code' could not be warmed: <boom>"}
    summaries = [
        {"policy": "fcfs", "planner": "on-demand", "apps_completed": 0, "apps_failed": 1, "mean_act_s": None,
         "p95_act_s": None, "cold_start_share": None, "overhead_ms_per_step": 1.0, "makespan_s": 5.0,
         "offered_load": 1.25, "llm_busy_share": 0.5, "failures": [failure]},
    ]
    text = write_report(tmp_path / "index.html", "Demo", summaries, {"fcfs": np.array([])}, {"fcfs": {}}).read_text()
    assert "<td>fcfs + on-demand</td><td>0</td><td>1</td><td>-</td><td>-</td><td>-</td>" in text
    assert "<td>1.25</td><td>50%</td>" in text
    assert "<td>code_gen</td><td>app-1</td><td>failed</td><td>backend &#x27;code&#x27; could not be warmed: &lt;boom&gt;</td>" in text
    assert "mean ACT (s)*" in text and "* completed applications only" in text
