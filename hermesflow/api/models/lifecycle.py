"""What a serving gateway says about its lifecycle, shared by the server and its clients.

- Liveness, `GET /healthz`: the HTTP server answers.
- Readiness, `GET /readyz`: worth sending work to. 200 once the scheduler answers and every
  backend pinned warm (`hermesflow serve --warm`, `RuntimeConfig.warm_at_start`) is warm, so a
  first request does not wait for a model to load; 503 before that, naming the backends still
  warming, and 503 while the gateway drains. `hermesflow serve` prints its URL on stdout only
  once ready, and `--detach` returns only then.
- Drain: a stopping gateway (Ctrl-C or SIGTERM on `hermesflow serve`, `hermesflow stop`) keeps
  listening but refuses new requests with 503 `server_shutting_down`, and lets the open ones
  finish for up to a grace period. Whatever is still open at the deadline is ended in its own
  format: an OpenAI stream with an error chunk then `data: [DONE]`, an event stream of the
  control API with an `{"error"}` event, a request still waiting for its answer with a 503.
  Nothing is cut off silently.

Kept free of FastAPI and Ray so the CLI can read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from hermesflow.api.models.control import BackendView, BackendViewPhase

READY_PATH = "/readyz"
DEFAULT_GRACE_S = 30.0
"""Kubernetes' default termination grace period: long enough for a CPU-model answer of a few
hundred tokens to finish, short enough that a stop does not look hung."""
DEFAULT_READY_TIMEOUT_S = 240.0
"""How long `hermesflow serve` waits for the pinned backends: the CPU LLM warms in 5-20 s, and
five to ten times that on a busy machine; under the five minutes `make up` allows a start."""
SHUTTING_DOWN = "server_shutting_down"
"""The error code of everything a draining gateway refuses or ends."""


class Health(BaseModel):
    """The answer of `GET /healthz`: the HTTP server answers."""

    status: Literal["ok"] = "ok"


class ReadinessStatus(StrEnum):
    """Why a gateway is, or is not, ready (only READY answers 200)."""

    READY = "ready"
    WARMING = "warming"
    """A pinned backend is not warm yet (or lost its actor and is warming again)."""
    DRAINING = "draining"
    UNAVAILABLE = "unavailable"
    """The scheduler does not answer."""


class PendingBackend(BaseModel):
    """A pinned backend that is not warm, and its lifecycle phase."""

    name: str
    phase: BackendViewPhase


class Readiness(BaseModel):
    """The answer of `GET /readyz` (200 when `status` is `ready`, else 503)."""

    status: ReadinessStatus
    pending: list[PendingBackend] = Field(
        default_factory=list, description="pinned backends that are not warm yet"
    )
    message: str

    @property
    def ready(self) -> bool:
        return self.status is ReadinessStatus.READY


def assess_readiness(backends: Iterable[BackendView]) -> Readiness:
    """Readiness from the scheduler's backend views (`GET /v1/backends`): ready when every
    backend marked `pinned` is `warm`."""
    pending = [
        PendingBackend(name=b.name, phase=b.phase)
        for b in backends
        if b.pinned and b.phase is not BackendViewPhase.WARM
    ]
    if not pending:
        return Readiness(
            status=ReadinessStatus.READY, message="ready: the pinned backends are warm"
        )
    names = ", ".join(f"{b.name} ({b.phase})" for b in pending)
    return Readiness(
        status=ReadinessStatus.WARMING,
        pending=pending,
        message=f"not ready: waiting for pinned backends to warm: {names}",
    )


DRAINING = Readiness(
    status=ReadinessStatus.DRAINING,
    message="not ready: shutting down; open requests may finish, new ones are refused",
)


def unavailable(reason: str) -> Readiness:
    return Readiness(status=ReadinessStatus.UNAVAILABLE, message=f"not ready: {reason}")


class DrainReport(BaseModel):
    """How a gateway's drain went."""

    open_at_start: int = Field(description="HTTP requests in flight when the drain began")
    ended_at_deadline: int = Field(
        description="requests still open when the grace period ran out, ended with an error"
    )
    seconds: float = Field(description="how long the drain took")
    error: str | None = Field(
        default=None, description="why the drain did not complete (the gateway is killed anyway)"
    )

    @classmethod
    def failed(cls, error: str, seconds: float) -> DrainReport:
        return cls(open_at_start=0, ended_at_deadline=0, seconds=seconds, error=error)

    def summary(self) -> str:
        """One line for an operator."""
        if self.error is not None:
            return f"the API did not drain ({self.error}); it was stopped all the same"
        finished = max(self.open_at_start - self.ended_at_deadline, 0)
        text = f"drained in {self.seconds:.1f} s: {finished} open request(s) finished"
        if self.ended_at_deadline:
            text += f", {self.ended_at_deadline} ended with an error at the grace period's end"
        return text
