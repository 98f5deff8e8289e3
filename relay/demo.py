"""`relay demo`: relay with loopback stand-ins for Customer.io and Segment, fed sample
traffic both ways; prints what each side received and where to look, then stops.

relay runs in this process, built as `relay serve` builds it: a config file written to a
temporary directory, checked and loaded by relay.config, `create_app`, an aiohttp runner.
The stand-ins are small aiohttp servers that answer what relay sends as Customer.io's Track
API and Segment's HTTP Tracking API do, and record it. What must arrive is not written down
here: it is what relay's own dry run (`relay routes test`) says relay sends for the same
samples, so the demo holds the live pipeline to it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__
from relay.app import RELAY, Relay, create_app, start_admin, stop_admin
from relay.config import Config, check_config
from relay.dryrun import dry_run_async
from relay.errors import RelayError, StoreCannotOpen, StoreInUse
from relay.routing import Routes
from relay.runtime import run as run_loop
from relay.signatures import customerio_signature

# The stand-ins' credentials: demo values, not secrets (a real config takes its credentials
# from the environment, as config/relay.yaml does).
WRITE_KEY = "demo-write-key"
SIGNING_KEY = "demo-signing-key"
SITE_ID = "demo-site"
API_KEY = "demo-api-key-0000000"  # Customer.io API keys are 20 characters (or 64)
SEGMENT_OUT_KEY = "demo-segment-write-key"

CUSTOMERIO = "customerio.main"
SEGMENT = "segment.main"

# An answer: HTTP status and JSON body.
Answer = tuple[int, Any]


# --- the stand-ins -------------------------------------------------------------------------


def _basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def customerio_refusal(op: Any) -> dict[str, str] | None:
    """Why Customer.io refuses a v2 op, as its 207 names it, or None.

    The stand-in knows nobody by `cio_id`: Customer.io makes those ids itself, so an op
    addressed to one it never made reaches no person and is refused."""
    identifiers = op.get("identifiers") if isinstance(op, dict) else None
    if isinstance(identifiers, dict) and "cio_id" in identifiers:
        return {
            "reason": "not_found",
            "field": "identifiers.cio_id",
            "message": f"no person has cio_id {identifiers['cio_id']}",
        }
    return None


# The classic v1 calls relay can send (PUT /api/v1/customers/{id}, …), by method.
_V1_CALLS = {
    "PUT": re.compile(r"/api/v1/customers/[^/]+(/devices)?"),
    "POST": re.compile(
        r"/api/v1/(customers/[^/]+/(events|suppress|unsuppress)|events|merge_customers)"
    ),
    "DELETE": re.compile(r"/api/v1/customers/[^/]+(/devices/[^/]+)?"),
}


def customerio_answer(method: str, path: str, authorization: str | None, body: Any) -> Answer:
    """What Customer.io's Track API answers to one of relay's requests (pure)."""
    if _basic_credentials(authorization) != (SITE_ID, API_KEY):
        return 401, {"meta": {"error": "Unauthorized request"}}
    if (method, path) == ("POST", "/api/v2/batch"):
        ops = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(ops, list):
            return 400, {"errors": [{"reason": "invalid", "message": "expected a batch array"}]}
        errors = [
            {"batch_index": i, **refusal}
            for i, op in enumerate(ops)
            if (refusal := customerio_refusal(op)) is not None
        ]
        return (207, {"errors": errors}) if errors else (200, {})
    if (method, path) == ("POST", "/api/v2/entity"):
        refusal = customerio_refusal(body)
        return (400, {"errors": [refusal]}) if refusal else (200, {})
    pattern = _V1_CALLS.get(method)
    if pattern is not None and pattern.fullmatch(path.partition("?")[0]):
        return 200, {}
    return 404, {"meta": {"error": f"no endpoint {method} {path}"}}


def segment_answer(method: str, path: str, authorization: str | None, body: Any) -> Answer:
    """What Segment's HTTP Tracking API answers to one of relay's requests (pure)."""
    credentials = _basic_credentials(authorization)
    if credentials is None or credentials[0] != SEGMENT_OUT_KEY:
        return 401, {"success": False, "message": "invalid write key"}
    if (method, path) != ("POST", "/v1/batch"):
        return 404, {"success": False, "message": f"no endpoint {method} {path}"}
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        return 400, {"success": False, "message": "expected a batch array"}
    return 200, {"success": True}


@dataclass(frozen=True)
class Received:
    """A request a stand-in received (its path as the bytes on the wire had it), and what
    it answered."""

    method: str
    path: str
    body: Any
    status: int
    answer: Any


# What one request carries, item by item (see customerio_items).
Items = Callable[[str, str, Any], list[tuple[str, str]]]


class StandIn:
    """A loopback HTTP server that answers as `answer` says and records every request;
    `GET /` shows what it received, as JSON. `items` splits a request into what it carries
    (ops, messages)."""

    def __init__(
        self, name: str, answer: Callable[[str, str, str | None, Any], Answer], items: Items
    ) -> None:
        self.name = name
        self.answer = answer
        self.items = items
        self.received: list[Received] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    def accepted_items(self) -> list[tuple[str, str]]:
        """Every item of the requests it accepted (2xx; a request that failed arrives again
        when relay retries it): (its exact content, its short form)."""
        return [
            item
            for r in self.received
            if 200 <= r.status < 300
            for item in self.items(r.method, r.path, r.body)
        ]

    def lines(self, start: int = 0) -> list[str]:
        """The requests received from the `start`-th on, each with its items in short form."""
        out = []
        for r in self.received[start:]:
            answer = "" if r.status == 200 else f" {json.dumps(r.answer)}"
            out.append(f"  {r.method} {r.path} -> {r.status}{answer}")
            out.extend(f"      {line}" for _, line in self.items(r.method, r.path, r.body))
        return out

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method == "GET" and request.path == "/":
            return web.json_response([dataclasses.asdict(r) for r in self.received])
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        status, payload = self.answer(
            request.method, request.raw_path, request.headers.get("Authorization"), body
        )
        self.received.append(Received(request.method, request.raw_path, body, status, payload))
        return web.json_response(payload, status=status)

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = _url(self._runner)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


# --- what is sent --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A request to relay's Tracking API, as Segment's libraries send it."""

    path: str
    body: dict[str, Any]
    note: str = ""

    @property
    def messages(self) -> list[dict[str, Any]]:
        batch = self.body.get("batch")
        return list(batch) if isinstance(batch, list) else [self.body]


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def sample_calls(now: float) -> list[Call]:
    """One of each call, a batch, a call relay refuses at the door and one Customer.io
    refuses. Every message has its `messageId` and `timestamp`, as the libraries give them."""
    library = {"library": {"name": "relay-demo", "version": __version__}}

    def msg(kind: str, n: int, **fields: Any) -> dict[str, Any]:
        return {
            "type": kind,
            **fields,
            "messageId": f"demo-{n}",
            "timestamp": _iso(now),
            "context": library,
        }

    ada = "ada"
    return [
        Call(
            "/v1/identify",
            msg(
                "identify",
                1,
                userId=ada,
                traits={"email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro"},
            ),
        ),
        Call(
            "/v1/track",
            msg(
                "track",
                2,
                userId=ada,
                event="Order Completed",
                properties={"order_id": "o-1001", "total": 42.5, "currency": "EUR"},
            ),
        ),
        Call(
            "/v1/page",
            msg(
                "page",
                3,
                userId=ada,
                name="Pricing",
                properties={"url": "https://example.com/pricing", "title": "Pricing"},
            ),
        ),
        Call(
            "/v1/group",
            msg("group", 4, userId=ada, groupId="acme", traits={"name": "Acme", "seats": 25}),
        ),
        Call(
            "/v1/batch",
            {
                "batch": [
                    msg(
                        "identify",
                        5,
                        userId="grace",
                        traits={"email": "grace@example.com", "name": "Grace Hopper"},
                    ),
                    msg(
                        "track", 6, userId="grace", event="Signed Up", properties={"plan": "trial"}
                    ),
                    msg("screen", 7, anonymousId="anon-5f1c", name="Onboarding"),
                ]
            },
        ),
        Call(
            "/v1/track",
            msg("track", 8, userId=ada, properties={"total": 10}),
            "no event name: relay refuses it at the door",
        ),
        Call(
            "/v1/track",
            msg("track", 9, userId="cio_0badc0ffee", event="Plan Upgraded"),
            "a cio_id no person has: Customer.io refuses it",
        ),
    ]


