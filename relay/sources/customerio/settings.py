"""The Customer.io source's settings (``sources.customerio``): the signing keys of its
reporting webhooks, how old a signed request may be, and how its events are described."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from marshmallow import fields, post_load, validate

from relay.mapping.to_segment import PROFILES
from relay.settings import Duration, KeyList, Strict


@dataclass(frozen=True)
class CustomerIOSource:
    # Source name → its signing keys that are set (several while rotating).
    signing_keys: dict[str, tuple[str, ...]]
    timestamp_tolerance: float | None
    dedup_window: float
    profile: str
    # Every source name the file declares, including those whose key is unset.
    names: tuple[str, ...] = field(default=(), compare=False)

    @property
    def route_names(self) -> tuple[str, ...]:
        """The names routes may give in `sources`."""
        return self.names or tuple(self.signing_keys)


class CustomerIOSourceSchema(Strict):
    signing_keys = fields.Dict(
        keys=fields.String(),
        values=KeyList(),
        load_default=dict,
        metadata={
            "secret": True,
            "never_empty": "signing key",
            "empty_hint": "write the signing key of the Customer.io reporting webhook, or"
            " remove this entry",
            "write": 'source names and their keys, e.g. signing_keys: {marketing: "${CIO_KEY}"}',
        },
    )
    timestamp_tolerance = Duration(load_default=None, allow_none=True)
    dedup_window = Duration(load_default=7 * 86400.0)
    profile = fields.String(load_default="default", validate=validate.OneOf(PROFILES))

    @post_load
    def settings(self, data: dict[str, Any], **kwargs: Any) -> CustomerIOSource:
        return CustomerIOSource(
            signing_keys={
                k: tuple(x for x in v if x) for k, v in data["signing_keys"].items() if any(v)
            },
            timestamp_tolerance=data["timestamp_tolerance"],
            dedup_window=data["dedup_window"],
            profile=data["profile"],
            names=tuple(data["signing_keys"]),
        )
