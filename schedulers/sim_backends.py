"""Backend models for the simulator: an LLM engine with continuous batching, a pool of slots.

Both share the lifecycle of `BackendPhase` and count warm time; they differ in how running
requests progress:

* `SimEngine`: up to `max_batch` requests run together; each receives
  `work_rate_per_request(n)` engine-seconds of work per second (`LLMEngineCost`), so the
  iteration time grows with the batch. With `prefill_stalls`, a request that joins is first
  prefilled in a forward pass of its own, `input_tokens * prefill_s_per_token` seconds during
  which no running request decodes (the CPU backend), and the batch shares only the decode work;
  otherwise prefill is chunked into the iterations and shared like decode (vLLM). Between events the batch is fixed, so progress is exact (no per-iteration
  stepping).
* `SimPool`: `slots` requests run in parallel, each for its own execution time (tools, search,
  code execution, DNNs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hermesflow.pdgraph.costs import LLMEngineCost
from hermesflow.schedulers.interface import BackendPhase, RequestRecord
from hermesflow.schedulers.prewarm import BackendStatus

_DONE_EPS = 1e-9


@dataclass(slots=True)
class SimBackend:
    """State common to every simulated backend."""

    name: str
    warmup_s: float
    capacity: int
    phase: BackendPhase = BackendPhase.COLD
    warm_since_s: float = 0.0
    phase_since_s: float = 0.0
    warm_seconds: float = 0.0
    warm_generation: int = 0
    last_used_s: float = -math.inf
    queued: int = 0
    running: dict[int, RequestRecord] = field(default_factory=dict)

    def status(self) -> BackendStatus:
        return BackendStatus(
            self.name, self.phase, self.warmup_s, len(self.running), self.queued, self.last_used_s
        )

    @property
    def free_slots(self) -> int:
        return self.capacity - len(self.running) if self.phase is BackendPhase.WARM else 0

    def fits(self, request: RequestRecord) -> bool:
        """Whether the request fits beside the running ones (beyond free slots)."""
        return True

    def set_phase(self, phase: BackendPhase, now: float) -> None:
        """Change phase, accounting warm backend-seconds (warming counts: it holds resources)."""
        if self.phase in (BackendPhase.WARMING, BackendPhase.WARM):
            self.warm_seconds += now - self.phase_since_s
        if phase is BackendPhase.WARM:
            self.warm_since_s = now
        if phase is BackendPhase.COLD:
            self.warm_generation += 1
        self.phase, self.phase_since_s = phase, now

    def close(self, now: float) -> None:
        """Account warm time up to the end of the simulation."""
        self.set_phase(self.phase, now)


@dataclass(slots=True)
class SimEngine(SimBackend):
    """An LLM engine with continuous batching (module docstring)."""

    cost: LLMEngineCost = field(default_factory=LLMEngineCost)
    remaining: dict[int, float] = field(default_factory=dict)
    clock_s: float = 0.0
    version: int = 0
    scheduled_version: int = -1
    kv_in_use: int = 0
    stalled_until_s: float = 0.0

    def fits(self, request: RequestRecord) -> bool:
        """KV-cache admission; a request larger than the whole cache runs alone."""
        needed = request.input_tokens + request.output_tokens
        return not self.running or self.kv_in_use + needed <= self.cost.kv_tokens

    def start(self, request: RequestRecord, now: float) -> None:
        self.advance(now)
        self.kv_in_use += request.input_tokens + request.output_tokens
        self.running[request.request_id] = request
        prefill_s = 0.0
        if self.cost.prefill_stalls:
            prefill_s = min(request.input_tokens * self.cost.prefill_s_per_token, request.work_s)
        self.stalled_until_s = max(self.stalled_until_s, now) + prefill_s
        self.remaining[request.request_id] = request.work_s - prefill_s
        self.version += 1

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
        done = [self.running.pop(rid) for rid in finished]
        self.kv_in_use -= sum(r.input_tokens + r.output_tokens for r in done)
        return done


@dataclass(slots=True)
class SimPool(SimBackend):
    """A pool of parallel slots (tools, search, code execution, DNNs)."""

    def start(self, request: RequestRecord, now: float) -> None:
        self.running[request.request_id] = request

    def finish(self, request: RequestRecord) -> None:
        del self.running[request.request_id]
