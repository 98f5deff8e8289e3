"""Customer.io reporting webhooks: verify, check that each maps to a Segment track call
(the Segment sink maps it when it delivers it), queue, answer 200.

Customer.io holds back every later webhook while one is failing, so once a request is
proven genuine it is always answered 200 after it is stored: an event that cannot be
mapped, or that is too large to take, is stored as rejected (visible with the dead
letters), never refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from relay.codec import decode, nested_deeper_than
from relay.errors import Unauthorized
from relay.intake import Incoming, Intake
from relay.mapping import Rejection
from relay.mapping.to_segment import map_webhook
from relay.signatures import verify_customerio
from relay.sources.body import decode_body, read_raw
from relay.sources.customerio.settings import CustomerIOSource
from relay.vocab import customerio as cio

# The largest webhook relay maps and stores whole.
MAX_WEBHOOK_BYTES = 1024 * 1024
# The most it reads to check a signature: the app's client_max_size. A genuine webhook
# between the two is stored as rejected (with a summary) instead of refused, since a
# refusal would hold back Customer.io's whole feed.
MAX_READ_BYTES = 8 * 1024 * 1024
# What an oversize webhook's summary keeps: enough to find the event in Customer.io.
_EXCERPT_CHARS = 2000
_SUMMARY_FIELD_CHARS = 200
_SUMMARY_FIELDS = 20
# Far deeper than any real webhook (a few levels), and far from where encoding it again
# would hit Python's recursion limit.
MAX_DEPTH = 512


class CustomerIOWebhooks:
    def __init__(self, intake: Intake, settings: CustomerIOSource) -> None:
        self.intake = intake
        self.configure(settings)

    def configure(self, settings: CustomerIOSource) -> None:
        """Take new signing keys and settings (a reload), in one step."""
        self.keys = settings.signing_keys
        self.tolerance = settings.timestamp_tolerance
        self.profile = settings.profile

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/customerio", self.handle),
            web.post("/webhooks/customerio/{source}", self.handle),
        ]

    async def handle(self, request: web.Request) -> web.Response:
        what = "a Customer.io webhook"
        raw = await read_raw(request, MAX_READ_BYTES, what)
        raw = decode_body(raw, request.headers.get("Content-Encoding"), MAX_READ_BYTES, what)
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
        verify = functools.partial(
            verify_customerio,
            keys,
            request.headers.get("X-CIO-Timestamp"),
            request.headers.get("X-CIO-Signature"),
            raw,
            now=now,
            tolerance=self.tolerance,
        )
        # Megabytes of HMAC per key would stall the event loop; hashlib lets go of the GIL
        # for large inputs, so in a thread other requests keep flowing meanwhile.
        source = await asyncio.to_thread(verify) if len(raw) > MAX_WEBHOOK_BYTES else verify()
        # An oversize body that is not genuine gets the same 401 as any other (not 413): the
        # signature is judged before anything the body holds, so a wrong key shows up as the
        # one problem it is rather than as "too large" for the big webhooks only, and below
        # the read cap a caller without the key gets the same answer whatever it sends.
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
        if len(raw) > MAX_WEBHOOK_BYTES:
            return oversize_incoming(raw)
        try:
            payload: Any = decode(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _as_text(raw, f"the webhook body is not valid JSON: {exc}")
        if nested_deeper_than(payload, MAX_DEPTH):
            return _as_text(
                raw,
                f"the webhook body is nested too deeply (more than {MAX_DEPTH} levels of"
                " arrays and objects)",
            )
        if not isinstance(payload, dict):
            return Incoming(
                {"body": payload}, "", None, rejected_reason="the webhook body is not a JSON object"
            )
        mapped = map_webhook(payload, received_at=received_at, profile=self.profile)
        key = cio.person_key(payload)
        if isinstance(mapped, Rejection):
            # Kept with its event_id, so that Customer.io's retries of it are stored once.
            return Incoming(payload, key, cio.event_id(payload), rejected_reason=mapped.reason)
        # Mapped here only to refuse what cannot be: it is mapped again at delivery.
        return Incoming(payload, key, cio.event_id(payload), webhook_profile=self.profile)


def _as_text(raw: bytes, reason: str) -> Incoming:
    """A body relay cannot keep as JSON, stored as its text with why."""
    return Incoming(
        {"body": raw.decode("utf-8", errors="replace")}, "", None, rejected_reason=reason
    )


def oversize_incoming(raw: bytes) -> Incoming:
    """A genuine webhook too large to take, as a rejected message that says what it was."""
    try:
        payload: Any = decode(raw)
    except (ValueError, UnicodeDecodeError):
        payload = None
    return Incoming(
        oversize_summary(raw, payload),
        cio.person_key(payload),
        cio.event_id(payload),
        rejected_reason=(
            f"the webhook is larger than {MAX_WEBHOOK_BYTES // (1024 * 1024)} MB"
            f" ({len(raw)} bytes), so it was not routed; kept here are its size, its short"
            f" top-level fields and its first {_EXCERPT_CHARS} characters"
        ),
    )


def oversize_summary(raw: bytes, payload: Any) -> dict[str, Any]:
    """What is stored of an oversize webhook instead of all of it: its size, its short
    top-level fields (event_id, object_type, metric, timestamp, …) and its first characters."""
    summary: dict[str, Any] = {}
    if isinstance(payload, Mapping):
        short = ((k, v) for k, v in payload.items() if _short_scalar(v))
        for key, value in itertools.islice(short, _SUMMARY_FIELDS):
            summary[str(key)[:_SUMMARY_FIELD_CHARS]] = value
    summary["body_bytes"] = len(raw)
    summary["body_start"] = raw[: _EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[
        :_EXCERPT_CHARS
    ]
    return summary


def _short_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= _SUMMARY_FIELD_CHARS
    return value is None or isinstance(value, bool | int | float)
