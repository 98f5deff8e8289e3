"""Customer.io Track API sink: v2 batches (default) or classic v1 calls, rate limited.

Building requests (`plan`, `pack_v2`) and reading answers (`batch_outcomes`) are pure;
`CustomerIOSink.deliver` only sends the requests in order and settles each delivery by the
answer about it. Deliveries for one person are sent in order, and once one of them must be
retried the later ones for that person are held back.

A delivery is sent either as ops of a v2 batch or as requests of its own, one after the
other: every delivery with `api: v1`, and with v2 one that holds an op no batch can carry
(a delivery metric, which goes to `POST /api/v1/metrics`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from itertools import takewhile
from typing import NamedTuple

from relay.destinations.batching import pack
from relay.destinations.customerio.settings import CustomerIODestination
from relay.destinations.limiter import Limiter
from relay.destinations.outcome import DONE, HOLD, Dead, Done, Outcome, Pause, Retry, Skipped
from relay.destinations.sender import Sender, json_headers
from relay.destinations.transport import Response, Transport
from relay.mapping import Rejection, Skip
from relay.mapping.to_customerio import (
    DEFAULTS,
    MappingOptions,
    encode_v1,
    map_and_check,
    map_and_encode_v2,
)
from relay.metrics import Metrics
from relay.outgoing import OutgoingRequest
from relay.store.base import Delivery

# "Under 500 KB": counted as 500,000 bytes to stay clear of either reading.
MAX_BATCH_BYTES = 500_000
_BATCH_OVERHEAD = len(b'{"batch":[]}')
_ENTITY = "/api/v2/entity"


class Planned(NamedTuple):
    """The Customer.io operations for one delivery, or why it cannot be sent: v2 batch ops,
    or else requests sent one after the other, on their own. (A named tuple: one is made
    for every message sent.)"""

    delivery: Delivery
    ops: Sequence[bytes] = ()  # v2 ops, each as the JSON sent
    requests: Sequence[OutgoingRequest] = ()
    rejection: str | None = None
    skipped: str | None = None  # nothing to send, and why


def plan(
    deliveries: Sequence[Delivery], api: str, options: MappingOptions = DEFAULTS
) -> list[Planned]:
    """Map each delivery's Segment message to v2 ops or v1 requests (pure), with the
    destination's mapping `options`."""
    return [_plan_v1(d, options) if api == "v1" else _plan_v2(d, options) for d in deliveries]


def _plan_v2(d: Delivery, options: MappingOptions) -> Planned:
    mapped = map_and_encode_v2(d.message, received_at=d.created_at, options=options)
    if isinstance(mapped, Rejection):
        return Planned(d, rejection=mapped.reason)
    if isinstance(mapped, Skip):
        return Planned(d, skipped=mapped.reason)
    ops = [item for item in mapped if isinstance(item, bytes)]
    if len(ops) == len(mapped):
        return Planned(d, ops=ops)
    # An op no batch carries: the whole delivery goes as requests of its own, its batch ops
    # each to /api/v2/entity, so that its ops still succeed or fail together, in order.
    requests = [
        item if isinstance(item, OutgoingRequest) else OutgoingRequest("POST", _ENTITY, item)
        for item in mapped
    ]
    return Planned(d, requests=requests)


def _plan_v1(d: Delivery, options: MappingOptions) -> Planned:
    # Limits are checked on what v1 will send: it adds keys of its own to a body.
    mapped = map_and_check(d.message, received_at=d.created_at, api="v1", options=options)
    if isinstance(mapped, Rejection):
        return Planned(d, rejection=mapped.reason)
    if isinstance(mapped, Skip):
        return Planned(d, skipped=mapped.reason)
    return Planned(d, requests=[r for op in mapped for r in encode_v1(op)])


def pack_v2(
    planned: Sequence[Planned], batch_size: int, max_bytes: int = MAX_BATCH_BYTES
) -> list[list[Planned]]:
    """Group deliveries into batch requests of at most `batch_size` ops and `max_bytes`,
    keeping order; a delivery's ops never straddle two requests.

    A delivery with more ops than `batch_size` (a device event is `add_device` plus the event,
    two ops even with `batch_size: 1`) goes whole in a request of its own: it is settled by
    one outcome, so its ops must succeed or fail together."""
    with_ops = [p for p in planned if p.ops]
    sizes = [(len(p.ops), sum(map(len, p.ops)) + len(p.ops) - 1) for p in with_ops]
    return [[with_ops[i] for i in r] for r in pack(sizes, batch_size, max_bytes, _BATCH_OVERHEAD)]


def batch_request(group: Sequence[Planned]) -> OutgoingRequest:
    """The batch carrying `group`'s ops, its body joined from the ops as written."""
    body = b",".join([op for p in group for op in p.ops])
    return OutgoingRequest("POST", "/api/v2/batch", b'{"batch":[' + body + b"]}")


