"""Segment's HTTP Tracking API (`/v1/*`), the settings analytics.js loads, and Segment's
Webhooks destination, as aiohttp handlers."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from aiohttp import web

from relay.codec import decode, encode
from relay.errors import BadRequest, NotFound, PayloadTooLarge, Unauthorized
from relay.intake import Incoming, Intake
from relay.signatures import verify_segment_webhook
from relay.sources.body import read_body
from relay.sources.segment import cdn_settings
from relay.sources.segment.plain_batches import plain_batch
from relay.sources.segment.settings import WEBHOOK_SOURCE, SegmentSource
from relay.vocab import segment as seg


def _ok(rejected: list[dict[str, Any]] | None = None) -> web.Response:
    if not rejected:
        return web.json_response({"success": True})
    return web.json_response({"success": True, "rejected": rejected})


class WriteKeys:
    """Accepted write keys by source; compared in constant time, never logged."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [(name, key.encode()) for name, key in keys.items()]

    def source_for(self, candidate: str | None) -> str | None:
        if candidate is None:
            return None
        # surrogatepass: a key that is not Unicode (from a `\\ud800` escape) matches none.
        given = candidate.encode("utf-8", "surrogatepass")
        found = None
        for name, key in self._keys:  # no early exit: timing must not depend on the match
            if hmac.compare_digest(given, key) and found is None:
                found = name
        return found


def _basic_user(header: str | None) -> str | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    # Libraries send "<writeKey>:"; some send the key alone, without the colon.
    return decoded.split(":", 1)[0]


def _encoded(msg: dict[str, Any]) -> bytes:
    """The message as it is stored; 400 for one that cannot be written as JSON again."""
    try:
        return encode(msg)
    except ValueError as exc:
        raise BadRequest(f"the message cannot be stored: {exc}") from None


