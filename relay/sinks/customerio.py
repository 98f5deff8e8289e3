"""Customer.io Track API sink: v2 batches (default) or classic v1 calls, rate limited.

Building requests is pure (`plan_v2`, `plan_v1`); `CustomerIOSink.deliver` only sends them
in order and turns answers into outcomes. Deliveries for one person are sent in order, and
once one of them must be retried the later ones for that person are held back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.codec import encode
from relay.config import CustomerIODestination
from relay.mapping import Rejection
from relay.mapping.to_customerio import encode_v1, encode_v2, map_and_check
from relay.metrics import Metrics
from relay.outgoing import OutgoingRequest
from relay.sinks.batching import pack
from relay.sinks.limiter import DestinationLimiter
from relay.sinks.outcome import DONE, HOLD, Dead, Done, Outcome, Pause, Retry
from relay.sinks.sender import Sender, json_headers
from relay.sinks.transport import Transport
from relay.store.base import Delivery

# "Under 500 KB": counted as 500,000 bytes to stay clear of either reading.
MAX_BATCH_BYTES = 500_000
_BATCH_OVERHEAD = len(b'{"batch":[]}')


@dataclass
class Planned:
    """The Customer.io operations for one delivery, or why it cannot be sent."""

    delivery: Delivery
    ops: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    requests: list[OutgoingRequest] = field(default_factory=list)
    rejection: str | None = None


def plan(deliveries: Sequence[Delivery], api: str) -> list[Planned]:
    """Map each delivery's Segment message to v2 ops or v1 requests (pure)."""
    out = []
    for d in deliveries:
        mapped = map_and_check(d.message, received_at=d.created_at)
        if isinstance(mapped, Rejection):
            out.append(Planned(d, rejection=mapped.reason))
            continue
        if api == "v1":
            out.append(Planned(d, requests=[r for op in mapped for r in encode_v1(op)]))
        else:
            ops = [encode_v2(op) for op in mapped]
            out.append(Planned(d, ops=ops, sizes=[len(encode(op)) for op in ops]))
    return out


def pack_v2(
    planned: Sequence[Planned], batch_size: int, max_bytes: int = MAX_BATCH_BYTES
) -> list[list[Planned]]:
    """Group deliveries into batch requests of at most `batch_size` ops and `max_bytes`,
    keeping order; a delivery's ops never straddle two requests."""
    with_ops = [p for p in planned if p.ops]
    sizes = [(len(p.ops), sum(p.sizes) + len(p.sizes) - 1) for p in with_ops]
    return [[with_ops[i] for i in r] for r in pack(sizes, batch_size, max_bytes, _BATCH_OVERHEAD)]


def batch_request(group: Sequence[Planned]) -> OutgoingRequest:
    return OutgoingRequest("POST", "/api/v2/batch", {"batch": [op for p in group for op in p.ops]})


def requests_for(
    messages: Sequence[dict[str, Any]], dest: CustomerIODestination, now: float
) -> list[OutgoingRequest] | Rejection:
    """The exact requests relay would send for these messages (used by `relay routes test`)."""
    deliveries = [
        Delivery(i, dest.key, "", 0, now, "", "segment", m) for i, m in enumerate(messages)
    ]
    planned = plan(deliveries, dest.api)
    for p in planned:
        if p.rejection:
            return Rejection(p.rejection)
    if dest.api == "v1":
        return [r for p in planned for r in p.requests]
    return [batch_request(g) for g in pack_v2(planned, dest.batch_size)]


class CustomerIOSink:
    def __init__(
        self,
        dest: CustomerIODestination,
        transport: Transport,
        limiter: DestinationLimiter,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dest = dest
        headers = {**json_headers(dest.site_id, dest.api_key), "Accept": "application/json"}
        self.sender = Sender(
            dest.key, dest.base_url, headers, dest.timeout, transport, limiter, metrics, clock
        )

    async def send(self, request: OutgoingRequest) -> tuple[Outcome, bytes]:
        outcome, response = await self.sender.send(request)
        if response is not None and response.status == 207:
            return outcome, response.body
        return outcome, b""

    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Outcome]:
        planned = plan(deliveries, self.dest.api)
        outcomes: dict[int, Outcome] = {}
        for p in planned:
            if p.rejection is not None:
                outcomes[p.delivery.id] = Dead(p.rejection)
        live = [p for p in planned if p.rejection is None]
        if self.dest.api == "v1":
            await self._deliver_v1(live, outcomes)
        else:
            await self._deliver_v2(live, outcomes)
        return outcomes

    async def _deliver_v1(self, planned: list[Planned], outcomes: dict[int, Outcome]) -> None:
        blocked: set[str] = set()
        paused = False
        for p in planned:
            d = p.delivery
            if paused or d.ordering_key in blocked:
                outcomes[d.id] = HOLD
                continue
            result: Outcome = DONE
            for request in p.requests:
                result, _ = await self.send(request)
                if not isinstance(result, Done):
                    break
            outcomes[d.id] = result
            if isinstance(result, Retry | Pause):
                blocked.add(d.ordering_key)
                paused = paused or isinstance(result, Pause)

    async def _deliver_v2(self, planned: list[Planned], outcomes: dict[int, Outcome]) -> None:
        blocked: set[str] = set()
        paused = False
        remaining = [p for p in planned if p.ops]
        for p in planned:
            if not p.ops:
                outcomes[p.delivery.id] = DONE  # nothing to send for it (e.g. all ops empty)
        while remaining:
            if paused:
                for p in remaining:
                    outcomes[p.delivery.id] = HOLD
                return
            sendable = []
            for p in remaining:
                if p.delivery.ordering_key in blocked:
                    outcomes[p.delivery.id] = HOLD
                else:
                    sendable.append(p)
            if not sendable:
                return
            group = pack_v2(sendable, self.dest.batch_size)[0]
            remaining = sendable[len(group) :]
            result, body = await self.send(batch_request(group))
            if isinstance(result, Done):
                failed = _failed_ops(body) if body else {}
                index = 0
                for p in group:
                    reasons = [failed[i] for i in range(index, index + len(p.ops)) if i in failed]
                    index += len(p.ops)
                    outcomes[p.delivery.id] = (
                        Dead("Customer.io refused: " + "; ".join(reasons)) if reasons else DONE
                    )
                continue
            for p in group:
                outcomes[p.delivery.id] = result
                if isinstance(result, Retry | Pause):
                    blocked.add(p.delivery.ordering_key)
            paused = isinstance(result, Pause)


def _failed_ops(body: bytes) -> dict[int, str]:
    """`batch_index` → reason from a 207 answer.

    The body is `{"errors": [{"batch_index", "reason", "field", "message"}]}`.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return {}
    failed: dict[int, str] = {}
    errors = payload.get("errors") if isinstance(payload, dict) else None
    for err in errors if isinstance(errors, list) else []:
        if not isinstance(err, dict) or not isinstance(err.get("batch_index"), int):
            continue
        parts = [f"{k}={err[k]}" for k in ("reason", "field", "message") if err.get(k) is not None]
        failed[err["batch_index"]] = ", ".join(parts) or "rejected without a reason"
    return failed
