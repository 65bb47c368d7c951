"""`HermesHook`: the Airflow connection to Hermesflow's HTTP API.

The provider is an HTTP client only: no Ray driver in Airflow's workers or triggerer (the
scheduler and the backends run on Ray behind `hermesflow serve`). A connection of type
`hermesflow` holds the API's address (host, port, and `https` in the schema field for TLS) and
its bearer token (the password), e.g.

    AIRFLOW_CONN_HERMESFLOW_DEFAULT='hermesflow://:TOKEN@127.0.0.1:8000'

The hook only turns that connection into an `ApiEndpoint` and sends through the shared client
(`hermesflow.client`, which holds the routes, the error type and the reading of answers):
`run(route)` blocks (operators, the listener); `arun(route)` resolves the connection with
Airflow's async lookup and awaits the request, so a trigger never blocks the triggerer's loop.
"""

from __future__ import annotations

from typing import Any, TypeVar

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
from pydantic import BaseModel

from hermesflow import client
from hermesflow.client import DEFAULT_TIMEOUT_S, ApiClient, ApiEndpoint, HermesApiError, Route

M = TypeVar("M", bound=BaseModel)

CONN_TYPE = "hermesflow"
DEFAULT_CONN_ID = "hermesflow_default"
EXAMPLE_URI = "hermesflow://:TOKEN@127.0.0.1:8000"


class HermesConnectionError(AirflowFailException):
    """The Airflow connection cannot reach Hermesflow as configured. A retry would fail the same
    way, so the task fails at once; the message names the connection and the fix."""


def connection_endpoint(conn: Connection) -> ApiEndpoint:
    """The endpoint a `hermesflow` connection describes (module docstring); its errors name the
    connection's fields, which is where an Airflow user fixes them."""
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
    try:
        return ApiEndpoint(
            base_url.rstrip("/"),
            conn.password or None,
            address_setting="the connection's host",
            token_setting="the connection's password",
        )
    except client.InvalidAddress as error:
        raise HermesConnectionError(
            f"{where} holds an invalid address {error.base_url!r} ({error.reason}); set its "
            "host and port to where `hermesflow serve` listens"
        ) from None


class HermesHook(BaseHook):
    """Holds a `hermesflow` connection and sends the client's routes through it."""

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
            self._endpoint = connection_endpoint(conn)
        return self._endpoint

    async def aendpoint(self) -> ApiEndpoint:
        """`endpoint` through Airflow's async connection lookup (for triggers)."""
        if self._endpoint is None:
            try:
                conn = await self.aget_connection(self.hermes_conn_id)
            except AirflowNotFoundException:
                raise self._undefined() from None
            self._endpoint = connection_endpoint(conn)
        return self._endpoint

    def _undefined(self) -> HermesConnectionError:
        return HermesConnectionError(
            f"Airflow connection {self.hermes_conn_id!r} is not defined; create it (Admin → "
            f"Connections, type Hermesflow) or set AIRFLOW_CONN_{self.hermes_conn_id.upper()}="
            f"'{EXAMPLE_URI}'"
        )

    # -- requests ---------------------------------------------------------------------------------

    def get_conn(self) -> ApiClient:
        """The API client of the connection (Airflow's name for a hook's client)."""
        return ApiClient(self.endpoint(), self.timeout_s)

    def run(self, route: Route[M]) -> M:
        """Send `route` and return its answer; raises `HermesApiError`."""
        return self.get_conn().send(route)

    async def arun(self, route: Route[M]) -> M:
        """`run` awaited: the connection lookup and the request never block the event loop."""
        return await ApiClient(await self.aendpoint(), self.timeout_s).asend(route)

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's connection test: an authenticated read of the scheduler's counters."""
        try:
            stats = self.run(client.stats())
        except (HermesApiError, HermesConnectionError) as error:
            return False, str(error)
        return True, (
            f"Hermesflow at {self.endpoint().base_url} answers: policy {stats.policy}, "
            f"{stats.live_apps} live application(s)"
        )
