"""The door every accepted message goes through: route it, then store it durably.

Routing happens here, at acceptance, so an accepted event's destinations are fixed by the
routes in force when it was acknowledged (a reload never re-routes what is queued).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from relay.codec import encode
from relay.metrics import Metrics
from relay.routing import SEGMENT, Routes, RoutingResult
from relay.store.base import (
    AlikeEvents,
    EnqueueOutcome,
    EventTuple,
    NewDelivery,
    Store,
    distinct_deliveries,
)
from relay.vocab import segment as seg


@dataclass(slots=True)
class Incoming:
    """A message from a source, ready to be routed."""

    message: dict[str, Any]
    ordering_key: str
    dedup_id: str | None
    # A Customer.io webhook, mapped to Segment with this property profile at delivery (see
    # webhook_delivery); None for Segment messages.
    webhook_profile: str | None = None
    rejected_reason: str | None = None
    encoded: bytes | None = None  # `message` as JSON, when the source already encoded it


# A plain message of a Segment batch (relay.sources.segment.plain_batches), in a plain tuple
# (one is made for every message): the bytes it arrived as, its person's key, its messageId,
# and what routing reads of it (the whole message decoded, where routes read messages; else
# its `integrations` alone, or None where it has none: such messages all route alike, and
# are routed once a request). Intake.accept_plain stores them.
PlainMessage = tuple[bytes, str, str, dict[str, Any] | None]


def webhook_delivery(
    webhook: dict[str, Any], profile: str, edits: dict[str, Any] | None
) -> dict[str, Any]:
    """What a Customer.io webhook's delivery holds: the webhook as it came, the property
    profile and the edits of its route, all in force when it was accepted. The Segment sink
    maps it when it delivers it, so a fix to the mapping reaches what is queued."""
    return {"webhook": webhook, "profile": profile, "edits": edits}


def _stored_json(item: Incoming) -> bytes:
    try:
        return encode(item.message)
    except ValueError:
        if item.rejected_reason is None:
            raise
        # A rejected message is kept for people to look at; one that cannot be written as
        # JSON (nested too deeply) is kept as a note instead, with its reason beside it.
        return encode({"body": "(not kept: it cannot be written as JSON)"})


class Intake:
    def __init__(
        self,
        store: Store,
        routes: Routes,
        metrics: Metrics,
        *,
        dedup_windows: dict[str, float],
        notify: Callable[[set[str]], None] = lambda _d: None,
        clock: Callable[[], float] = time.time,
        new_message_id: Callable[[], str] = lambda: f"relay-{uuid.uuid4()}",
        observe: Callable[[str, str, Sequence[EventTuple], list[EnqueueOutcome]], None]
        | None = None,
    ) -> None:
        self.store = store
        self.routes = routes
        self.metrics = metrics
        self.dedup_windows = dedup_windows
        self.notify = notify
        self.clock = clock
        self.new_message_id = new_message_id
        # Shown what was accepted (the live tail): kind, source, events, outcomes.
        self.observe = observe

    def segment_incoming(self, msg: dict[str, Any], encoded: bytes | None = None) -> Incoming:
        message_id = msg.get("messageId")
        if not isinstance(message_id, str) or not message_id:
            # A stored id keeps the derived Customer.io event id stable across retries.
            msg["messageId"] = self.new_message_id()
            return Incoming(msg, seg.ordering_key(msg), None)
        return Incoming(msg, seg.ordering_key(msg), message_id, encoded=encoded)

    def build(self, kind: str, source: str, item: Incoming, received_at: float) -> EventTuple:
        """The stored form of one message, with a delivery per destination it is routed to:
        a NewEvent's fields, in a plain tuple (see relay.store.base.EventTuple)."""
        deliveries: tuple[NewDelivery, ...] = ()
        if item.rejected_reason is None:  # a rejected message is stored, never routed
            if item.webhook_profile is not None:
                result = self.routes.route(kind, source, item.message)
                deliveries = self._webhook_deliveries(result, item, item.webhook_profile)
            else:
                deliveries = self._routed(kind, source, item.message)
        return (
            source,
            kind,
            item.encoded if item.encoded is not None else _stored_json(item),
            received_at,
            item.ordering_key,
            deliveries,
            item.dedup_id,
            received_at + self.dedup_windows.get(kind, 86400.0),
            item.rejected_reason,
        )

    def _routed(self, kind: str, source: str, message: dict[str, Any]) -> tuple[NewDelivery, ...]:
        """A message's deliveries, one per destination it is routed to."""
        result = self.routes.route(kind, source, message)
        # `memo`: the deliveries of a result whose routes reshape nothing, the same for every
        # message routed to it; False when its routes reshape messages.
        memo = result.memo
        if memo is None:
            if any(route.has_edits for _, route in result.deliveries):
                memo = result.memo = False
            else:
                memo = result.memo = tuple(NewDelivery(d) for d, _ in result.deliveries)
        if memo is False:
            return self._edited(result, message)
        deliveries: tuple[NewDelivery, ...] = memo
        return deliveries

    def _edited(self, result: RoutingResult, message: dict[str, Any]) -> tuple[NewDelivery, ...]:
        """Each destination's message: the event's own one where its route changes nothing."""
        deliveries = []
        for destination, route in result.deliveries:
            edited = route.edit(message)
            if edited is message:
                deliveries.append(NewDelivery(destination))
            else:
                deliveries.append(NewDelivery(destination, encode(edited)))
        return tuple(deliveries)

    @staticmethod
    def _webhook_deliveries(
        result: RoutingResult, item: Incoming, profile: str
    ) -> tuple[NewDelivery, ...]:
        return tuple(
            NewDelivery(
                destination, encode(webhook_delivery(item.message, profile, route.edits_spec))
            )
            for destination, route in result.deliveries
        )

    async def accept(self, kind: str, source: str, items: list[Incoming]) -> list[EnqueueOutcome]:
        """Route and durably store; returns once every item is committed (or refused)."""
        received_at = self.clock()
        events = [self.build(kind, source, item, received_at) for item in items]
        return await self._store(kind, source, events)

    async def accept_plain(
        self, source: str, items: Sequence[PlainMessage]
    ) -> list[EnqueueOutcome]:
        """`accept` for the plain messages of a Segment batch."""
        return await self._store(SEGMENT, source, self.build_plain(source, items, self.clock()))

    def build_plain(
        self, source: str, items: Sequence[PlainMessage], received_at: float
    ) -> Sequence[EventTuple]:
        """What `build` makes of each of the plain messages of a Segment batch, without an
        `Incoming` each: their checks were made as they were read. Those without a view to
        route (nearly all) are routed once for all: where every one is, they are
        AlikeEvents, their fields a column each; else a tuple display each."""
        until = received_at + self.dedup_windows.get(SEGMENT, 86400.0)
        messages, keys, ids, views = zip(*items, strict=True) if items else ((), (), (), ())
        if views.count(None) == len(views):
            routed = self._routed(SEGMENT, source, {})
            return AlikeEvents(source, SEGMENT, received_at, routed, until, messages, keys, ids)
        alike: tuple[NewDelivery, ...] | None = None
        events: list[EventTuple] = []
        for data, key, message_id, view in items:
            if view is not None:
                deliveries = self._routed(SEGMENT, source, view)
            elif alike is not None:
                deliveries = alike
            else:
                deliveries = alike = self._routed(SEGMENT, source, {})
            events.append(
                (source, SEGMENT, data, received_at, key, deliveries, message_id, until, None)
            )
        return events

    async def _store(
        self, kind: str, source: str, events: Sequence[EventTuple]
    ) -> list[EnqueueOutcome]:
        outcomes = await self.store.enqueue(events)
        destinations: set[str] = set()
        unrouted = 0  # accepted (not a duplicate, not rejected) but matched by no route
        queued = outcomes.count("queued")
        if queued == len(outcomes):  # the usual request: every event new and routed
            tally = {"queued": queued}
            routed = distinct_deliveries(events)
            for deliveries in routed:
                destinations.update(destination for destination, _ in deliveries)
            if not all(routed):
                unrouted = sum(not e[5] for e in events)
        else:
            tally = {}
            for event, outcome in zip(events, outcomes, strict=True):
                tally[outcome] = tally.get(outcome, 0) + 1
                if outcome == "queued":
                    if not event[5]:
                        unrouted += 1
                    destinations.update(destination for destination, _ in event[5])
        for name, count in tally.items():
            self.metrics.received.labels(kind, source, name).inc(count)
        if unrouted:
            self.metrics.unrouted.labels(kind, source).inc(unrouted)
        if destinations:
            self.notify(destinations)
        if self.observe is not None:
            self.observe(kind, source, events, outcomes)
        return outcomes
