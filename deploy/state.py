"""The state folder of a local deployment (`.hermesflow-up/` by default): the ports chosen at
the first `make up`, the generated secrets, one PID file per component, logs and data.

Everything a later `make up`, `make status` or `make down` needs is read back from here, so the
commands are independent processes and `make up` twice reuses the same ports, passwords and
data. Secrets are written owner-only; the folder itself is traversable by others (0711) because
PostgreSQL runs as the `postgres` user and must reach its data folder inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from deploy.processes import ProcessRecord, free_port


@dataclass(frozen=True)
class Ports:
    """The TCP ports of a deployment, all on 127.0.0.1 (Ray's GCS on the host's address too)."""

    postgres: int = 5433
    airflow: int = 8080
    hermesflow: int = 8000
    s3: int = 5000
    ray_gcs: int = 6379
    ray_dashboard: int = 8265
    ray_client: int = 10001
    ray_head_agent: int = 52365
    ray_worker_agent: int = 52366

    @classmethod
    def free(cls) -> Ports:
        """Ports nothing listens on now (for tests and for a second deployment on one machine).
        Linux hands them out above 32767, clear of Ray's worker range 10002-19999."""
        return cls(**{f.name: free_port() for f in fields(cls)})


@dataclass(frozen=True)
class Secrets:
    """Generated once per state folder; `make down` keeps them so data stays readable."""

    postgres_password: str
    hermesflow_token: str
    airflow_admin_password: str
    airflow_jwt_secret: str
    airflow_secret_key: str
    ray_auth_token: str

    @classmethod
    def generate(cls) -> Secrets:
        return cls(
            postgres_password=secrets.token_urlsafe(18),
            hermesflow_token=secrets.token_urlsafe(24),
            airflow_admin_password=secrets.token_urlsafe(12),
            airflow_jwt_secret=secrets.token_urlsafe(64),
            airflow_secret_key=secrets.token_urlsafe(32),
            # Ray accepts any string; its own generator makes 32 hex characters.
            ray_auth_token=secrets.token_hex(16),
        )


class StateDir:
    """Paths and records inside the state folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def create(self) -> None:
        for folder in (self.root, self.pids, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def ray_token_file(self) -> Path:
        return self.root / "ray-auth-token"

    @property
    def ray_temp(self) -> Path:
        """Ray's temp folder (sessions, logs, sockets): short, because Ray puts unix sockets
        under it (a 107-byte limit), and one per state folder. `down` keeps it for its logs."""
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:10]
        return Path("/tmp") / f"hermesflow-ray-{digest}"

    @property
    def env_file(self) -> Path:
        """Shell exports of the URLs and tokens (`. .hermesflow-up/env`)."""
        return self.root / "env"

    def ports(self, wanted: Ports | None) -> Ports:
        """The recorded ports; on first use `wanted` (default: the standard ones), recorded."""
        path = self.root / "ports.json"
        if path.exists():
            return Ports(**json.loads(path.read_text()))
        chosen = wanted or Ports()
        path.write_text(json.dumps(asdict(chosen), indent=1))
        return chosen

    def recorded_ports(self) -> Ports | None:
        path = self.root / "ports.json"
        return Ports(**json.loads(path.read_text())) if path.exists() else None

    def secrets(self) -> Secrets:
        """The recorded secrets, generated and written (owner-only) on first use."""
        path = self.root / "secrets.json"
        if path.exists():
            return Secrets(**json.loads(path.read_text()))
        generated = Secrets.generate()
        write_private(path, json.dumps(asdict(generated), indent=1))
        write_private(self.ray_token_file, generated.ray_auth_token)
        return generated

    def record(self, name: str) -> ProcessRecord | None:
        return ProcessRecord.load(self.pids / f"{name}.json")

    def save_record(self, record: ProcessRecord) -> None:
        record.save(self.pids / f"{record.name}.json")

    def forget(self, name: str) -> None:
        (self.pids / f"{name}.json").unlink(missing_ok=True)


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, never briefly readable by others."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