def batch_outcomes(
    group: Sequence[Planned], outcome: Outcome, response: Response | None
) -> list[Outcome] | None:
    """Each delivery's outcome, in order, from the answer to the batch request carrying
    `group`; None when that answer refuses the batch without saying which delivery is at
    fault, so that each must be sent in a request of its own to find out.

    A 207 lists the failed ops by `batch_index`: a delivery with a failed op is dead-lettered
    with Customer.io's reasons, the others are done. A 207 that cannot be read that way is a
    retryable failure of the whole request rather than a success: taking it for one would
    lose whichever ops did fail. Sending it all again is safe, since Customer.io de-duplicates
    events on their ULID `id` and identifies, device, suppress and delete ops only set state
    (a merge repeated after it took effect may be refused, which then settles that delivery
    alone, like any refusal below).

    A dead-lettering 4xx (400, 404, 413, …; not 401/403, which pause) is about the request as
    a whole, though usually one op is bad: with several deliveries in it, none can be blamed.
    """
    if (
        isinstance(outcome, Dead)
        and len(group) > 1
        and response is not None
        and 400 <= response.status < 500
    ):
        return None
    if not isinstance(outcome, Done) or response is None or response.status != 207:
        return [outcome] * len(group)
    failed = failed_ops(response.body, sum(len(p.ops) for p in group))
    if failed is None:
        text = response.body.decode("utf-8", errors="replace").strip()[:200]
        retry = Retry(
            f"HTTP 207 without a readable list of failed ops ({text or 'empty body'});"
            " sending the whole request again"
        )
        return [retry] * len(group)
    outcomes: list[Outcome] = []
    index = 0
    for p in group:
        reasons = [r for i in range(index, index + len(p.ops)) for r in failed.get(i, [])]
        index += len(p.ops)
        outcomes.append(Dead("Customer.io refused: " + "; ".join(reasons)) if reasons else DONE)
    return outcomes


class CustomerIOSink:
    def __init__(
        self,
        dest: CustomerIODestination,
        transport: Transport,
        limiter: Limiter,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dest = dest
        headers = {**json_headers(dest.site_id, dest.api_key), "Accept": "application/json"}
        self.sender = Sender(
            dest.key, dest.base_url, headers, dest.timeout, transport, limiter, metrics, clock
        )

    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Outcome]:
        planned = plan(deliveries, self.dest.api, self.dest.mapping)
        outcomes: dict[int, Outcome] = {}
        live = []
        for p in planned:
            if p.rejection is not None:
                outcomes[p.delivery.id] = Dead(p.rejection)
            elif p.skipped is not None:
                outcomes[p.delivery.id] = Skipped(p.skipped)
            elif not p.ops and not p.requests:
                outcomes[p.delivery.id] = DONE  # nothing to send for it
            else:
                live.append(p)
        await self._send_in_order(live, outcomes)
        return outcomes

    async def _send_in_order(self, planned: list[Planned], outcomes: dict[int, Outcome]) -> None:
        """Send `planned` in order, one request (v2: a batch of deliveries; v1: one delivery's
        calls) at a time, and settle each delivery by the answer about it.

        A request that must be retried (no answer, 429, 5xx) or a pause holds back everything
        left (as Hold): the destination is failing, and its worker now probes it one request
        at a time. A batch refused as a whole goes back to the front of the queue with each of
        its deliveries marked to travel alone: they then go through this same loop, rate limit
        and settling, one request each, so that only the bad one is dead-lettered. A delivery
        planned as requests of its own (v1, or a metric) always goes alone, and a batch is
        packed only from the deliveries with ops before it, so order is kept.
        """
        alone: set[int] = set()
        queue = planned
        stopped = False
        while queue:
            ready = []
            for p in queue:
                if stopped:
                    outcomes[p.delivery.id] = HOLD
                else:
                    ready.append(p)
            if not ready:
                return
            if not ready[0].ops or ready[0].delivery.id in alone:
                group = ready[:1]
            else:
                # Deliveries marked to travel alone are only ever at the front of the queue,
                # so a batch packed from a front that is not one of them holds none.
                batchable = list(takewhile(lambda p: p.ops, ready))
                group = pack_v2(batchable, self.dest.batch_size)[0]
            queue = ready[len(group) :]
            settled = await self._attempt(group)
            if settled is None:
                alone.update(p.delivery.id for p in group)
                queue = group + queue
                continue
            for p, outcome in zip(group, settled, strict=True):
                outcomes[p.delivery.id] = outcome
                stopped = stopped or isinstance(outcome, Retry | Pause)

    async def _attempt(self, group: list[Planned]) -> list[Outcome] | None:
        """Send `group` once: see `batch_outcomes` for what None means."""
        if not group[0].ops:
            # One delivery's own requests, in order; the first that does not succeed settles it.
            [p] = group
            result: Outcome = DONE
            for request in p.requests:
                result, _ = await self.sender.send(request)
                if not isinstance(result, Done):
                    break
            return [result]
        result, response = await self.sender.send(batch_request(group))
        return batch_outcomes(group, result, response)


def failed_ops(body: bytes, count: int) -> dict[int, list[str]] | None:
    """`batch_index` → reasons from a 207 answer to a batch of `count` ops, or None when the
    answer does not say which ops failed.

    The body is `{"errors": [{"batch_index", "reason", "field", "message"}]}`. Not JSON, no
    `errors` list, an empty one (a 207 says that some op failed), or an entry without a
    usable index all leave the failed ops unknown: one entry that cannot be placed may be the
    only failure, so it is not skipped.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list) or not errors:
        return None
    failed: dict[int, list[str]] = {}
    for err in errors:
        if not isinstance(err, dict):
            return None
        index = err.get("batch_index")
        # JSON `true` is an int to Python, and would pass for index 1.
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            return None
        parts = [f"{k}={err[k]}" for k in ("reason", "field", "message") if err.get(k) is not None]
        failed.setdefault(index, []).append(", ".join(parts) or "rejected without a reason")
    return failed
