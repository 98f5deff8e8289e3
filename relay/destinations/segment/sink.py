"""Segment HTTP Tracking API sink: `POST /v1/batch` with the destination's write key."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from relay.codec import encode
from relay.destinations.batching import pack
from relay.destinations.limiter import Limiter
from relay.destinations.outcome import Dead, Outcome, Pause, Retry
from relay.destinations.segment.settings import SegmentDestination
from relay.destinations.sender import Sender, json_headers
from relay.destinations.transport import Transport
from relay.mapping import Rejection
from relay.mapping.to_segment import map_webhook
from relay.metrics import Metrics
from relay.outgoing import OutgoingRequest
from relay.routing.edits import Edits
from relay.routing.language import CUSTOMERIO
from relay.store.base import Delivery

MAX_MESSAGE_BYTES = 32 * 1024
# Segment documents 500 KB; its libraries count that as 500,000 bytes, so do we.
MAX_BATCH_BYTES = 500_000
_OVERHEAD = len(b'{"batch":[],"sentAt":"2000-01-01T00:00:00.000Z"}')


def iso_now(now: float) -> str:
    return (
        datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def plan_batches(
    messages: Sequence[dict[str, Any]], batch_size: int
) -> tuple[list[list[int]], dict[int, str]]:
    """Indexes of messages per request, and the messages too large to send (with why)."""
    sizes: list[tuple[int, int]] = []
    sendable: list[int] = []
    too_large: dict[int, str] = {}
    for i, message in enumerate(messages):
        size = len(encode(message))
        if size > MAX_MESSAGE_BYTES:
            too_large[i] = (
                f"the Segment message is {size} bytes, over Segment's limit of"
                f" {MAX_MESSAGE_BYTES} bytes per message"
            )
            continue
        sendable.append(i)
        sizes.append((1, size))
    groups = pack(sizes, min(batch_size, 2500), MAX_BATCH_BYTES, _OVERHEAD)
    return [[sendable[i] for i in r] for r in groups], too_large


def batch_request(messages: Sequence[dict[str, Any]], now: float) -> OutgoingRequest:
    # sentAt is the real send time: Segment corrects timestamps with it.
    return OutgoingRequest("POST", "/v1/batch", {"batch": list(messages), "sentAt": iso_now(now)})


def segment_message(delivery: Delivery) -> dict[str, Any] | str:
    """The Segment message a delivery stands for, or why there is none: a Segment message as
    stored; a Customer.io webhook mapped now, with the property profile and route edits it
    was accepted with (see relay.intake.webhook_delivery)."""
    message = delivery.message
    if delivery.kind != CUSTOMERIO or "webhook" not in message:
        return message  # a Segment message (or a webhook mapped when it was accepted)
    mapped = map_webhook(
        message["webhook"], received_at=delivery.created_at, profile=message["profile"]
    )
    if isinstance(mapped, Rejection):
        return f"the webhook cannot be mapped to a Segment event: {mapped.reason}"
    edits = message.get("edits")
    return mapped if not edits else Edits.from_spec(edits).apply(mapped)


class SegmentSink:
    def __init__(
        self,
        dest: SegmentDestination,
        transport: Transport,
        limiter: Limiter,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dest = dest
        headers = json_headers(dest.write_key)
        self.sender = Sender(
            dest.key, dest.base_url, headers, dest.timeout, transport, limiter, metrics, clock
        )

    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        sendable: list[Delivery] = []
        messages: list[dict[str, Any]] = []
        for d in deliveries:
            message = segment_message(d)
            if isinstance(message, str):
                outcomes[d.id] = Dead(message)
            else:
                sendable.append(d)
                messages.append(message)
        groups, too_large = plan_batches(messages, self.dest.batch_size)
        outcomes.update({sendable[i].id: Dead(r) for i, r in too_large.items()})
        for group in groups:
            members = [sendable[i] for i in group]
            # Built once the limiter lets it go: `sentAt` is the moment it is really sent.
            outcome, _ = await self.sender.send(
                functools.partial(batch_request, [messages[i] for i in group])
            )
            for d in members:
                outcomes[d.id] = outcome
            if isinstance(outcome, Retry | Pause):
                # The destination is failing: the rest wait (Hold) while its worker probes it.
                break
        return outcomes
