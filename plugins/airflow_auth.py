"""Airflow's API-server authentication, as the plugin app uses it: the one module that imports
Airflow's internal security code, so an Airflow upgrade that moves it breaks one file (checked
against Airflow 3.3.2, docs/STACK §9).

Airflow adds no authentication to a plugin's FastAPI app; the app adds `authenticated()` to
every route itself. It accepts what Airflow's own REST API accepts — an
`Authorization: Bearer` token from `POST /auth/token`, or the `_token` cookie the Airflow UI
sets after login (so the page opened from Airflow's navigation needs no login of its own) —
and answers 401 without a credential and 403 for a token that is invalid. Any logged-in user
may read the monitor: it shows scheduling state, nothing secret, and SimpleAuthManager grants
every viewer custom views anyway. `GetUserDep` is the logged-in user, for a route that needs it.

`AuthManagerDep` is not used on purpose: inside a plugin app it answers 500 (STACK §9).
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import GetUserDep, requires_authenticated
from fastapi import Depends
from fastapi.params import Depends as Dependency

__all__ = ["AUTH_RESPONSES", "GetUserDep", "authenticated", "login_url"]

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "not logged in to Airflow, or the token expired"},
    403: {"description": "the token is not one this Airflow issued"},
}
"""The answers of `authenticated()`, for the OpenAPI schema."""


def authenticated() -> Dependency:
    """The dependency that admits any logged-in Airflow user (module docstring)."""
    return Depends(requires_authenticated())


def login_url(next_url: str) -> str:
    """Where the deployment's auth manager logs a user in, coming back to `next_url` after."""
    return get_auth_manager().get_url_login(next_url=next_url)
