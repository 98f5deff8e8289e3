"""A Segment destination's settings (``destinations.segment.<name>``): the Segment source
that receives Customer.io's events, its schema and its typed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from marshmallow import fields, validate

from relay.settings import URL, Duration, Strict, StrictStr

KIND = "segment"

HOSTS = {"us": "https://api.segment.io", "eu": "https://events.eu1.segmentapis.com"}

_WRITE_KEY = "the write key of the Segment source that receives these events"


class SegmentDestinationSchema(Strict):
    write_key = StrictStr(
        required=True,
        metadata={
            "secret": True,
            "never_empty": "write key",
            "empty_hint": f"write {_WRITE_KEY}, or remove this entry",
            "required_hint": f'add write_key: "${{SEGMENT_WRITE_KEY}}", {_WRITE_KEY}',
            "write": 'the write key as text, e.g. "${SEGMENT_WRITE_KEY}"',
        },
    )
    region = fields.String(load_default="us", validate=validate.OneOf(["us", "eu"]))
    base_url = fields.String(
        load_default=None,
        allow_none=True,
        validate=URL,
        metadata={
            "write": f"a full URL such as {HOSTS['us']}, or remove base_url to use the region's"
            " host"
        },
    )
    rate_limit = fields.Float(
        load_default=50.0, validate=validate.Range(min=0, min_inclusive=False)
    )
    batch_size = fields.Integer(load_default=500, validate=validate.Range(1, 2500))
    concurrency = fields.Integer(load_default=2, validate=validate.Range(1, 64))
    timeout = Duration(load_default=10.0)
    max_age = Duration(load_default=86400.0)


# What the settings of one look like, for a hint when they are not a mapping.
EXAMPLE = '{write_key: "${SEGMENT_WRITE_KEY}"}'


@dataclass(frozen=True)
class SegmentDestination:
    kind: ClassVar[str] = KIND
    name: str
    write_key: str
    region: str
    base_url: str
    rate_limit: float
    batch_size: int
    concurrency: int
    timeout: float
    max_age: float
    # Variables its settings need that are unset: it is configured but cannot send.
    missing: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{KIND}.{self.name}"


def settings(name: str, v: dict[str, Any], missing: tuple[str, ...]) -> SegmentDestination:
    """The typed settings from what the schema loaded."""
    return SegmentDestination(
        name=name,
        write_key=v["write_key"],
        region=v["region"],
        base_url=(v["base_url"] or HOSTS[v["region"]]).rstrip("/"),
        rate_limit=v["rate_limit"],
        batch_size=v["batch_size"],
        concurrency=v["concurrency"],
        timeout=v["timeout"],
        max_age=v["max_age"],
        missing=missing,
    )
