"""`make up` / `make status` / `make down`: the docker-compose topology as local processes.

    python -m deploy.local up [--state-dir DIR] [--free-ports]
    python -m deploy.local status [--state-dir DIR]
    python -m deploy.local down [--state-dir DIR]

What runs (the services of docker-compose.yml, `SERVICES` below), each with a log under
`STATE/logs` and, where it is a process of ours, a PID file under `STATE/pids`:
PostgreSQL (Airflow's metadata and Hermesflow's store), a moto S3 server, a Ray head and one
Ray worker node, `hermesflow serve --detach` on that cluster (its scheduler and HTTP API live in
Ray actors, so they have no PID of their own and stop with `hermesflow stop`), and Airflow's
api-server, scheduler, dag-processor and triggerer over the repo's `dags/`.

Everything listens on 127.0.0.1 but Ray: a second Ray node on one machine is only possible on
the host's own address (Ray refuses to add a node when told to stay on loopback; STACK §10), so
the Ray cluster runs with token authentication. `up` is idempotent: what runs is left alone,
what does not is started. `down` stops what the PID files name, and nothing else.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from deploy import airflow
from deploy.postgres import LocalPostgres
from deploy.processes import port_open, spawn, stop_group, wait_until
from deploy.state import Ports, Secrets, StateDir, write_private

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = REPO / ".hermesflow-up"
SERVICES = (
    "postgres",
    "s3",
    "ray-head",
    "ray-worker",
    "hermesflow",
    "airflow-init",
    *(f"airflow-{name}" for name in airflow.COMPONENTS),
)
"""The deployment's services, named as in docker-compose.yml (tests check they match)."""
S3_BUCKET = "hermesflow"
"""Created at start, for IGTCache and DAGs that stage files (`s3://hermesflow/...`)."""
S3_KEY = "testing"
"""moto accepts any credentials; these are the documented dummy ones."""
RAY_CPUS = {"ray-head": 2, "ray-worker": 2}
"""Logical CPUs per node: the suite's four backends reserve one each (scheduler and API none)."""
RAY_OBJECT_STORE_BYTES = 256 * 2**20
"""Ray's default is 30 % of RAM per node in /dev/shm; Hermesflow moves small JSON documents."""
RAY_START_TIMEOUT_S = 120.0
SERVE_TIMEOUT_S = 300.0
"""`hermesflow serve --detach` connects, starts the scheduler and waits for the API: ~10 s."""
AIRFLOW_TIMEOUT_S = 240.0
"""All four Airflow components report healthy in 15-40 s on 2 cores; this is a broken start."""
S3_TIMEOUT_S = 60.0


