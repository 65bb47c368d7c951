"""Shared pytest fixtures. Keep each group in its own section; import no Ray or Airflow here."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from hermesflow.backends.base import wait_passively

# ---------------------------------------------------------------------------------------------
# Triton kernels: interpreted when there is no GPU.
# ---------------------------------------------------------------------------------------------

KERNEL_MODULES = (
    "hermesflow.kernels.block_sparse_attention",
    "hermesflow.kernels.vertical_slash_attention",
)


def _import_kernels_interpreted() -> None:
    """`TRITON_INTERPRET=1` must be set when `@triton.jit` runs, i.e. when a kernel module is
    first imported — here, before any test module is collected: the LLM backend imports them
    too. It is put back afterwards, so the processes tests start (Ray workers, servers) do not
    inherit it; `tests/kernels/conftest.py` sets it again around each kernel test's launch."""
    import importlib

    import torch

    if torch.cuda.is_available():
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for module in KERNEL_MODULES:
            importlib.import_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_kernels_interpreted()


# ---------------------------------------------------------------------------------------------
# Airflow: one throwaway AIRFLOW_HOME for every in-process import of Airflow.
# ---------------------------------------------------------------------------------------------

EXAMPLE_DAGS = Path(__file__).resolve().parents[1] / "dags"
_AIRFLOW_HOME_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Airflow reads its configuration when it is first imported, and any test module may be
    the first to import it (`pytest.importorskip("airflow")` at collection), so the variables
    are set here, before collection starts — a folder's own conftest is loaded too late. So is
    OpenMP's wait policy, read once when torch loads its OpenMP runtime."""
    home = Path(tempfile.mkdtemp(prefix="hermesflow-airflow-"))
    config.stash[_AIRFLOW_HOME_KEY] = home
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
    )
    # the backends' OpenMP wait policy, for the backends the tests run in this process too (and
    # inherited by every process they start); torch must not be loaded yet
    wait_passively()


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_AIRFLOW_HOME_KEY, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Databases: a real PostgreSQL server for the session, and a fresh database per test.
# ---------------------------------------------------------------------------------------------

POSTGRES_ROOT = Path("/usr/lib/postgresql")
POSTGRES_USER = "postgres"
"""The system user that runs the server: initdb refuses to run as root."""


