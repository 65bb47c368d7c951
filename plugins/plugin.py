"""`HermesflowPlugin`: what Hermesflow adds to every Airflow component.

* the listener that reports task outcomes and DAG-run ends to Hermesflow
  (`hermesflow.operators.listener`);
* in the api-server, the monitor app at `/hermesflow` — a JSON API and a page, behind Airflow's
  login (`hermesflow.plugins.app`) — and a "Hermesflow" entry in the UI's navigation that opens
  the page inside Airflow's UI (`/plugin/hermesflow`).

Registered through the `airflow.plugins` entry point, which Airflow always loads — a `plugins`
entry in the provider info is ignored while providers are discovered lazily (STACK §9). Every
component imports this module for the listener, every task process included, so the app is
built on its first request (`LazyApp`): FastAPI and Airflow's API security cost about 1 s of CPU
to import, which the scheduler, the triggerer and each task would otherwise pay for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from starlette.types import ASGIApp, Receive, Scope, Send

from hermesflow.operators import listener

URL_PREFIX = "/hermesflow"
"""Where the api-server mounts the app; the page is at `{URL_PREFIX}/ui`."""


class LazyApp:
    """An ASGI app that builds the real one with `factory` when the first request arrives."""

    def __init__(self, factory: Callable[[], ASGIApp]) -> None:
        self._factory = factory
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = self._factory()
        await self._app(scope, receive, send)


def _monitor_app() -> ASGIApp:
    from hermesflow.plugins.app import create_app  # deferred: see the module docstring

    return create_app()


class HermesflowPlugin(AirflowPlugin):
    name = "hermesflow"
    listeners: ClassVar[list[ModuleType]] = [listener]
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": LazyApp(_monitor_app), "url_prefix": URL_PREFIX, "name": "Hermesflow monitor"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Hermesflow",
            "href": f"{URL_PREFIX}/ui",
            "destination": "nav",
            "url_route": "hermesflow",
        }
    ]
