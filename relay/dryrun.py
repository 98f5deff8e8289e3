"""`relay routes test`: what each message would become, with no network and no disk.

Each message runs through relay's own pipeline, not a copy of it: the source's checks (as an
item of a batch, or a webhook), the intake (routing and the route's edits) into an in-memory
store, then each destination's sink, leasing from that store and sending through a transport
that records the requests instead of sending them. What is shown is therefore what relay
sends. Send-time values (`sentAt`, the received time that stands in for a missing
timestamp) use `now`, and a message without a `messageId` gets one made from its index, so
a given `now` gives the same output.

Each request is shown whole, headers included, except that the credentials in its
Authorization header are replaced by a description of them: the sinks are built with blank
credentials, so the output never holds a secret.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from typing import Any

from relay.codec import decode, encode
from relay.config import Config
from relay.delivery import Sink
from relay.destinations.limiter import DestinationLimiter
from relay.destinations.outcome import Dead, Skipped
from relay.destinations.registry import Destination, type_of
from relay.destinations.transport import RecordingTransport, Sent
from relay.intake import Incoming, Intake
from relay.metrics import Metrics
from relay.routing import CUSTOMERIO, SEGMENT, Routes
from relay.runtime import run as run_loop
from relay.sources.customerio.webhooks import CustomerIOWebhooks
from relay.sources.segment.api import SegmentAPI
from relay.store.memory import MemoryStore
from relay.vocab import customerio as cio
from relay.vocab import segment as seg

UNROUTED_NOTE = (
    "matches no route: relay accepts it, counts it in relay_unrouted_events_total{kind,source}"
    " and delivers it nowhere"
)

# Top-level fields only Customer.io webhooks have, and fields of a webhook's `data`: a
# message with one of these is a webhook even when its event_id is missing, so that what is
# reported is the missing event_id, not a Segment message without a type.
_WEBHOOK_FIELDS = cio.FIELDS - seg.FIELDS - {"data"}
_WEBHOOK_DATA_FIELDS = (
    "delivery_id",
    "customer_id",
    "identifiers",
    "email_address",
    "campaign_id",
    "action_id",
    "broadcast_id",
    "newsletter_id",
    "transactional_message_id",
    "journey_id",
)
# No throttling: nothing is sent.
_UNLIMITED = 1e9


def looks_like_customerio(message: Any) -> bool:
    """Whether a message is a Customer.io reporting webhook rather than a Segment message,
    judged by its shape (Segment messages have a `type` and none of the webhook's fields)."""
    if not isinstance(message, dict):
        return False
    if any(name in message for name in _WEBHOOK_FIELDS):
        return True
    data = message.get("data")
    return (
        "type" not in message
        and isinstance(data, dict)
        and any(name in data for name in _WEBHOOK_DATA_FIELDS)
    )


def choose_sources(config: Config, source: str | None) -> dict[str, str | None]:
    """The source each direction's messages are taken to come from.

    By default the first source the config declares for that direction (Segment's
    Webhooks destination, `webhook`, when no write key is declared). A `source` applies to
    the direction(s) it belongs to; raises ValueError when it is no configured source.
    """
    seg_names = config.sources.segment.route_names
    cio_names = config.sources.customerio.route_names
    chosen: dict[str, str | None] = {
        SEGMENT: seg_names[0],
        CUSTOMERIO: cio_names[0] if cio_names else None,
    }
    if source is None:
        return chosen
    if source not in seg_names and source not in cio_names:
        known = ", ".join([*seg_names, *cio_names])
        raise ValueError(f'--source: no source is named "{source}" (configured: {known})')
    if source in seg_names:
        chosen[SEGMENT] = source
    if source in cio_names:
        chosen[CUSTOMERIO] = source
    return chosen


def dry_run(
    config: Config,
    routes: Routes,
    messages: Sequence[Any],
    now: float,
    *,
    source: str | None = None,
) -> list[dict[str, Any]]:
    """One entry per message: its routes and, per destination, the exact requests."""
    return run_loop(dry_run_async(config, routes, messages, now, source=source))


async def dry_run_async(
    config: Config,
    routes: Routes,
    messages: Sequence[Any],
    now: float,
    *,
    source: str | None = None,
) -> list[dict[str, Any]]:
    """`dry_run`, on the running event loop."""
    sources = choose_sources(config, source)
    transport = RecordingTransport()
    metrics = Metrics()
    sinks = {key: _sink(dest, transport, metrics, now) for key, dest in config.destinations.items()}
    return [
        await _one(config, routes, sinks, transport, metrics, index, message, now, sources)
        for index, message in enumerate(messages)
    ]


def _sink(dest: Destination, transport: RecordingTransport, metrics: Metrics, now: float) -> Sink:
    kind = type_of(dest)
    blank = kind.without_credentials(dest)
    return kind.sink(blank, transport, DestinationLimiter(_UNLIMITED), metrics, lambda: now)


async def _one(
    config: Config,
    routes: Routes,
    sinks: dict[str, Sink],
    transport: RecordingTransport,
    metrics: Metrics,
    index: int,
    message: Any,
    now: float,
    sources: dict[str, str | None],
) -> dict[str, Any]:
    kind = CUSTOMERIO if looks_like_customerio(message) else SEGMENT
    source = sources[kind]
    entry: dict[str, Any] = {"index": index, "kind": kind, "source": source}
    if source is None:
        entry["rejected"] = (
            "relay would refuse it: no Customer.io signing key is configured"
            " (sources.customerio.signing_keys)"
        )
        return entry
    # A store of its own for each message: each is shown as if it came alone.
    store = MemoryStore()
    await store.open()
    intake = Intake(
        store,
        routes,
        metrics,
        dedup_windows={},
        clock=lambda: now,
        # relay gives such a message a random id at the door; this stands in for it.
        new_message_id=lambda: f"relay-{uuid.UUID(int=index)}",
    )
    if kind == CUSTOMERIO:
        taken: Incoming | str = CustomerIOWebhooks(intake, config.sources.customerio).incoming(
            encode(message), now
        )
    else:
        api = SegmentAPI(intake, config.sources.segment)
        taken = api.item_incoming(copy.deepcopy(message))
    if isinstance(taken, str):
        entry["rejected"] = taken
        return entry
    if taken.rejected_reason is not None:
        entry["rejected"] = taken.rejected_reason
        return entry
    await intake.accept(kind, source, [taken])

    result = routes.route(kind, source, taken.message)
    entry["routes"] = [r.name for r in result.matched]
    entry["deliveries"] = [
        await _delivery(config, store, sinks[destination], transport, destination, route.name, now)
        for destination, route in result.deliveries
    ]
    if result.suppressed:
        entry["suppressed"] = [
            {
                "destination": destination,
                "route": route.name,
                "reason": "the message's integrations turn Customer.io off",
            }
            for destination, route in result.suppressed
        ]
    if not result.matched:
        entry["note"] = UNROUTED_NOTE
    return entry


async def _delivery(
    config: Config,
    store: MemoryStore,
    sink: Sink,
    transport: RecordingTransport,
    destination: str,
    route: str,
    now: float,
) -> dict[str, Any]:
    dest = config.destinations[destination]
    item: dict[str, Any] = {"destination": destination, "route": route}
    [delivery] = await store.lease(destination, 1, now)
    outcome = (await sink.deliver([delivery]))[delivery.id]
    sent = transport.take()
    if isinstance(outcome, Dead):
        item["rejected"] = outcome.reason
        return item
    if isinstance(outcome, Skipped):
        item["skipped"] = outcome.reason
    item["requests"] = [_shown(dest, request) for request in sent]
    return item


def _shown(dest: Destination, request: Sent) -> dict[str, Any]:
    headers = dict(request.headers)
    if "Authorization" in headers:
        headers["Authorization"] = type_of(dest).credentials_shown(dest)
    return {
        "method": request.method,
        "url": request.url,
        "path": request.url.removeprefix(dest.base_url),
        "headers": headers,
        "body": None if request.body is None else decode(request.body),
    }
