"""A self-contained HTML report of a comparison run: summary table, failures, ACT plots, per-class ACT.

One file with its plots embedded (PNG as data URLs), so it can be attached to an issue or
opened from a CI artefact without a server. ACT figures count completed applications only (the
summaries' `act_scope`), so the report says so in its headings, and lists every application
that failed, with its class and error, under the table.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SUMMARY_COLUMNS = (
    ("apps_completed", "completed apps", "{:d}"),
    ("apps_failed", "failed apps", "{:d}"),
    ("mean_act_s", "mean ACT (s)*", "{:.1f}"),
    ("p95_act_s", "P95 ACT (s)*", "{:.1f}"),
    ("cold_start_share", "cold-start share*", "{:.1%}"),
    ("overhead_ms_per_step", "scheduler ms/step", "{:.2f}"),
    ("makespan_s", "makespan (s)", "{:.0f}"),
    ("offered_load", "offered load", "{:.2f}"),
    ("llm_busy_share", "LLM engine busy", "{:.0%}"),
)
"""(summary key, heading, format); a starred column counts completed applications only."""


def _cell(summary: Mapping[str, object], key: str, fmt: str) -> str:
    value = summary.get(key)
    return "-" if value is None else html.escape(fmt.format(value))


def _failure_rows(summaries: Sequence[Mapping[str, object]]) -> str:
    return "".join(
        "<tr>" + "".join(
            f"<td>{html.escape(str(cell))}</td>"
            for cell in (f"{s['policy']} + {s['planner']}", f["app_class"], f["key"] or "(no run)", f["end"], f["error"])
        ) + "</tr>"
        for s in summaries
        for f in s.get("failures", ())
    )


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def act_cdf_plot(acts: Mapping[str, np.ndarray]) -> str:
    """Empirical CDF of application completion time per run."""
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for name, values in acts.items():
        ordered = np.sort(values)
        axis.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post", label=name)
    axis.set_xlabel("application completion time (s)")
    axis.set_ylabel("fraction of applications")
    axis.grid(alpha=0.3)
    axis.legend()
    return _png(figure)


def class_act_plot(by_class: Mapping[str, Mapping[str, float]]) -> str:
    """Mean ACT per application class, one bar group per class, one bar per run."""
    runs = list(by_class)
    classes = sorted({c for values in by_class.values() for c in values})
    figure, axis = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        axis.bar(
            np.arange(len(classes)) + i * width,
            [by_class[run].get(c, 0.0) for c in classes],
            width,
            label=run,
        )
    axis.set_xticks(np.arange(len(classes)) + width * (len(runs) - 1) / 2, classes)
    axis.set_ylabel("mean ACT (s)")
    axis.grid(alpha=0.3, axis="y")
    axis.legend()
    return _png(figure)


def write_report(
    path: Path,
    title: str,
    summaries: Sequence[Mapping[str, object]],
    acts: Mapping[str, np.ndarray],
    by_class: Mapping[str, Mapping[str, float]],
    notes: Sequence[str] = (),
) -> Path:
    """Write the report to `path` (parents created) and return it. Each summary is a run's
    `RuntimeResult.summary()`: its `failures` are listed in a table of their own."""
    rows = "".join(
        "<tr><td>" + html.escape(f"{s['policy']} + {s['planner']}") + "</td>"
        + "".join(f"<td>{_cell(s, key, fmt)}</td>" for key, _, fmt in SUMMARY_COLUMNS)
        + "</tr>"
        for s in summaries
    )
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in SUMMARY_COLUMNS)
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    failure_rows = _failure_rows(summaries)
    failures = (
        '<h2 class="failed">Failed applications</h2>'
        '<table class="failures"><tr><th>policy + prewarm</th><th>class</th><th>application</th><th>end</th>'
        f"<th>error</th></tr>{failure_rows}</table>"
        if failure_rows
        else "<p>Every application completed.</p>"
    )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}
td:first-child{{text-align:left}}table.failures td,table.failures th{{text-align:left}}img{{max-width:100%}}.failed{{color:#b00}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Generated {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}.</p>
<table><tr><th>policy + prewarm</th>{head}</tr>{rows}</table>
<p>* completed applications only: a failed application has no completion time.</p>
{failures}
<ul>{note_items}</ul>
<h2>Completion time of the completed applications</h2><img alt="ACT CDF" src="{act_cdf_plot(acts)}">
<h2>Mean ACT of the completed applications by class</h2><img alt="ACT by class" src="{class_act_plot(by_class)}">
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path
