"""Handles on the running servers of the plugin's tests (the fixtures are in conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CONN_ID = "hermesflow_default"
"""The Airflow connection the plugin reads Hermesflow through (its default)."""


@dataclass(frozen=True)
class Hermes:
    url: str
    token: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def connection(self) -> dict[str, Any]:
        """The fields of a `hermesflow` Airflow connection to this server."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return {"conn_type": "hermesflow", "host": host, "port": int(port), "password": self.token}


@dataclass(frozen=True)
class AirflowApi:
    """A running api-server: `url`, the admin's password (for a login form) and bearer token
    (from `POST /auth/token`), and the server's log."""

    url: str
    password: str
    token: str
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> httpx.Client:
        """A client carrying the admin's token."""
        return httpx.Client(base_url=self.url, headers=self.auth, timeout=60)

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def patch_connection(self, **fields: Any) -> None:
        """Change these fields of the plugin's Airflow connection through the REST API (Airflow
        answers secrets masked, so a test restores them from `Hermes.connection()`)."""
        body = {"connection_id": CONN_ID, "conn_type": "hermesflow", **fields}
        with self.client() as api:
            answer = api.patch(
                f"/api/v2/connections/{CONN_ID}", params={"update_mask": list(fields)}, json=body
            )
        assert answer.status_code == 200, answer.text