def _postgres_bin() -> Path | None:
    """The newest installed server's bin directory, e.g. /usr/lib/postgresql/15/bin."""
    found = [p.parent for p in POSTGRES_ROOT.glob("*/bin/initdb")]
    return max(found, key=lambda p: int(p.parent.name), default=None) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", POSTGRES_USER, "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of the `postgres` database of a throwaway server (user `hermes`, trust)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries not found under /usr/lib/postgresql; install Debian's "
            "postgresql package to run these tests"
        )
    root = Path(tempfile.mkdtemp(prefix="hermesflow-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user=POSTGRES_USER, group=POSTGRES_USER)
    data, log, port = root / "data", root / "server.log", _free_port()
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "hermes"]
        subprocess.run(_as_server_user(initdb), check=True, capture_output=True)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        started = subprocess.run(
            _as_server_user([*pg_ctl, "-o", options, "-l", str(log), "-w", "start"]),
            check=False,
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            server_log = log.read_text() if log.exists() else "(no log)"
            pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{server_log}")
        yield f"postgresql+psycopg://hermes@127.0.0.1:{port}/postgres"
        subprocess.run(_as_server_user([*pg_ctl, "-m", "fast", "-w", "stop"]), check=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _admin_execute(server_url: str, template: str, database: str) -> None:
    """Run CREATE/DROP DATABASE, which PostgreSQL refuses inside a transaction."""
    import psycopg  # the dev extra; imported here so conftest loads without it
    from psycopg import sql

    conninfo = make_url(server_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(sql.SQL(template).format(sql.Identifier(database)))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hermesflow.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_url")
    name = f"hermes_test_{uuid.uuid4().hex[:12]}"
    _admin_execute(server_url, "CREATE DATABASE {}", name)
    yield make_url(server_url).set(database=name).render_as_string(False)
    _admin_execute(server_url, "DROP DATABASE {} WITH (FORCE)", name)


# ---------------------------------------------------------------------------------------------
# Ray: one local cluster on loopback for the whole session (Ray is imported lazily).
# ---------------------------------------------------------------------------------------------

RAY_TEST_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
"""Bind every Ray process to 127.0.0.1 and skip token auth (loopback-only test cluster)."""
METRICS_REPORT_INTERVAL_MS = 1000


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray cluster with a capped object store, shared by every Ray test.

    Four logical CPUs on a 2-core machine: backend actors reserve one CPU each, the scheduler
    and the HTTP actor none, and the LLM sets its own torch threads. Workers report their
    metrics every second (Ray's default: ten), so the metrics tests read the node's Prometheus
    export (`ray.nodes()[i]["MetricsExportPort"]`) within seconds of a change.
    """
    os.environ.update(RAY_TEST_ENV)
    import ray

    ray.init(
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent / "support")}},
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
    )
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# Ray: a separate `ray start --head` cluster for the example jobs (`ray job submit` needs a
# cluster with a dashboard; the session's `ray_cluster` has none).
# ---------------------------------------------------------------------------------------------

RAY_HEAD_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
RAY_HEAD_START_TIMEOUT_S = 120.0
RAY_HEAD_STOP_GRACE_S = 60.0
RAY_HEAD_POLL_S = 0.5


def _wait_for_head(url: str, head: subprocess.Popen[str]) -> None:
    """Until the head's dashboard answers `url`; fail at once if `ray start` exits."""
    import httpx

    deadline = time.monotonic() + RAY_HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"`ray start --head` exited with {head.returncode}: {head.stderr.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(RAY_HEAD_POLL_S)
    pytest.fail(f"{url} did not answer within {RAY_HEAD_START_TIMEOUT_S:.0f} s")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[tuple[str, str, dict[str, str], Path]]:
    """(GCS address, job API URL, environment, temp dir) of a head on loopback with its own temp
    dir (not pytest's: concurrent pytest sessions prune each other's old base temp dirs).

    One head for the session: starting one costs about 8 s on 2 cores, and the example jobs'
    tests only submit to it (each names its own store file in the temp dir and its own actors).
    It is stopped with SIGTERM to its `ray start --block` process, never `ray stop`, which
    would kill every Ray process of the user, the session's test cluster included."""
    temp_dir = tempfile.mkdtemp(prefix="hf-rayjob-")  # short: Ray's socket paths must fit 107 bytes
    gcs_port, dashboard_port = _free_port(), _free_port()  # ephemeral: outside Ray's worker ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_HEAD_ENV)
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
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
        _wait_for_head(f"{dashboard}/api/version", head)
        yield f"127.0.0.1:{gcs_port}", dashboard, env, Path(temp_dir)
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=RAY_HEAD_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Hermesflow: one gateway that is never ready, for the modules that read its refusals.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def unready_gateway(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a gateway (token `support.serving.UNREADY_TOKEN`) in front of a light
    scheduler: the tool pool (not pinned), the test program `sleep_chain`, and a pinned backend
    `broken` whose tool does not import, so it warms, fails and warms again for ever and
    `/readyz` stays 503. Shared by `test_client` and `test_gateway_lifecycle` (a scheduler and
    gateway start costs seconds); what the tests run on it has keys of its own."""
    from support.serving import UNREADY_TOKEN, serving

    from hermesflow.backends.base import BackendSpec
    from hermesflow.schedulers.runtime_config import RuntimeConfig

    never_warm = BackendSpec(
        name="broken",
        type="python-tools",
        options={"tools": {"missing": "no_such_module_anywhere:tool"}},
        expected_warmup_s=1.0,
    )
    config = RuntimeConfig(
        db_url=f"sqlite:///{tmp_path_factory.mktemp('unready') / 'hermes.db'}",
        backends=[
            BackendSpec(name="tools", type="python-tools", expected_warmup_s=2.0),
            never_warm,
        ],
        programs={"sleep_chain": "runtime_programs:SleepChain"},
        warm_at_start=("broken",),
    )
    with serving(config, UNREADY_TOKEN, "unready") as served:
        yield served.url
