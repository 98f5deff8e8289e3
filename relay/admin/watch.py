"""What a running relay remembers of its recent work for people watching it: the last errors
and the delivery rate of each destination (for the status page), and a live tail of what
came in, which routes took it, and what went out (for `relay tail` and the page).

Nothing here is on the path a request waits for unless someone is tailing: messages are
summarised only then. What is shown never holds a secret: requests are shown without their
headers, messages as stored (write keys are dropped before that).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.codec import decode
from relay.destinations.transport import Response, Transport, TransportError
from relay.routing import Routes
from relay.store.base import EnqueueOutcome, EventTuple, NewEvent

RECENT_ERRORS = 10
# Delivered totals sampled every SAMPLE_SECONDS, for RATE_SAMPLES samples (10 minutes).
SAMPLE_SECONDS = 5.0
RATE_SAMPLES = 120
# A tail that is not read fast enough loses its oldest events, never slows relay down.
TAIL_BACKLOG = 1000
SHOWN_BODY_BYTES = 4096


def _shown_body(body: bytes | None) -> Any:
    if not body:
        return None
    if len(body) > SHOWN_BODY_BYTES:
        return f"({len(body)} bytes; the first {SHOWN_BODY_BYTES}) " + body[
            :SHOWN_BODY_BYTES
        ].decode("utf-8", "replace")
    try:
        return decode(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def summary(kind: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """A few words on a message: its call type and name, and whose it is."""
    if kind == "customerio":
        return {
            "object_type": message.get("object_type"),
            "metric": message.get("metric"),
            "event_id": message.get("event_id"),
        }
    found = {
        "type": message.get("type"),
        "event": message.get("event") or message.get("name"),
        "userId": message.get("userId"),
        "anonymousId": message.get("anonymousId"),
        "messageId": message.get("messageId"),
    }
    return {k: v for k, v in found.items() if v is not None}


class Tail:
    """One reader of the live tail, optionally of one route's events only."""

    def __init__(self, route: str | None) -> None:
        self.route = route
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(TAIL_BACKLOG)
        self.lost = 0
        # The destinations of the route, learned from what came in, so that what went out
        # to them is shown too.
        self.destinations: set[str] = set()

    def offer(self, event: dict[str, Any]) -> None:
        if self.route is not None:
            if event["what"] == "in":
                if self.route not in event.get("routes", ()):
                    return
                self.destinations.update(event.get("destinations", ()))
            elif event.get("destination") not in self.destinations:
                return
        if self.queue.full():
            self.queue.get_nowait()
            self.lost += 1
        self.queue.put_nowait(event)


class Watch:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.errors: dict[str, deque[tuple[float, str]]] = {}
        self.samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=RATE_SAMPLES)
        self.tails: set[Tail] = set()

    # ---------------------------------------------------------------- the status page

    def error(self, destination: str, error: str) -> None:
        recent = self.errors.setdefault(destination, deque(maxlen=RECENT_ERRORS))
        recent.append((self.clock(), error))

    def sample(self, delivered: Mapping[str, float]) -> None:
        self.samples.append((self.clock(), dict(delivered)))

    def rates(self, destination: str) -> list[tuple[float, float]]:
        """(time, deliveries per second since the sample before) over the last minutes."""
        out = []
        for (t0, before), (t1, after) in zip(self.samples, list(self.samples)[1:], strict=False):
            if t1 > t0:
                done = after.get(destination, 0.0) - before.get(destination, 0.0)
                out.append((t1, max(0.0, done) / (t1 - t0)))
        return out

    # ---------------------------------------------------------------- the live tail

    def subscribe(self, route: str | None) -> Tail:
        tail = Tail(route)
        self.tails.add(tail)
        return tail

    def unsubscribe(self, tail: Tail) -> None:
        self.tails.discard(tail)

    def _publish(self, event: dict[str, Any]) -> None:
        for tail in list(self.tails):
            tail.offer(event)

    def came_in(
        self,
        kind: str,
        source: str,
        events: Sequence[EventTuple],
        outcomes: Sequence[EnqueueOutcome],
        routes: Routes,
    ) -> None:
        if not self.tails:
            return
        now = self.clock()
        for event, outcome in zip(map(NewEvent._make, events), outcomes, strict=True):
            message = decode(event.message_json)
            matched: list[str] = []
            if outcome != "rejected":
                for _, route in routes.route(kind, source, message).deliveries:
                    if route.name not in matched:
                        matched.append(route.name)
            shown: dict[str, Any] = {
                "what": "in",
                "at": now,
                "kind": kind,
                "source": source,
                "outcome": outcome,
                "message": summary(kind, message),
                "routes": matched,
                "destinations": [destination for destination, _ in event.deliveries],
            }
            if event.rejected_reason:
                shown["reason"] = event.rejected_reason
            self._publish(shown)

    def went_out(
        self,
        destination: str,
        method: str,
        url: str,
        body: bytes | None,
        status: int | None,
        error: str | None,
    ) -> None:
        if not self.tails:
            return
        shown: dict[str, Any] = {
            "what": "out",
            "at": self.clock(),
            "destination": destination,
            "method": method,
            "url": url,
            "status": status,
            "body": _shown_body(body),
        }
        if error is not None:
            shown["error"] = error
        self._publish(shown)


class WatchedTransport:
    """A destination's transport, showing each request and its answer on the tail."""

    def __init__(self, inner: Transport, destination: str, watch: Watch) -> None:
        self.inner = inner
        self.destination = destination
        self.watch = watch

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        on_written: Callable[[], None] | None = None,
    ) -> Response:
        try:
            response = await self.inner.send(
                method, url, headers=headers, body=body, timeout=timeout, on_written=on_written
            )
        except TransportError as exc:
            self.watch.went_out(self.destination, method, url, body, None, str(exc))
            raise
        self.watch.went_out(self.destination, method, url, body, response.status, None)
        return response

    async def close(self) -> None:
        """The shared transport is closed by its owner, once."""
