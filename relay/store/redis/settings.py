"""The Redis store's settings (``storage.redis``): their schema and typed values."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from marshmallow import fields, post_load, validate

from relay.settings import Duration, Strict, StrictBool

DEFAULT_URL = "redis://127.0.0.1:6379/0"

INSTALL = "storage.redis needs the Python package redis: pip install 'relay[redis]'"


def available() -> bool:
    """Whether redis-py is installed, without importing it (a relay on SQLite never does)."""
    return importlib.util.find_spec("redis") is not None


@dataclass(frozen=True)
class RedisSettings:
    url: str
    key_prefix: str
    partitions: int
    max_pending: int
    reclaim_idle: float
    ownership_ttl: float
    timeout: float
    require_durable: bool


class RedisSchema(Strict):
    # May carry a password (redis://:secret@host): never shown.
    url = fields.String(load_default=DEFAULT_URL, metadata={"secret": True})
    key_prefix = fields.String(load_default="relay:", validate=validate.Length(min=1))
    # Each destination's queue is split in this many streams by a hash of the person; a
    # partition is delivered by one instance at a time. Changing it moves people between
    # partitions: drain the queue first.
    partitions = fields.Integer(load_default=16, validate=validate.Range(1, 1024))
    max_pending = fields.Integer(load_default=5_000_000, validate=validate.Range(min=1))
    # A delivery leased by an instance that stopped answering goes back to the queue after
    # this long (a live instance keeps its leases fresh).
    reclaim_idle = Duration(load_default=30.0, validate=validate.Range(min=1))
    # How long an instance owns a partition without renewing it (it renews every third).
    ownership_ttl = Duration(load_default=10.0, validate=validate.Range(min=1))
    # A Redis command that takes longer fails: intake answers 503, delivery waits.
    timeout = Duration(load_default=5.0, validate=validate.Range(min=0, min_inclusive=False))
    # Refuse to start unless Redis writes every command to its append-only file before
    # answering (appendonly yes, appendfsync always); otherwise only a warning.
    require_durable = StrictBool(load_default=False)

    @post_load
    def settings(self, data: dict[str, Any], **kwargs: Any) -> RedisSettings:
        return RedisSettings(**data)
