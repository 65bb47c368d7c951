"""`hermesflow serve` once its options are checked and Ray is connected, and `hermesflow stop`.

`serve` starts the scheduler and the gateway, waits until the gateway is ready (`GET /readyz`:
the backends pinned by `--warm` are warm), and only then prints the URL on stdout and "ready"
on stderr. With `detach` it returns there. In the foreground it serves until a signal, or until
the scheduler or the gateway disappears because someone stopped them from elsewhere
(`hermesflow stop` in another shell), and then stops both: the gateway drains first (new
requests get 503, open ones may finish within the grace period, the rest end with an error;
see `hermesflow.api.models.lifecycle`), then the scheduler releases its backends.

Signals: SIGINT (Ctrl-C) and SIGTERM set a stop request (`StopRequest`) instead of raising
KeyboardInterrupt wherever the main thread happens to be — half-way through a start or inside a
Ray call, where an exception used to skip the stop or leave the process hanging — so every
path reaches the same orderly stop. A second signal means "now": it raises KeyboardInterrupt,
and the stop runs again without a grace period.

Ray is imported inside the functions: the CLI imports this module before Ray is configured.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from types import FrameType
from typing import Any, Self

from rich.console import Console

from hermesflow import client
from hermesflow.api.models.lifecycle import READY_PATH, Readiness, unavailable
from hermesflow.client import ApiClient, ApiEndpoint, HermesApiError
from hermesflow.schedulers.runtime_config import NAMESPACE, RuntimeConfig

console = Console(stderr=True, highlight=False, soft_wrap=True)
"""Messages go to stderr (stdout carries the URL alone), one line each, never wrapped."""

READY_POLL_S = 0.5
PROBE_TIMEOUT_S = 10.0
"""Read timeout of a request `serve` sends to its own gateway (readiness, the backends' errors)."""
WATCH_S = 1.0
"""How often a foreground `serve` checks that its scheduler and gateway still exist."""
SCHEDULER_SHUTDOWN_TIMEOUT_S = 30.0
INTERRUPTED = 130
"""The shell's exit status of a process ended by SIGINT."""


@dataclass(frozen=True)
class ServedNames:
    """The Ray actor names of one `serve`: its scheduler and its gateway."""

    scheduler: str
    gateway: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.scheduler, self.gateway))


@dataclass(frozen=True)
class ServePlan:
    """Everything `serve` was asked to do, checked."""

    config: RuntimeConfig
    names: ServedNames
    host: str
    port: int
    token: str | None
    detach: bool
    grace_s: float
    ready_timeout_s: float
    stop_hint: str
    """The command that stops a detached serve, for the messages."""


