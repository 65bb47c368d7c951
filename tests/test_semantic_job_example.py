"""`examples/semantic_job` end to end, as its README runs it: `ray job submit` of `app.py` to a
`ray start --head` cluster on loopback (the root conftest's `ray_head`, shared with the Ray job
example's test), with `dags/` shipped as a `py_modules` entry. The job starts its own scheduler,
so no `hermesflow serve` is needed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_ray_job_example import BIN, ROOT

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "semantic_job"
DB_FILE = "semantic-job.db"
"""Its store, in the head's temp dir: a name of its own, as the Ray job example's test shares the head."""


def test_semantic_programs_run_in_a_ray_job(
    ray_head: tuple[str, str, dict[str, str], Path],
) -> None:
    _, dashboard, env, temp_dir = ray_head
    runtime_env = json.dumps({"py_modules": [str(ROOT / "dags")]})
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", str(EXAMPLE), "--runtime-env-json", runtime_env,
         "--", str(BIN / "python"), "app.py", "--db-url", f"sqlite:///{temp_dir / DB_FILE}"],
        env={**env, "RAY_API_SERVER_ADDRESS": dashboard}, check=False, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert job.returncode == 0, f"{job.stdout}\n{job.stderr}"
    assert "3/3 applications finished" in job.stdout
    views = [json.loads(line) for line in job.stdout.splitlines() if line.startswith('{"app_id"')]
    assert [(v["app_class"], v["phase"]) for v in views] == [
        ("summarize_map_reduce_program", "finished"),
        ("tighten_text", "finished"),
        ("summarize_map_reduce_program", "finished"),
    ]
    assert len(views[0]["result"]["summaries"]) == 2 and views[0]["result"]["summary"]
    assert (
        isinstance(views[1]["result"]["words"], int)
        and "first summary, read with .get()" in job.stdout
    )
