"""The composition root: builds the aiohttp app, its store, sinks and workers from a config."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from relay import __version__
from relay.admin.api import Admin, token_middleware
from relay.admin.client import remove_address, write_address
from relay.admin.watch import SAMPLE_SECONDS, Watch, WatchedTransport
from relay.config import Config, compile_config_routes, is_secret_path
from relay.delivery import DestinationWorker, Sink
from relay.destinations.limiter import DestinationLimiter, Limiter, SharesRateLimits
from relay.destinations.registry import Destination, type_of
from relay.destinations.transport import AiohttpTransport, Transport
from relay.errors import ClientError, RelayError, StoreUnavailable
from relay.intake import Intake
from relay.logs import REQUEST_ID, REQUEST_ID_HEADER, quiet_client_errors, request_id
from relay.metrics import CONTENT_TYPE, Metrics
from relay.routing import Routes
from relay.sources.body import BODY_TIMEOUT
from relay.sources.customerio.webhooks import CustomerIOWebhooks
from relay.sources.segment.api import SegmentAPI
from relay.store.base import Store
from relay.store.process import ProcessStore

log = logging.getLogger("relay")


def build_store(config: Config, *, lock_wait: float = 30.0, delivers: bool = True) -> Store:
    """The Redis store when `storage.redis` is set; otherwise the SQLite store, in a
    process of its own (relay.store.process explains why).

    `lock_wait`: how long to wait for another relay process that holds the SQLite store (one
    killed a moment ago finishes its last writes first). `delivers`: False for a `relay`
    command, which must not take a share of the Redis store's partitions."""
    redis = config.storage.redis
    if redis is not None:
        from relay.store.redis.store import RedisStore

        return RedisStore(
            redis.url,
            key_prefix=redis.key_prefix,
            partitions=redis.partitions,
            max_pending=redis.max_pending,
            reclaim_idle=redis.reclaim_idle,
            ownership_ttl=redis.ownership_ttl,
            timeout=redis.timeout,
            require_durable=redis.require_durable,
            share_partitions=delivers,
        )
    sqlite = config.storage.sqlite
    return ProcessStore(
        sqlite.path,
        max_pending=sqlite.max_pending,
        max_size_mb=sqlite.max_size_mb,
        min_free_mb=sqlite.min_free_mb,
        lock_wait=lock_wait,
    )


