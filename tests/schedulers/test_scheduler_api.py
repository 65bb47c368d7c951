"""The scheduler's declared public surface (`SchedulerApi`) is what the actor implements and
what the HTTP API's proxy offers: the same methods with the same parameters and the same answer
types (the API's models), so a renamed or added parameter, or an answer that changed type, on
one side fails here instead of in a remote call or a route."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable

import pytest

from hermesflow.api.scheduler_proxy import SchedulerProxy
from hermesflow.schedulers.runtime import HermesScheduler
from hermesflow.schedulers.scheduler_api import SchedulerApi

METHODS = sorted(
    name
    for name, member in vars(SchedulerApi).items()
    if inspect.isfunction(member) and not name.startswith("_")
)


RAY_TRACING_PARAMETER = "_ray_trace_ctx"
"""Ray adds it to every method of a class it turns into an actor class (`ray.remote`)."""


def _parameters(method: Callable) -> list[inspect.Parameter]:
    """The parameters a caller passes: without `self`, and without Ray's own."""
    parameters = list(inspect.signature(method).parameters.values())[1:]
    return [p for p in parameters if p.name != RAY_TRACING_PARAMETER]


def _answer(method: Callable) -> object:
    """The method's declared return type, its string annotation resolved."""
    return typing.get_type_hints(method)["return"]


def _kind(method: Callable) -> str:
    if inspect.isasyncgenfunction(method):
        return "async generator"
    return "coroutine" if inspect.iscoroutinefunction(method) else "function"


def test_the_surface_is_declared() -> None:
    assert {"submit", "submit_step", "stream_step", "put_step", "live_apps"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_the_actor_implements_each_method_as_declared(name: str) -> None:
    declared, actual = getattr(SchedulerApi, name), getattr(HermesScheduler, name, None)
    assert actual is not None, f"HermesScheduler has no method {name}"
    expected = [(p.name, p.kind, p.default) for p in _parameters(declared)]
    assert [(p.name, p.kind, p.default) for p in _parameters(actual)] == expected
    # the actor's stream is an async generator; the declaration says what calling it returns
    assert _kind(actual) == ("async generator" if name == "stream_step" else "coroutine")
    assert _answer(actual) == _answer(declared)


@pytest.mark.parametrize("name", METHODS)
def test_the_proxy_mirrors_each_method(name: str) -> None:
    """Same parameter names and kinds, in order; the proxy may leave out a default the routes
    never rely on, and may add keyword-only HTTP options (`stream_step`'s `check`)."""
    declared, proxied = getattr(SchedulerApi, name), getattr(SchedulerProxy, name, None)
    assert proxied is not None, f"SchedulerProxy has no method {name}"
    expected = _parameters(declared)
    parameters = _parameters(proxied)
    mirrored, extra = parameters[: len(expected)], parameters[len(expected) :]
    assert [(p.name, p.kind) for p in mirrored] == [(p.name, p.kind) for p in expected]
    for mine, theirs in zip(mirrored, expected, strict=True):
        assert mine.default is inspect.Parameter.empty or mine.default == theirs.default, mine
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra), extra
    assert inspect.iscoroutinefunction(proxied)
    assert _answer(proxied) == _answer(declared)


def test_answers_are_models_not_json() -> None:
    """Every answer is typed by a model (or a flag beside one), none by a bare JSON document."""
    for name in METHODS:
        answer = _answer(getattr(SchedulerApi, name))
        assert "dict" not in str(answer) and answer is not typing.Any, (name, answer)
