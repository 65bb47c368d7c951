"""Join a running Ray cluster, or start a local one that listens on loopback only.

Two facts of Ray 2.60 shape a safe local start (docs/STACK §3, §10): without
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` a single-node Ray binds every interface and reports the
host's routable address; and the first `ray.init()` turns token auth on and writes
`~/.ray/auth_token`, after which CLI clients such as `ray job submit` need `RAY_AUTH_MODE=token`.
So a local start sets both variables (loopback, auth `disabled`) unless the caller already set
them, caps the object store, and leaves the dashboard (about 200 MiB) off unless asked for.
Joining a cluster (`address`, e.g. `auto` or `127.0.0.1:6379`) changes nothing: the cluster's
own settings apply, and a token-auth cluster needs `RAY_AUTH_MODE=token` in the environment.

Ray reads these variables when it is imported, so `connect` sets them before importing Ray;
call it before anything else in the process imports Ray.

A `host:port` address that nothing answers at fails at once with `ClusterUnreachable`; Ray's own
client would retry for minutes, printing a warning every few seconds.
"""

from __future__ import annotations

import os
import socket
import sys

LOOPBACK = "127.0.0.1"
LOCAL_CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
"""Bind every Ray process to 127.0.0.1 and skip token auth: a loopback-only local cluster."""
DEFAULT_OBJECT_STORE_BYTES = 512 * 2**20
"""Ray's default is 30 % of RAM in /dev/shm; Hermesflow passes small JSON documents only."""
PROBE_TIMEOUT_S = 3.0
"""How long a `host:port` address may take to accept a TCP connection before it counts as
unreachable (a cluster on a LAN answers in milliseconds)."""


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answers at the address given; the message says how to get one."""


class LocalClusterFailed(RuntimeError):
    """A local cluster did not start (Ray gives up when its processes start too slowly, as on
    an overloaded machine); the message says what to try."""


def connect(
    address: str | None,
    *,
    dashboard: bool = False,
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
    num_cpus: int | None = None,
) -> None:
    """Connect this process to Ray: join the cluster at `address`, or (None) start a local
    loopback-only cluster that lives as long as this process. No-op if already connected."""
    if address is None:
        for name, value in LOCAL_CLUSTER_ENV.items():
            os.environ.setdefault(name, value)
    elif not _connected():
        _probe(address)  # before importing Ray: a wrong address costs nothing
    import ray

    if ray.is_initialized():
        return
    if address is not None:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as error:
            raise ClusterUnreachable(
                f"cannot join a Ray cluster at {address!r} ({error}); start one (`ray start "
                "--head`) or pass the address of a running one"
            ) from None
        return
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host=LOOPBACK,
            object_store_memory=object_store_bytes,
            log_to_driver=False,
        )
    except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception on a failed start
        raise LocalClusterFailed(
            f"could not start a local Ray cluster ({error}); if the machine is busy, retry, or "
            "start one with `ray start --head` and pass --address auto"
        ) from None


def _connected() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _probe(address: str) -> None:
    """For a `host:port` address, check that something accepts TCP connections there."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # `auto`, or a client address (`ray://...`): Ray resolves those itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as error:
        raise ClusterUnreachable(
            f"nothing answers at {address} ({error.strerror or error}); start a Ray cluster "
            "there (`ray start --head`) or pass the address of a running one"
        ) from None


def disconnect() -> None:
    """Disconnect (and stop a local cluster this process started)."""
    import ray

    ray.shutdown()