def sample_webhooks(now: float) -> list[dict[str, Any]]:
    """Customer.io reporting webhooks about an email to Ada: delivered, opened, clicked."""
    data = {
        "customer_id": "ada",
        "identifiers": {"id": "ada", "email": "ada@example.com"},
        "email_address": "ada@example.com",
        "delivery_id": "demo-delivery-1",
        "campaign_id": 7,
        "subject": "Welcome aboard",
    }
    link = {"href": "https://example.com/start", "link_id": 1}
    return [
        {
            "event_id": f"demo-email-{metric}",
            "object_type": "email",
            "metric": metric,
            "timestamp": int(now) + i,
            "data": {**data, **(link if metric == "clicked" else {})},
        }
        for i, metric in enumerate(("delivered", "opened", "clicked"))
    ]


# --- short forms, for the terminal -----------------------------------------------------------


def _person(message: Mapping[str, Any]) -> str:
    for name in ("userId", "anonymousId"):
        if message.get(name):
            return f"{name}={message[name]}"
    return "(no person)"


def call_line(message: Mapping[str, Any]) -> str:
    """A Segment message: its type, person and name."""
    kind = str(message.get("type", "?"))
    parts = [kind, _person(message)]
    if kind == "track":
        parts.append(json.dumps(message["event"]) if message.get("event") else "(no event)")
    elif kind in ("page", "screen") and message.get("name"):
        parts.append(json.dumps(message["name"]))
    elif kind == "group":
        parts.append(f"groupId={message.get('groupId')}")
    traits = message.get("traits")
    if kind in ("identify", "group") and isinstance(traits, dict) and traits:
        parts.append("traits: " + ", ".join(traits))
    return "  ".join(parts)


