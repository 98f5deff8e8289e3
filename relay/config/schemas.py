"""The config's marshmallow schemas: every key, its type, its default and its limits, and which
keys hold secrets.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from relay.config.positions import Path

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Duration(fields.Field[float]):
    """Seconds as a number, or a string such as `30s`, `15m`, `24h`, `7d`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool):
            raise ValidationError("must be a duration")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise ValidationError("must be a duration")
        if seconds < 0:
            raise ValidationError("must not be negative")
        return seconds


class KeyList(fields.Field[tuple[str, ...]]):
    """One key, or a list of keys (several are accepted at once while rotating)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValidationError("must be a key, or a list of keys")


class StrictStr(fields.String):
    """A string that refuses numbers and booleans instead of silently converting them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a numeric site id written without quotes is still an id
        return super()._deserialize(value, attr, data, **kwargs)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ServerSchema(_Strict):
    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=8080, validate=validate.Range(0, 65535))
    shutdown_timeout = Duration(load_default=10.0)
    idle_timeout = Duration(load_default=15.0, validate=validate.Range(min=0, min_inclusive=False))
    body_timeout = Duration(load_default=30.0, validate=validate.Range(min=0, min_inclusive=False))


class SqliteSchema(_Strict):
    path = fields.String(load_default="var/relay.db")
    max_pending = fields.Integer(load_default=5_000_000, validate=validate.Range(min=1))
    max_size_mb = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    min_free_mb = fields.Float(load_default=100.0, validate=validate.Range(min=0))


class StorageSchema(_Strict):
    sqlite = fields.Nested(SqliteSchema, load_default=lambda: SqliteSchema().load({}))


class SegmentSourceSchema(_Strict):
    write_keys = fields.Dict(keys=fields.String(), values=StrictStr(), load_default=dict)
    webhook_secret = fields.String(load_default=None, allow_none=True)
    dedup_window = Duration(load_default=86400.0)


class CustomerIOSourceSchema(_Strict):
    signing_keys = fields.Dict(keys=fields.String(), values=KeyList(), load_default=dict)
    timestamp_tolerance = Duration(load_default=None, allow_none=True)
    dedup_window = Duration(load_default=7 * 86400.0)
    profile = fields.String(load_default="default", validate=validate.OneOf(["default", "raw"]))


class SourcesSchema(_Strict):
    segment = fields.Nested(
        SegmentSourceSchema, load_default=lambda: SegmentSourceSchema().load({})
    )
    customerio = fields.Nested(
        CustomerIOSourceSchema, load_default=lambda: CustomerIOSourceSchema().load({})
    )


_URL = validate.URL(require_tld=False, schemes={"http", "https"})


class CustomerIODestinationSchema(_Strict):
    site_id = StrictStr(required=True)
    api_key = StrictStr(required=True)
    region = fields.String(load_default="us", validate=validate.OneOf(["us", "eu"]))
    base_url = fields.String(load_default=None, allow_none=True, validate=_URL)
    rate_limit = fields.Float(
        load_default=100.0, validate=validate.Range(min=0, min_inclusive=False)
    )
    api = fields.String(load_default="v2", validate=validate.OneOf(["v1", "v2"]))
    batch_size = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    concurrency = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 64))
    timeout = Duration(load_default=10.0)
    max_age = Duration(load_default=86400.0)


class SegmentDestinationSchema(_Strict):
    write_key = StrictStr(required=True)
    region = fields.String(load_default="us", validate=validate.OneOf(["us", "eu"]))
    base_url = fields.String(load_default=None, allow_none=True, validate=_URL)
    rate_limit = fields.Float(
        load_default=50.0, validate=validate.Range(min=0, min_inclusive=False)
    )
    batch_size = fields.Integer(load_default=500, validate=validate.Range(1, 2500))
    concurrency = fields.Integer(load_default=2, validate=validate.Range(1, 64))
    timeout = Duration(load_default=10.0)
    max_age = Duration(load_default=86400.0)


class DestinationsSchema(_Strict):
    customerio = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)
    segment = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)


class ConfigSchema(_Strict):
    server = fields.Nested(ServerSchema, load_default=lambda: ServerSchema().load({}))
    storage = fields.Nested(StorageSchema, load_default=lambda: StorageSchema().load({}))
    sources = fields.Nested(SourcesSchema, load_default=lambda: SourcesSchema().load({}))
    destinations = fields.Nested(
        DestinationsSchema, load_default=lambda: DestinationsSchema().load({})
    )
    routes = fields.List(fields.Raw(), load_default=list)


_SECRET_FIELDS = {"api_key", "write_key", "webhook_secret"}

_SECRET_PARENTS = {"write_keys", "signing_keys"}


def is_secret_path(path: Path) -> bool:
    """Whether a config path holds a secret (its value must never be shown)."""
    return bool(path) and (
        path[-1] in _SECRET_FIELDS or (len(path) >= 2 and path[-2] in _SECRET_PARENTS)
    )