class StopRequest:
    """SIGINT and SIGTERM while serving (module docstring). A context manager: the previous
    handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            raise KeyboardInterrupt
        self._event.set()

    def wait(self, seconds: float) -> bool:
        """Whether a stop was requested, waiting up to `seconds` for one."""
        return self._event.wait(seconds)


class WaitEnd(Enum):
    """How waiting for readiness ended."""

    READY = "ready"
    STOP_REQUESTED = "stop requested"
    GONE = "stopped from elsewhere"
    TIMED_OUT = "timed out"


def serve(plan: ServePlan) -> int:
    """Run `hermesflow serve` (Ray connected) and return its exit status."""
    with StopRequest() as stop:
        try:
            return _serve(plan, stop)
        except KeyboardInterrupt:
            if plan.detach:
                console.print(
                    f"interrupted; what started keeps running: {plan.stop_hint}", markup=False
                )
            else:
                console.print("stopping at once, without a grace period ...")
                stop_serving(plan.names, grace_s=0.0)
            return INTERRUPTED


def _serve(plan: ServePlan, stop: StopRequest) -> int:
    from ray.exceptions import RayError

    from hermesflow.api.deployment import start_gateway
    from hermesflow.schedulers.runtime import start_scheduler

    config = plan.config
    console.print(f"starting the scheduler ({config.policy} + {config.planner}) and the API ...")
    url = None
    # a start that fails leaves alone what ran before under these names (another serve's);
    # once serving, the foreground serve owns both, as it always joins them if they exist
    missing = missing_actors(plan.names)
    found = [name for name in plan.names if name not in missing]
    stop_at_end = not plan.detach
    try:
        try:
            start_scheduler(config, name=plan.names.scheduler)
            url = start_gateway(
                plan.host, plan.port, plan.token, plan.names.scheduler, name=plan.names.gateway
            )
        except (RuntimeError, TimeoutError, RayError) as error:
            console.print(f"hermesflow serve could not start: {one_line(error)}", markup=False)
            if found:
                stop_at_end = False
                console.print(f"left running as found: {', '.join(found)}", markup=False)
            return 1
        console.print(
            f"the API listens at {url}; waiting until it is ready (GET {url}{READY_PATH}) ...",
            markup=False,
        )
        end, readiness = _wait_ready(url, plan, stop)
        if end is not WaitEnd.READY:
            return _not_ready(end, readiness, url, plan)
        print(url, flush=True)
        console.print(f"ready: {url}", markup=False)
        if plan.detach:
            console.print(f"running detached; {plan.stop_hint}", markup=False)
            return 0
        console.print(f"serving; Ctrl-C drains for up to {plan.grace_s:g} s and stops")
        gone = _watch(plan.names, stop)
        if gone:
            console.print(
                f"{', '.join(gone)} stopped from elsewhere (`hermesflow stop`?); stopping the "
                "rest and exiting",
                markup=False,
            )
        return 0
    finally:
        if stop_at_end:
            if url is not None and plan.grace_s > 0:
                console.print(
                    f"stopping: the API drains for up to {plan.grace_s:g} s "
                    "(Ctrl-C again: at once) ..."
                )
            stopped = stop_serving(plan.names, plan.grace_s)
            console.print(f"stopped: {', '.join(stopped) or 'nothing was left running'}")


def _wait_ready(url: str, plan: ServePlan, stop: StopRequest) -> tuple[WaitEnd, Readiness]:
    """Poll `/readyz` until ready, a stop request, the actors' disappearance or the timeout;
    say on stderr what it waits for whenever that changes."""
    deadline = time.monotonic() + plan.ready_timeout_s
    shown = ""
    api = _own_gateway(url, token=None)  # the probe is public
    while True:
        readiness = _readiness(api)
        if readiness.ready:
            return WaitEnd.READY, readiness
        if readiness.message != shown:
            console.print(readiness.message, markup=False)
            shown = readiness.message
        if missing_actors(plan.names):
            return WaitEnd.GONE, readiness
        if time.monotonic() > deadline:
            return WaitEnd.TIMED_OUT, readiness
        if stop.wait(READY_POLL_S):
            return WaitEnd.STOP_REQUESTED, readiness


def _own_gateway(url: str, token: str | None) -> ApiClient:
    """A client of the gateway this `serve` started: on this machine, so the environment's
    proxies are ignored."""
    return ApiClient(ApiEndpoint(url, token), PROBE_TIMEOUT_S, trust_env=False)


def _readiness(api: ApiClient) -> Readiness:
    try:
        return api.send(client.readiness())
    except HermesApiError as error:
        if error.status == client.NO_ANSWER:
            return unavailable(f"the API does not answer ({error.detail})")
        # not a readiness document: another server on that address?
        url = api.endpoint.base_url
        return unavailable(f"{url}{READY_PATH} answered {error.status}, not readiness")


def _not_ready(end: WaitEnd, readiness: Readiness, url: str, plan: ServePlan) -> int:
    """Say why `serve` stops waiting, and return its exit status."""
    if end is WaitEnd.STOP_REQUESTED:
        if plan.detach:
            console.print(f"stopped waiting; it keeps warming: {plan.stop_hint}", markup=False)
            return INTERRUPTED
        return 0
    if end is WaitEnd.GONE:
        console.print("the scheduler or the API was stopped from elsewhere before it was ready")
        return 1
    errors = _last_errors(url, plan.token, [b.name for b in readiness.pending])
    console.print(
        f"not ready after {plan.ready_timeout_s:g} s: {readiness.message}{errors}; wait longer "
        "with --ready-timeout, or see why in the Ray logs",
        markup=False,
    )
    if plan.detach:
        console.print(f"it keeps warming, detached; {plan.stop_hint}", markup=False)
    return 1


def _last_errors(url: str, token: str | None, names: list[str]) -> str:
    """'; last error of llm: ...' for the named backends that have one (the readiness probe
    is public and does not show errors; this asks the API with the token)."""
    try:
        views = _own_gateway(url, token).send(client.backends()).root
    except HermesApiError:
        return ""
    return "".join(
        f"; last error of {b.name}: {b.last_error}"
        for b in views
        if b.name in names and b.last_error
    )


def _watch(names: ServedNames, stop: StopRequest) -> list[str]:
    """Serve until a stop request (returns []) or until an actor disappears (its names)."""
    while not stop.wait(WATCH_S):
        gone = missing_actors(names)
        if gone:
            return gone
    return []


def missing_actors(names: ServedNames) -> list[str]:
    """The names whose actors no longer exist. A crashed actor that Ray restarts keeps its
    name; only a deliberate kill (`hermesflow stop`, `ray.kill`) removes it."""
    import ray

    missing = []
    for name in names:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            missing.append(name)
    return missing


def stop_serving(names: ServedNames, grace_s: float) -> list[str]:
    """Drain and kill the gateway, release the scheduler's backends and kill the scheduler;
    the names of those that were running."""
    import ray

    from hermesflow.api.deployment import stop_gateway

    stopped = []
    drained = stop_gateway(names.gateway, NAMESPACE, grace_s)
    if drained is not None:
        console.print(drained.summary(), markup=False)
        stopped.append(names.gateway)
    try:
        scheduler = ray.get_actor(names.scheduler, namespace=NAMESPACE)
    except ValueError:
        return stopped
    try:
        ray.get(scheduler.shutdown.remote(), timeout=SCHEDULER_SHUTDOWN_TIMEOUT_S)
    except ray.exceptions.ActorDiedError:
        pass  # killed meanwhile, by another `hermesflow stop`
    except (ray.exceptions.RayError, TimeoutError) as error:
        console.print(
            f"the scheduler did not release its backends cleanly: {one_line(error)}", markup=False
        )
    ray.kill(scheduler, no_restart=True)
    return [*stopped, names.scheduler]


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*:")


def one_line(error: BaseException) -> str:
    """The gist of `error`. An error raised inside a Ray actor arrives wrapped in a remote
    traceback of dozens of lines; its last exception line ('Type: message') says what went
    wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[index]):
            return " ".join(lines[index:])
    return lines[0] if lines else type(error).__name__
