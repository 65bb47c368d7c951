"""A PostgreSQL server from Debian's packages for a local deployment: one cluster, loopback only,
password auth, holding Airflow's metadata database and Hermesflow's store.

`initdb` refuses to run as root, and sessions here run as root, so as root every server command
runs as the `postgres` system user through `runuser` (STACK §12), and the cluster's folder
belongs to that user. `pg_ctl start` daemonizes: the postmaster's PID is read back from
`postmaster.pid`, and `pg_ctl stop -m fast` stops it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
"""The system user that runs the server when we are root."""
SUPERUSER = "hermes"
"""The cluster's superuser, owner of both databases."""
DATABASES = ("airflow", "hermesflow")
COMMAND_TIMEOUT_S = 120.0


class PostgresError(RuntimeError):
    """A server command failed; the message carries its output and the server log's tail."""


def server_bin() -> Path:
    """The newest installed server's bin folder, e.g. /usr/lib/postgresql/15/bin."""
    found = [p.parent for p in POSTGRES_ROOT.glob("*/bin/initdb")]
    if not found:
        raise PostgresError(
            "no PostgreSQL server under /usr/lib/postgresql; install it with "
            "`apt-get install -y postgresql` (Debian), or use docker-compose.yml"
        )
    return max(found, key=lambda p: int(p.parent.name))


@dataclass(frozen=True)
class LocalPostgres:
    """The cluster in `root` (data in `root/data`, socket and log in `root`) on `port`."""

    root: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of one of the cluster's databases (psycopg 3, sync and async)."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def postmaster_pid(self) -> int | None:
        """The running server's PID, from the first line of `postmaster.pid`."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Create the cluster on first use, start the server, create missing databases."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")
        for database in DATABASES:
            self._create_database(database)

    def running(self) -> bool:
        """What `pg_ctl status` says (exit 0: running, 3: not running)."""
        if not (self.data / "PG_VERSION").exists():
            return False
        try:
            self._run("pg_ctl", "-D", str(self.data), "status")
        except PostgresError:
            return False
        return True

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        password_file = self.root / "initdb-password"
        password_file.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.root, user=SERVER_USER, group=SERVER_USER)
            shutil.chown(password_file, user=SERVER_USER, group=SERVER_USER)
        password_file.chmod(0o600)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "-A",
                "scram-sha-256",
                f"--pwfile={password_file}",
                "--encoding=UTF8",
            )
        finally:
            password_file.unlink(missing_ok=True)

    def _create_database(self, name: str) -> None:
        """CREATE DATABASE unless it exists (psql over the cluster's socket folder)."""
        psql = [
            "psql",
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
        ]
        exists = self._run(*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if exists.strip() != "1":
            self._run(*psql, f'CREATE DATABASE "{name}"')

    def _run(self, program: str, *arguments: str) -> str:
        command = [str(server_bin() / program), *arguments]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            env={**os.environ, "PGPASSWORD": self.password},
            check=False,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise PostgresError(
                f"{program} failed ({done.returncode}): {done.stderr.strip()}\n"
                f"server log ({self.log}):\n{log}"
            )
        return done.stdout
