"""Pure translations between Segment messages and Customer.io requests or webhooks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rejection:
    """A message that cannot be mapped, and why, in words a person can act on."""

    reason: str


@dataclass(frozen=True)
class Skip:
    """A message that needs nothing sent: it is done as it is (a person merged into itself).
    Counted, never dead-lettered."""

    reason: str


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for reasons such as "traits must be an object"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__
