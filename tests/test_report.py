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
