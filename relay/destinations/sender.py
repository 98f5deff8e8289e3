"""Sending one request to a destination: rate limit, transport, metrics, and the outcome."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from typing import TypeAlias

from relay import USER_AGENT
from relay.codec import encode
from relay.destinations.limiter import Limiter
from relay.destinations.outcome import Outcome, Retry, classify
from relay.destinations.transport import Response, Transport, TransportError
from relay.metrics import Metrics
from relay.outgoing import OutgoingRequest


def json_headers(user: str, password: str = "") -> dict[str, str]:
    """HTTP Basic auth plus the headers every JSON request of a sink carries."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {
        "Authorization": f"Basic {token}",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


# A request built at the moment it goes out, from the time it does (unix seconds): for bodies
# that carry their own send time, such as Segment's `sentAt`, which must not be stamped
# before a wait in the rate limiter.
BuildAtSend: TypeAlias = Callable[[float], OutgoingRequest]


class Sender:
    def __init__(
        self,
        key: str,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float,
        transport: Transport,
        limiter: Limiter,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.base_url = base_url
        self.headers = dict(headers)
        self.timeout = timeout
        self.transport = transport
        self.limiter = limiter
        self.metrics = metrics
        self.clock = clock

    async def send(self, request: OutgoingRequest | BuildAtSend) -> tuple[Outcome, Response | None]:
        """One request through the destination's limiter; never raises for network trouble.

        `request` may be a function of the send time, called once the limiter lets it go.
        """
        written = await self.limiter.acquire()
        if not isinstance(request, OutgoingRequest):
            request = request(self.clock())
        body = request.body
        if body is not None and not isinstance(body, bytes):
            body = encode(body)
        started = time.monotonic()
        try:
            response = await self.transport.send(
                request.method,
                self.base_url + request.path,
                headers=self.headers,
                body=body,
                timeout=self.timeout,
                on_written=written,
            )
        except TransportError as exc:
            # A timeout or a broken connection took its time too: leaving it out would make
            # a destination that hangs look fast.
            self.metrics.request_seconds.labels(self.key).observe(time.monotonic() - started)
            self.metrics.requests.labels(self.key, "error").inc()
            return Retry(f"no answer from {self.base_url}: {exc}"), None
        self.metrics.request_seconds.labels(self.key).observe(time.monotonic() - started)
        self.metrics.requests.labels(self.key, str(response.status)).inc()
        outcome = classify(response, self.clock())
        if response.status == 429:
            self.limiter.throttled(outcome.after if isinstance(outcome, Retry) else None)
        return outcome, response
