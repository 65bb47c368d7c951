"""`examples/ray_job` end to end, as its README runs it: a `ray start --head` cluster apart from
the session's test cluster (the root conftest's `ray_head`, shared with the semantic job's
test), `hermesflow serve --address ... --detach`, `ray job submit` of `app.py`, and `hermesflow
stop`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "examples" / "ray_job"
DB_FILE = "ray-job.db"
"""Its store, in the head's temp dir: a name of its own, as the semantic job's test shares the head."""


def _journal(db: Path) -> str:
    """Every run's events and calls, for the failure message of a job that did not finish."""
    from sqlalchemy import select

    from hermesflow.journal import RunJournal
    from hermesflow.store import Run, Store

    store = Store(f"sqlite:///{db}")
    journal = RunJournal(store)
    with store.session() as session:
        keys = [run.key for run in session.scalars(select(Run))]
    lines = []
    for key in keys:
        run = journal.run(key)
        lines.append(f"{key} {run.app_class} {run.phase.name}")
        lines += [
            f"  {e.at_s - run.submitted_s:7.2f}s {e.kind} {e.backend} {e.detail}"
            for e in journal.events(run.id)
        ]
        lines += [
            f"  call {c.step}.{c.call_index} {c.stage} {c.phase.name} attempts={c.attempts}"
            for c in journal.calls(run.id)
        ]
    store.close()
    return "\n".join(lines)


def test_ray_job_runs_applications_on_a_detached_scheduler(
    ray_head: tuple[str, str, dict[str, str], Path],
) -> None:
    address, dashboard, env, temp_dir = ray_head
    serve = subprocess.run(
        [str(BIN / "hermesflow"), "serve", "--address", address, "--detach", "--port", "0",
         "--db-url", f"sqlite:///{temp_dir / DB_FILE}"],
        env=env, check=False, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert serve.returncode == 0, serve.stderr
    url = serve.stdout.strip().splitlines()[-1]
    assert httpx.get(f"{url}/healthz").status_code == 200

    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", str(EXAMPLE), "--", str(BIN / "python"), "app.py"],
        env={**env, "RAY_API_SERVER_ADDRESS": dashboard}, check=False, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert job.returncode == 0, f"{job.stdout}\n{job.stderr}\n{_journal(temp_dir / DB_FILE)}"
    assert "3/3 applications finished" in job.stdout
    assert job.stdout.count('"phase": "finished"') == 3

    stop = subprocess.run(
        [str(BIN / "hermesflow"), "stop", "--address", address],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0 and "scheduler" in stop.stderr
