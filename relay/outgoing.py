"""The one shape of an HTTP request a sink sends, built by pure code and sent at the edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OutgoingRequest:
    """A request relative to a destination's base URL; `body` is JSON-serialisable, JSON
    already written (bytes, sent as they are), or None."""

    method: str
    path: str
    body: Any = None