def webhook_line(webhook: Mapping[str, Any]) -> str:
    data = webhook.get("data") or {}
    activity = f"{webhook.get('object_type')} {webhook.get('metric')}"
    return f"{activity}  customer_id={data.get('customer_id')}"


def _identifiers(value: Any) -> str:
    if not isinstance(value, dict):
        return "?"
    return " ".join(f"{k}={v}" for k, v in value.items())


def op_line(op: Any) -> str:
    """A Customer.io v2 op: its type and action, whom it is about, and its name."""
    if not isinstance(op, dict):
        return json.dumps(op)
    head = f"{op.get('type')} {op.get('action')}"
    parts = [f"{head:<18}", _identifiers(op.get("identifiers"))]
    if op.get("name"):
        parts.append(json.dumps(op["name"]))
    for rel in op.get("cio_relationships") or ():
        if isinstance(rel, dict):
            parts.append(f"with {_identifiers(rel.get('identifiers'))}")
    if op.get("action") == "merge":
        parts.append(f"{_identifiers(op.get('primary'))} <- {_identifiers(op.get('secondary'))}")
    return "  ".join(parts)


def customerio_items(method: str, path: str, body: Any) -> list[tuple[str, str]]:
    """What one request to Customer.io carries, item by item, each as (key, short form): a
    v2 batch's ops, or the request itself (an entity op, a v1 call). The key is the item's
    exact content, to compare what arrived with what was expected."""
    ops = body.get("batch") if path == "/api/v2/batch" and isinstance(body, dict) else None
    if isinstance(ops, list):
        return [(_key(method, path, op), op_line(op)) for op in ops]
    if path.startswith("/api/v2/"):
        return [(_key(method, path, body), op_line(body))]
    name = f"  {json.dumps(body['name'])}" if isinstance(body, dict) and "name" in body else ""
    return [(_key(method, path, body), f"{method} {path}{name}")]


