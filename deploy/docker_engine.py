"""The Docker engine and tools the compose deployment needs, installed and started on demand.

Machines like this project's CI have a docker *client* on the PATH and no engine, and no image
registry is reachable (docs/deploy.md § Compose check). Debian's packages fill the gap:
`docker.io` (the engine, 20.10), `docker-compose` (Compose 1.29, used when the client has no
`docker compose` plugin) and `debootstrap` (for the base image, deploy/images.py).

`dockerd` started here runs in its own session with its log and PID record under
build/compose/; it stays up after a check (images are its cache) and `make compose-clean` stops
it. Its storage driver is dockerd's own choice unless one is asked for: overlay2 where the
kernel allows it (it did on this machine kind), else vfs, which copies every layer in full.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.processes import ProcessRecord, spawn, stop_group, wait_until

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "compose"
"""Everything the compose check builds or writes (gitignored, like all of build/)."""
LOGS = BUILD / "logs"
DOCKERD_RECORD = BUILD / "dockerd.json"
"""The PID record of a dockerd this module started (deploy/processes.py's ProcessRecord)."""
DAEMON_START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0
APT_TIMEOUT_S = 900.0

TOOLS = {
    "dockerd": ("docker.io", "the Docker engine"),
    "debootstrap": ("debootstrap", "to build the base image from Debian's packages"),
}
"""Program -> (Debian package, why the check needs it)."""
COMPOSE_V1 = ("docker-compose", "Compose 1.29, as this docker client has no compose plugin")


class EngineError(RuntimeError):
    """The engine or a tool could not be installed or started; the message says how to fix it."""


@dataclass(frozen=True)
class Engine:
    """A running engine and the compose command that drives it."""

    server_version: str
    storage_driver: str
    compose: tuple[str, ...]
    compose_version: str
    started_here: bool

    def describe(self) -> str:
        started = ", started now" if self.started_here else ""
        return (
            f"docker engine {self.server_version} (storage {self.storage_driver}{started}), "
            f"{' '.join(self.compose)} {self.compose_version}"
        )


def run(command: list[str], *, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run a short command and return its stdout; raise EngineError with its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise EngineError(
            f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def ensure_engine(storage_driver: str | None = None) -> Engine:
    """Install what is missing, start dockerd unless an engine answers, and name the compose
    command: `docker compose` (v2) where the client has it, else Debian's `docker-compose`."""
    missing = {program: TOOLS[program] for program in TOOLS if shutil.which(program) is None}
    if shutil.which("docker") is None:
        missing["docker"] = TOOLS["dockerd"]
    compose = _compose_command()
    if compose is None:
        missing["docker-compose"] = COMPOSE_V1
    if missing:
        install(missing)
        compose = _compose_command()
        if compose is None:
            raise EngineError("no `docker compose` plugin and no `docker-compose` after install")
    started = False
    if not _answers():
        start_daemon(storage_driver)
        started = True
    info = json.loads(run(["docker", "info", "--format", "{{json .}}"]))
    return Engine(
        server_version=info["ServerVersion"],
        storage_driver=info["Driver"],
        compose=compose,
        compose_version=run([*compose, "version", "--short"]).strip(),
        started_here=started,
    )


def install(missing: dict[str, tuple[str, str]]) -> None:
    """apt-get install the Debian packages behind `missing`, saying what and why; apt's output
    goes to a log that is shown only if it fails."""
    packages = sorted({package for package, _ in missing.values()})
    for program, (package, why) in sorted(missing.items()):
        print(f"  installing Debian's {package} ({program}: {why})", flush=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / "apt.log"
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as out:
        for step in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends"]):
            command = [*sudo, "apt-get", *step, *(packages if step[0] == "install" else [])]
            done = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=APT_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise EngineError(f"`apt-get {step[0]}` failed ({log}):\n{tail}")


def start_daemon(storage_driver: str | None) -> None:
    """Start dockerd in its own session (log: build/compose/logs/dockerd.log) and wait until
    the client reaches it."""
    if os.geteuid() != 0:
        raise EngineError("no Docker engine answers; start one (`sudo dockerd &`) and rerun")
    print("  starting dockerd (no Docker engine was running)", flush=True)
    command = ["dockerd", *([f"--storage-driver={storage_driver}"] if storage_driver else [])]
    log = LOGS / "dockerd.log"
    process, record = spawn("dockerd", command, env=dict(os.environ), log=log)
    record.save(DOCKERD_RECORD)
    try:
        wait_until(
            _answers,
            DAEMON_START_TIMEOUT_S,
            "dockerd to answer",
            failed=lambda: None if process.poll() is None else _tail(log),
        )
    except (RuntimeError, TimeoutError) as error:
        raise EngineError(f"dockerd did not start: {error}") from error


def stop_daemon() -> str | None:
    """Stop the dockerd that `start_daemon` started (found by its PID record); None if none
    of ours runs. A dockerd started otherwise is left alone."""
    record = ProcessRecord.load(DOCKERD_RECORD)
    process = record.process() if record else None
    DOCKERD_RECORD.unlink(missing_ok=True)
    if process is None:
        return None
    return f"dockerd {stop_group(process)}"


def _answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def _compose_command() -> tuple[str, ...] | None:
    if shutil.which("docker") is not None:
        plugin = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if plugin.returncode == 0:
            return ("docker", "compose")
    return ("docker-compose",) if shutil.which("docker-compose") else None


def _tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else ["(no log)"]
    return f"dockerd exited; {log}:\n" + "\n".join(text[-lines:])