@dataclass
class Relay:
    """Everything a running relay holds; one per application, no globals.

    `reconfigure` swaps in a new config while running (see relay.reload): everything a
    request or a worker reads is read from here at the time it is needed.
    """

    config: Config
    store: Store
    metrics: Metrics
    transport: Transport
    routes: Routes
    clock: Callable[[], float] = time.time
    workers: dict[str, DestinationWorker] = field(default_factory=dict)
    # Kept across reloads while a destination's rate_limit stays: a Retry-After it was told
    # still holds for the worker that replaces it.
    limiters: dict[str, Limiter] = field(default_factory=dict)
    accepting: bool = False
    segment_api: SegmentAPI | None = None
    customerio_webhooks: CustomerIOWebhooks | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.watch = Watch(self.clock)
        self.started_at = self.clock()
        self.intake = Intake(
            self.store,
            self.routes,
            self.metrics,
            dedup_windows=_dedup_windows(self.config),
            notify=self.notify,
            clock=self.clock,
            observe=lambda kind, source, events, outcomes: self.watch.came_in(
                kind, source, events, outcomes, self.routes
            ),
        )
        self.admin = Admin(self)

    def notify(self, destinations: set[str]) -> None:
        for key in destinations:
            worker = self.workers.get(key)
            if worker is not None:
                worker.notify()

    def new_limiter(self, key: str, rate: float) -> Limiter:
        """A store shared by several instances shares their rate limits too: together they
        stay within one `rate_limit` per destination."""
        if isinstance(self.store, SharesRateLimits):
            return self.store.shared_limiter(key, rate)
        return DestinationLimiter(rate)

    def make_sink(self, dest: Destination) -> Sink | None:
        if dest.missing:
            return None
        limiter = self.limiters.get(dest.key)
        if limiter is None or limiter.rate != dest.rate_limit:
            limiter = self.limiters[dest.key] = self.new_limiter(dest.key, dest.rate_limit)
        self.metrics.rate.labels(dest.key).set(dest.rate_limit)
        transport = WatchedTransport(self.transport, dest.key, self.watch)
        return type_of(dest).sink(dest, transport, limiter, self.metrics, self.clock)

    def make_worker(self, dest: Destination) -> DestinationWorker:
        unconfigured = None
        if dest.missing:
            unconfigured = (
                "not configured: set the environment variable"
                f"{'s' if len(dest.missing) > 1 else ''} {', '.join(dest.missing)}"
                " and restart; its events are kept until then"
            )
        return DestinationWorker(
            dest.key,
            self.make_sink(dest),
            self.store,
            self.metrics,
            concurrency=dest.concurrency,
            lease_size=type_of(dest).lease_size(dest),
            max_age=dest.max_age,
            unconfigured=unconfigured,
            clock=self.clock,
            note_error=self.watch.error,
        )

    async def start(self) -> None:
        await self.store.open()
        for key, dest in self.config.destinations.items():
            worker = self.make_worker(dest)
            self.workers[key] = worker
            worker.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="relay-housekeeping"))
        self._tasks.append(asyncio.create_task(self._sampling(), name="relay-sampling"))
        self.accepting = True

    async def stop(self) -> None:
        self.accepting = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(
            *(w.stop(self.config.server.shutdown_timeout) for w in self.workers.values())
        )
        await self.store.close()
        await self.transport.close()

    async def reconfigure(self, new: Config, routes: Routes) -> list[str]:
        """Switch to a new, already validated config and its compiled routes.

        Routes, source credentials and settings change in one step, without an await, so
        each request sees either the old or the new ones. Then every destination whose
        settings changed gets a new worker: the old one finishes (or, after
        `shutdown_timeout`, gives back) what it has in flight, and the new one picks up
        the queue where it left off; a removed destination's queue stays in the store.
        Settings that need a restart (server address, storage) keep their running values.
        Returns what changed, as short phrases.
        """
        old = self.config
        # Settings that apply while running; the rest of server and storage need a restart.
        live = {"server.shutdown_timeout"}
        restart = [
            name
            for name in (
                *_changed("server", old.server, new.server),
                *_changed("storage", old.storage, new.storage),
                *_changed("admin", old.admin, new.admin),
            )
            if name not in live
        ]
        effective = replace(
            new,
            server=replace(old.server, shutdown_timeout=new.server.shutdown_timeout),
            storage=old.storage,
            admin=old.admin,
        )
        changes = [
            *_route_changes(old, new, self.routes, routes),
            *_changed("sources", old.sources, new.sources),
            *(n for n in _changed("server", old.server, new.server) if n in live),
        ]

        # One synchronous step: no request can see half of it.
        self.config = effective
        self.routes = routes
        self.intake.routes = routes
        self.intake.dedup_windows = _dedup_windows(effective)
        if self.segment_api is not None:
            self.segment_api.configure(effective.sources.segment)
        if self.customerio_webhooks is not None:
            self.customerio_webhooks.configure(effective.sources.customerio)

        before_dest, after_dest = old.destinations, effective.destinations
        removed = [k for k in before_dest if k not in after_dest]
        added = [k for k in after_dest if k not in before_dest]
        changed = [k for k in after_dest if k in before_dest and before_dest[k] != after_dest[k]]
        stopping = [w for k in (*removed, *changed) if (w := self.workers.pop(k, None))]
        await asyncio.gather(*(w.stop(effective.server.shutdown_timeout) for w in stopping))
        for key in removed:
            self.limiters.pop(key, None)
            for gauge in (
                self.metrics.paused,
                self.metrics.rate,
                self.metrics.retrying,
                self.metrics.oldest,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(key)
        for key in (*changed, *added):
            if not self.accepting:
                break  # shutting down: stop() settles what is left
            worker = self.make_worker(after_dest[key])
            self.workers[key] = worker
            worker.start()
            worker.notify()
        changes.extend(f"{k} added" for k in added)
        changes.extend(f"{k} changed" for k in changed)
        changes.extend(f"{k} removed" for k in removed)
        if restart:
            changes.append(
                f"{', '.join(restart)} changed in the file but need a restart"
                " (still using the running values)"
            )
        return changes

    async def _housekeeping(self) -> None:
        # The queue's gauges are there from the start, not only after the first period.
        try:
            await self._count_queue()
        except Exception as exc:
            log.error("counting the queue failed: %s", exc)
        while True:
            await asyncio.sleep(30)
            try:
                await self.store.purge(self.clock())
                await self._count_queue()
            except Exception as exc:
                log.error("housekeeping failed: %s", exc)

    async def _count_queue(self) -> None:
        counts = await self.store.counts()
        oldest = await self.store.oldest()
        now = self.clock()
        # A configured destination with nothing queued shows its zeros.
        for dest in {*self.config.destinations, *counts}:
            states = counts.get(dest, {})
            for state in ("pending", "leased", "dead"):
                self.metrics.queue.labels(dest, state).set(states.get(state, 0))
            self.metrics.oldest.labels(dest).set(max(0.0, now - oldest.get(dest, now)))

    def delivered_totals(self) -> dict[str, float]:
        """Deliveries completed so far, by destination (what /metrics counts)."""
        return {
            sample.labels["destination"]: sample.value
            for metric in self.metrics.delivered.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }

    async def _sampling(self) -> None:
        while True:
            self.watch.sample(self.delivered_totals())
            await asyncio.sleep(SAMPLE_SECONDS)


def _dedup_windows(config: Config) -> dict[str, float]:
    return {
        "segment": config.sources.segment.dedup_window,
        "customerio": config.sources.customerio.dedup_window,
    }


def _route_changes(old: Config, new: Config, before: Routes, after: Routes) -> list[str]:
    """Routes added, removed, edited or moved, by name."""
    old_specs = {r.name: old.routes[r.index] for r in before}
    new_specs = {r.name: new.routes[r.index] for r in after}
    parts = []
    came = [n for n in new_specs if n not in old_specs]
    gone = [n for n in old_specs if n not in new_specs]
    edited = [n for n in new_specs if n in old_specs and old_specs[n] != new_specs[n]]
    if came:
        parts.append("routes added: " + ", ".join(came))
    if edited:
        parts.append("routes changed: " + ", ".join(edited))
    if gone:
        parts.append("routes removed: " + ", ".join(gone))
    kept_old = [n for n in old_specs if n in new_specs]
    kept_new = [n for n in new_specs if n in old_specs]
    if kept_old != kept_new:
        parts.append("routes reordered")
    return parts


def _changed(prefix: str, old: Any, new: Any) -> list[str]:
    """The dotted names of the settings that differ between two values of one section."""
    names = []
    for f in dataclasses.fields(old):
        if not f.compare:
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(before):
            names.extend(_changed(f"{prefix}.{f.name}", before, after))
        elif before != after:
            names.append(f"{prefix}.{f.name}")
    return names


RELAY = web.AppKey("relay", Relay)
LINGERING = 2.0
# A request's id and when its head had arrived (time.monotonic()), set by request_middleware.
REQUEST_ID_KEY = web.RequestKey("request_id", str)
STARTED_KEY = web.RequestKey("started", float)
# The route label of a request that matched no route: never its path, which is the
# client's to choose (a metric's label values must stay few).
UNMATCHED = "unmatched"


def route_path(request: web.Request) -> str:
    """The canonical path of the route a request matched (`/webhooks/customerio/{source}`),
    the path of a known route asked with the wrong method, or `unmatched`."""
    match_info = request.match_info
    resource = match_info.route.resource
    if resource is not None:
        return resource.canonical
    if isinstance(getattr(match_info, "http_exception", None), web.HTTPMethodNotAllowed):
        for known in request.app.router.resources():
            if isinstance(known, web.PlainResource) and known.canonical == request.path:
                return known.canonical
    return UNMATCHED


@web.middleware
async def request_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The outermost middleware: gives the request its id, for every line logged while it is
    handled (the contextvar is not reset: the request runs in a task of its own, and
    aiohttp's own line about a fault, written after the handler, must carry it too). The
    answer, whoever makes it, gets the id and is counted in `_answered`."""
    rid = request_id(request.headers.get(REQUEST_ID_HEADER))
    REQUEST_ID.set(rid)
    request[REQUEST_ID_KEY] = rid
    request[STARTED_KEY] = time.monotonic()
    return await handler(request)


async def _answered(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer as it goes out: refusals, the middlewares' own answers and aiohttp's
    (a 500 for a fault) included."""
    rid = request.get(REQUEST_ID_KEY)
    if rid is None:  # not through the middlewares
        return
    response.headers[REQUEST_ID_HEADER] = rid
    path = route_path(request)
    metrics = request.app[RELAY].metrics
    metrics.http_requests.labels(path, str(response.status)).inc()
    metrics.http_request_seconds.labels(path).observe(time.monotonic() - request[STARTED_KEY])


def _error_body(code: str, message: str) -> dict[str, Any]:
    # Segment's Python library reads code/message, its Ruby library reads error.
    return {"success": False, "code": code, "message": message, "error": message}


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except (ClientError, StoreUnavailable) as exc:  # the client's mistake, or the store's 503
        # Only at DEBUG: a client that keeps getting it wrong must not flood the log. The
        # route's canonical path, not the request's: a path may carry a write key.
        log.debug(
            "refused %s %s: %d %s", request.method, route_path(request), exc.status, exc.message
        )
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        response = web.json_response(
            _error_body(exc.code, exc.message), status=exc.status, headers=headers
        )
        if isinstance(exc, ClientError) and exc.close_connection:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status, "invalid_request"
        )
        message = {
            404: f"no endpoint at {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        return web.json_response(
            _error_body(code, message),
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )


_CORS_PREFIX = "/v1/"


@web.middleware
async def cors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """analytics.js loads its settings and posts from browsers on other origins; answer
    preflights and allow them.

    Outside the error middleware, so that refusals (401, 400, 413, 503) carry the headers
    too: without them a browser reports a network error instead of the status, and
    analytics.js retries an event relay refused instead of dropping it.
    """
    if not request.path.startswith(_CORS_PREFIX):
        return await handler(request)
    origin = request.headers.get("Origin", "*")
    cors = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "Retry-After",
        "Vary": "Origin",
    }
    if request.method == "OPTIONS":
        cors.update(
            {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "Content-Type, Authorization"
                ),
                "Access-Control-Max-Age": "86400",
            }
        )
        return web.Response(status=204, headers=cors)
    response = await handler(request)
    # A handler's own Vary (the settings answer varies by Host) is kept, Origin added to it.
    vary = response.headers.get("Vary")
    if vary is not None:
        cors["Vary"] = vary if "origin" in vary.lower() else f"{vary}, Origin"
    response.headers.update(cors)
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """200 while new events are taken; 503, with the reason, whenever they would be refused."""
    relay = request.app[RELAY]
    problem = (
        await relay.store.write_problem()
        if relay.accepting
        else "relay is starting or shutting down"
    )
    destinations = {key: w.state for key, w in relay.workers.items()}
    body: dict[str, Any] = {
        "status": "ready" if problem is None else "unavailable",
        "store": "writable" if problem is None else "unavailable",
        "destinations": destinations,
    }
    if problem is not None:
        body["reason"] = problem
    return web.json_response(body, status=200 if problem is None else 503)


