"""Benchmark: ingest and delivery throughput of one, two and three relay instances sharing
one Redis, against one relay on SQLite, in the same run.

Each setup runs `relay serve` processes (the Redis ones on a private `redis-server` with
`appendonly yes` and `appendfsync always`, so that a 200 means on disk as it does on
SQLite; or on `--redis-url`, whose own settings then apply). Ingest: a closed loop of
`/v1/batch` requests of `--batch` events, `--concurrency` in flight per instance and spread
over the instances (as a load balancer would), for `--seconds`, with the destination paused;
events acknowledged per second. Delivery: the instances started again on the same queue
with credentials, delivering to a loopback Customer.io stand-in (in a process of its own) at
`--rate` requests/s shared by all of them, v2 batches of `--batch-size`; events per second
until the queue is empty (or `--drain-timeout`), and the busiest second of requests, which
must stay within the one shared limit.

    python scripts/bench_redis.py [--seconds 10] [--batch 100] [--concurrency 8]
                                  [--rate 100] [--batch-size 1000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

import benchlib


@contextlib.contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """redis-server on a free port, its append-only file in `folder`, fsynced every write."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: give --redis-url instead")
    port = benchlib.free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            *("--port", str(port), "--bind", benchlib.HOST, "--dir", str(folder)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"redis://{benchlib.HOST}:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


@contextlib.asynccontextmanager
async def instances(
    tmp: Path, count: int, redis: dict[str, Any] | None, **config: Any
) -> AsyncIterator[list[benchlib.Relay]]:
    """`count` relay processes on one queue (SQLite: one, at tmp/bench.db)."""
    for i in range(count):
        (tmp / f"instance-{i}").mkdir(exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        relays = [
            await stack.enter_async_context(
                benchlib.serve_relay(tmp / f"instance-{i}", tmp / "bench.db", redis=redis, **config)
            )
            for i in range(count)
        ]
        yield relays


async def ingest(relays: list[benchlib.Relay], args: argparse.Namespace) -> dict[str, float]:
    bodies = [benchlib.make_batch(args.batch) for _ in range(32)]
    loads = await asyncio.gather(
        *(
            benchlib.closed_loop(f"{r.url}/v1/batch", bodies, args.seconds, args.concurrency)
            for r in relays
        )
    )
    started = min(load.started for load in loads)
    ended = max(load.ended for load in loads)
    ok = sum(load.ok for load in loads)
    latencies = [t for load in loads for t in load.latencies]
    return {
        "events": ok * args.batch,
        "events_per_s": ok * args.batch / (ended - started),
        "failed": sum(load.failures for load in loads),
        "p99_ms": (benchlib.percentile(latencies, 99) or 0) * 1000,
    }


async def deliver(
    cio: benchlib.StandIn, session: aiohttp.ClientSession, queued: int, drain_timeout: float
) -> dict[str, float]:
    start_ops = cio.ops
    start_arrivals = len(cio.arrivals)
    deadline = time.monotonic() + drain_timeout
    await cio.poll(session)
    while cio.ops - start_ops < queued and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        await cio.poll(session)
    arrivals = cio.arrivals[start_arrivals:]
    span = max(arrivals[-1] - arrivals[0], 1e-9) if len(arrivals) > 1 else 1e-9
    return {
        "delivered": cio.ops - start_ops,
        "delivered_per_s": (cio.ops - start_ops) / span,
        "busiest_second": benchlib.busiest_second(arrivals),
    }


async def setup(
    name: str,
    count: int,
    redis_url: str | None,
    cio: benchlib.StandIn,
    args: argparse.Namespace,
) -> dict[str, Any]:
    redis = (
        None
        if redis_url is None
        else {"url": redis_url, "key_prefix": f"bench-{uuid.uuid4().hex[:8]}:"}
    )
    settings = {"base_url": cio.url, "rate_limit": args.rate, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        async with instances(tmp, count, redis, **settings) as relays:
            took = await ingest(relays, args)
        async with (
            aiohttp.ClientSession() as session,
            instances(tmp, count, redis, api_key="k" * 20, **settings),
        ):
            sent = await deliver(cio, session, int(took["events"]), args.drain_timeout)
    return {"name": name, **took, **sent}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="ingest for this long")
    parser.add_argument("--batch", type=int, default=100, help="events per /v1/batch request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight each")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--redis-url", help="a Redis of your own (default: a private one)")
    benchlib.add_drain_timeout(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        redis_url = args.redis_url or stack.enter_context(private_redis(Path(folder) / "redis"))
        async with benchlib.stand_in() as cio:
            rows.append(await setup("SQLite, 1 instance", 1, None, cio, args))
            for count in (1, 2, 3):
                plural = "s" if count > 1 else ""
                rows.append(
                    await setup(f"Redis, {count} instance{plural}", count, redis_url, cio, args)
                )
    print(
        f"{'':22}{'ingest ev/s':>12}{'p99 ms':>8}{'refused':>9}"
        f"{'delivered':>11}{'deliver ev/s':>14}{'busiest 1 s':>13}"
    )
    for r in rows:
        print(
            f"{r['name']:22}{r['events_per_s']:>12,.0f}{r['p99_ms']:>8.0f}{r['failed']:>9}"
            f"{r['delivered']:>11,}{r['delivered_per_s']:>14,.0f}{r['busiest_second']:>13}"
        )


if __name__ == "__main__":
    asyncio.run(main())
