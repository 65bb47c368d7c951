"""Submitting a Semantic-Variable program and reading its outputs: the run handle.

Two ways in, one handle. Code inside the Ray cluster (a Ray job, a task) calls the scheduler
actor directly; anything else goes through the HTTP control API of `hermesflow serve` with
Hermesflow's one HTTP client (`hermesflow.client`: submit a run, then long-poll it), as the
rest of Hermesflow does where processes differ (DESIGN.md). Both answer with the same
`AppView`. An output variable's `.get()` waits for the run to end and reads its value from the
run's result — the program returns its outputs as its result, so they are durable in the store
and readable after a scheduler restart.
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

from hermesflow import client
from hermesflow.api.models.control import AppSubmission, AppView
from hermesflow.apps.semantic_trace import Outputs, Ref
from hermesflow.client import MAX_POLL_S, ApiClient, ApiEndpoint
from hermesflow.client_records import AppViewPhase
from hermesflow.config import TOKEN_ENV


class SchedulerClient(Protocol):
    """What a run handle needs from a scheduler."""

    def submit(self, app_class: str, inputs: dict[str, Any], app_id: str | None) -> AppView: ...

    def wait(self, app_id: str, timeout_s: float) -> AppView:
        """The run's view once it has ended, or when `timeout_s` has passed."""


class ActorClient:
    """The scheduler actor (`hermesflow.schedulers.runtime.get_scheduler()`), for in-cluster code;
    it answers with `AppView`s itself."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def submit(self, app_class: str, inputs: dict[str, Any], app_id: str | None) -> AppView:
        import ray  # only in-cluster callers have (and need) Ray

        return ray.get(self.handle.submit.remote(app_class, inputs, key=app_id))

    def wait(self, app_id: str, timeout_s: float) -> AppView:
        import ray

        return ray.get(self.handle.wait.remote(app_id, timeout_s))


class HttpClient:
    """The HTTP control API at `url` (what `hermesflow serve` prints), with its bearer token;
    refusals raise `hermesflow.client.HermesApiError`."""

    def __init__(self, url: str, token: str | None = None) -> None:
        endpoint = ApiEndpoint(url, token, token_setting=f"{TOKEN_ENV} (or HttpClient's token)")
        self.api = ApiClient(endpoint)

    def submit(self, app_class: str, inputs: dict[str, Any], app_id: str | None) -> AppView:
        submission = AppSubmission(app_class=app_class, inputs=inputs, app_id=app_id)
        return self.api.send(client.submit_app(submission))

    def wait(self, app_id: str, timeout_s: float) -> AppView:
        return self.api.send(client.get_app(app_id, wait_s=timeout_s))


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
            left = MAX_POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"run {self.app_id!r} has not ended after {timeout_s} s; wait longer, or read "
                    "its state with wait(0) on its client"
                )
            view = self.client.wait(self.app_id, min(left, MAX_POLL_S))
            if view.ended:
                self._ended = view
        return self._ended

    def result(self, timeout_s: float | None = None) -> Any:
        """The program's result (its returned variables' values); RunFailed if the run failed."""
        view = self.wait(timeout_s)
        if view.phase is AppViewPhase.FAILED:
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