async def metrics(request: web.Request) -> web.Response:
    data = request.app[RELAY].metrics.render()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE})


def create_app(
    config: Config,
    *,
    transport: Transport | None = None,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    relay = Relay(
        config=config,
        store=store or build_store(config),
        metrics=Metrics(),
        transport=transport or AiohttpTransport(),
        routes=compile_config_routes(config),
        clock=clock,
    )
    # Bodies are read and decompressed by relay.sources.body, with per-endpoint caps; aiohttp's
    # own decompression is off for every runner that serves this app.
    # keepalive_timeout bounds how long a connection may go without a complete request head,
    # from its start or from the last answer: idle, or sending its headers slowly. After an
    # answer given before the whole body came (a 413, a 408), the rest is read for at most
    # LINGERING seconds, so that the client sees the answer, then the connection is closed.
    app = web.Application(
        # request_middleware first, so that every line logged while handling a request,
        # in the other two as well, carries its id.
        middlewares=[request_middleware, cors_middleware, errors_middleware],
        client_max_size=8 * 1024 * 1024,
        handler_args={
            "auto_decompress": False,
            "keepalive_timeout": config.server.idle_timeout,
            "lingering_time": LINGERING,
        },
    )
    app[RELAY] = relay
    app[BODY_TIMEOUT] = config.server.body_timeout
    app.on_response_prepare.append(_answered)
    quiet_client_errors()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await relay.start()
        yield
        await relay.stop()

    app.cleanup_ctx.append(lifecycle)

    segment = SegmentAPI(relay.intake, config.sources.segment)
    app.add_routes(segment.routes())
    cio = CustomerIOWebhooks(relay.intake, config.sources.customerio)
    app.add_routes(cio.routes())
    # Kept on the relay so that a reload can hand them new credentials and settings.
    relay.segment_api = segment
    relay.customerio_webhooks = cio
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
        ]
    )
    return app


