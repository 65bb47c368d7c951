"""A waiting queue per backend, ordered by a policy.

A binary heap of `(key, request_id, version, request)`. When an application changes (a stage
starts, a request finishes) the caller increases `app.version` and calls `rekey`, which pushes
fresh entries for the application's waiting requests; entries of an older version are discarded
when they surface. Keys may move in either direction (a Gittins index drops when a long branch is
ruled out), which re-checking on pop alone could not handle. A request whose application changed
without a `rekey` is re-keyed when its stale entry surfaces, so it is never lost. Ties are broken
by `request_id`, which callers allocate in queueing order. Cost: O(log n) per push and pop,
O(k log n) per re-key of an application with k waiting requests here.
"""

from __future__ import annotations

import heapq

from hermesflow.schedulers.interface import AppRecord, Policy, RequestPhase, RequestRecord


class RequestQueue:
    """Waiting requests of one backend in policy order."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._heap: list[tuple[float, int, int, RequestRecord]] = []
        self._waiting: dict[int, dict[int, RequestRecord]] = {}
        self._keyed_version: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._keyed_version)

    def push(self, request: RequestRecord) -> None:
        request.phase = RequestPhase.WAITING
        self._waiting.setdefault(request.app.app_id, {})[request.request_id] = request
        self._push_entry(request)

    def _push_entry(self, request: RequestRecord) -> None:
        self._keyed_version[request.request_id] = request.app.version
        entry = (self.policy.key(request), request.request_id, request.app.version, request)
        heapq.heappush(self._heap, entry)

    def rekey(self, app: AppRecord) -> None:
        """Re-key the application's waiting requests after `app.version` was increased."""
        for request in self._waiting.get(app.app_id, {}).values():
            self._push_entry(request)

    def peek(self) -> RequestRecord | None:
        """The first waiting request in policy order (left in the queue), or None.

        Engines that cannot fit the first request (its KV cache) wait for it rather than skip
        it, as vLLM does: skipping would let small requests starve a large one forever.
        """
        while self._heap:
            _, request_id, version, request = self._heap[0]
            if request_id in self._keyed_version and version == request.app.version:
                return request
            heapq.heappop(self._heap)
            if request_id in self._keyed_version and self._keyed_version[request_id] != request.app.version:
                self._push_entry(request)  # its application changed without a rekey
        return None

    def pop(self) -> RequestRecord | None:
        """Remove and return the first waiting request in policy order, or None; its `rank` is
        the key it was chosen by."""
        request = self.peek()
        if request is not None:
            request.rank = heapq.heappop(self._heap)[0]
            self._forget(request)
            request.phase = RequestPhase.RUNNING
        return request

    def discard(self, request: RequestRecord) -> None:
        """Take a waiting request out of the queue (its application ended); its heap entries
        are dropped when they surface. A request not waiting here is ignored."""
        if request.request_id in self._keyed_version:
            self._forget(request)

    def _forget(self, request: RequestRecord) -> None:
        del self._keyed_version[request.request_id]
        waiting = self._waiting[request.app.app_id]
        del waiting[request.request_id]
        if not waiting:
            del self._waiting[request.app.app_id]
