"""Benchmark: sustained end to end, Segment in and Customer.io out at the same time.

relay runs in its own process with a SQLite store and a Customer.io destination whose
`base_url` is a loopback stand-in, itself in a third process so that it does not take CPU
from relay: the stand-in answers 200 `{}` to every `POST /api/v2/batch` and counts its
requests and ops. The destination keeps its defaults (`rate_limit: 100`, `batch_size: 100`)
unless `--batch-size` is given. This process sends `--seconds` of `/v1/batch` requests
(100 mixed identify/track/page events each, unique messageIds, 16 in flight) while relay
delivers, then waits (at most `--drain-timeout`) until every acknowledged event has arrived
at the stand-in.

Reported: events acknowledged, ingest events/s during the load, end-to-end events/s
(acknowledged events / time from the first request until the last one arrived at the
stand-in), requests/s at the stand-in, the busiest one-second window of requests (never
above `rate_limit`) and ops per request. The baseline, measured in the same run, is relay
with the destination paused (its api_key from an unset variable): ingestion alone for the
same seconds. The ratio is end-to-end events/s / ingest-alone events/s.

    python scripts/bench_e2e.py [--seconds 10] [--concurrency 16] [--batch 100]
                                [--batch-size N] [--drain-timeout 120]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
RATE_LIMIT = 100

# The stand-in Customer.io. Arrival times are time.monotonic(), the system-wide
# CLOCK_MONOTONIC on Linux, so they compare with this process's own.
STAND_IN = """
import json, sys, time
from aiohttp import web
arrivals = []
counts = {"requests": 0, "ops": 0, "other": 0}
async def batch(request):
    body = json.loads(await request.read())
    arrivals.append(time.monotonic())
    counts["requests"] += 1
    counts["ops"] += len(body["batch"])
    return web.json_response({})
async def other(request):
    await request.read()
    counts["other"] += 1
    return web.json_response({})
async def stats(request):
    full = request.query.get("arrivals") == "1"
    last = arrivals[-1] if arrivals else None
    return web.json_response({**counts, "last": last, "arrivals": arrivals if full else []})
app = web.Application(client_max_size=16 * 1024 * 1024)
app.router.add_post("/api/v2/batch", batch)
app.router.add_get("/stats", stats)
app.router.add_route("*", "/{tail:.*}", other)
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
      api_key: "{api_key}"
      base_url: "http://127.0.0.1:{cio_port}"
{extra}routes:
  - {{from: segment, to: [customerio.main]}}
