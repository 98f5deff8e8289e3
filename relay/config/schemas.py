"""The config file's schema, assembled from the sections each component owns, and the
server's own section; `field_at` finds the field that holds any value of the file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from relay.admin.settings import AdminSchema
from relay.config.positions import Path
from relay.destinations.registry import TYPES
from relay.logs import FORMAT_SETTINGS
from relay.settings import Duration, Strict, defaults
from relay.sources.customerio.settings import CustomerIOSource, CustomerIOSourceSchema
from relay.sources.segment.settings import SegmentSource, SegmentSourceSchema
from relay.store.redis.settings import INSTALL, RedisSchema, RedisSettings, available
from relay.store.sqlite.settings import SqliteSchema, SqliteSettings


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    shutdown_timeout: float
    # A connection without a complete request head for this long (idle, or sending its
    # headers slowly) is closed; a body must arrive within body_timeout (408 otherwise).
    idle_timeout: float
    body_timeout: float
    log_format: str  # auto | json | text (relay.logs)


class ServerSchema(Strict):
    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=8080, validate=validate.Range(0, 65535))
    shutdown_timeout = Duration(load_default=10.0)
    idle_timeout = Duration(load_default=15.0, validate=validate.Range(min=0, min_inclusive=False))
    body_timeout = Duration(load_default=30.0, validate=validate.Range(min=0, min_inclusive=False))
    log_format = fields.String(load_default="auto", validate=validate.OneOf(FORMAT_SETTINGS))

    @post_load
    def settings(self, data: dict[str, Any], **kwargs: Any) -> ServerSettings:
        return ServerSettings(**data)


@dataclass(frozen=True)
class StorageSettings:
    sqlite: SqliteSettings
    # When set, the queue is in Redis, shared by every instance configured alike; the
    # SQLite settings are then only where local files go (the admin address).
    redis: RedisSettings | None = None


BOTH = "give storage.sqlite or storage.redis, not both: the queue is in one of them"


class StorageSchema(Strict):
    sqlite = fields.Nested(SqliteSchema, load_default=defaults(SqliteSchema))
    redis = fields.Nested(RedisSchema, load_default=None, metadata={"complete": (BOTH, INSTALL)})

    @validates_schema(pass_original=True)
    def one_backend(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        if not isinstance(original, dict) or original.get("redis") is None:
            return
        if "sqlite" in original:
            raise ValidationError(BOTH, "redis")
        if not available():
            raise ValidationError(INSTALL, "redis")

    @post_load
    def settings(self, data: dict[str, Any], **kwargs: Any) -> StorageSettings:
        return StorageSettings(**data)


@dataclass(frozen=True)
class SourcesSettings:
    segment: SegmentSource
    customerio: CustomerIOSource


class SourcesSchema(Strict):
    segment = fields.Nested(SegmentSourceSchema, load_default=defaults(SegmentSourceSchema))
    customerio = fields.Nested(
        CustomerIOSourceSchema, load_default=defaults(CustomerIOSourceSchema)
    )

    @post_load
    def settings(self, data: dict[str, Any], **kwargs: Any) -> SourcesSettings:
        return SourcesSettings(**data)


# destinations.<kind>.<name>: each destination is validated on its own, with its type's
# schema (named here in `each`, for `field_at`), so that one wrong hides no other.
DestinationsSchema = Strict.from_dict(
    {
        kind: fields.Dict(
            keys=fields.String(),
            values=fields.Raw(),
            load_default=dict,
            metadata={"each": t.schema},
        )
        for kind, t in TYPES.items()
    },
    name="DestinationsSchema",
)


class ConfigSchema(Strict):
    server = fields.Nested(ServerSchema, load_default=defaults(ServerSchema))
    storage = fields.Nested(StorageSchema, load_default=defaults(StorageSchema))
    admin = fields.Nested(AdminSchema, load_default=defaults(AdminSchema))
    sources = fields.Nested(SourcesSchema, load_default=defaults(SourcesSchema))
    destinations = fields.Nested(DestinationsSchema, load_default=defaults(DestinationsSchema))
    routes = fields.List(fields.Raw(), load_default=list)


_CONFIG = ConfigSchema()


def field_at(path: Path) -> fields.Field[Any] | None:
    """The field that holds the value at `path`; for a value inside a mapping of names
    (sources.segment.write_keys.web), the mapping's field, whose metadata is about its
    values."""
    schema: Schema = _CONFIG
    i = 0
    while i < len(path):
        found = schema.fields.get(str(path[i]))
        if isinstance(found, fields.Nested) and isinstance(found.schema, Schema):
            schema, i = found.schema, i + 1
        elif isinstance(found, fields.Dict) and "each" in found.metadata and i + 2 < len(path):
            schema, i = found.metadata["each"](), i + 2
        else:
            return found
    return None


def is_secret_path(path: Path) -> bool:
    """Whether a config path holds a secret (its value must never be shown)."""
    found = field_at(path)
    return found is not None and bool(found.metadata.get("secret"))


def must_not_be_empty(path: Path) -> str | None:
    """What the setting at `path` is, when it is one that is never valid empty (an empty
    key or Site ID authenticates nothing); None otherwise."""
    found = field_at(path)
    return None if found is None else found.metadata.get("never_empty")
