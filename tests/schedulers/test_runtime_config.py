"""RuntimeConfig refuses what the scheduler actor could not run, where it is written."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hermesflow.schedulers.runtime_config import SERVABLE_POLICIES, RuntimeConfig


def test_a_policy_that_needs_the_future_is_refused_with_the_servable_ones() -> None:
    with pytest.raises(ValidationError) as refused:
        RuntimeConfig(policy="srpt")
    message = str(refused.value)
    assert "simulator" in message and all(name in message for name in SERVABLE_POLICIES)


@pytest.mark.parametrize(("field", "value"), [("policy", "fifo"), ("planner", "always-warm")])
def test_unknown_policy_and_planner_names_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=f"unknown .*{value!r}; choose one of"):
        RuntimeConfig(**{field: value})


def test_every_servable_policy_is_accepted() -> None:
    assert [RuntimeConfig(policy=name).policy for name in SERVABLE_POLICIES] == list(SERVABLE_POLICIES)
