"""`make compose-check`: docker-compose.yml run for real, end to end, then brought down.

    python -m deploy.compose_check            # what `make compose-check` runs (at nice 10)
    python -m deploy.compose_check --clean    # `make compose-clean`: images, build, dockerd

Stages, each timed; the first failure skips the rest but the deployment is always brought down:
1. engine: Docker's engine, compose and debootstrap, installed from Debian's packages and
   started when missing (deploy/docker_engine.py);
2. the images, with no registry (deploy/images.py): base image, wheelhouse, project wheel,
   `hermesflow:local`; each step is skipped or cached while its inputs are unchanged;
3. up: the compose project `hermesflow-check` with fresh secrets and free host ports, until
   every service is running (and healthy where it has a healthcheck), `airflow-init` exited 0
   and Airflow's health endpoint reports every component healthy;
4. end to end: tests/deploy/test_compose_up.py against it (a `rag_answer` DAG run through
   Airflow's REST API, seen in Hermesflow's API, its store, the plugin's JSON API and the page
   in Chromium; the Ray cluster's nodes; the S3 bucket);
5. stop (how each container ended) and down: containers, network and volumes removed, and
   nothing of the project left. The images stay, as the next run's cache.

It prints one summary line per stage and exits 1 naming the stage that failed; every
container's log is kept in build/compose/check/compose.log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from deploy import airflow, images
from deploy.docker_engine import BUILD, REPO, Engine, EngineError, ensure_engine, run, stop_daemon
from deploy.local import SERVICES
from deploy.processes import free_port
from deploy.state import Secrets, write_private

PROJECT = "hermesflow-check"
"""The compose project's name: its containers, network and volumes carry it, apart from a
deployment a user runs from the same file (COMPOSE_PROJECT_NAME, `hermesflow` by default)."""
COMPOSE_FILE = REPO / "docker-compose.yml"
CHECK_DIR = BUILD / "check"
TARGET_ENV = "HERMESFLOW_COMPOSE_TARGET"
"""Names the JSON file that tells tests/deploy/test_compose_up.py where the deployment is."""
END_TO_END_TEST = REPO / "tests" / "deploy" / "test_compose_up.py"
PORTS = {
    "airflow": "AIRFLOW_PORT",
    "hermesflow": "HERMESFLOW_PORT",
    "ray_dashboard": "RAY_DASHBOARD_PORT",
    "s3": "S3_PORT",
    "postgres": "POSTGRES_PORT",
}
"""Host ports (the make-up test's names) -> the variables docker-compose.yml publishes them by."""
ONE_SHOT = "airflow-init"
"""The service that runs once and exits 0; every other one keeps running."""
UP_TIMEOUT_S = 900.0
"""Creating ten containers and starting Airflow, Ray and the LLM on 2 busy cores took ~2 min."""
STOP_TIMEOUT_S = 300.0
POLL_S = 3.0
KILLED = 137
"""A container's exit code after SIGKILL: it outlived its stop grace period."""


@dataclass
class Stage:
    name: str
    ok: bool
    detail: str
    seconds: float


class StageFailed(RuntimeError):
    """A stage failed; the message says what and where to look."""


@dataclass(frozen=True)
class Container:
    service: str
    state: str
    """Docker's state: running, exited, restarting, ..."""
    health: str | None
    """healthy, unhealthy or starting; None without a healthcheck."""
    exit_code: int
    restarts: int


class ComposeProject:
    """The check's compose project of docker-compose.yml: fresh secrets and free host ports in
    its own env file (owner-only), driven by the engine's compose command."""

    def __init__(self, engine: Engine) -> None:
        CHECK_DIR.mkdir(parents=True, exist_ok=True)
        self.secrets = Secrets.generate()
        self.ports = {name: free_port() for name in PORTS}
        self.env_file = CHECK_DIR / "compose.env"
        self.log = CHECK_DIR / "compose.log"
        settings = {
            "POSTGRES_PASSWORD": self.secrets.postgres_password,
            "HERMES_API_TOKEN": self.secrets.hermesflow_token,
            "AIRFLOW_ADMIN_PASSWORD": self.secrets.airflow_admin_password,
            "AIRFLOW_JWT_SECRET": self.secrets.airflow_jwt_secret,
            "AIRFLOW_SECRET_KEY": self.secrets.airflow_secret_key,
            "RAY_AUTH_TOKEN": self.secrets.ray_auth_token,
            **{PORTS[name]: str(port) for name, port in self.ports.items()},
        }
        write_private(self.env_file, "".join(f"{k}={v}\n" for k, v in settings.items()))
        self.command = [
            *engine.compose,
            "-p",
            PROJECT,
            "--env-file",
            str(self.env_file),
            "-f",
            str(COMPOSE_FILE),
        ]

    def compose(self, *arguments: str, timeout_s: float = UP_TIMEOUT_S) -> str:
        done = subprocess.run(
            [*self.command, *arguments],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            errors = [line for line in lines if line.startswith("ERROR")] or lines[-5:]
            raise StageFailed(
                f"`compose {' '.join(arguments)}` failed ({done.returncode}): " + " ".join(errors)
            )
        return done.stdout

    def containers(self) -> dict[str, Container]:
        """The project's containers by service, as Docker reports them now."""
        ids = run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        ).split()
        if not ids:
            return {}
        found = {}
        for item in json.loads(run(["docker", "inspect", *ids])):
            state = item["State"]
            service = item["Config"]["Labels"]["com.docker.compose.service"]
            found[service] = Container(
                service=service,
                state=state["Status"],
                health=state["Health"]["Status"] if state.get("Health") else None,
                exit_code=state["ExitCode"],
                restarts=item["RestartCount"],
            )
        return found

    def up(self) -> str:
        """`up -d` with the built image, then wait until everything is ready."""
        try:
            self.compose("up", "-d", "--no-build")
        except StageFailed as error:
            raise StageFailed("\n".join([*self.failures(), str(error)])) from error
        deadline = time.monotonic() + UP_TIMEOUT_S
        while waiting := self._not_ready():
            if time.monotonic() > deadline:
                raise StageFailed(f"not ready after {UP_TIMEOUT_S:.0f} s: {waiting}")
            time.sleep(POLL_S)
        found = self.containers()
        healthy = sum(c.health == "healthy" for c in found.values())
        return (
            f"{len(found)} containers: {len(found) - 1} running ({healthy} healthy), "
            f"{ONE_SHOT} exited 0; Airflow reports every component healthy; "
            f"containers use {self.memory_gib():.1f} GiB"
        )

    def failures(self) -> list[str]:
        """The services that failed (exited, restarted, unhealthy, or a one-shot that exited
        non-zero), each with its log's tail."""
        found = []
        for name, container in sorted(self.containers().items()):
            if container.health == "unhealthy":
                why = "is unhealthy"
            elif container.state == "exited" and (name != ONE_SHOT or container.exit_code):
                why = f"exited {container.exit_code}"
            elif container.restarts:
                why = f"restarted {container.restarts} times"
            else:
                continue
            found.append(f"{name} {why}; its log:\n{self.tail(name)}")
        return found

    def _not_ready(self) -> str | None:
        """What is still starting (None once all is ready); raises StageFailed as soon as a
        service failed."""
        if failed := self.failures():
            raise StageFailed("\n".join(failed))
        found = self.containers()
        missing = sorted(set(SERVICES) - set(found))
        if missing:
            return f"no container yet for {', '.join(missing)}"
        starting = [
            n
            for n, c in found.items()
            if (c.state != "exited" if n == ONE_SHOT else c.health not in (None, "healthy"))
        ]
        if starting:
            return f"starting: {', '.join(sorted(starting))}"
        return None if self._airflow_healthy() else "Airflow's components report unhealthy"

    def _airflow_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.ports['airflow']}/api/v2/monitor/health"
        try:
            response = httpx.get(url, timeout=10)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and airflow.all_healthy(response.json())

    def memory_gib(self) -> float:
        """What the project's containers use together now (docker stats)."""
        ids = run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"])
        stats = run(["docker", "stats", "--no-stream", "--format", "{{json .}}", *ids.split()])
        return (
            sum(_bytes(json.loads(line)["MemUsage"].split("/")[0]) for line in stats.splitlines())
            / 2**30
        )

    def tail(self, service: str, lines: int = 40) -> str:
        done = subprocess.run(
            [*self.command, "logs", "--no-color", "--tail", str(lines), service],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done.stdout + done.stderr

    def save_logs(self) -> None:
        done = subprocess.run(
            [*self.command, "logs", "--no-color", "--timestamps"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.log.write_text(done.stdout + done.stderr)

    def write_target(self, up_s: float) -> Path:
        """The deployment as the end-to-end test reads it (owner-only: it holds secrets)."""
        target = CHECK_DIR / "target.json"
        results = CHECK_DIR / "results.json"
        results.unlink(missing_ok=True)
        write_private(
            target,
            json.dumps(
                {
                    "state": str(CHECK_DIR),
                    "up_s": up_s,
                    "ports": self.ports,
                    "secrets": asdict(self.secrets),
                    "compose": self.command,
                    "results": str(results),
                }
            ),
        )
        return target

    def stop(self) -> str:
        """Stop every container (each gets its stop signal and grace period) and say how each
        ended; one that had to be killed fails the stage."""
        if not self.containers():
            return "nothing was running"
        self.compose("stop", timeout_s=STOP_TIMEOUT_S)
        self.save_logs()
        ended = {n: c.exit_code for n, c in sorted(self.containers().items()) if n != ONE_SHOT}
        killed = [name for name, code in ended.items() if code == KILLED]
        summary = ", ".join(f"{name} {code}" for name, code in ended.items())
        if killed:
            raise StageFailed(f"killed after their grace period: {', '.join(killed)} ({summary})")
        return f"exit codes: {summary}"

    def down(self) -> str:
        """`down -v`, then prove nothing of the project is left."""
        self.compose("down", "-v", "--remove-orphans", timeout_s=STOP_TIMEOUT_S)
        label = f"label=com.docker.compose.project={PROJECT}"
        left = {
            "containers": run(["docker", "ps", "-aq", "--filter", label]).split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).split(),
        }
        leftover = {kind: ids for kind, ids in left.items() if ids}
        if leftover:
            raise StageFailed(f"left after down: {leftover}")
        for secret in ("compose.env", "target.json"):
            (CHECK_DIR / secret).unlink(missing_ok=True)
        return f"no container, volume or network of {PROJECT} left"


def _bytes(size: str) -> float:
    """One of Docker's human sizes (`512MiB`, `1.2GiB`, `300kB`) in bytes."""
    units = {"B": 1, "kB": 1e3, "KiB": 2**10, "MB": 1e6, "MiB": 2**20, "GB": 1e9, "GiB": 2**30}
    found = re.fullmatch(r"([\d.]+)\s*([A-Za-z]+)", size.strip())
    if found is None or found.group(2) not in units:
        raise ValueError(f"not a size docker stats writes: {size!r}")
    return float(found.group(1)) * units[found.group(2)]


def end_to_end(project: ComposeProject, up_s: float) -> str:
    """tests/deploy/test_compose_up.py against the running project, its output passed through
    to the terminal as it comes (each test has pytest-timeout's limit, pyproject.toml); the
    detail is pytest's last line (what passed, what was skipped) and the DAG run's outcome."""
    target = project.write_target(up_s)
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    with subprocess.Popen(
        [*command, str(END_TO_END_TEST)],
        cwd=REPO,
        env={**os.environ, TARGET_ENV: str(target)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as pytest_run:
        last = ""
        for line in pytest_run.stdout or ():
            print(f"  | {line}", end="", flush=True)
            last = line.strip() or last
        code = pytest_run.wait()
    results_file = CHECK_DIR / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    dag = (
        f"{results['dag']} {results['dag_state']} in {results['dag_run_s']} s"
        if results
        else "no DAG run recorded"
    )
    if code != 0:
        raise StageFailed(f"{END_TO_END_TEST.name}: {last.strip('= ')}; {dag}")
    return f"{END_TO_END_TEST.name}: {last.strip('= ')}; {dag}"


class Check:
    """Runs the stages in order and keeps their results for the summary."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    def stage(self, name: str, action: Callable[[], str]) -> bool:
        print(f"{name} ...", flush=True)
        started = time.monotonic()
        try:
            detail, ok = action(), True
        except (StageFailed, EngineError, subprocess.TimeoutExpired) as error:
            detail, ok = str(error), False
        self.stages.append(Stage(name, ok, detail, time.monotonic() - started))
        print(f"{name}: {'ok' if ok else 'FAILED'} ({self.stages[-1].seconds:.1f} s)", flush=True)
        return ok

    def seconds(self, name: str) -> float:
        return next(s.seconds for s in self.stages if s.name == name)

    def summary(self, total_s: float) -> str:
        failed = next((s for s in self.stages if not s.ok), None)
        verdict = "PASSED" if failed is None else f"FAILED at {failed.name}"
        lines = ["", f"compose check {verdict} in {total_s:.0f} s"]
        for stage in self.stages:
            first = stage.detail.splitlines()[0] if stage.detail else ""
            mark = "ok" if stage.ok else "FAILED"
            lines.append(f"  {stage.name:14} {mark:6} {stage.seconds:7.1f} s  {first}")
        if failed is not None:
            lines += [
                "",
                f"{failed.name} failed: {failed.detail}",
                f"container logs: {CHECK_DIR / 'compose.log'}",
            ]
        return "\n".join(lines)


def check(storage_driver: str | None) -> int:
    started = time.monotonic()
    run_check = Check()
    engine: list[Engine] = []

    def start_engine() -> str:
        engine.append(ensure_engine(storage_driver))
        return engine[0].describe()

    ok = run_check.stage("engine", start_engine)
    for name, step in images.STEPS:
        ok = ok and run_check.stage(name, step)
    if ok:
        project = ComposeProject(engine[0])
        ok = run_check.stage("up", project.up)
        if ok:
            up_s = run_check.seconds("up")
            run_check.stage("end to end", lambda: end_to_end(project, up_s))
        if not run_check.stage("stop", project.stop):
            project.save_logs()
        run_check.stage("down", project.down)
    print(run_check.summary(time.monotonic() - started))
    return 0 if all(s.ok for s in run_check.stages) else 1


def clean() -> int:
    """Bring a leftover check project down, remove the images and build/compose/, and stop the
    dockerd the check started (one started otherwise keeps running)."""
    try:
        engine = ensure_engine()
        project = ComposeProject(engine)
        print(f"compose project {PROJECT}: {project.down()}")
        print(f"images removed: {', '.join(images.remove_images()) or 'none'}")
        print(stop_daemon() or "dockerd: not started by the check, left running")
        shutil.rmtree(BUILD, ignore_errors=True)  # after stop_daemon: it holds dockerd's record
        print(f"{BUILD} removed")
    except (StageFailed, EngineError) as error:
        print(f"compose clean failed: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.compose_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="remove what the check built (images, build/compose/) and stop the dockerd it started",
    )
    parser.add_argument(
        "--storage-driver",
        help="when dockerd has to be started: its storage driver (default: dockerd's choice, "
        "overlay2 where the kernel allows it, else vfs)",
    )
    arguments = parser.parse_args(argv)
    return clean() if arguments.clean else check(arguments.storage_driver)


if __name__ == "__main__":
    sys.exit(main())
