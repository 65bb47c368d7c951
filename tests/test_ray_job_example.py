"""`examples/ray_job` end to end, as its README runs it: a `ray start --head` cluster of its own
on loopback, `hermesflow serve --address ... --detach`, `ray job submit` of `app.py`, and the
head stopped with SIGTERM to its `ray start --block` process (never `ray stop`, which would kill
every Ray process of the user, the session's test cluster included)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "examples" / "ray_job"
HEAD_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    """A free port from the kernel's ephemeral range (32768+ on Linux): outside Ray's
    worker-port range 10002-19999."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, timeout_s: float, head: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"`ray start --head` exited with {head.returncode}: {head.stderr.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout_s} s")


@pytest.fixture
def ray_head() -> Iterator[tuple[str, str, dict[str, str], Path]]:
    """(GCS address, job API URL, environment, temp dir) of a separate head with its own temp
    dir (not pytest's: concurrent pytest sessions prune each other's old base temp dirs)."""
    temp_dir = tempfile.mkdtemp(prefix="hf-rayjob-")  # short: Ray's socket paths must fit 107 bytes
    gcs_port, dashboard_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HEAD_ENV)
    command = [
        str(BIN / "ray"), "start", "--head", "--block",
        "--port", str(gcs_port),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
        "--dashboard-agent-listen-port", str(_free_port()),
        "--ray-client-server-port", str(_free_port()),
        "--num-cpus", "4", "--object-store-memory", str(256 * 2**20),
        "--temp-dir", temp_dir, "--disable-usage-stats",
    ]  # fmt: skip
    head = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        _wait_for(f"{dashboard}/api/version", 120, head)
        yield f"127.0.0.1:{gcs_port}", dashboard, env, Path(temp_dir)
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


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
         "--db-url", f"sqlite:///{temp_dir / 'hermes.db'}"],
        env=env, check=False, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert serve.returncode == 0, serve.stderr
    url = serve.stdout.strip().splitlines()[-1]
    assert httpx.get(f"{url}/healthz").status_code == 200

    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", str(EXAMPLE), "--", str(BIN / "python"), "app.py"],
        env={**env, "RAY_API_SERVER_ADDRESS": dashboard}, check=False, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert job.returncode == 0, f"{job.stdout}\n{job.stderr}\n{_journal(temp_dir / 'hermes.db')}"
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
