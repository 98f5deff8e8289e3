"""The route language's words: message kinds, route keys, condition operators, and how near a
typo must be to be offered as the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

Path = tuple[str | int, ...]

Check = Callable[[Any], bool]

SEGMENT: Final = "segment"

CUSTOMERIO: Final = "customerio"

KINDS: Final = (SEGMENT, CUSTOMERIO)

KIND_LABEL: Final = {SEGMENT: "Segment", CUSTOMERIO: "Customer.io"}

OTHER_KIND: Final = {SEGMENT: CUSTOMERIO, CUSTOMERIO: SEGMENT}

ROUTE_KEYS: Final = (
    "name",
    "from",
    "sources",
    "match",
    "to",
    "rename_events",
    "drop_properties",
    "rename_properties",
    "set_properties",
)

# Words people reach for from other tools; difflib would not find these on spelling alone.
ROUTE_KEY_ALIASES: Final = {
    "filter": "match",
    "filters": "match",
    "where": "match",
    "when": "match",
    "if": "match",
    "conditions": "match",
    "destination": "to",
    "destinations": "to",
    "source": "sources",
    "direction": "from",
    "kind": "from",
}

COMBINATORS: Final = ("not", "any", "all", "exists", "missing")

OPERATORS: Final = ("gt", "gte", "lt", "lte")

OPERATOR_ALIASES: Final = {
    ">": "gt",
    ">=": "gte",
    "<": "lt",
    "<=": "lte",
    "ge": "gte",
    "le": "lte",
    "min": "gte",
    "max": "lte",
}

# Near-miss field names are reported only when this close, so that a genuinely custom
# field is never mistaken for a typo.
TYPO_CUTOFF: Final = 0.8

# How close an unknown top-level field must be to a known one to be offered as the fix
# (compared without case, "_" and "-": user_id and UserID are userId).
FIELD_SUGGESTION_CUTOFF: Final = 0.7

# A number comparison written as text (">= 100"), which would only match that very text.
COMPARISON_TEXT: Final = re.compile(
    r"^\s*(>=|=>|<=|=<|>|<|==|=|!=|<>)\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*$"
)

COMPARISON_WORDS: Final = {
    ">=": "gte",
    "=>": "gte",
    "<=": "lte",
    "=<": "lte",
    ">": "gt",
    "<": "lt",
}


class _Missing:
    """The value of a path that is not in the message; equal to nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
