"""The HTTP API served on Ray: uvicorn inside a detached Ray actor.

`GatewayActor` is a plain detached Ray actor that binds the listening socket itself (a taken
port fails its creation with a clear error rather than uvicorn's `sys.exit`) and runs
`uvicorn.Server` with `hermesflow.api.app.build_app` as a task on its own event loop; 127.0.0.1
by default. On one machine this is cheaper and faster than Ray Serve, whose replicas also open a
gRPC port on every interface (docs/STACK §10). `start_gateway` creates it (or finds it) and
waits until `/healthz` answers. `stop_gateway` drains it first (`hermesflow.api.lifecycle`): new
requests get 503, open ones may finish within the grace period, and what is still open then is
ended with an error, never cut off.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import time
from typing import Any

import httpx
import ray
import uvicorn
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hermesflow.api.app import build_app
from hermesflow.api.lifecycle import Drain
from hermesflow.api.models.lifecycle import DEFAULT_GRACE_S, DrainReport
from hermesflow.config import ApiLimits
from hermesflow.schedulers.runtime import get_scheduler
from hermesflow.schedulers.runtime_config import NAMESPACE, SCHEDULER_NAME

GATEWAY_NAME = "gateway"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
GRACEFUL_SHUTDOWN_S = 5.0
"""After the drain, how long uvicorn waits for connections to close (none should be open)."""


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), family=_family(host))
    except OSError as error:
        raise RuntimeError(
            f"the gateway cannot listen on {host}:{port} ({error.strerror}); choose another --port "
            "or stop what is using it"
        ) from None


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        return socket.AF_INET


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = ray.util.get_node_ip_address()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@ray.remote
class GatewayActor:
    """uvicorn serving `build_app` on this actor's event loop (module docstring). It starts
    serving in its constructor, so a restarted actor serves again by itself."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None,
        scheduler_name: str,
        namespace: str,
        log_level: str = "warning",
        limits: dict[str, Any] | None = None,
    ) -> None:
        api_limits = ApiLimits(**limits) if limits is not None else ApiLimits()
        app = build_app(get_scheduler(scheduler_name, namespace), token, limits=api_limits)
        self._socket = _listen(host, port)
        bound_port = self._socket.getsockname()[1]
        self._settings = _settings(host, bound_port, token, scheduler_name, api_limits)
        self._url = _url(host, bound_port)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        self._drain: Drain = app.state.drain
        self._server = uvicorn.Server(config)
        self._serving = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._socket])
        )

    async def url(self) -> str:
        """The base URL, once uvicorn accepts connections."""
        while not self._server.started:
            if self._serving.done():
                raise RuntimeError(
                    f"the gateway stopped while starting: {self._serving.exception()!r}"
                )
            await asyncio.sleep(0.01)
        return self._url

    async def settings(self) -> dict[str, Any]:
        """What it was started with (the token as a digest), to tell a caller that asks for
        other settings under the same name."""
        return self._settings

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]:
        """Drain (refuse new requests, let open ones finish for up to `grace_s`, end the rest
        with an error), stop the server, and say how the drain went."""
        drained = await self._drain.drain(grace_s)
        self._server.should_exit = True
        await self._serving
        return drained.model_dump()


def start_gateway(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    scheduler_name: str = SCHEDULER_NAME,
    namespace: str = NAMESPACE,
    *,
    name: str = GATEWAY_NAME,
    log_level: str = "warning",
    timeout_s: float = 60.0,
    limits: ApiLimits | None = None,
) -> str:
    """Start the gateway actor (or find the running one of that name) in front of the named
    scheduler and return its base URL once `/healthz` answers. Ray must be initialised and
    the scheduler running. `port=0` picks a free port. The actor is pinned to this driver's
    node, so the address it binds is this machine's (or container's): Ray's soft affinity
    spilled it to another node of a compose deployment when this node had no idle worker.
    `limits` default to the `HERMES_API_*` settings of this process (the one the operator
    starts)."""
    limits = limits or ApiLimits()
    get_scheduler(scheduler_name, namespace)  # a clear error here rather than a dead actor
    handle = GatewayActor.options(
        name=name,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        ),
    ).remote(host, port, token, scheduler_name, namespace, log_level, limits.model_dump())
    url = ray.get(handle.url.remote(), timeout=timeout_s)
    running = ray.get(handle.settings.remote())
    wanted = _settings(host, port or running["port"], token, scheduler_name, limits)
    if running != wanted:
        differ = sorted(k for k in wanted if wanted[k] != running[k])
        raise RuntimeError(
            f"a gateway named {name!r} already runs at {url} with other settings ({', '.join(differ)}); "
            "stop it first (`hermesflow stop`) or give this one another name"
        )
    _wait_healthy(url, timeout_s)
    return url


def _settings(
    host: str, port: int, token: str | None, scheduler_name: str, limits: ApiLimits
) -> dict[str, Any]:
    digest = hashlib.sha256(token.encode()).hexdigest() if token else None
    return {
        "host": host,
        "port": port,
        "token_sha256": digest,
        "scheduler": scheduler_name,
        "limits": limits.model_dump(),
    }


def _wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if (
                httpx.get(f"{url}/healthz", timeout=5.0, trust_env=False).status_code == 200
            ):  # no proxies
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the gateway at {url} did not answer /healthz within {timeout_s:.0f} s"
            )
        time.sleep(0.1)


def stop_gateway(
    name: str = GATEWAY_NAME, namespace: str = NAMESPACE, grace_s: float = DEFAULT_GRACE_S
) -> DrainReport | None:
    """Drain the named gateway actor for up to `grace_s` seconds, stop and kill it, and say how
    the drain went; None if there was no such gateway."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None
    started = time.monotonic()
    try:
        drained = ray.get(handle.stop.remote(grace_s), timeout=grace_s + GRACEFUL_SHUTDOWN_S + 10)
        outcome = DrainReport.model_validate(drained)
    except (ray.exceptions.RayError, TimeoutError) as error:  # it is killed below either way
        outcome = DrainReport.failed(f"{type(error).__name__}", time.monotonic() - started)
    ray.kill(handle)
    return outcome
