"""Backend models for the simulator: an LLM engine with continuous batching, a pool of slots.

The engine (`engine.py`) decides when each runs what and keeps their phase and warm time; these
models say how running requests progress:

* `SimEngine`: up to `max_batch` requests run together; each receives
  `work_rate_per_request(n)` engine-seconds of work per second (`LLMEngineCost`), so the
  iteration time grows with the batch. With `prefill_stalls`, a request that joins is first
  prefilled in a forward pass of its own, `input_tokens` times the prefill rate of its attention
  method (`LLMEngineCost.rates`) seconds during
  which no running request decodes (the CPU backend), and the batch shares only the decode work;
  otherwise prefill is chunked into the iterations and shared like decode (vLLM). Between events the batch is fixed, so progress is exact (no per-iteration
  stepping).
* `SimPool`: `slots` requests run in parallel, each for its own execution time (tools, search,
  code execution, DNNs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hermesflow.pdgraph.costs import LLMEngineCost
from hermesflow.schedulers.interface import RequestRecord

_DONE_EPS = 1e-9


@dataclass(slots=True)
class SimBackend:
    """What every simulated backend has: the requests running on it. Its phase, capacity and
    warm time are the engine's (`engine.BackendState`); this is only how work progresses."""

    name: str
    warmup_s: float
    capacity: int
    running: dict[int, RequestRecord] = field(default_factory=dict)

    def die(self) -> list[RequestRecord]:
        """The backend's process died: its running requests are lost (returned)."""
        lost = list(self.running.values())
        self.running.clear()
        return lost


@dataclass(slots=True)
class SimEngine(SimBackend):
    """An LLM engine with continuous batching (module docstring)."""

    cost: LLMEngineCost = field(default_factory=LLMEngineCost)
    remaining: dict[int, float] = field(default_factory=dict)
    clock_s: float = 0.0
    version: int = 0
    scheduled_version: int = -1
    stalled_until_s: float = 0.0

    def start(self, request: RequestRecord, now: float) -> None:
        self.advance(now)
        self.running[request.request_id] = request
        prefill_s = 0.0
        if self.cost.prefill_stalls:
            prefill_s = min(self.cost.work_s(request.input_tokens, 0, request.attention), request.work_s)
        self.stalled_until_s = max(self.stalled_until_s, now) + prefill_s
        self.remaining[request.request_id] = request.work_s - prefill_s
        self.version += 1

    def die(self) -> list[RequestRecord]:
        self.remaining.clear()
        self.version += 1  # the predicted completion is void
        return SimBackend.die(self)

    def advance(self, now: float) -> None:
        """Progress every running request to `now` (no decoding while a prefill stalls)."""
        decoding_s = now - max(self.clock_s, self.stalled_until_s)
        if self.remaining and decoding_s > 0:
            done = decoding_s * self.cost.work_rate_per_request(len(self.remaining))
            for request_id in self.remaining:
                self.remaining[request_id] -= done
        self.clock_s = max(self.clock_s, now)

    def next_completion_s(self) -> float | None:
        if not self.remaining:
            return None
        rate = self.cost.work_rate_per_request(len(self.remaining))
        return max(self.clock_s, self.stalled_until_s) + max(min(self.remaining.values()), 0.0) / rate

    def pop_finished(self, now: float) -> list[RequestRecord]:
        self.advance(now)
        finished = [rid for rid, left in self.remaining.items() if left <= _DONE_EPS]
        for rid in finished:
            del self.remaining[rid]
        if finished:
            self.version += 1
        return [self.running.pop(rid) for rid in finished]


@dataclass(slots=True)
class SimPool(SimBackend):
    """A pool of parallel slots (tools, search, code execution, DNNs)."""

    def start(self, request: RequestRecord, now: float) -> None:
        self.running[request.request_id] = request

    def finish(self, request: RequestRecord) -> None:
        del self.running[request.request_id]
