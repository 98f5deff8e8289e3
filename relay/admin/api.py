"""What operators ask a running relay, over its admin endpoint: dead letters (list, show,
replay, discard) and imports. `relay dlq` and `relay import` call these through HTTP while a
relay serves, and the same methods directly on the store when none does, so both ways give
the same answers."""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from relay.codec import decode
from relay.errors import BadRequest, NotFound
from relay.sources.body import read_body
from relay.store.base import DeadLetter, DeadLetterFilter

if TYPE_CHECKING:
    from relay.app import Relay

# What one import request may hold: the CLI sends chunks well under both.
IMPORT_MAX_MESSAGES = 1000
IMPORT_MAX_BYTES = 64 * 1024 * 1024


def iso(t: float) -> str:
    """A unix time as ISO 8601 in UTC, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as operators see it (JSON lines of `relay dlq list`, `show`)."""
    return {
        "id": letter.ref,
        "destination": letter.destination,
        "source": letter.source,
        "kind": letter.kind,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "queued_at": iso(letter.created_at),
        "dead_at": iso(letter.dead_at),
        "history": [{"at": iso(at), "error": error} for at, error in letter.history],
        "message": letter.message,
    }


def parse_ref(ref: str) -> tuple[str, int]:
    """("delivery" | "rejected", id) from an operator's name for a dead letter."""
    text = ref.strip()
    kind = "delivery"
    if text[:1] in ("r", "R"):
        kind, text = "rejected", text[1:]
    if not text.isdigit():
        raise BadRequest(
            f"{ref!r} is not a dead letter's id: write a delivery's number (17), or r and the"
            " number of a rejected message (r3), as `relay dlq list` shows them"
        )
    return kind, int(text)


def _number(query: Mapping[str, str], name: str) -> float | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a unix time in seconds, not {value!r}") from None


def filter_from_query(query: Mapping[str, str], ids: list[str]) -> DeadLetterFilter:
    """The dead letters a request names: ids (`id`, repeated), or conditions (`destination`,
    `reason`, `since`, `until`), and `limit`."""
    limit_text = query.get("limit")
    limit = None
    if limit_text:
        if not limit_text.isdigit():
            raise BadRequest(f"limit must be a whole number, not {limit_text!r}")
        limit = int(limit_text)
    deliveries: list[int] = []
    rejected: list[int] = []
    for ref in ids:
        kind, number = parse_ref(ref)
        (deliveries if kind == "delivery" else rejected).append(number)
    return DeadLetterFilter(
        ids=tuple(deliveries) if ids else None,
        rejected_ids=tuple(rejected) if ids else None,
        destination=query.get("destination") or None,
        reason=query.get("reason") or None,
        since=_number(query, "since"),
        until=_number(query, "until"),
        limit=limit,
    )


def selects_something(which: DeadLetterFilter, everything: bool) -> bool:
    """Replaying or deleting needs ids, a condition, or an explicit `all`."""
    return everything or which.by_id or which != DeadLetterFilter(limit=which.limit)


