"""The Segment source's settings (``sources.segment``): the write keys its callers use, the
secret of Segment's Webhooks destination, how long message ids are remembered, and the
address analytics.js is told to send to (relay.sources.segment.cdn_settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from marshmallow import ValidationError, fields, post_load

from relay.settings import URL, Duration, Strict, StrictBool, StrictStr

# The source name of events that come through Segment's Webhooks destination
# (POST /webhooks/segment): routes name it in `sources` like any write key's name.
WEBHOOK_SOURCE = "webhook"


@dataclass(frozen=True)
class SegmentSource:
    # Source name → write key, for the keys that are set.
    write_keys: dict[str, str]
    webhook_secret: str | None
    dedup_window: float
    # relay's address as browsers reach it (`https://relay.example.com`), for the settings
    # analytics.js loads; None: as each request reached it.
    public_url: str | None = None
    # Whether that address may come from a proxy's X-Forwarded-Proto / X-Forwarded-Host.
    trust_forwarded_headers: bool = False
    # Every source name the file declares, including those whose key is unset: routes may
    # name them, and such a source simply never authenticates until its key is set.
    names: tuple[str, ...] = field(default=(), compare=False)

    @property
    def route_names(self) -> tuple[str, ...]:
        """The names routes may give in `sources`."""
        return (*(self.names or self.write_keys), WEBHOOK_SOURCE)


def _base_url(url: str) -> bool:
    """A public_url is an address, not a page: no query, no fragment."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValidationError("must be relay's base URL, without a query or fragment")
    return True


class SegmentSourceSchema(Strict):
    write_keys = fields.Dict(
        keys=fields.String(),
        values=StrictStr(metadata={"write": 'the write key as text, e.g. "${SEGMENT_WRITE_KEY}"'}),
        load_default=dict,
        metadata={
            "secret": True,
            "never_empty": "write key",
            "empty_hint": "write the write key of the Segment source, or remove this entry",
            "write": 'source names and their keys, e.g. write_keys: {web: "${WEB_WRITE_KEY}"}',
        },
    )
    webhook_secret = fields.String(load_default=None, allow_none=True, metadata={"secret": True})
    dedup_window = Duration(load_default=86400.0)
    public_url = fields.String(
        load_default=None,
        allow_none=True,
        validate=[URL, _base_url],
        metadata={"write": "relay's address as browsers reach it, e.g. https://relay.example.com"},
    )
    trust_forwarded_headers = StrictBool(load_default=False)

    @post_load
    def settings(self, data: dict[str, Any], **kwargs: Any) -> SegmentSource:
        return SegmentSource(
            write_keys={k: v for k, v in data["write_keys"].items() if v},
            webhook_secret=data["webhook_secret"] or None,
            dedup_window=data["dedup_window"],
            public_url=data["public_url"] or None,
            trust_forwarded_headers=data["trust_forwarded_headers"],
            names=tuple(data["write_keys"]),
        )