"""
UNSET_KEY = "RELAY_BENCH_UNSET_API_KEY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_batch(size: int) -> bytes:
    """`size` events, a quarter identify, half track, a quarter page."""
    batch: list[dict[str, Any]] = []
    for i in range(size):
        user = f"user-{uuid.uuid4().hex[:8]}"
        common = {
            "userId": user,
            "messageId": str(uuid.uuid4()),
            "timestamp": "2024-05-06T07:08:09.123Z",
            "context": {
                "library": {"name": "analytics-python", "version": "2.3.0"},
                "ip": "203.0.113.9",
            },
        }
        if i % 4 == 0:
            batch.append({**common, "type": "identify", "traits": {"email": f"{user}@example.com"}})
        elif i % 4 == 3:
            batch.append(
                {
                    **common,
                    "type": "page",
                    "name": "Home",
                    "properties": {"url": "https://shop.example/", "title": "Shop"},
                }
            )
        else:
            batch.append(
                {
                    **common,
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {
                        "order_id": f"o-{i}",
                        "total": 42.5,
                        "currency": "EUR",
                        "products": [{"sku": "a-1", "price": 10.0, "quantity": 2}],
                    },
                }
            )
    return json.dumps({"batch": batch, "sentAt": "2024-05-06T07:08:10.000Z"}).encode()


def busiest_second(arrivals: list[float]) -> int:
    times = sorted(arrivals)
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + 1.0:
            j += 1
        best = max(best, j - i)
    return best


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 60 s; relay's store child exits once relay is gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
    return found + [g for c in found for g in children(c)]


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


async def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30.0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{url} did not come up:\n{tail}")


async def load(url: str, seconds: float, concurrency: int, batch: int) -> dict[str, float]:
    bodies = [make_batch(batch) for _ in range(64)]  # distinct messageIds, reused round-robin
    headers = {
        "Authorization": "Basic " + base64.b64encode(b"bench-write-key:").decode(),
        "Content-Type": "application/json",
    }
    acknowledged = requests = failures = counter = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal acknowledged, requests, failures, counter
        while time.monotonic() < deadline:
            counter += 1
            # a fresh messageId prefix per request: every event is new, and is delivered
            body = bodies[counter % len(bodies)].replace(
                b'"messageId": "', f'"messageId": "{counter}-'.encode()
            )
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                requests += 1
                if resp.status == 200:
                    acknowledged += batch
                else:
                    failures += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        ended = time.monotonic()
    return {
        "started": started,
        "ended": ended,
        "requests": requests,
        "acknowledged": acknowledged,
        "failures": failures,
        "ingest_per_s": acknowledged / (ended - started),
    }


async def stand_in_stats(session: aiohttp.ClientSession, url: str, full: bool) -> dict[str, Any]:
    async with session.get(url, params={"arrivals": "1" if full else "0"}) as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def run(args: argparse.Namespace, paused: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != UNSET_KEY}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    extra = f"      batch_size: {args.batch_size}\n" if args.batch_size else ""
    api_key = f"${{{UNSET_KEY}}}" if paused else "k" * 20
    with tempfile.TemporaryDirectory(prefix="relay-bench-e2e-", ignore_cleanup_errors=True) as t:
        tmp = Path(t)
        cio_port, port = free_port(), free_port()
        stats_url = f"http://127.0.0.1:{cio_port}/stats"
        config = tmp / "bench.yaml"
        config.write_text(
            CONFIG.format(
                port=port, db=tmp / "bench.db", api_key=api_key, cio_port=cio_port, extra=extra
            )
        )
        cio = start(["-c", STAND_IN, str(cio_port)], tmp / "stand-in.log", env)
        relay = None
        store: list[int] = []
        try:
            await wait_up(stats_url, cio, tmp / "stand-in.log")
            relay = start(
                ["-m", "relay", "serve", "--config", str(config), "--log-level", "ERROR"],
                tmp / "relay.log",
                env,
            )
            await wait_up(f"http://127.0.0.1:{port}/healthz", relay, tmp / "relay.log")
            store = children(relay.pid)
            result = await load(
                f"http://127.0.0.1:{port}/v1/batch", args.seconds, args.concurrency, args.batch
            )
            async with aiohttp.ClientSession() as session:
                deadline = result["ended"] + (0.0 if paused else args.drain_timeout)
                stats = await stand_in_stats(session, stats_url, False)
                while stats["ops"] < result["acknowledged"] and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    stats = await stand_in_stats(session, stats_url, False)
                stats = await stand_in_stats(session, stats_url, True)
        finally:
            if relay is not None:
                stop(relay)
                wait_gone(store)
            stop(cio)

    arrivals: list[float] = stats["arrivals"]
    result.update(
        arrived=stats["ops"],
        stand_in_requests=stats["requests"],
        other_requests=stats["other"],
        complete=stats["ops"] >= result["acknowledged"],
        e2e_per_s=None,
        requests_per_s=None,
        busiest=busiest_second(arrivals),
        ops_per_request=stats["ops"] / stats["requests"] if stats["requests"] else None,
    )
    if arrivals:
        span = arrivals[-1] - result["started"]
        result["seconds"] = span
        if result["complete"]:
            result["e2e_per_s"] = result["acknowledged"] / span
        if len(arrivals) > 1:
            result["requests_per_s"] = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return result


def cell(value: float | None, width: int, spec: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="of load; default 10")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--batch", type=int, default=100, help="events a request")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="the destination's batch_size (default: 100)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait after the load for every event to arrive; default 120",
    )
    args = parser.parse_args()

    alone = asyncio.run(run(args, paused=True))
    e2e = asyncio.run(run(args, paused=False))

    print(
        f"{'':24}{'acknowledged':>13}{'ingest ev/s':>13}{'arrived':>9}{'e2e ev/s':>10}"
        f"{'seconds':>9}{'requests/s':>12}{'busiest 1 s':>13}{'ops/request':>13}{'non-200':>9}"
    )
    for name, r in (("ingest alone (paused)", alone), ("end to end", e2e)):
        print(
            f"{name:24}{r['acknowledged']:>13,}{r['ingest_per_s']:>13,.0f}{r['arrived']:>9,}"
            f"{cell(r['e2e_per_s'], 10, ',.0f')}{cell(r.get('seconds'), 9, '.1f')}"
            f"{cell(r['requests_per_s'], 12, '.1f')}{r['busiest']:>13}"
            f"{cell(r['ops_per_request'], 13, '.1f')}{r['failures']:>9}"
        )
    if alone["arrived"] or alone["other_requests"]:
        print("warning: the paused destination sent requests; the baseline is not ingest alone")
    if e2e["other_requests"]:
        print(f"warning: {e2e['other_requests']} requests to the stand-in were not v2 batches")
    if not e2e["complete"]:
        print(
            f"incomplete: {e2e['arrived']:,} of {e2e['acknowledged']:,} acknowledged events"
            f" arrived within --drain-timeout {args.drain_timeout:g} s"
        )
        sys.exit(1)
    verdict = "within" if e2e["busiest"] <= RATE_LIMIT else "ABOVE"
    print(f"busiest second {e2e['busiest']} requests: {verdict} rate_limit {RATE_LIMIT}")
    print(f"ratio end-to-end/ingest alone: {e2e['e2e_per_s'] / alone['ingest_per_s']:.2f}")


if __name__ == "__main__":
    main()
