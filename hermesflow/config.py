"""Settings of a Hermesflow installation, read from `HERMES_*` environment variables.

Only what several components must agree on lives here: where Hermesflow keeps its files and
which database holds its durable state (see `store.py`). Everything else is an argument of the
component that uses it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


@cache
def get_settings() -> Settings:
    """The process's settings, read once; call `get_settings.cache_clear()` after changing env."""
    return Settings()