def _parse_json(raw: bytes) -> Any:
    try:
        return decode(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


class SegmentAPI:
    def __init__(self, intake: Intake, settings: SegmentSource) -> None:
        self.intake = intake
        self.configure(settings)

    def configure(self, settings: SegmentSource) -> None:
        """Take new write keys and webhook secret (a reload), in one step."""
        self.write_keys = WriteKeys(settings.write_keys)
        self.webhook_secret = settings.webhook_secret
        self.public_address = (
            None
            if settings.public_url is None
            else cdn_settings.from_public_url(settings.public_url)
        )
        self.trust_forwarded_headers = settings.trust_forwarded_headers

    def routes(self) -> list[web.RouteDef]:
        defs = []
        for mtype in seg.TYPES:
            if mtype != "delete":
                defs.append(web.post(f"/v1/{mtype}", self._single_handler(mtype)))
        for short, mtype in seg.SHORT_PATHS.items():
            defs.append(web.post(f"/v1/{short}", self._single_handler(mtype)))
        for path in seg.BATCH_PATHS:
            defs.append(web.post(f"/v1/{path}", self.batch))
        defs.append(web.post("/webhooks/segment", self.webhook))
        defs.append(web.get(cdn_settings.SETTINGS_PATH, self.cdn_settings))
        return defs

    async def cdn_settings(self, request: web.Request) -> web.Response:
        """What analytics.js loads before it sends anything, when its `cdnURL` is relay."""
        write_key = request.match_info["writeKey"]
        if self.write_keys.source_for(write_key) is None:
            # The key is not repeated: a page's typo is its own, but it is not relay's to echo.
            raise NotFound(
                "no Segment source has this write key: give AnalyticsBrowser.load the writeKey"
                " of one of sources.segment.write_keys"
            )
        vary = None
        address = self.public_address
        if address is None:
            found = cdn_settings.from_request(
                request.scheme,
                request.headers.get("Host"),
                request.headers.get("X-Forwarded-Proto"),
                request.headers.get("X-Forwarded-Host"),
                trust_forwarded=self.trust_forwarded_headers,
            )
            if isinstance(found, str):
                raise BadRequest(found)
            address = found
            # A cache in front of relay must not hand one host's answer to another.
            vary = (
                "Host, X-Forwarded-Proto, X-Forwarded-Host"
                if self.trust_forwarded_headers
                else "Host"
            )
        headers = {"Cache-Control": f"public, max-age={cdn_settings.MAX_AGE_SECONDS}"}
        if vary is not None:
            headers["Vary"] = vary
        return web.json_response(cdn_settings.document(write_key, address), headers=headers)

    def _authenticate(self, request: web.Request, body: Any) -> str:
        return self._source_for(request, body.get("writeKey") if isinstance(body, dict) else None)

    def _source_for(self, request: web.Request, body_key: Any) -> str:
        header = request.headers.get("Authorization")
        for candidate in (_basic_user(header), body_key if isinstance(body_key, str) else None):
            source = self.write_keys.source_for(candidate)
            if source is not None:
                return source
        if header is None and body_key is None:
            raise Unauthorized(
                "no write key: send it as HTTP Basic user (Authorization: Basic"
                " base64(writeKey + ':')) or as \"writeKey\" in the body"
            )
        raise Unauthorized("the write key is not one of sources.segment.write_keys")

    def _single_handler(self, mtype: str):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> web.Response:
            raw = await read_body(request, seg.MAX_MESSAGE_BYTES, "a single message")
            body = _parse_json(raw)
            source = self._authenticate(request, body)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object (one Segment message)")
            body["type"] = mtype  # the path decides the call type, as Segment's API does
            problem = seg.message_problem(body)
            if problem:
                raise BadRequest(problem)
            body = seg.normalise(body)
            await self.intake.accept(
                "segment", source, [self.intake.segment_incoming(body, _encoded(body))]
            )
            return _ok()

        return handler

    async def batch(self, request: web.Request) -> web.Response:
        raw = await read_body(request, seg.MAX_BATCH_BYTES, "a batch")
        # Plain messages are stored as they came (see relay.sources.segment.plain_batches).
        plain = plain_batch(raw, decoded=self.intake.routes.reads_messages("segment"))
        if plain is not None:
            source = self._source_for(request, plain.write_key)
            if plain.every_one_plain:  # the usual batch
                if plain.items:
                    await self.intake.accept_plain(source, plain.items)
                return _ok()
            incoming, rejected = self._explode(plain.items, None)
            if incoming:
                await self.intake.accept("segment", source, incoming)
            return _ok(rejected)
        body = _parse_json(raw)
        source = self._authenticate(request, body)
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            raise BadRequest('the body must be a JSON object with a "batch" array of messages')
        items = body["batch"]
        if len(items) > seg.MAX_BATCH_MESSAGES:
            raise BadRequest(
                f"a batch holds at most {seg.MAX_BATCH_MESSAGES} messages, this one has"
                f" {len(items)}; split it"
            )
        incoming, rejected = self._explode(items, body)
        if incoming:
            await self.intake.accept("segment", source, incoming)
        return _ok(rejected)

    def _explode(
        self, items: list[Any], body: dict[str, Any] | None
    ) -> tuple[list[Incoming], list[dict[str, Any]]]:
        incoming: list[Incoming] = []
        rejected: list[dict[str, Any]] = []
        defaults = body if body is not None and seg.has_batch_defaults(body) else None
        for index, item in enumerate(items):
            # A plain message (see plain_batch), read already; a decoded item is never a tuple.
            if type(item) is tuple:
                data, key, message_id, view = item
                incoming.append(
                    Incoming({} if view is None else view, key, message_id, None, None, data)
                )
                continue
            if defaults is not None and isinstance(item, dict):
                item = seg.merge_batch_defaults(item, defaults)
            taken = self.item_incoming(item)
            if isinstance(taken, str):
                reason = f"batch[{index}]: {taken}"
                rejected.append({"index": index, "reason": reason})
                if isinstance(item, dict):
                    item.pop("writeKey", None)  # kept for people to look at, without the key
                stored = item if isinstance(item, dict) else {"value": item}
                incoming.append(
                    Incoming(
                        stored,
                        seg.ordering_key(stored) if isinstance(item, dict) else "",
                        None,
                        rejected_reason=reason,
                    )
                )
                continue
            incoming.append(taken)
        return incoming, rejected

    def item_incoming(self, item: Any) -> Incoming | str:
        """One message of a batch as it is taken, or why it is not (`relay routes test`
        takes each of its messages this way too)."""
        problem = seg.message_problem(item)
        if problem is not None:
            return problem
        try:
            encoded = encode(seg.normalise(item))
        except ValueError as exc:
            return f"the message cannot be stored: {exc}"
        if len(encoded) > seg.MAX_MESSAGE_BYTES:
            return f"the message is larger than {seg.MAX_MESSAGE_BYTES // 1024} KB"
        return self.intake.segment_incoming(item, encoded)

    async def webhook(self, request: web.Request) -> web.Response:
        raw = await read_body(request, seg.MAX_BATCH_BYTES, "a webhook")
        if self.webhook_secret is not None and not verify_segment_webhook(
            self.webhook_secret, raw, request.headers.get("X-Signature")
        ):
            raise Unauthorized(
                "X-Signature is missing or does not match sources.segment.webhook_secret"
            )
        body = _parse_json(raw)
        if isinstance(body, dict):
            problem = seg.message_problem(body)
            if problem:
                raise BadRequest(problem)
            if len(raw) > seg.MAX_MESSAGE_BYTES:
                raise PayloadTooLarge(
                    f"a message must be at most {seg.MAX_MESSAGE_BYTES // 1024} KB"
                )
            body = seg.normalise(body)
            incoming = [self.intake.segment_incoming(body, _encoded(body))]
            rejected: list[dict[str, Any]] = []
        elif isinstance(body, list):
            incoming, rejected = self._explode(body, None)
        else:
            raise BadRequest("the body must be a Segment message (an object) or an array of them")
        if incoming:
            await self.intake.accept("segment", WEBHOOK_SOURCE, incoming)
        return _ok(rejected)
