"""`HermesHook`: the Airflow connection to Hermesflow's HTTP API, and the one way the provider
talks to it.

The provider is an HTTP client only: no Ray driver in Airflow's workers or triggerer (the
scheduler and the backends run on Ray behind `hermesflow serve`). A connection of type
`hermesflow` holds the API's address (host, port, and `https` in the schema field for TLS) and
its bearer token (the password), e.g.

    AIRFLOW_CONN_HERMESFLOW_DEFAULT='hermesflow://:TOKEN@127.0.0.1:8000'

`run(route)` sends a request with a blocking client (operators, the listener); `arun(route)`
sends it with `httpx.AsyncClient` and resolves the connection with Airflow's async lookup, so a
trigger never blocks the triggerer's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
from pydantic import BaseModel

from hermesflow.operators import api_client
from hermesflow.operators.api_client import HermesApiError, Route

M = TypeVar("M", bound=BaseModel)

CONN_TYPE = "hermesflow"
DEFAULT_CONN_ID = "hermesflow_default"
DEFAULT_TIMEOUT_S = 30.0
"""Connect and read timeout of a request; a long poll's read timeout adds its wait."""
CONNECT_TIMEOUT_S = 5.0
EXAMPLE_URI = "hermesflow://:TOKEN@127.0.0.1:8000"


class HermesConnectionError(AirflowFailException):
    """The Airflow connection cannot reach Hermesflow as configured. A retry would fail the same
    way, so the task fails at once; the message names the connection and the fix."""


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the API is and how to authenticate to it."""

    base_url: str
    token: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @classmethod
    def of(cls, conn: Connection) -> ApiEndpoint:
        """The endpoint a `hermesflow` connection describes (module docstring)."""
        where = f"Airflow connection {conn.conn_id!r}"
        if conn.conn_type != CONN_TYPE:
            raise HermesConnectionError(
                f"{where} has type {conn.conn_type!r}; Hermesflow needs a connection of type "
                f"{CONN_TYPE!r}, e.g. AIRFLOW_CONN_{conn.conn_id.upper()}='{EXAMPLE_URI}'"
            )
        if not conn.host:
            raise HermesConnectionError(
                f"{where} has no host; set it to the address `hermesflow serve` prints, e.g. "
                f"AIRFLOW_CONN_{conn.conn_id.upper()}='{EXAMPLE_URI}'"
            )
        scheme = (conn.schema or "http").lower()
        if scheme not in ("http", "https"):
            raise HermesConnectionError(
                f"{where} has schema {conn.schema!r}; leave it empty (http) or set 'https'"
            )
        host = conn.host if "://" in conn.host else f"{scheme}://{conn.host}"
        base_url = f"{host}:{conn.port}" if conn.port else host
        return cls(base_url.rstrip("/"), conn.password or None)


class HermesHook(BaseHook):
    """Holds a `hermesflow` connection and sends API routes (`api_client`) through it."""

    conn_name_attr = "hermes_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Hermesflow"

    def __init__(
        self, hermes_conn_id: str = DEFAULT_CONN_ID, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        super().__init__()
        self.hermes_conn_id = hermes_conn_id
        self.timeout_s = timeout_s
        self._endpoint: ApiEndpoint | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login", "extra"],
            "relabeling": {"password": "API token", "schema": "Scheme (http or https)"},
            "placeholders": {
                "host": "127.0.0.1",
                "port": "8000",
                "schema": "http",
                "password": "the token of `hermesflow serve --token` (empty if none)",
            },
        }

    # -- the connection ---------------------------------------------------------------------------

    def endpoint(self) -> ApiEndpoint:
        if self._endpoint is None:
            try:
                conn = self.get_connection(self.hermes_conn_id)
            except AirflowNotFoundException:
                raise self._undefined() from None
            self._endpoint = ApiEndpoint.of(conn)
        return self._endpoint

    async def aendpoint(self) -> ApiEndpoint:
        """`endpoint` through Airflow's async connection lookup (for triggers)."""
        if self._endpoint is None:
            try:
                conn = await self.aget_connection(self.hermes_conn_id)
            except AirflowNotFoundException:
                raise self._undefined() from None
            self._endpoint = ApiEndpoint.of(conn)
        return self._endpoint

    def _undefined(self) -> HermesConnectionError:
        return HermesConnectionError(
            f"Airflow connection {self.hermes_conn_id!r} is not defined; create it (Admin → "
            f"Connections, type Hermesflow) or set AIRFLOW_CONN_{self.hermes_conn_id.upper()}="
            f"'{EXAMPLE_URI}'"
        )

    def _timeout(self, route: Route[Any]) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s + route.wait_s, connect=CONNECT_TIMEOUT_S)

    # -- requests ---------------------------------------------------------------------------------

    def get_conn(self) -> httpx.Client:
        """A blocking client for the API (close it after use)."""
        endpoint = self.endpoint()
        return httpx.Client(base_url=endpoint.base_url, headers=endpoint.headers)

    def run(self, route: Route[M]) -> M:
        """Send `route` and return its answer; raises `HermesApiError`."""
        with self.get_conn() as client:
            try:
                response = client.request(
                    route.method, route.path, timeout=self._timeout(route), **route.request_kwargs()
                )
            except httpx.TransportError as error:
                raise HermesApiError(route, 0, f"{type(error).__name__}: {error}") from error
        return route.read(response)

    async def arun(self, route: Route[M]) -> M:
        """`run` with `httpx.AsyncClient`: it awaits the network and never blocks the loop."""
        endpoint = await self.aendpoint()
        async with httpx.AsyncClient(
            base_url=endpoint.base_url, headers=endpoint.headers
        ) as client:
            try:
                response = await client.request(
                    route.method, route.path, timeout=self._timeout(route), **route.request_kwargs()
                )
            except httpx.TransportError as error:
                raise HermesApiError(route, 0, f"{type(error).__name__}: {error}") from error
        return route.read(response)

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's connection test: an authenticated read of the scheduler's counters."""
        try:
            stats = self.run(api_client.stats())
        except (HermesApiError, HermesConnectionError) as error:
            return False, str(error)
        return True, (
            f"Hermesflow at {self.endpoint().base_url} answers: policy {stats.policy}, "
            f"{stats.live_apps} live application(s)"
        )
