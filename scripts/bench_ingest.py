"""Benchmark: events/s accepted through /v1/batch, against a bare aiohttp baseline.

Both servers run in their own process on loopback and get the same load from this one:
requests of 100 events, 16 in flight. The baseline only JSON-decodes the body and answers
200; relay authenticates, validates, de-duplicates, routes and commits every event to
SQLite (WAL, synchronous=FULL) before answering. The Customer.io destination's key is left
unset, so the destination is paused and deliveries stay queued: this measures ingestion.

    python scripts/bench_ingest.py [--seconds 10] [--concurrency 16] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import aiohttp

BARE_SERVER = """
import json, sys
from aiohttp import web
async def handle(request):
    json.loads(await request.read())
    return web.json_response({"success": True})
app = web.Application(client_max_size=8 * 1024 * 1024)
app.router.add_post("/v1/batch", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

CONFIG = """
server: {{host: 127.0.0.1, port: {port}}}
storage:
  sqlite: {{path: "{db}"}}
sources:
  segment:
    write_keys: {{bench: "bench-write-key"}}
destinations:
  customerio:
    main:
      site_id: bench
      api_key: "${{RELAY_BENCH_UNSET_API_KEY}}"
routes:
  - {{from: segment, to: [customerio.main]}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_batch(size: int) -> bytes:
    batch = []
    for i in range(size):
        user = f"user-{uuid.uuid4().hex[:8]}"
        batch.append(
            {
                "type": "track" if i % 4 else "identify",
                "userId": user,
                "event": "Order Completed",
                "messageId": str(uuid.uuid4()),
                "timestamp": "2024-05-06T07:08:09.123Z",
                "properties": {
                    "order_id": f"o-{i}",
                    "total": 42.5,
                    "currency": "EUR",
                    "products": [{"sku": "a-1", "price": 10.0, "quantity": 2}],
                },
                "traits": {"email": f"{user}@example.com", "plan": "pro"},
                "context": {
                    "library": {"name": "analytics-python", "version": "2.3.0"},
                    "ip": "203.0.113.9",
                },
            }
        )
    return json.dumps({"batch": batch, "sentAt": "2024-05-06T07:08:10.000Z"}).encode()


async def wait_up(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def load(url: str, seconds: float, concurrency: int, batch: int) -> dict[str, float]:
    bodies = [make_batch(batch) for _ in range(64)]  # distinct messageIds, reused round-robin
    headers = {
        "Authorization": "Basic " + base64.b64encode(b"bench-write-key:").decode(),
        "Content-Type": "application/json",
    }
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    counter = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures, counter
        while time.monotonic() < deadline:
            counter += 1
            # a fresh messageId prefix per request keeps dedup from short-cutting the work
            body = bodies[counter % len(bodies)].replace(
                b'"messageId": "', f'"messageId": "{counter}-'.encode()
            )
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "events_per_s": len(latencies) * batch / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "failures": failures,
    }


def run_server(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        bare = run_server(["-c", BARE_SERVER, str(port)])
        try:
            await wait_up(f"http://127.0.0.1:{port}/")
            results["baseline"] = await load(
                f"http://127.0.0.1:{port}/v1/batch", args.seconds, args.concurrency, args.batch
            )
        finally:
            bare.terminate()
            bare.wait()

        port = free_port()
        config = os.path.join(tmp, "bench.yaml")
        with open(config, "w") as fh:
            fh.write(CONFIG.format(port=port, db=os.path.join(tmp, "bench.db")))
        relay = run_server(["-m", "relay", "serve", "--config", config, "--log-level", "ERROR"])
        try:
            await wait_up(f"http://127.0.0.1:{port}/healthz")
            results["relay"] = await load(
                f"http://127.0.0.1:{port}/v1/batch", args.seconds, args.concurrency, args.batch
            )
        finally:
            relay.terminate()
            relay.wait()

    print(
        f"{'server':<10}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}{'non-200':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['events_per_s']:>12.0f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}"
            f"{r['requests']:>10.0f}{r['failures']:>9.0f}"
        )
    ratio = results["relay"]["events_per_s"] / results["baseline"]["events_per_s"]
    print(f"ratio relay/baseline: {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