def segment_items(method: str, path: str, body: Any) -> list[tuple[str, str]]:
    """The messages of one request to Segment, each as (key, short form)."""
    batch = body.get("batch") if isinstance(body, dict) else None
    messages = batch if isinstance(batch, list) else []
    return [(_key(method, path, m), call_line(m)) for m in messages if isinstance(m, dict)]


def _key(method: str, path: str, body: Any) -> str:
    return f"{method} {path} {json.dumps(body, sort_keys=True)}"


# --- what must arrive ----------------------------------------------------------------------


@dataclass
class Expected:
    """What the stand-ins must receive (item keys, with their short forms), and how many
    deliveries each destination must settle, and how many of them as dead letters."""

    customerio: Counter[str] = field(default_factory=Counter)
    segment: Counter[str] = field(default_factory=Counter)
    lines: dict[str, str] = field(default_factory=dict)
    deliveries: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)


def expected_from(dry_run: list[dict[str, Any]]) -> Expected:
    """What `relay routes test` says relay sends, as the stand-ins will see it; a delivery
    whose ops the Customer.io stand-in refuses is expected as a dead letter (pure)."""
    out = Expected()
    for entry in dry_run:
        for delivery in entry.get("deliveries", ()):
            destination = delivery["destination"]
            out.deliveries[destination] += 1
            refused = False
            for request in delivery.get("requests", ()):
                method, path, body = request["method"], request["path"], request["body"]
                if destination.startswith("customerio."):
                    items = customerio_items(method, path, body)
                    ops = body.get("batch", [body]) if path.startswith("/api/v2/") else []
                    refused = refused or any(customerio_refusal(op) for op in ops)
                    out.customerio.update(k for k, _ in items)
                else:
                    items = segment_items(method, path, body)
                    out.segment.update(k for k, _ in items)
                out.lines.update(items)
            if refused or "rejected" in delivery:
                out.dead[destination] += 1
    return out


