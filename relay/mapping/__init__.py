"""Pure translations between Segment messages and Customer.io requests or webhooks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rejection:
    """A message that cannot be mapped, and why, in words a person can act on."""

    reason: str
