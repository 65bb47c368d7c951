"""How Hermesflow runs Airflow 3: four components over one AIRFLOW_HOME, configured only through
`AIRFLOW__*` variables. Shared by `make up` (deploy/local.py) and the end-to-end tests
(tests/support/airflow_services.py), so both run the configuration the docs describe.

Why four processes and not `airflow standalone`: standalone ignores SIGINT when started from a
non-interactive shell and its scheduler can hang on a LocalExecutor worker at SIGTERM (STACK §2,
pitfall 5); separate components each have a PID, a log and a clean stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploy.state import write_private

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
"""The Airflow 3 components a deployment runs, in start order."""
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
"""What `/api/v2/monitor/health` reports on (the api-server itself answers the request)."""
ADMIN = "admin"
"""SimpleAuthManager's default user (`[core] simple_auth_manager_users` is `admin:admin`)."""
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
"""Where SimpleAuthManager keeps passwords in AIRFLOW_HOME; one written before the api-server
starts is kept, so the admin password is known instead of scraped from a log."""
MIGRATE_TIMEOUT_S = 300.0
"""`airflow db migrate` takes ~3 s on SQLite and ~15 s on PostgreSQL; this is a hang."""
PARALLELISM = 4
"""LocalExecutor worker processes; Airflow's default of 32 costs ~1 GB on a 2-core machine."""
DEFERRAL_RACE_RETRY = {
    "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
}
"""Airflow 3.3.2 can fail a resumed deferred task that ends seconds after deferring
(apache/airflow#67287); one retry is what a deployment does about it (operators/README.md), and
the provider's idempotent step ids make the retry dispatch nothing twice."""


def airflow_bin() -> str:
    """The `airflow` script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "airflow")


def airflow_environment(
    *,
    home: Path,
    dags_folder: Path,
    url: str,
    db_url: str,
    jwt_secret: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every component and task. Inherited `AIRFLOW_*` variables (a
    developer's AIRFLOW_HOME, a test's settings or connections) are dropped: the deployment runs
    with exactly this configuration plus `extra`.

    `url` is the api-server's base URL: tasks call back to its `/execution/` API, which Airflow
    otherwise assumes at localhost:8080 (STACK pitfall 3). `jwt_secret` signs the task and user
    tokens and must be the same in every component (64 bytes: what PyJWT asks of HS512).
    `db_url` is a SQLAlchemy URL; for `postgresql+psycopg` the async URL is the same URL, as
    Airflow would otherwise derive `postgresql+asyncpg`, which is not installed.
    """
    settings = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        # One access-log line per REST poll would push everything else out of the log's tail.
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "http.access=WARNING",
    }
    if db_url.startswith("postgresql+psycopg:"):
        settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = db_url
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_")}
    return {**inherited, **settings, **(extra or {})}


def initialize(
    env: Mapping[str, str],
    *,
    admin_password: str,
    connection: Mapping[str, Any],
    connections_file: Path,
    log: Path,
    conn_id: str = "hermesflow_default",
) -> None:
    """What runs once before the components: migrate the metadata DB, set the admin's password
    (SimpleAuthManager keeps a password file it finds in AIRFLOW_HOME) and store the
    connection to Hermesflow, replacing an older one. Every step is idempotent. Raises
    RuntimeError with the log's tail when a step fails."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    write_private(home / PASSWORDS_FILE, json.dumps({ADMIN: admin_password}))
    write_private(connections_file, json.dumps({conn_id: dict(connection)}))
    steps = (["db", "migrate"], ["connections", "import", "--overwrite", str(connections_file)])
    for step in steps:
        with log.open("ab") as out:
            done = subprocess.run(
                [airflow_bin(), *step],
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=MIGRATE_TIMEOUT_S,
            )
        if done.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"airflow {' '.join(step[:2])} failed ({log}):\n{tail}")


def component_command(name: str, port: int) -> list[str]:
    """The command line of one component; `port` is the api-server's (loopback only)."""
    arguments = {
        "api-server": ("-H", "127.0.0.1", "-p", str(port), "-w", "1"),
        # The log-serving side processes would bind fixed ports (8793, 8794) and collide with
        # other deployments on the machine; task logs are read from the shared AIRFLOW_HOME.
        "scheduler": ("--skip-serve-logs",),
        "triggerer": ("--skip-serve-logs",),
        "dag-processor": (),
    }[name]
    return [airflow_bin(), name, *arguments]


def all_healthy(health: Mapping[str, object]) -> bool:
    """Whether a `/api/v2/monitor/health` body reports every component healthy."""
    return all(
        isinstance(part := health.get(key), dict) and part.get("status") == "healthy"
        for key in HEALTH_KEYS
    )