def metric_counts(text: str) -> dict[str, Counter[str]]:
    """relay_*_events_total per destination from /metrics: {"delivered": {dest: n}, …}."""
    counts: dict[str, Counter[str]] = {"delivered": Counter(), "dead_lettered": Counter()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name in counts:
                if sample.name == f"relay_{name}_events_total":
                    counts[name][sample.labels["destination"]] += int(sample.value)
    return counts


def still_missing(
    expected: Expected,
    customerio: Iterable[tuple[str, str]],
    segment: Iterable[tuple[str, str]],
    store_counts: Mapping[str, Mapping[str, int]],
    metrics: Mapping[str, Counter[str]],
) -> list[str]:
    """What has not arrived yet, or arrived unexpected, in plain lines; [] when all is as
    expected (pure). `customerio` and `segment` are the items the stand-ins accepted, as
    (key, short form)."""
    problems = []
    for name, want, received in (
        ("Customer.io", expected.customerio, list(customerio)),
        ("Segment", expected.segment, list(segment)),
    ):
        got = Counter(k for k, _ in received)
        lines = {**dict(received), **expected.lines}
        for key in (want - got).elements():
            problems.append(f"the {name} stand-in has not received: {lines[key]}")
        for key in (got - want).elements():
            problems.append(f"the {name} stand-in received what was not expected: {lines[key]}")
    for destination in sorted(expected.deliveries):
        states = dict(store_counts.get(destination, {}))
        dead = states.pop("dead", 0)
        for state, n in sorted(states.items()):
            problems.append(f"relay's store still has {n} {state} deliveries to {destination}")
        if dead != expected.dead[destination]:
            problems.append(
                f"relay's store has {dead} dead letters for {destination},"
                f" expected {expected.dead[destination]}"
            )
        done = expected.deliveries[destination] - expected.dead[destination]
        if metrics["delivered"][destination] != done:
            problems.append(
                f"/metrics counts {metrics['delivered'][destination]} deliveries to"
                f" {destination}, expected {done}"
            )
        if metrics["dead_lettered"][destination] != expected.dead[destination]:
            problems.append(
                f"/metrics counts {metrics['dead_lettered'][destination]} dead letters for"
                f" {destination}, expected {expected.dead[destination]}"
            )
    return problems


# --- where to look -------------------------------------------------------------------------


@dataclass(frozen=True)
class Places:
    """Where a running demo is."""

    relay: str
    admin: str
    customerio: str
    segment: str
    config: Path
    samples: Path


def where_to_look(places: Places) -> list[tuple[str, str]]:
    """Where to see what the demo did: (a URL or a command, what it shows). Every way in is
    listed here, once."""
    config = places.config
    return [
        (
            f"{places.relay}/metrics",
            "counters: events received, delivered, dead-lettered; requests to each destination",
        ),
        (
            f"{places.admin}/status",
            "the status page: each destination's state, queue and rate, each source's counts",
        ),
        (f"{places.relay}/readyz", "whether relay takes events, and the state of each destination"),
        (
            f"{places.customerio}/  and  {places.segment}/",
            "what the Customer.io and the Segment stand-ins received, as JSON",
        ),
        (
            f"relay dlq list --config {config}",
            "the dead letters (and any rejected messages), through the running relay",
        ),
        (
            f"relay tail --config {config}",
            "what comes in, which routes take it, and what goes out, live",
        ),
        (
            f"relay routes test --config {config} {places.samples}",
            "what relay sends for each sample message, worked out offline",
        ),
    ]


# --- the demo ------------------------------------------------------------------------------


def config_text(directory: Path, customerio_url: str, segment_url: str) -> str:
    """The demo's config: relay on a free loopback port, its store in `directory`, the
    stand-ins as destinations, and the smallest routes both ways."""
    db = json.dumps(str(directory / "relay.db"))
    return f"""\
# Written by `relay demo`: relay on loopback, with stand-ins for Customer.io and Segment.
# The credentials are the stand-ins' demo values; a real config takes them from the
# environment (api_key: "${{CIO_API_KEY}}"), as config/relay.yaml does.
server: {{host: 127.0.0.1, port: 0, shutdown_timeout: 5s}}
storage:
  sqlite: {{path: {db}}}
sources:
  segment:
    write_keys: {{demo: "{WRITE_KEY}"}}
  customerio:
    signing_keys: {{demo: "{SIGNING_KEY}"}}
destinations:
  customerio:
    main:
      site_id: "{SITE_ID}"
      api_key: "{API_KEY}"
      base_url: "{customerio_url}"
      timeout: 5s
  segment:
    main:
      write_key: "{SEGMENT_OUT_KEY}"
      base_url: "{segment_url}"
      timeout: 5s
routes:
  - name: everything-to-customerio
    from: segment
    to: [{CUSTOMERIO}]
  - name: email-activity-to-segment
    from: customerio
    to: [{SEGMENT}]
"""


def _say(line: str = "") -> None:
    print(line, flush=True)


async def _post(
    session: aiohttp.ClientSession, url: str, raw: bytes, headers: dict[str, str]
) -> Answer:
    async with session.post(url, data=raw, headers=headers) as resp:
        text = await resp.text()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


async def _send_calls(session: aiohttp.ClientSession, relay_url: str, calls: list[Call]) -> None:
    _say(f"Sent to relay as Segment's libraries send it (HTTP Basic, write key {WRITE_KEY}):")
    headers = {
        "Authorization": _basic(WRITE_KEY),
        "Content-Type": "application/json",
        "User-Agent": f"relay-demo/{__version__}",
    }
    for call in calls:
        status, body = await _post(
            session, relay_url + call.path, json.dumps(call.body).encode(), headers
        )
        what = (
            call_line(call.body) if "batch" not in call.body else f"{len(call.messages)} messages"
        )
        note = f"   ({call.note})" if call.note else ""
        _say(f"  POST {call.path:<13} {what}  -> {status}{note}")
        if "batch" in call.body:
            for message in call.messages:
                _say(f"      {call_line(message)}")
        if (status, body) != (200, {"success": True}):
            _say(f"      {json.dumps(body)}")


async def _send_webhooks(
    session: aiohttp.ClientSession, relay_url: str, webhooks: list[dict[str, Any]]
) -> None:
    _say(
        "Sent to relay as Customer.io's reporting webhooks"
        " (signed: X-CIO-Timestamp, X-CIO-Signature):"
    )
    for webhook in webhooks:
        raw = json.dumps(webhook).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-CIO-Timestamp": timestamp,
            "X-CIO-Signature": customerio_signature(SIGNING_KEY, timestamp, raw),
        }
        status, body = await _post(session, relay_url + "/webhooks/customerio", raw, headers)
        _say(f"  POST /webhooks/customerio  {webhook_line(webhook)}  -> {status}")
        if (status, body) != (200, {"success": True}):
            _say(f"      {json.dumps(body)}")


