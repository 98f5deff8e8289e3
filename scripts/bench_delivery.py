"""Benchmark: events/s delivered to a loopback Customer.io stand-in at 100 requests/s.

relay runs in-process with `rate_limit: 100` and v2 batches of `batch_size` ops; the
stand-in, in a process of its own, stamps each request as it arrives. The script queues
`--events` mixed Segment calls (identify, track, page, screen, group) through `/v1/batch`,
then measures how fast they arrive at the stand-in: events/s, requests/s (never
above the limit), ops per request, and the largest number of requests seen in any one-second
window. The baseline, measured in the same run, is relay with `api: v1` (one classic call
per request, as per-call clients send) under the same limit, so the ratio shows what v2
batching buys under Customer.io's rate limit.

    python scripts/bench_delivery.py [--events 60000] [--batch-size 1000] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from relay.app import create_app
from relay.config import parse_config

# The Customer.io stand-in runs in a process of its own, so that it neither takes relay's
# CPU nor stamps arrivals late while relay's event loop is busy. It only counts.
STAND_IN = """
import json, sys, time
from aiohttp import web
arrivals, ops = [], 0
async def batch(request):
    global ops
    body = json.loads(await request.read())
    arrivals.append(time.monotonic())
    ops += len(body["batch"]) if isinstance(body, dict) and "batch" in body else 1
    return web.json_response({})
async def stats(request):
    return web.json_response({"arrivals": arrivals, "ops": ops})
app = web.Application(client_max_size=10 * 1024 * 1024)
app.router.add_get("/stats", stats)
app.router.add_route("*", "/{tail:.*}", batch)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def stand_in_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


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


def busiest_second(arrivals: list[float]) -> int:
    times = sorted(arrivals)
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + 1.0:
            j += 1
        best = max(best, j - i)
    return best


async def run(
    events: int, batch_size: int, rate: float, seconds: float, api: str
) -> dict[str, float]:
    port = free_port()
    cio_url = f"http://127.0.0.1:{port}"
    cio = subprocess.Popen([sys.executable, "-c", STAND_IN, str(port)])
    try:
        return await _run(cio_url, events, batch_size, rate, seconds, api)
    finally:
        cio.terminate()
        cio.wait()


async def _run(
    cio_url: str, events: int, batch_size: int, rate: float, seconds: float, api: str
) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                await stand_in_stats(session, cio_url)
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    with tempfile.TemporaryDirectory() as tmp:
        text = f"""
storage: {{sqlite: {{path: "{Path(tmp) / "bench.db"}"}}}}
sources: {{segment: {{write_keys: {{bench: bench-key}}}}}}
destinations:
  customerio:
    main: {{site_id: bench, api_key: "{"k" * 20}", base_url: "{cio_url}",
            rate_limit: {rate}, batch_size: {batch_size}, api: {api}}}
routes: [{{from: segment, to: [customerio.main]}}]
"""
        app = create_app(parse_config(text, "bench.yaml", {}))
        relay = TestServer(app, host="127.0.0.1")
        await relay.start_server()
        url = str(relay.make_url("/v1/batch"))
        auth = {"Authorization": "Basic " + base64.b64encode(b"bench-key:").decode()}
        batch = messages(events)
        async with aiohttp.ClientSession() as session:
            for i in range(0, len(batch), 500):
                async with session.post(
                    url, json={"batch": batch[i : i + 500]}, headers=auth
                ) as resp:
                    assert resp.status == 200, await resp.text()
            deadline = time.monotonic() + seconds
            stats = await stand_in_stats(session, cio_url)
            while stats["ops"] < events and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                stats = await stand_in_stats(session, cio_url)
        await relay.close()

    arrivals = stats["arrivals"]
    span = max(arrivals[-1] - arrivals[0], 1e-9)
    return {
        "events": stats["ops"],
        "seconds": span,
        "events_per_s": stats["ops"] / span,
        "requests_per_s": (len(arrivals) - 1) / span,
        "ops_per_request": stats["ops"] / len(arrivals),
        "busiest_second": busiest_second(arrivals),
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


if __name__ == "__main__":
    main()
