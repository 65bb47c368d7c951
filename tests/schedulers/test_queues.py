"""Tests for hermesflow.schedulers.queues: RequestQueue ordering, re-keying and peeking."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermesflow.pdgraph.demand import DemandEstimator, GraphState
from hermesflow.schedulers.interface import AppRecord, Policy, RequestPhase, RequestRecord
from hermesflow.schedulers.queues import RequestQueue


class ByAttained(Policy):
    """Orders by the application's attained service: a key that changes as the app runs."""

    name = "by-attained"
    description = "smallest attained service first (test policy)"

    def key(self, request: RequestRecord) -> float:
        return request.app.attained_s


def _app(app_id: int, key: float) -> AppRecord:
    return AppRecord(app_id, "demo", 0.0, GraphState("demo", None, ()), attained_s=key)


def _change(queue: RequestQueue, app: AppRecord, key: float, *, rekey: bool = True) -> None:
    """What the caller does when an application changes: new key, new version, re-key."""
    app.attained_s = key
    app.version += 1
    if rekey:
        queue.rekey(app)


@pytest.fixture
def queue(demand: DemandEstimator) -> RequestQueue:
    return RequestQueue(ByAttained(demand))


def _request(request_id: int, app: AppRecord) -> RequestRecord:
    return RequestRecord(request_id, app, "llm", ready_s=0.0)


def _drain(queue: RequestQueue) -> list[int]:
    order = []
    while (request := queue.pop()) is not None:
        order.append(request.request_id)
    return order


# --------------------------------------------------------------------------- examples


def test_pops_in_key_order(queue: RequestQueue) -> None:
    apps = [_app(i, key) for i, key in enumerate([3.0, 1.0, 2.0])]
    for i, app in enumerate(apps):
        queue.push(_request(i, app))
    assert _drain(queue) == [1, 2, 0]


def test_ties_are_broken_by_request_id(queue: RequestQueue) -> None:
    app, other = _app(0, 1.0), _app(1, 1.0)
    for request_id, owner in [(5, app), (2, other), (9, app), (3, app)]:
        queue.push(_request(request_id, owner))
    assert _drain(queue) == [2, 3, 5, 9]


def test_rekey_moves_a_request_backward_and_forward(queue: RequestQueue) -> None:
    first, second = _app(0, 1.0), _app(1, 2.0)
    queue.push(_request(0, first))
    queue.push(_request(1, second))
    assert queue.peek().request_id == 0
    _change(queue, first, 5.0)  # backward: behind the other app
    assert queue.peek().request_id == 1
    _change(queue, first, 0.5)  # forward again
    assert queue.peek().request_id == 0
    assert _drain(queue) == [0, 1]


@pytest.mark.parametrize("bump_version", [True, False])
def test_a_change_without_rekey_never_loses_a_request(
    queue: RequestQueue, bump_version: bool
) -> None:
    apps = [_app(i, float(i)) for i in range(3)]
    for i, app in enumerate(apps):
        queue.push(_request(i, app))
    apps[0].attained_s = 10.0
    if bump_version:
        apps[0].version += 1
    assert len(queue) == 3
    assert sorted(_drain(queue)) == [0, 1, 2]
    assert len(queue) == 0


def test_a_key_raised_without_rekey_is_fixed_when_it_surfaces(queue: RequestQueue) -> None:
    low, high = _app(0, 1.0), _app(1, 2.0)
    queue.push(_request(0, low))
    queue.push(_request(1, high))
    _change(queue, low, 3.0, rekey=False)
    assert _drain(queue) == [1, 0]


def test_peek_does_not_remove(queue: RequestQueue) -> None:
    app = _app(0, 1.0)
    request = _request(0, app)
    queue.push(request)
    assert queue.peek() is request
    assert queue.peek() is request
    assert len(queue) == 1
    assert request.phase is RequestPhase.WAITING
    assert queue.pop() is request
    assert request.phase is RequestPhase.RUNNING
    assert queue.peek() is None


def test_len_counts_waiting_requests_not_heap_entries(queue: RequestQueue) -> None:
    app = _app(0, 1.0)
    for request_id in range(3):
        queue.push(_request(request_id, app))
    for key in (4.0, 0.0, 2.0):
        _change(queue, app, key)  # each re-key adds heap entries
    assert len(queue) == 3
    queue.pop()
    assert len(queue) == 2


def test_empty_queue(queue: RequestQueue) -> None:
    assert len(queue) == 0
    assert queue.peek() is None
    assert queue.pop() is None


def test_a_requeued_request_pops_again(queue: RequestQueue) -> None:
    """A request can come back (preemption): the stale entries of its first stay are ignored."""
    app = _app(0, 1.0)
    request = _request(0, app)
    queue.push(request)
    _change(queue, app, 2.0)
    assert queue.pop() is request
    queue.push(request)
    assert len(queue) == 1
    assert queue.pop() is request
    assert queue.pop() is None


# --------------------------------------------------------------------------- properties

_APPS = 4
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, _APPS - 1)),
        st.tuples(
            st.just("change"),
            st.integers(0, _APPS - 1),
            st.integers(0, 5).map(float),  # few distinct keys, so ties are common
            st.booleans(),
        ),
        st.tuples(st.just("pop")),
        st.tuples(st.just("peek")),
    ),
    max_size=60,
)


def _model_order(request: RequestRecord) -> tuple[float, int]:
    return request.app.attained_s, request.request_id


def _run(demand: DemandEstimator, operations: list[tuple], always_rekey: bool) -> None:
    """Apply `operations` to a queue and to a plain dict of waiting requests side by side."""
    queue = RequestQueue(ByAttained(demand))
    apps = [_app(i, 0.0) for i in range(_APPS)]
    ids = itertools.count()
    waiting: dict[int, RequestRecord] = {}
    popped: list[int] = []
    for op in operations:
        if op[0] == "push":
            request = _request(next(ids), apps[op[1]])
            queue.push(request)
            waiting[request.request_id] = request
        elif op[0] == "change":
            _, app, key, rekey = op
            _change(queue, apps[app], key, rekey=always_rekey or rekey)
        else:
            expected = min(waiting.values(), key=_model_order, default=None)
            got = queue.peek() if op[0] == "peek" else queue.pop()
            if always_rekey:
                assert got is expected
            else:
                assert (got is None) == (expected is None)
                assert got is None or got.request_id in waiting
            if op[0] == "pop" and got is not None:
                del waiting[got.request_id]
                popped.append(got.request_id)
        assert len(queue) == len(waiting)
    popped += _drain(queue)
    assert sorted(popped) == list(range(next(ids)))  # each request exactly once


@settings(max_examples=300, deadline=None)
@given(_operations)
def test_queue_matches_a_sorted_model_when_every_change_is_rekeyed(
    demand: DemandEstimator, operations: list[tuple]
) -> None:
    _run(demand, operations, always_rekey=True)


@settings(max_examples=300, deadline=None)
@given(_operations)
def test_queue_never_loses_or_duplicates_when_rekeys_are_missed(
    demand: DemandEstimator, operations: list[tuple]
) -> None:
    _run(demand, operations, always_rekey=False)