class Deployment:
    """The local deployment kept in `state` (see deploy/state.py)."""

    def __init__(self, state_dir: Path, ports: Ports | None = None) -> None:
        self.state = StateDir(state_dir)
        self.state.create()
        self.ports = self.state.ports(ports)
        self.secrets: Secrets = self.state.secrets()
        self.postgres = LocalPostgres(
            self.state.postgres, self.ports.postgres, self.secrets.postgres_password
        )
        self.ray_address = f"127.0.0.1:{self.ports.ray_gcs}"
        self.airflow_url = f"http://127.0.0.1:{self.ports.airflow}"
        self.hermesflow_url = f"http://127.0.0.1:{self.ports.hermesflow}"
        self.s3_url = f"http://127.0.0.1:{self.ports.s3}"
        self.connection_uri = (
            f"hermesflow://:{self.secrets.hermesflow_token}@127.0.0.1:{self.ports.hermesflow}"
        )
        self._started: dict[str, subprocess.Popen[bytes]] = {}
        self._log_offsets: dict[str, int] = {}
        """Where each log ended before this `up` appended to it (readiness is read after)."""

    # -- up ---------------------------------------------------------------------------------------

    def up(self) -> None:
        """Start what is not running, in dependency order, overlapping the slow independent
        steps (Ray's start with Airflow's migration); return once everything answers."""
        self._start_postgres()
        self._ensure("s3", self._s3_command())
        self._ensure("ray-head", self._ray_command("ray-head"), env=self._ray_env())
        airflow_missing = [c for c in airflow.COMPONENTS if self._running(f"airflow-{c}") is None]
        if airflow_missing:
            self._init_airflow()
        self._wait_ray_node("ray-head")
        self._ensure("ray-worker", self._ray_command("ray-worker"), env=self._ray_env())
        for component in airflow.COMPONENTS:
            self._ensure(
                f"airflow-{component}",
                airflow.component_command(component, self.ports.airflow),
                env=self._airflow_env(),
            )
        self._wait_ray_node("ray-worker")
        self._serve_hermesflow()
        self._wait_s3()
        self._wait_airflow()
        self._write_env_file()
        print(self.summary())

    def _start_postgres(self) -> None:
        if self._postgres_process() is not None:
            print("postgres: already running")
            return
        self.postgres.start()
        print(f"postgres: started (pid {self.postgres.postmaster_pid()})")

    def _postgres_process(self) -> psutil.Process | None:
        """The postmaster, if `pg_ctl status` says the cluster runs (a stale postmaster.pid
        naming a reused PID does not count)."""
        pid = self.postgres.postmaster_pid()
        if pid is None or not self.postgres.running():
            return None
        try:
            return psutil.Process(pid)
        except psutil.NoSuchProcess:
            return None

    def _ensure(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start `name` unless its recorded process still runs."""
        if self._running(name) is not None:
            print(f"{name}: already running (pid {self.state.record(name).pid})")
            return
        log = self.state.logs / f"{name}.log"
        self._log_offsets[name] = log.stat().st_size if log.exists() else 0
        process, record = spawn(
            name,
            command,
            env=env or dict(os.environ),
            log=log,
            cwd=REPO,
        )
        self._started[name] = process
        self.state.save_record(record)
        print(f"{name}: started (pid {record.pid})")

    def _running(self, name: str) -> psutil.Process | None:
        record = self.state.record(name)
        return record.process() if record else None

    def _exited(self, *names: str) -> str | None:
        """Why a component we just started has already ended, with its log's tail."""
        for name in names:
            process = self._started.get(name)
            if process is not None and process.poll() is not None:
                return f"{name} exited {process.returncode}; its log:\n{self._tail(name)}"
        return None

    def _tail(self, name: str, lines: int = 40) -> str:
        log = self.state.logs / f"{name}.log"
        text = log.read_text(errors="replace").splitlines() if log.exists() else ["(no log)"]
        return "\n".join(text[-lines:])

    # -- the services -----------------------------------------------------------------------------

    def _s3_env(self) -> dict[str, str]:
        """How clients reach the S3 server (boto3, s3fs and fsspec read these variables)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.s3_url,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _ray_env(self) -> dict[str, str]:
        """The environment of the Ray nodes and of Ray clients (`hermesflow serve`, `stop`):
        the cluster's token auth, the store, S3. Inherited `RAY_*` settings are dropped."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {
            **inherited,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.state.ray_token_file),
            "RAY_USAGE_STATS_ENABLED": "0",
            "HERMES_DB_URL": self.postgres.url("hermesflow"),
            **self._s3_env(),
        }

    def _s3_command(self) -> list[str]:
        return [
            str(Path(sys.executable).parent / "moto_server"),
            "-H",
            "127.0.0.1",
            "-p",
            str(self.ports.s3),
        ]

    def _wait_s3(self) -> None:
        wait_until(
            lambda: port_open(self.ports.s3),
            S3_TIMEOUT_S,
            "the S3 server",
            failed=lambda: self._exited("s3"),
        )
        created = httpx.put(f"{self.s3_url}/{S3_BUCKET}", timeout=30)
        if created.status_code not in (200, 409):
            raise RuntimeError(f"creating bucket {S3_BUCKET}: HTTP {created.status_code}")

    def _ray_command(self, node: str) -> list[str]:
        ray = str(Path(sys.executable).parent / "ray")
        common = [
            "--block",
            f"--num-cpus={RAY_CPUS[node]}",
            f"--object-store-memory={RAY_OBJECT_STORE_BYTES}",
            f"--temp-dir={self.state.ray_temp}",
            "--disable-usage-stats",
        ]
        if node == "ray-head":
            return [
                ray,
                "start",
                "--head",
                *common,
                f"--port={self.ports.ray_gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.ports.ray_dashboard}",
                f"--ray-client-server-port={self.ports.ray_client}",
                f"--dashboard-agent-listen-port={self.ports.ray_head_agent}",
            ]
        return [
            ray,
            "start",
            *common,
            f"--address={self.ray_address}",
            f"--dashboard-agent-listen-port={self.ports.ray_worker_agent}",
        ]

    def _wait_ray_node(self, node: str) -> None:
        """Until `ray start` says the node runs (it registers with the GCS before it says so),
        reading only what this `up` appended to the log."""
        log = self.state.logs / f"{node}.log"

        def started() -> bool:
            with log.open("rb") as text:
                text.seek(self._log_offsets.get(node, 0))
                return b"Ray runtime started." in text.read()

        wait_until(
            started,
            RAY_START_TIMEOUT_S,
            f"the {node} node",
            failed=lambda: self._exited(node),
        )

    def _serve_hermesflow(self) -> None:
        """`hermesflow serve --detach` unless the API already answers with our token."""
        if self._hermesflow_answers():
            print(f"hermesflow: already serving at {self.hermesflow_url}")
            return
        log = self.state.logs / "hermesflow.log"
        command = [
            str(Path(sys.executable).parent / "hermesflow"),
            "serve",
            "--address",
            self.ray_address,
            "--detach",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ports.hermesflow),
        ]
        env = {**self._ray_env(), "HERMES_API_TOKEN": self.secrets.hermesflow_token}
        with log.open("ab") as out:
            done = subprocess.run(
                command,
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=SERVE_TIMEOUT_S,
                check=False,
            )
        if done.returncode != 0 or not self._hermesflow_answers():
            raise RuntimeError(
                f"hermesflow serve failed ({done.returncode}):\n{self._tail('hermesflow')}"
            )
        print(f"hermesflow: serving at {self.hermesflow_url}")

    def _hermesflow_answers(self) -> bool:
        headers = {"Authorization": f"Bearer {self.secrets.hermesflow_token}"}
        try:
            response = httpx.get(f"{self.hermesflow_url}/v1/stats", headers=headers, timeout=10)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def _airflow_env(self) -> dict[str, str]:
        return airflow.airflow_environment(
            home=self.state.airflow_home,
            dags_folder=REPO / "dags",
            url=self.airflow_url,
            db_url=self.postgres.url("airflow"),
            jwt_secret=self.secrets.airflow_jwt_secret,
            extra={
                **self._s3_env(),
                "AIRFLOW__API__SECRET_KEY": self.secrets.airflow_secret_key,
                **airflow.DEFERRAL_RACE_RETRY,
            },
        )

    def _init_airflow(self) -> None:
        """The compose file's `airflow-init`; the connection is the one `make up` prints."""
        airflow.initialize(
            self._airflow_env(),
            admin_password=self.secrets.airflow_admin_password,
            connection={
                "conn_type": "hermesflow",
                "host": "127.0.0.1",
                "port": self.ports.hermesflow,
                "password": self.secrets.hermesflow_token,
                "description": "The Hermesflow API of `make up`",
            },
            connections_file=self.state.root / "connections.json",
            log=self.state.logs / "airflow-init.log",
        )
        print("airflow-init: metadata DB migrated, connection hermesflow_default stored")

    def _wait_airflow(self) -> None:
        def healthy() -> bool:
            try:
                response = httpx.get(f"{self.airflow_url}/api/v2/monitor/health", timeout=10)
            except httpx.TransportError:
                return False
            return response.status_code == 200 and airflow.all_healthy(response.json())

        names = [f"airflow-{c}" for c in airflow.COMPONENTS]
        wait_until(
            healthy,
            AIRFLOW_TIMEOUT_S,
            "all Airflow components to report healthy",
            failed=lambda: self._exited(*names),
        )

    def _write_env_file(self) -> None:
        exports = {
            "HERMES_API_URL": self.hermesflow_url,
            "HERMES_API_TOKEN": self.secrets.hermesflow_token,
            "AIRFLOW_CONN_HERMESFLOW_DEFAULT": self.connection_uri,
            "RAY_ADDRESS": self.ray_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.state.ray_token_file),
            "AWS_ENDPOINT_URL_S3": self.s3_url,
            "HERMES_DB_URL": self.postgres.url("hermesflow"),
        }
        write_private(
            self.state.env_file, "".join(f"export {k}='{v}'\n" for k, v in exports.items())
        )

    def summary(self) -> str:
        return "\n".join(
            [
                "",
                (
                    f"Airflow       {self.airflow_url}  (user {airflow.ADMIN}, password "
                    f"{self.secrets.airflow_admin_password})"
                ),
                f"  Hermesflow page {self.airflow_url}/plugin/hermesflow",
                f"Hermesflow    {self.hermesflow_url}  (token {self.secrets.hermesflow_token})",
                (
                    f"Ray dashboard http://127.0.0.1:{self.ports.ray_dashboard}  (cluster "
                    f"{self.ray_address}, token in {self.state.ray_token_file})"
                ),
                f"S3 (moto)     {self.s3_url}  (bucket {S3_BUCKET}, key/secret {S3_KEY})",
                f"PostgreSQL    {self.postgres.url('airflow')} and .../hermesflow",
                f"Connection    AIRFLOW_CONN_HERMESFLOW_DEFAULT='{self.connection_uri}'",
                f"Shell         . {self.state.env_file}   (logs in {self.state.logs})",
            ]
        )

    # -- status and down --------------------------------------------------------------------------

    def status(self) -> dict[str, str]:
        """Each service's state: `running (pid N)`, `stopped`, or for Hermesflow its API's."""
        found: dict[str, str] = {}
        for name in SERVICES:
            if name == "postgres":
                process = self._postgres_process()
            elif name == "hermesflow":
                found[name] = "serving" if self._hermesflow_answers() else "not answering"
                continue
            elif name == "airflow-init":
                continue
            else:
                process = self._running(name)
            found[name] = f"running (pid {process.pid})" if process else "stopped"
        return found

    def down(self) -> dict[str, str]:
        """Stop everything in reverse start order; print and return how each service ended.

        Airflow first, so no task is left waiting on a vanished API; then Hermesflow
        (`hermesflow stop` releases its backends and ends its actors) while the cluster still
        runs; then the Ray nodes, S3 and PostgreSQL. Raises RuntimeError if any process of
        the deployment survives SIGKILL."""
        stopped: dict[str, str] = {}
        for name in reversed(SERVICES):
            started = time.monotonic()
            how = self._stop(name)
            if how is not None:
                stopped[name] = f"{how}, {time.monotonic() - started:.1f} s"
                print(f"{name}: {stopped[name]}", flush=True)
        if not stopped:
            print("nothing was running")
        return stopped

    def _stop(self, name: str) -> str | None:
        """Stop one service; None if it was not running."""
        if name == "airflow-init":
            return None
        if name == "hermesflow":
            return self._stop_hermesflow() if self._running("ray-head") is not None else None
        if name == "postgres":
            process = self._postgres_process()
            if process is None:
                return None
            self.postgres.stop()
            psutil.wait_procs([process], timeout=30)
            return f"stopped (pid {process.pid})"
        process = self._running(name)
        self.state.forget(name)
        if process is None:
            return None
        # `ray start --block` stops its node's processes in order on SIGTERM; signalled all at
        # once they wait on each other until killed.
        return (
            f"{stop_group(process, term_leader_only=name.startswith('ray-'))} (pid {process.pid})"
        )

    def _stop_hermesflow(self) -> str:
        command = [
            str(Path(sys.executable).parent / "hermesflow"),
            "stop",
            "--address",
            self.ray_address,
        ]
        with (self.state.logs / "hermesflow.log").open("ab") as out:
            done = subprocess.run(
                command,
                env=self._ray_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=SERVE_TIMEOUT_S,
                check=False,
            )
        return "stopped" if done.returncode == 0 else f"stop failed ({done.returncode}), see log"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=("up", "status", "down"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where ports, secrets, PID files, logs and data live",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="on first `up`, pick free ports instead of the standard ones",
    )
    arguments = parser.parse_args(argv)
    if arguments.command != "up" and StateDir(arguments.state_dir).recorded_ports() is None:
        print(f"no deployment in {arguments.state_dir}; start one with `make up`")
        return 0
    deployment = Deployment(arguments.state_dir, Ports.free() if arguments.free_ports else None)
    if arguments.command == "up":
        try:
            deployment.up()
        except (RuntimeError, TimeoutError) as error:
            print(
                f"make up failed: {error}\nlogs: {deployment.state.logs}; "
                "`make down` stops what did start",
                file=sys.stderr,
            )
            return 1
    elif arguments.command == "status":
        for name, state in deployment.status().items():
            print(f"{name:24} {state}")
        print(deployment.summary())
    else:
        deployment.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
