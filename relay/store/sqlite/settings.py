"""The SQLite store's settings (``storage.sqlite``): their schema and typed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import fields, post_load, validate

from relay.settings import Strict
from relay.store.sqlite.schema import DEFAULT_MIN_FREE_MB


@dataclass(frozen=True)
class SqliteSettings:
    path: str
    max_pending: int
    max_size_mb: int | None
    min_free_mb: float


class SqliteSchema(Strict):
    path = fields.String(load_default="var/relay.db")
    max_pending = fields.Integer(load_default=5_000_000, validate=validate.Range(min=1))
    max_size_mb = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    min_free_mb = fields.Float(load_default=DEFAULT_MIN_FREE_MB, validate=validate.Range(min=0))

    @post_load
    def settings(self, data: dict[str, Any], **kwargs: Any) -> SqliteSettings:
        return SqliteSettings(**data)
