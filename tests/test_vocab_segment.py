"""What a valid Segment message is: the quick pass over a message's fields agrees with the
full, ordered check, and the reasons name the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.vocab.segment import first_problem, message_problem, plainly_valid

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=2) | st.dictionaries(st.text(max_size=3), children, max_size=2)
    ),
    max_leaves=4,
)
FIELDS = [
    "type",
    "userId",
    "anonymousId",
    "event",
    "messageId",
    "timestamp",
    "sentAt",
    "originalTimestamp",
    "name",
    "category",
    "previousId",
    "groupId",
    "properties",
    "traits",
    "context",
    "integrations",
    "other",
]
messages = st.dictionaries(
    st.sampled_from(FIELDS),
    st.sampled_from(["identify", "track", "page", "screen", "group", "alias", "delete", "x"])
    | values
    | st.text(min_size=95, max_size=105),
    max_size=8,
)


@settings(max_examples=1000)
@given(message=messages)
def test_the_quick_pass_accepts_only_what_the_full_check_accepts(message: dict[str, Any]) -> None:
    if plainly_valid(message):
        assert first_problem(message) is None
    assert message_problem(message) == first_problem(message)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "track", "userId": "u", "event": "E"}, None),
        ({"type": "track", "userId": 42, "event": "E"}, None),  # numeric ids are fine
        ({"type": "track", "userId": "u"}, "a track call needs a non-empty 'event'"),
        ({"type": "identify", "userId": ""}, "field 'userId' must be a non-empty string"),
        ({"type": "identify"}, "one of 'userId' or 'anonymousId' is required"),
        (
            {"type": "page", "anonymousId": "a", "properties": []},
            "field 'properties' must be an object",
        ),
        ({"type": "group", "userId": "u"}, "a group call needs 'groupId'"),
        (
            {"type": "alias", "userId": "u", "previousId": ""},
            "an alias call needs 'previousId' and 'userId'",
        ),
        (
            {"type": "track", "userId": "u", "event": "E", "messageId": "m" * 100},
            "field 'messageId' must be shorter than 100 characters",
        ),
        ({"userId": "u"}, "field 'type' is missing"),
        ([], "each message must be a JSON object"),
    ],
)
def test_reasons_name_the_field(message: Any, reason: str | None) -> None:
    assert message_problem(message) == reason
