"""Benchmark: events/s accepted through /v1/batch, against a bare aiohttp baseline.

Both servers run in their own process on loopback and get the same load from this one:
requests of 100 events, 16 in flight, written by a plain HTTP/1.1 client that costs the
cores it shares with them little (`--client aiohttp` sends them with aiohttp's client, as
the figures before it were measured; see benchlib.closed_loop). The baseline only
JSON-decodes the body and answers 200; relay authenticates, validates, de-duplicates,
routes and commits every event to SQLite (WAL, synchronous=FULL) before answering. The
Customer.io destination's key is left unset, so the destination is paused and deliveries
stay queued: this measures ingestion. With `--destinations N`, every event is routed alike
to N such workspaces.

A second table gives the CPU each server's processes took an event (relay's: its own and its
store's), the load's, and the share of the machine's cores left idle, over the same load:
where the cores are all busy, the ratio is what the CPU an event allows.

    python scripts/bench_ingest.py [--seconds 10] [--concurrency 16] [--batch 100]
                                   [--destinations 1] [--client plain|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import benchlib
from benchlib import CLIENTS, HOST

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
# A quarter identify, three quarters track, every event with all the fields of both.
KINDS = ("identify", "track", "track", "track")


async def load(
    url: str, seconds: float, concurrency: int, batch: int, client: str, pids: list[int]
) -> dict[str, Any]:
    bodies = [benchlib.make_batch(batch, KINDS, uniform=True) for _ in range(64)]
    with benchlib.cpu_meter(pids) as cpu:
        result = await benchlib.closed_loop(url, bodies, seconds, concurrency, client)
    p50, p99, p999 = (benchlib.percentile(result.latencies, p) or 0.0 for p in (50, 99, 99.9))
    events = result.requests * batch or 1
    return {
        "requests": result.requests,
        "events_per_s": result.requests * batch / (result.ended - result.started),
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "p999_ms": p999 * 1000,
        "max_ms": max(result.latencies, default=0.0) * 1000,
        "failures": result.failures,
        "server_us": None if cpu.server is None else cpu.server / events * 1e6,
        "load_us": cpu.load / events * 1e6,
        "idle": cpu.idle,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--destinations", type=int, default=1, help="workspaces every event is routed to alike"
    )
    parser.add_argument(
        "--client", choices=CLIENTS, default="plain", help="the HTTP client the load is sent with"
    )
    args = parser.parse_args()

    results = {}
    port = benchlib.free_port()
    bare = benchlib.start(["-c", BARE_SERVER, str(port)])
    try:
        await benchlib.wait_up(f"http://{HOST}:{port}/", bare)
        url = f"http://{HOST}:{port}/v1/batch"
        results["baseline"] = await load(
            url, args.seconds, args.concurrency, args.batch, args.client, [bare.pid]
        )
    finally:
        benchlib.stop(bare)

    with tempfile.TemporaryDirectory(prefix="relay-bench-ingest-") as tmp:
        async with benchlib.serve_relay(Path(tmp), destinations=args.destinations) as relay:
            # relay's process and its store's.
            pids = [relay.proc.pid, *benchlib.children(relay.proc.pid)]
            results["relay"] = await load(
                f"{relay.url}/v1/batch",
                args.seconds,
                args.concurrency,
                args.batch,
                args.client,
                pids,
            )

    print(
        f"{'server':<10}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}{'max ms':>9}"
        f"{'requests':>10}{'non-200':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['events_per_s']:>12.0f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}"
            f"{r['p999_ms']:>10.1f}{r['max_ms']:>9.1f}{r['requests']:>10.0f}{r['failures']:>9.0f}"
        )
    print(f"\n{'server':<10}{'CPU µs an event: server':>25}{'load':>7}{'cores idle':>12}")
    for name, r in results.items():
        server = "" if r["server_us"] is None else f"{r['server_us']:.2f}"
        idle = "" if r["idle"] is None else f"{r['idle'] * 100:.0f} %"
        print(f"{name:<10}{server:>25}{r['load_us']:>7.2f}{idle:>12}")
    ratio = results["relay"]["events_per_s"] / results["baseline"]["events_per_s"]
    print(f"ratio relay/baseline: {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
