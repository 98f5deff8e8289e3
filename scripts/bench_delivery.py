"""Benchmark: events/s delivered to a loopback Customer.io stand-in at 100 requests/s.

relay runs as `relay serve`, in a process of its own, with `rate_limit: 100` and v2 batches
of `batch_size` ops; the stand-in, in another, stamps each request as it arrives. The script
queues `--events` mixed Segment calls (identify, track, page, screen, group) through
`/v1/batch` with the destination paused, then starts relay again on the same store with
credentials and measures how fast they arrive at the stand-in (delivery alone): events/s,
requests/s (never above the limit), ops per request, the largest number of requests seen
in any one-second window, and the shortest time `rate` + 1 consecutive requests arrived in
(never a second or less). The baseline, measured in the same run, is relay with `api: v1`
(one classic call per request, as per-call clients send) under the same limit, so the ratio
shows what v2 batching buys under Customer.io's rate limit.

    python scripts/bench_delivery.py [--events 60000] [--batch-size 1000] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

import benchlib


def messages(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        user = f"user-{i % 5000}"
        base = {
            "userId": user,
            "messageId": str(uuid.uuid4()),
            "timestamp": "2024-05-06T07:08:09.123Z",
        }
        kind = i % 5
        if kind == 0:
            out.append(
                {
                    **base,
                    "type": "identify",
                    "traits": {
                        "email": f"{user}@example.com",
                        "plan": "pro",
                        "created_at": "2023-01-02T03:04:05Z",
                    },
                }
            )
        elif kind == 1:
            out.append(
                {
                    **base,
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {"total": 42.5, "currency": "EUR", "order_id": f"o{i}"},
                }
            )
        elif kind == 2:
            out.append(
                {
                    **base,
                    "type": "page",
                    "name": "Home",
                    "properties": {"url": "https://shop.example/", "title": "Shop"},
                }
            )
        elif kind == 3:
            out.append({**base, "type": "screen", "name": "Cart", "properties": {"items": 3}})
        else:
            out.append(
                {
                    **base,
                    "type": "group",
                    "groupId": f"acme-{i % 50}",
                    "traits": {"name": "Acme", "plan": "enterprise"},
                }
            )
    return out


async def run(
    events: int, batch_size: int, rate: float, seconds: float, api: str
) -> dict[str, Any]:
    settings = {"rate_limit": rate, "batch_size": batch_size, "api": api}
    with tempfile.TemporaryDirectory(prefix="relay-bench-delivery-") as t:
        tmp = Path(t)
        db = tmp / "bench.db"
        async with (
            benchlib.stand_in(tmp / "stand-in.log") as cio,
            aiohttp.ClientSession() as session,
        ):
            # First queued with the destination paused, so that the delivery measured next
            # does not share relay's CPU with taking the events in.
            async with benchlib.serve_relay(tmp, db, base_url=cio.url, **settings) as paused:
                batch = messages(events)
                for i in range(0, len(batch), 500):
                    async with session.post(
                        f"{paused.url}/v1/batch",
                        json={"batch": batch[i : i + 500]},
                        headers=benchlib.HEADERS,
                    ) as resp:
                        assert resp.status == 200, await resp.text()
            async with benchlib.serve_relay(
                tmp, db, api_key="k" * 20, base_url=cio.url, **settings
            ) as relay:
                deadline = time.monotonic() + seconds
                await cio.poll(session)
                while cio.ops + cio.other < events and time.monotonic() < deadline:
                    relay.check()
                    await asyncio.sleep(0.05)
                    await cio.poll(session)

    arrivals = cio.arrivals
    delivered = cio.ops + cio.other  # a v1 call is one op
    span = max(arrivals[-1] - arrivals[0], 1e-9)
    return {
        "events": delivered,
        "seconds": span,
        "events_per_s": delivered / span,
        "requests_per_s": (len(arrivals) - 1) / span,
        "ops_per_request": delivered / len(arrivals),
        "busiest_second": benchlib.busiest_second(arrivals),
        "closest": benchlib.closest(arrivals, int(rate) + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="give up after this long")
    args = parser.parse_args()
    batched = asyncio.run(run(args.events, args.batch_size, args.rate, args.seconds, "v2"))
    per_call_events = min(args.events, int(args.rate * 8))
    per_call = asyncio.run(run(per_call_events, 1, args.rate, args.seconds, "v1"))
    print(
        f"{'':22}{'events':>8}{'seconds':>9}{'events/s':>10}{'requests/s':>12}"
        f"{'ops/request':>13}{'busiest 1 s':>13}"
    )
    for name, r in (("relay, v2 batches", batched), ("baseline, v1 calls", per_call)):
        print(
            f"{name:22}{r['events']:>8.0f}{r['seconds']:>9.1f}{r['events_per_s']:>10,.0f}"
            f"{r['requests_per_s']:>12.1f}{r['ops_per_request']:>13.1f}"
            f"{r['busiest_second']:>13.0f}"
        )
    print(f"ratio relay/baseline: {batched['events_per_s'] / per_call['events_per_s']:.1f}")
    for name, r in (("relay", batched), ("baseline", per_call)):
        if r["closest"] is not None:
            print(
                f"{name}: closest {int(args.rate) + 1} consecutive requests"
                f" {r['closest'] * 1000:,.1f} ms apart"
            )


if __name__ == "__main__":
    main()
