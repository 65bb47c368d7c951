"""The scheduler contract shared by the simulator and the Ray runtime.

Two kinds of decision objects, both pure — state in, decision out, the clock passed in:

* a `Policy` orders waiting requests. The caller keeps one `RequestQueue` per backend
  (`queues.py`); the queue asks the policy for a key when a request is queued and again when its
  application changes (`RequestQueue.rekey`), so a decision is a heap pop.
* a `PrewarmPlanner` (`prewarm.py`) says which backends to warm, keep or release.

The caller (simulator or runtime) owns the applications and applies decisions; it tells the
policy what happened through the `on_*` hooks, which are called in this order for one
application: `on_admit` once, `on_service` after each finished request, `on_finish` once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from hermesflow.pdgraph.demand import DemandEstimator, GraphState
from hermesflow.pdgraph.model import AttentionMethod


class AppPhase(IntEnum):
    """Lifecycle of an application run, in order."""

    ADMITTED = 0
    RUNNING = 1
    FINISHED = 2


class RequestPhase(IntEnum):
    """Lifecycle of one request (one call of a stage on a backend), in order."""

    WAITING = 0
    RUNNING = 1
    FINISHED = 2


class BackendPhase(IntEnum):
    """Lifecycle of a backend (an LLM engine, a tool container, a DNN), in order. A warm backend
    is released only when idle (`prewarm.py`), so it goes straight back to COLD."""

    COLD = 0
    WARMING = 1
    WARM = 2


@dataclass(slots=True, eq=False)
class AppRecord:
    """What the scheduler knows about a live application.

    `stage_running_since_s` is when the current stage's first request started running (None
    while all of them wait), the origin of "how long has this stage run". `attained_s` counts the backend-seconds of its finished requests; `version` increases on every
    change that can change its key, so queues can drop stale entries. `true_remaining_s` is set
    only by the simulator and read only by the clairvoyant SRPT policy. `app_id` is the
    engine's number for the application: the Ray runtime uses the journal's run id
    (`LiveRun.run_id`); it is not the client's `app_id` of the HTTP API, which is the run's key.
    """

    app_id: int
    app_class: str
    arrival_s: float
    state: GraphState
    phase: AppPhase = AppPhase.ADMITTED
    attained_s: float = 0.0
    stage_running_since_s: float | None = None
    version: int = 0
    true_remaining_s: float | None = None


@dataclass(slots=True, eq=False)
class RequestRecord:
    """One request waiting for, or running on, a backend; `rank` is the policy's key it was
    dispatched by (set when it leaves its queue). `attention` is the method an LLM request runs,
    which sets its prefill rate in the simulated engine."""

    request_id: int
    app: AppRecord
    backend: str
    ready_s: float
    work_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    attention: AttentionMethod = AttentionMethod.DENSE
    phase: RequestPhase = RequestPhase.WAITING
    rank: float = math.nan


class Policy(ABC):
    """Orders waiting requests: the request with the smallest `key` is served first.

    Subclasses implement `key` (and the hooks they need). The caller increases `app.version` and
    re-keys the application's waiting requests after every change of its state or service, so a
    key may depend on anything in `AppRecord`. Ties are broken by queueing order.
    `needs_oracle` marks a policy that reads `true_remaining_s`, which only a simulator knows.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    needs_oracle: ClassVar[bool] = False

    def __init__(self, demand: DemandEstimator) -> None:
        self.demand = demand

    @abstractmethod
    def key(self, request: RequestRecord) -> float:
        """Priority of a waiting request; called when it is queued and on every re-key."""

    def on_admit(self, app: AppRecord, now: float) -> None:
        """An application arrived."""

    def on_service(self, app: AppRecord, work_s: float, now: float) -> None:
        """One of the application's requests finished after `work_s` backend-seconds."""

    def on_finish(self, app: AppRecord, now: float) -> None:
        """The application finished."""