class Admin:
    """The operator's calls, on one relay (running, or with only its store open)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def dead_letters(self, which: DeadLetterFilter) -> list[dict[str, Any]]:
        return [letter_json(d) for d in await self.relay.store.dead_letters(which)]

    async def dead_letter(self, ref: str) -> dict[str, Any]:
        kind, number = parse_ref(ref)
        one = (
            DeadLetterFilter(ids=(number,))
            if kind == "delivery"
            else DeadLetterFilter(rejected_ids=(number,))
        )
        found = await self.relay.store.dead_letters(one)
        if not found:
            raise NotFound(f"there is no dead letter {ref} (relay dlq list shows those there are)")
        return letter_json(found[0])

    async def replay(self, which: DeadLetterFilter) -> int:
        """Back in the queue, sent again through each destination's throttled worker."""
        count = await self.relay.store.replay(which, self.relay.clock())
        if count:
            self.relay.notify(set(self.relay.workers))  # a worker with nothing due sleeps on
        return count

    async def discard(self, which: DeadLetterFilter) -> int:
        return await self.relay.store.discard(which)

    def import_source(self, name: str | None) -> str:
        names = self.relay.config.sources.segment.names
        if name is None:
            if not names:
                raise BadRequest(
                    "no Segment source is configured (sources.segment.write_keys): imported"
                    " messages need one to be routed from"
                )
            return names[0]
        if name not in names:
            raise BadRequest(
                f"there is no Segment source {name!r}; the configured ones are"
                f" {', '.join(names) or 'none'} (sources.segment.write_keys)"
            )
        return name

    async def import_messages(self, source: str, messages: list[Any]) -> list[dict[str, Any]]:
        """Each message taken as one item of a /v1/batch from `source` is (validated, routed,
        de-duplicated by messageId, stored); what became of each, in order. Messages that
        are not valid are reported, not stored: the importer says which line they came from."""
        api = self.relay.segment_api
        assert api is not None
        results: list[dict[str, Any]] = []
        taken = []
        for message in messages:
            item = api.item_incoming(message)
            if isinstance(item, str):
                results.append({"outcome": "refused", "reason": item})
            else:
                results.append({"outcome": ""})
                taken.append((len(results) - 1, item))
        if taken:
            outcomes = await self.relay.intake.accept("segment", source, [i for _, i in taken])
            for (index, _), outcome in zip(taken, outcomes, strict=True):
                results[index]["outcome"] = outcome
        return results

    # -------------------------------------------------------------------- over HTTP

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/dead-letters", self._list),
            web.get("/dead-letters/{ref}", self._show),
            web.post("/dead-letters/replay", self._replay),
            web.post("/dead-letters/discard", self._discard),
            web.post("/import", self._import),
        ]

    @staticmethod
    def _filter(request: web.Request) -> DeadLetterFilter:
        return filter_from_query(request.query, request.query.getall("id", []))

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"dead_letters": await self.dead_letters(self._filter(request))})

    async def _show(self, request: web.Request) -> web.Response:
        return web.json_response(await self.dead_letter(request.match_info["ref"]))

    def _chosen(self, request: web.Request) -> DeadLetterFilter:
        which = self._filter(request)
        if not selects_something(which, request.query.get("all") == "1"):
            raise BadRequest("name dead letters by id, or by a condition, or ask for all=1")
        return which

    async def _replay(self, request: web.Request) -> web.Response:
        return web.json_response({"replayed": await self.replay(self._chosen(request))})

    async def _discard(self, request: web.Request) -> web.Response:
        return web.json_response({"discarded": await self.discard(self._chosen(request))})

    async def _import(self, request: web.Request) -> web.Response:
        source = self.import_source(request.query.get("source"))
        raw = await read_body(request, IMPORT_MAX_BYTES, "an import")
        try:
            body = decode(raw)
        except ValueError as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or len(messages) > IMPORT_MAX_MESSAGES:
            raise BadRequest(
                f'the body must be {{"messages": [...]}} with at most {IMPORT_MAX_MESSAGES}'
            )
        return web.json_response({"results": await self.import_messages(source, messages)})


def token_middleware(token: str | None) -> Middleware:
    """Every admin request carries the token when one is set: `Authorization: Bearer T`, or
    Basic with T as the password (what a browser asks for on the status page)."""
    expected = None if token is None else token.encode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if expected is not None and not _carries(request.headers.get("Authorization"), expected):
            message = (
                "the admin endpoint needs its token (admin.token): send it as"
                " `Authorization: Bearer <token>`, or as the password of Basic auth"
            )
            return web.json_response(
                {"success": False, "code": "unauthorized", "message": message},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="relay admin"'},
            )
        return await handler(request)

    return check


def _carries(header: str | None, expected: bytes) -> bool:
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    given = b""
    if scheme.lower() == "bearer":
        given = value.strip().encode()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return False
    return hmac.compare_digest(given, expected)
