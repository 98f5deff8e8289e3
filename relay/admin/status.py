"""The status page (`GET /status`: one HTML file, no build step, nothing from elsewhere), the
JSON it refreshes from (`GET /status.json`), and the live tail (`GET /tail`: JSON lines, one
per event, as they happen)."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay import __version__
from relay.admin.watch import Tail

if TYPE_CHECKING:
    from relay.app import Relay

TAIL_KEEPALIVE = 15.0  # seconds without events after which the tail sends an empty line


def _metric_samples(metric: Any) -> list[Any]:
    return [s for m in metric.collect() for s in m.samples if s.name.endswith("_total")]


async def status(relay: Relay) -> dict[str, Any]:
    """Every figure of the page; the counters are those of /metrics, read from the same
    registry."""
    now = relay.clock()
    counts = await relay.store.counts()
    oldest = await relay.store.oldest()
    delivered = relay.delivered_totals()
    dead_counter = {s.labels["destination"]: s.value for s in _metric_samples(relay.metrics.dead)}
    retried = {s.labels["destination"]: s.value for s in _metric_samples(relay.metrics.retried)}
    destinations: dict[str, Any] = {}
    for key, dest in relay.config.destinations.items():
        worker = relay.workers.get(key)
        states = counts.get(key, {})
        destinations[key] = {
            **(worker.state if worker is not None else {"state": "stopped"}),
            "rate_limit": dest.rate_limit,
            "queued": states.get("pending", 0) + states.get("leased", 0),
            "in_flight": states.get("leased", 0),
            "dead_letters": states.get("dead", 0),
            "oldest_queued_seconds": (
                None if key not in oldest else round(max(0.0, now - oldest[key]), 1)
            ),
            "delivered": delivered.get(key, 0.0),
            "retried": retried.get(key, 0.0),
            "dead_lettered": dead_counter.get(key, 0.0),
            "rate": [[round(t, 1), round(r, 2)] for t, r in relay.watch.rates(key)],
            "last_errors": [
                {"at": round(t, 3), "error": e} for t, e in relay.watch.errors.get(key, ())
            ],
        }
    sources: dict[str, dict[str, float]] = {}
    for s in _metric_samples(relay.metrics.received):
        name = f"{s.labels['kind']}.{s.labels['source']}"
        sources.setdefault(name, {"queued": 0, "duplicate": 0, "rejected": 0})
        sources[name][s.labels["outcome"]] = s.value
    requests = [
        {**s.labels, "count": s.value} for s in _metric_samples(relay.metrics.http_requests)
    ]
    return {
        "version": __version__,
        "now": round(now, 3),
        "uptime_seconds": round(now - relay.started_at, 1),
        "accepting": relay.accepting,
        "destinations": destinations,
        "sources": sources,
        "requests": requests,
        "tailing": len(relay.watch.tails),
    }


def status_routes(relay: Relay) -> list[web.RouteDef]:
    page = importlib.resources.files("relay.admin").joinpath("status.html").read_bytes()

    async def status_page(request: web.Request) -> web.Response:
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
        )

    async def status_json(request: web.Request) -> web.Response:
        return web.json_response(await status(relay), headers={"Cache-Control": "no-store"})

    async def tail(request: web.Request) -> web.StreamResponse:
        route = request.query.get("route") or None
        if route is not None and route not in {r.name for r in relay.routes}:
            names = ", ".join(r.name for r in relay.routes) or "none"
            return web.json_response(
                {"success": False, "code": "not_found", "message": f"no route {route!r}: {names}"},
                status=404,
            )
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        subscription = relay.watch.subscribe(route)
        try:
            await _stream(response, subscription)
        finally:
            relay.watch.unsubscribe(subscription)
        return response

    return [
        web.get("/status", status_page),
        web.get("/status.json", status_json),
        web.get("/tail", tail),
    ]


async def _stream(response: web.StreamResponse, tail: Tail) -> None:
    lost = 0
    while True:
        try:
            event = await asyncio.wait_for(tail.queue.get(), TAIL_KEEPALIVE)
        except TimeoutError:
            line = b"\n"  # a client gone away shows up here
        else:
            if tail.lost != lost:
                event = {**event, "lost_before": tail.lost - lost}
                lost = tail.lost
            line = json.dumps(event, ensure_ascii=False, default=str).encode() + b"\n"
        try:
            await response.write(line)
        except ConnectionResetError:
            return


_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
)