def create_admin_app(relay: Relay) -> web.Application:
    """The operator endpoint: the status page and its JSON, the live tail, and what the
    `relay dlq`, `relay import` and `relay tail` commands ask (relay.admin)."""
    from relay.admin.api import IMPORT_MAX_BYTES
    from relay.admin.status import status_routes

    app = web.Application(
        middlewares=[token_middleware(relay.config.admin.token), errors_middleware],
        client_max_size=IMPORT_MAX_BYTES,
    )
    app.add_routes(relay.admin.routes())
    app.add_routes(status_routes(relay))
    return app


class AdminListenError(RelayError):
    """The admin endpoint's address cannot be listened on."""


async def start_admin(relay: Relay) -> web.AppRunner:
    """Listen on the admin address, and write the address it got beside the store, where
    the `relay` commands look for it."""
    runner = web.AppRunner(
        create_admin_app(relay), handle_signals=False, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    admin = relay.config.admin
    try:
        await web.TCPSite(runner, admin.host, admin.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise AdminListenError(
            f"cannot listen on {admin.host}:{admin.port} (admin.host, admin.port):"
            f" {exc.strerror or exc}"
        ) from None
    host, port = runner.addresses[0][:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    write_address(relay.config, url)
    log.info(
        "admin endpoint on %s: status page %s/status; relay dlq, import and tail use it", url, url
    )
    return runner


async def stop_admin(relay: Relay, runner: web.AppRunner) -> None:
    remove_address(relay.config)
    await runner.cleanup()


def describe_missing(config: Config) -> list[str]:
    """Plain lines about unset environment variables (names only, never values)."""
    lines = []
    by_name: dict[tuple[str, bool], list[str]] = {}
    for m in config.missing:
        by_name.setdefault((m.name, m.empty), []).append(
            ".".join(str(p) for p in m.path) + (f" (line {m.line})" if m.line else "")
        )
    for (name, empty), places in sorted(by_name.items()):
        state = "is set but empty" if empty else "is not set"
        lines.append(f"environment variable {name} {state}; used by {', '.join(places)}")
    if config.sources.segment.webhook_secret is None:
        lines.append(
            "POST /webhooks/segment accepts unsigned events: set sources.segment.webhook_secret"
            " to the shared secret of Segment's Webhooks destination"
        )
    for m in config.defaulted:
        where = ".".join(str(p) for p in m.path)
        if is_secret_path(m.path):
            lines.append(
                f"environment variable {m.name} is not set; {where} uses the default written"
                " in the config, which is fine on a laptop but not in production"
            )
    return lines
