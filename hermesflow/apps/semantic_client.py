"""Submitting a Semantic-Variable program and reading its outputs: the run handle.

Two ways in, one handle. Code inside the Ray cluster (a Ray job, a task) calls the scheduler
actor directly; anything else goes through the HTTP control API of `hermesflow serve`
(`POST /v1/apps`, `GET /v1/apps/{id}?wait=S`), as the rest of Hermesflow does where processes
differ (DESIGN.md). Both answer with the same `AppView`. An output variable's `.get()` waits for
the run to end and reads its value from the run's result — the program returns its outputs as
its result, so they are durable in the store and readable after a scheduler restart.
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from hermesflow.api.models.control import AppView
from hermesflow.apps.semantic_trace import Outputs, Ref

WAIT_CHUNK_S = 60.0
"""Longest single wait (an actor call or an HTTP long poll); a longer wait asks again."""
HTTP_TIMEOUT_S = 30.0
"""Connect/read timeout of an HTTP call, on top of the time it is asked to wait."""
TOKEN_ENV = "HERMES_API_TOKEN"
"""Where `client_for` finds the HTTP API's bearer token (as `hermesflow serve` does)."""


class SchedulerClient(Protocol):
    """What a run handle needs from a scheduler."""

    def submit(self, app_class: str, inputs: dict[str, Any], app_id: str | None) -> AppView: ...

    def wait(self, app_id: str, timeout_s: float) -> AppView:
        """The run's view once it has ended, or when `timeout_s` has passed."""


class ActorClient:
    """The scheduler actor (`hermesflow.schedulers.runtime.get_scheduler()`), for in-cluster code."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def submit(self, app_class: str, inputs: dict[str, Any], app_id: str | None) -> AppView:
        import ray  # only in-cluster callers have (and need) Ray

        return AppView.model_validate(
            ray.get(self.handle.submit.remote(app_class, inputs, key=app_id))
        )

    def wait(self, app_id: str, timeout_s: float) -> AppView:
        import ray

        return AppView.model_validate(ray.get(self.handle.wait.remote(app_id, timeout_s)))


class HttpClient:
    """The HTTP control API at `url` (what `hermesflow serve` prints), with its bearer token."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def submit(self, app_class: str, inputs: dict[str, Any], app_id: str | None) -> AppView:
        body = {"app_class": app_class, "inputs": inputs, "app_id": app_id}
        response = httpx.post(
            f"{self.url}/v1/apps", json=body, headers=self.headers, timeout=HTTP_TIMEOUT_S
        )
        return self._view(response)

    def wait(self, app_id: str, timeout_s: float) -> AppView:
        response = httpx.get(
            f"{self.url}/v1/apps/{quote(app_id, safe='')}",
            params={"wait": timeout_s},
            headers=self.headers,
            timeout=timeout_s + HTTP_TIMEOUT_S,
        )
        return self._view(response)

    @staticmethod
    def _view(response: httpx.Response) -> AppView:
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise RuntimeError(
                f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}: {detail}"
            )
        return AppView.model_validate(response.json())


def client_for(target: Any) -> SchedulerClient:
    """A client from what the caller has: an HTTP API URL (the token from `HERMES_API_TOKEN`),
    the scheduler's Ray actor handle, or a client already."""
    if isinstance(target, str):
        return HttpClient(target, os.environ.get(TOKEN_ENV))
    if hasattr(target, "submit") and hasattr(target, "wait"):
        submit = target.submit
        return ActorClient(target) if hasattr(submit, "remote") else target
    raise TypeError(
        f"cannot submit to {target!r}; pass the HTTP API's URL, the scheduler actor "
        "(hermesflow.schedulers.runtime.get_scheduler()), or an HttpClient"
    )


class RunFailed(RuntimeError):
    """The run ended without a result; the message carries the scheduler's error."""


class SemanticRun:
    """A submitted run: its id, its view, and its outputs as variables with `.get()`."""

    def __init__(self, client: SchedulerClient, view: AppView, outputs: Outputs) -> None:
        self.client = client
        self.app_id = view.app_id
        self._ended = view if view.ended else None
        self.outputs = _bind_outputs(self, outputs)

    def wait(self, timeout_s: float | None = None) -> AppView:
        """The run's view once it has ended; TimeoutError if it has not after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._ended is None:
            left = WAIT_CHUNK_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"run {self.app_id!r} has not ended after {timeout_s} s; wait longer, or read "
                    "its state with wait(0) on its client"
                )
            view = self.client.wait(self.app_id, min(left, WAIT_CHUNK_S))
            if view.ended:
                self._ended = view
        return self._ended

    def result(self, timeout_s: float | None = None) -> Any:
        """The program's result (its returned variables' values); RunFailed if the run failed."""
        view = self.wait(timeout_s)
        if view.phase == "failed":
            raise RunFailed(f"run {self.app_id!r} of {view.app_class!r} failed: {view.error}")
        return view.result


class RunVariable:
    """An output variable of a submitted run."""

    def __init__(self, run: SemanticRun, label: str, path: int | str | None) -> None:
        self.run = run
        self.label = label
        self.path = path

    def get(self, timeout_s: float | None = None) -> Any:
        """The variable's value, once the run has ended (blocks until then)."""
        result = self.run.result(timeout_s)
        return result if self.path is None else result[self.path]

    def __repr__(self) -> str:
        return f"RunVariable({self.label!r} of run {self.run.app_id!r})"


def _bind_outputs(run: SemanticRun, outputs: Outputs) -> Any:
    """The program's output structure, each variable bound to the run."""

    def bound(ref: Ref, path: int | str | None) -> RunVariable:
        return RunVariable(run, ref.key.partition(":")[2], path)

    if isinstance(outputs, dict):
        return {key: bound(ref, key) for key, ref in outputs.items()}
    if isinstance(outputs, tuple):
        return tuple(bound(ref, i) for i, ref in enumerate(outputs))
    return bound(outputs, None)
