"""Customer.io reporting webhooks: verify, map to a Segment track call, queue, answer 200.

Customer.io holds back every later webhook while one is failing, so once a request is
proven genuine it is always answered 200 after it is stored: an event that cannot be
mapped is stored as rejected (visible with the dead letters), never refused with a 4xx.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from relay.config import Config
from relay.errors import Unauthorized
from relay.intake import Incoming, Intake
from relay.mapping import Rejection
from relay.mapping.to_segment import map_webhook, webhook_event_id, webhook_person_key
from relay.signatures import verify_customerio
from relay.sources.body import read_body

MAX_WEBHOOK_BYTES = 1024 * 1024


class CustomerIOWebhooks:
    def __init__(self, intake: Intake, config: Config) -> None:
        self.intake = intake
        self.keys = config.customerio_signing_keys
        self.tolerance = config.customerio_timestamp_tolerance
        self.profile = config.customerio_profile

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/customerio", self.handle),
            web.post("/webhooks/customerio/{source}", self.handle),
        ]

    async def handle(self, request: web.Request) -> web.Response:
        raw = await read_body(request, MAX_WEBHOOK_BYTES, "a Customer.io webhook")
        named = request.match_info.get("source")
        if named is not None:
            keys: dict[str, tuple[str, ...]] = (
                {named: self.keys[named]} if named in self.keys else {}
            )
        else:
            keys = self.keys
        if not keys:
            raise Unauthorized(
                f"no signing key is configured for source {named!r}"
                if named is not None
                else "no Customer.io signing key is configured (sources.customerio.signing_keys)"
            )
        now = self.intake.clock()
        source = verify_customerio(
            keys,
            request.headers.get("X-CIO-Timestamp"),
            request.headers.get("X-CIO-Signature"),
            raw,
            now=now,
            tolerance=self.tolerance,
        )
        if source is None:
            raise Unauthorized(
                "X-CIO-Signature is missing or does not match any signing key"
                + (
                    " (or X-CIO-Timestamp is outside the allowed tolerance)"
                    if self.tolerance
                    else ""
                )
            )
        await self.intake.accept("customerio", source, [self.incoming(raw, now)])
        return web.json_response({"success": True})

    def incoming(self, raw: bytes, received_at: float) -> Incoming:
        try:
            payload: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            text = raw.decode("utf-8", errors="replace")
            return Incoming(
                {"body": text},
                "",
                None,
                rejected_reason=f"the webhook body is not valid JSON: {exc}",
            )
        if not isinstance(payload, dict):
            return Incoming(
                {"body": payload}, "", None, rejected_reason="the webhook body is not a JSON object"
            )
        mapped = map_webhook(payload, received_at=received_at, profile=self.profile)
        key = webhook_person_key(payload)
        if isinstance(mapped, Rejection):
            return Incoming(payload, key, None, rejected_reason=mapped.reason)
        return Incoming(payload, key, webhook_event_id(payload), deliverable=mapped)
