"""`relay routes test`: what each message would become, with no network and no store.

Each message goes through the same steps as at the door and in the delivery workers:
validation, routing (with the source it would come from), the route's edits, and the
mapping to the destination's requests. Send-time values (`sentAt`, the received time that
stands in for a missing timestamp) use `now`, so a given `now` gives the same output.

Each request is shown whole, headers included, except that the credentials in its
Authorization header are replaced by a description of them: the output never holds a secret.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from typing import Any

from relay.codec import encode
from relay.config import SEGMENT_WEBHOOK_SOURCE, Config, CustomerIODestination, Destination
from relay.mapping import Rejection, Skip
from relay.mapping.to_segment import map_webhook
from relay.outgoing import OutgoingRequest
from relay.routing import CUSTOMERIO, SEGMENT, Routes
from relay.sinks import customerio, segment
from relay.sinks.sender import json_headers
from relay.vocab import segment as seg

UNROUTED_NOTE = (
    "matches no route: relay accepts it, counts it in relay_unrouted_events_total{kind,source}"
    " and delivers it nowhere"
)

# Top-level fields only Customer.io webhooks have, and fields of a webhook's `data`: a
# message with one of these is a webhook even when its event_id is missing, so that what is
# reported is the missing event_id, not a Segment message without a type.
_WEBHOOK_FIELDS = ("event_id", "object_type", "metric", "event_type")
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
_ACCEPT_JSON = {"Accept": "application/json"}


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


def segment_sources(config: Config) -> list[str]:
    names = list(config.segment_sources or config.segment_write_keys)
    return [*names, SEGMENT_WEBHOOK_SOURCE]


def customerio_sources(config: Config) -> list[str]:
    return list(config.customerio_sources or config.customerio_signing_keys)


def choose_sources(config: Config, source: str | None) -> dict[str, str | None]:
    """The source each direction's messages are taken to come from.

    By default the first source the config declares for that direction (Segment's
    Webhooks destination, `webhook`, when no write key is declared). A `source` applies to
    the direction(s) it belongs to; raises ValueError when it is no configured source.
    """
    seg_names = segment_sources(config)
    cio_names = customerio_sources(config)
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
    sources = choose_sources(config, source)
    return [
        _one(config, routes, index, message, now, sources) for index, message in enumerate(messages)
    ]


def _one(
    config: Config,
    routes: Routes,
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
    if kind == CUSTOMERIO:
        mapped = map_webhook(message, received_at=now, profile=config.customerio_profile)
        if isinstance(mapped, Rejection):
            entry["rejected"] = mapped.reason
            return entry
        deliverable: dict[str, Any] = mapped
    else:
        problem = seg.message_problem(message)
        if problem is None:
            message = seg.normalise(copy.deepcopy(message))
            if not isinstance(message.get("messageId"), str) or not message["messageId"]:
                # relay gives such a message a random id at the door; this stands in for it.
                message["messageId"] = f"relay-{uuid.UUID(int=index)}"
            size = len(encode(message))
            if size > seg.MAX_MESSAGE_BYTES:
                problem = f"the message is larger than {seg.MAX_MESSAGE_BYTES // 1024} KB"
        if problem is not None:
            entry["rejected"] = problem
            return entry
        deliverable = message

    result = routes.route(kind, source, message)
    entry["routes"] = [r.name for r in result.matched]
    entry["deliveries"] = [
        _delivery(config, destination, route.name, route.edit(deliverable), now)
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


def _delivery(
    config: Config, destination: str, route: str, message: dict[str, Any], now: float
) -> dict[str, Any]:
    dest = config.destinations[destination]
    item: dict[str, Any] = {"destination": destination, "route": route}
    if isinstance(dest, CustomerIODestination):
        requests = customerio.requests_for([message], dest, now)
        if isinstance(requests, Rejection):
            item["rejected"] = requests.reason
            return item
        if isinstance(requests, Skip):
            item["skipped"] = requests.reason
            item["requests"] = []
            return item
    else:
        _groups, too_large = segment.plan_batches([message], dest.batch_size)
        if too_large:
            item["rejected"] = too_large[0]
            return item
        requests = [segment.batch_request([message], now)]
    headers = request_headers(dest)
    item["requests"] = [_request(dest.base_url, headers, r) for r in requests]
    return item


def request_headers(dest: Destination) -> dict[str, str]:
    """The headers the destination's sink sends, with the credentials described, not shown."""
    # The sinks' own header builder, given no credentials: only Authorization differs.
    if isinstance(dest, CustomerIODestination):
        headers = {**json_headers("", ""), **_ACCEPT_JSON}
        headers["Authorization"] = f"Basic <site_id:api_key of {dest.key}>"
    else:
        headers = json_headers("")
        headers["Authorization"] = f"Basic <write_key of {dest.key}>"
    return headers


def _request(base_url: str, headers: dict[str, str], request: OutgoingRequest) -> dict[str, Any]:
    return {
        "method": request.method,
        "url": base_url + request.path,
        "path": request.path,
        "headers": dict(headers),
        "body": request.body,
    }
