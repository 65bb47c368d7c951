"""The gateway's checks that need no server: which JSON documents hold text that is not Unicode,
and which labels are over their limits. The HTTP behaviour is tested end to end in
`test_gateway.py`."""

from __future__ import annotations

import json

import pytest

from hermesflow.api.errors import ApiError
from hermesflow.api.limits import _lone_surrogate, check_labels
from hermesflow.config import ApiLimits


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ('{"a": ["ok", {"b": "\\udc80"}]}', ("a", 1, "b")),
        ('{"\\ud800key": 1}', ("\ud800key",)),
        ('["\\ud83d"]', (0,)),
        ('"\\ude00 alone"', ()),
    ],
)
def test_a_lone_surrogate_is_found_with_its_path(document: str, path: tuple) -> None:
    found = _lone_surrogate(json.loads(document))
    assert found is not None and found[0] == path


@pytest.mark.parametrize(
    "document", ['{"emoji": "\\ud83d\\ude00", "text": "caf\\u00e9"}', '[1, null, true, 2.5]']
)
def test_surrogate_pairs_and_other_text_pass(document: str) -> None:
    assert _lone_surrogate(json.loads(document)) is None


def test_a_deeply_nested_document_does_not_exhaust_the_stack() -> None:
    depth = 5000
    document: object = "\udc80"
    for _ in range(depth):
        document = [document]
    found = _lone_surrogate(document)
    assert found is not None and len(found[0]) == depth


def test_labels_within_the_limits_pass_and_every_problem_is_named() -> None:
    limits = ApiLimits(max_labels=2, max_label_key_chars=8, max_label_value_chars=10)
    check_labels({"dag": "etl", "run": 42}, limits)
    check_labels(None, limits)
    with pytest.raises(ApiError) as refused:
        check_labels({"dag": "etl", "a-very-long-key": 1, "note": {"nested": "value"}}, limits)
    message = refused.value.message
    assert refused.value.status == 422 and refused.value.param == "labels"
    assert "3 labels, more than 2 (HERMES_API_MAX_LABELS)" in message
    assert "the key 'a-very-long-key' has 15 characters, more than 8" in message
    assert "'note' has 19 characters as JSON, more than 10" in message
