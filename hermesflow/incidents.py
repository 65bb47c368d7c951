"""Failures that are the server's fault, told to a client without the server's internals.

A failure inside a Ray actor reaches its caller as a `RayTaskError` whose text is the remote
traceback: source paths, the worker's pid, the actor id. That belongs in the server's log, not in
an HTTP answer or a stored result. `report` logs the whole error under a short incident id and
returns a message naming what failed, the kind of error and the id, so an operator can find the
details; `described` is an error's own type and message without Ray's wrapping, for failures
whose message is written for the operator (a backend that cannot load says what is missing).
"""

from __future__ import annotations

import logging
import uuid

from ray.exceptions import RayError, RayTaskError


def original(error: BaseException) -> BaseException:
    """The exception a `RayTaskError` wraps (through nested remote calls), else `error`."""
    while isinstance(error, RayTaskError) and error.cause is not None and error.cause is not error:
        error = error.cause
    return error


def report(log: logging.Logger, what: str, error: BaseException) -> str:
    """Log `error` with its traceback under a new incident id; the message a client reads."""
    incident = uuid.uuid4().hex[:12]
    log.error("%s [incident %s]", what, incident, exc_info=error)
    return (
        f"{what} ({type(original(error)).__name__}); the details are in the Hermesflow "
        f"server's log under incident {incident}"
    )


def described(error: BaseException) -> str:
    """`Type: message` of the original error, without traceback, pid or actor id. Another Ray
    error (an actor that died) is named by its type alone: its text lists the actor's id, pid
    and address."""
    cause = original(error)
    if isinstance(cause, RayError):
        return type(cause).__name__
    return f"{type(cause).__name__}: {cause}"