@dataclass
class _Running:
    """relay and the stand-ins, up."""

    relay: Relay
    customerio: StandIn
    segment: StandIn
    places: Places


def _load(config_path: Path) -> tuple[Config, Routes]:
    """The demo's config, checked as `relay serve` checks it (the environment aside)."""
    checked = check_config(str(config_path), {})
    if checked.config is None or checked.routes is None:  # the demo's own mistake
        raise RelayError("; ".join(str(p) for p in checked.problems))
    return checked.config, checked.routes


async def _start_relay(config: Config) -> tuple[web.AppRunner, web.AppRunner, str, str]:
    """relay as `relay serve` builds it, with its admin endpoint, on ports the system gives:
    (runner, admin runner, relay's URL, the admin endpoint's URL)."""
    runner = web.AppRunner(
        create_app(config),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=config.server.shutdown_timeout,
    )
    await runner.setup()  # opens the store and starts the delivery workers
    try:
        await web.TCPSite(runner, config.server.host, config.server.port).start()
        admin = await start_admin(runner.app[RELAY])
    except BaseException:
        await runner.cleanup()
        raise
    return runner, admin, _url(runner), _url(admin)


async def _wait(
    session: aiohttp.ClientSession,
    running: _Running,
    expected: Expected,
    timeout: float,
    stop: asyncio.Event,
) -> list[str] | None:
    """Poll the stand-ins, relay's store and its /metrics until everything expected has
    arrived: [] then, or what has not after `timeout`; None when interrupted."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await running.relay.store.counts()
        async with session.get(running.places.relay + "/metrics") as resp:
            metrics = metric_counts(await resp.text())
        problems = still_missing(
            expected,
            running.customerio.accepted_items(),
            running.segment.accepted_items(),
            counts,
            metrics,
        )
        if not problems or time.monotonic() > deadline:
            return problems
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
        if stop.is_set():
            return None


async def _report(running: _Running) -> None:
    for stand_in in (running.customerio, running.segment):
        _say(f"The {stand_in.name} stand-in received ({len(stand_in.received)} requests):")
        for line in stand_in.lines():
            _say(line)
    _say("Dead letters (what relay gave up on, kept with the reason):")
    for dead in await running.relay.store.dead_letters():
        what = call_line(dead.message) if dead.kind == "segment" else dead.kind
        _say(f"  {dead.destination}  {what}")
        _say(f"      {dead.reason}")
    _say()
    _say("Where to look:")
    for place, what in where_to_look(running.places):
        _say(f"  {place}")
        _say(f"      {what}")


async def _keep_running(running: _Running, stop: asyncio.Event) -> None:
    """Until `stop`: print what the stand-ins receive from now on."""
    _say()
    _say("relay and the stand-ins keep running; try the commands above. Send an event:")
    _say(
        f"  curl -s -u {WRITE_KEY}: {running.places.relay}/v1/track"
        """ -H 'Content-Type: application/json' -d '{"userId":"ada","event":"Tried It"}'"""
    )
    _say("Press Ctrl-C to stop (the files are removed then).")
    stand_ins = (running.customerio, running.segment)
    seen = [len(s.received) for s in stand_ins]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        for i, stand_in in enumerate(stand_ins):
            lines = stand_in.lines(seen[i])
            if lines:
                _say(f"The {stand_in.name} stand-in received:")
            for line in lines:
                _say(line)
            seen[i] = len(stand_in.received)
    _say("Stopping: relay finishes what it is sending, then the files are removed.")


async def _run(
    running: _Running,
    calls: list[Call],
    webhooks: list[dict[str, Any]],
    expected: Expected,
    timeout: float,
    stop: asyncio.Event,
) -> int | None:
    """Send the samples, wait for them, print what arrived; the exit code, or None when
    interrupted."""
    places = running.places
    _say(f"relay {__version__} demo: relay, and stand-ins for Customer.io and Segment, on loopback")
    _say(f"  relay                 {places.relay}")
    _say(f"  status page           {places.admin}/status")
    _say(f"  Customer.io stand-in  {places.customerio}   (Track API; site id {SITE_ID})")
    _say(f"  Segment stand-in      {places.segment}   (HTTP Tracking API)")
    _say(f"  files                 {places.config.parent}   (config, store; removed at the end)")
    _say()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await _send_calls(session, places.relay, calls)
        await _send_webhooks(session, places.relay, webhooks)
        _say()
        problems = await _wait(session, running, expected, timeout, stop)
    if problems is None:
        return None
    if not problems:
        elapsed = time.monotonic() - started
        _say(f"Everything arrived as expected, {elapsed:.1f} s after the first request.")
        _say()
    await _report(running)
    if problems:
        _say()
        _say(f"relay demo: not everything arrived within {timeout:g} s:")
        for problem in problems:
            _say(f"  {problem}")
        return 1
    return 0


async def _demo(directory: Path, keep_running: bool, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    customerio = StandIn("Customer.io", customerio_answer, customerio_items)
    segment = StandIn("Segment", segment_answer, segment_items)
    runner: web.AppRunner | None = None
    admin: web.AppRunner | None = None
    try:
        await customerio.start()
        await segment.start()
        config_path = directory / "relay.yaml"
        config_path.write_text(config_text(directory, customerio.url, segment.url))
        now = time.time()
        calls, webhooks = sample_calls(now), sample_webhooks(now)
        samples = [m for c in calls for m in c.messages] + webhooks
        samples_path = directory / "samples.jsonl"
        samples_path.write_text("".join(json.dumps(m) + "\n" for m in samples))
        config, routes = _load(config_path)
        # What must arrive: what `relay routes test` says the samples become.
        expected = expected_from(await dry_run_async(config, routes, samples, now))
        try:
            runner, admin, relay_url, admin_url = await _start_relay(config)
        except (StoreInUse, StoreCannotOpen) as exc:
            print(f"relay demo: cannot open the store: {exc.message}", file=sys.stderr)
            return 1
        places = Places(
            relay_url, admin_url, customerio.url, segment.url, config_path, samples_path
        )
        running = _Running(runner.app[RELAY], customerio, segment, places)
        code = await _run(running, calls, webhooks, expected, timeout, stop)
        if code is None:
            _say("Interrupted: stopping.")
            return 130
        if keep_running:
            await _keep_running(running, stop)
        elif code == 0:
            _say(
                "These ended with the demo; `relay demo --keep-running` keeps them up until Ctrl-C."
            )
        return code
    finally:
        if admin is not None and runner is not None:
            await stop_admin(runner.app[RELAY], admin)
        if runner is not None:
            await runner.cleanup()
        await segment.close()
        await customerio.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_demo(*, keep_running: bool = False, timeout: float = 15.0) -> int:
    """Run the demo in a temporary directory, removed at the end; the exit code."""
    directory = Path(tempfile.mkdtemp(prefix="relay-demo-"))
    try:
        return run_loop(_demo(directory, keep_running, timeout))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
