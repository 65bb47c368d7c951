"""Settings of a Hermesflow installation, read from `HERMES_*` environment variables.

Only what several components must agree on, or what an operator sets for a deployment, lives
here: where Hermesflow keeps its files and which database holds its durable state (`Settings`,
see `store.py`), and what the HTTP API accepts (`ApiLimits`, read by `hermesflow serve`).
Everything else is an argument of the component that uses it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TOKEN_ENV = "HERMES_API_TOKEN"
"""The environment variable that holds the API's bearer token, for clients as for the server."""
DB_FILENAME = "hermesflow.db"
"""The SQLite database file under `home` used when no `HERMES_DB_URL` is given."""


class Settings(BaseSettings):
    """`HERMES_HOME` (default `~/.hermesflow`) and `HERMES_DB_URL` (default SQLite under home).

    `db_url` is any SQLAlchemy URL, e.g. `postgresql+psycopg://user@host:5432/hermes` for a
    deployment shared by Airflow, Ray and the CLI; the SQLite default needs no server.
    """

    model_config = SettingsConfigDict(env_prefix="HERMES_")

    home: Path = Field(default_factory=lambda: Path.home() / ".hermesflow")
    db_url: str = ""

    @field_validator("home")
    @classmethod
    def _expand_home(cls, home: Path) -> Path:
        return home.expanduser()

    @model_validator(mode="after")
    def _default_db_url(self) -> Settings:
        if not self.db_url:
            self.db_url = f"sqlite:///{self.home / DB_FILENAME}"
        return self


class ApiLimits(BaseSettings):
    """What the HTTP API accepts, from `HERMES_API_*` environment variables (e.g.
    `HERMES_API_MAX_BODY_BYTES=16777216`), read where the gateway is started.

    A body over `max_body_bytes` is refused with 413 before it is read; `labels` (the client's
    notes stored with each run) may have at most `max_labels` keys of at most
    `max_label_key_chars` characters, each value at most `max_label_value_chars` characters as
    JSON. Names a client creates have fixed limits instead (`hermesflow.client_records`).
    """

    model_config = SettingsConfigDict(env_prefix="HERMES_API_")

    max_body_bytes: int = Field(default=4 * 2**20, ge=1024)
    max_labels: int = Field(default=32, ge=0)
    max_label_key_chars: int = Field(default=64, ge=1)
    max_label_value_chars: int = Field(default=1024, ge=1)

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets `field` (what an error message tells to raise)."""
        return f"{cls.model_config['env_prefix']}{field.upper()}"


@cache
def get_settings() -> Settings:
    """The process's settings, read once; call `get_settings.cache_clear()` after changing env."""
    return Settings()
