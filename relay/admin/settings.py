"""The `admin` section: where the operator endpoint listens (the status page, its JSON, the
live tail, and what `relay dlq`, `relay import` and `relay tail` ask the running relay), and
the token it requires."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from relay.settings import Strict

DEFAULT_PORT = 0  # any free port: relay writes the one it got beside the store


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AdminSettings:
    host: str
    port: int
    # Required when host is not a loopback address; when set, every request must carry it.
    token: str | None = field(default=None, repr=False)


class AdminSchema(Strict):
    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=DEFAULT_PORT, validate=validate.Range(0, 65535))
    token = fields.String(load_default=None, allow_none=True, metadata={"secret": True})

    @validates_schema
    def token_when_exposed(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not is_loopback(data.get("host", "127.0.0.1")) and not data.get("token"):
            raise ValidationError(
                f"admin.host {data['host']} is not a loopback address: set admin.token too"
                ' (token: "${RELAY_ADMIN_TOKEN}"), or listen on 127.0.0.1',
                "token",
            )

    @post_load
    def settings(self, data: dict[str, Any], **kwargs: Any) -> AdminSettings:
        return AdminSettings(data["host"], data["port"], data["token"] or None)
