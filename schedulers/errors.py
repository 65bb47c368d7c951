"""The errors the scheduler raises to its callers, apart from the runtime that raises them.

The HTTP API maps each to a status (`hermesflow.api.scheduler_proxy`): a refused submission is
the caller's mistake (422; 404 for an application or step that does not exist; 409 for a step
sent to an application that has ended), a failed run is a 502 whose message the scheduler
wrote for clients. A module of its own, free of Ray and of the runtime's state, so that the API
imports nothing else of the scheduler to tell them apart.
"""

from __future__ import annotations


class SubmissionError(ValueError):
    """A submission the scheduler refuses (unknown class, invalid inputs); says how to fix it."""


class UnknownApplication(SubmissionError, LookupError):
    """No application has this id."""


class UnknownStep(SubmissionError, LookupError):
    """The application has no step of this id."""


class ApplicationFinished(SubmissionError):
    """A step was sent to an application that has already ended (HTTP 409: a conflict with the
    application's state, not a malformed request)."""


class RunFailed(RuntimeError):
    """The application a caller waits on failed. The message is the scheduler's own, written
    for clients (the HTTP API passes it on, unlike an unexpected error's)."""
