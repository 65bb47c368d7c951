"""The plugin's FastAPI app, which Airflow's api-server mounts at `/hermesflow`: the JSON API
(`monitor_api`), the page (`page`) and the app's OpenAPI schema, every route behind Airflow's
login (`airflow_auth`).

FastAPI serves its own `/openapi.json` and `/docs` as plain routes that app-wide dependencies do
not reach, so on a plugin app they would stay anonymous (STACK §9). They are turned off and the
schema is served by an ordinary route instead, which the login covers like the rest. The schema
names the mount point as its server (`servers: [{"url": "/hermesflow"}]`), so a client that
reads it — Schemathesis in the tests — finds the routes without being told the prefix.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.responses import Response

from hermesflow.operators.hook import DEFAULT_CONN_ID
from hermesflow.plugins.airflow_auth import AUTH_RESPONSES, authenticated, login_url
from hermesflow.plugins.monitor_api import monitor_router
from hermesflow.plugins.page import login_required
from hermesflow.plugins.page import router as page_router

CONN_ID_ENV = "HERMES_AIRFLOW_CONN_ID"
"""The environment variable naming the Airflow connection the plugin reads Hermesflow through
(default `hermesflow_default`); it is read in the api-server's environment."""


def create_app(conn_id: str | None = None) -> FastAPI:
    """The plugin app, reading Hermesflow through Airflow connection `conn_id` (default: the
    `HERMES_AIRFLOW_CONN_ID` variable, else `hermesflow_default`)."""
    conn_id = conn_id or os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID
    app = FastAPI(
        title="Hermesflow monitor",
        summary="Live applications, backends, PDGraphs and completion times of Hermesflow, "
        f"read through Airflow connection {conn_id!r}",
        version=version("hermesflow"),
        dependencies=[authenticated()],
        responses=AUTH_RESPONSES,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(monitor_router(conn_id))
    app.include_router(page_router)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request) -> dict[str, Any]:
        """The schema, with the mount point as its server (module docstring)."""
        mount = request.scope.get("root_path", "").rstrip("/")
        return {**app.openapi(), "servers": [{"url": mount or "/"}]}

    @app.exception_handler(HTTPException)
    async def login_page_for_browsers(request: Request, error: HTTPException) -> Response:
        """A browser refused for want of a login gets a page with a link to Airflow's login
        (same status); API clients get the JSON error as before."""
        browser = "text/html" in request.headers.get("accept", "")
        if error.status_code in (401, 403) and browser:
            return login_required(error.status_code, login_url(request.url.path))
        return await http_exception_handler(request, error)

    return app
