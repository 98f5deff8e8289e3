"""Segment's own client libraries, unmodified, against relay.

- `@segment/analytics-node` run with Node.js (tests/clients/node_client.mjs);
- analytics.js (`@segment/analytics-next`) on a local page in headless Chromium, driven by
  `playwright-core` (tests/clients/browser_client.mjs), its bundle served from loopback;
- `segment-analytics-python`, in this process.

Each client talks to relay through `Recorder`, a loopback reverse proxy that keeps every
request as the library sent it and relay's answer, so the tests can say what each library
sends (paths, headers, bodies) as well as what reaches the Customer.io and Segment stand-ins.

The npm packages are pinned in tests/clients/package-lock.json (`npm ci --prefix
tests/clients`); Chromium is Debian's (`apt-get install -y chromium`). Without them these
tests skip, saying what is missing, unless RELAY_REQUIRE_REAL_CLIENTS=1 (as CI sets it):
then they fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.mapping.ulid import deterministic_ulid
from tests.conftest import WRITE_KEY, RelayFactory, StandIn, config_yaml, relay_of
from tests.helpers import post, sent_ops, track

CLIENTS = Path(__file__).parent / "clients"
NODE_MODULES = CLIENTS / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
ANALYTICS_NODE = "@segment/analytics-node"
ANALYTICS_NEXT = "@segment/analytics-next"
PLAYWRIGHT = "playwright-core"
UMD_BUNDLES = NODE_MODULES / "@segment" / "analytics-next" / "dist" / "umd"
INSTALL = "npm ci --prefix tests/clients"

# 2024-05-01T10:00:00Z: each client's calls carry timestamps 1, 2, 3 ... seconds after it.
BASE_SECONDS = 1714557600


# --- what the tests need --------------------------------------------------------------------


def require_clients(packages: Iterable[str] = (), *, chromium: bool = False) -> str:
    """The path of `node`, once Node.js (20 or newer), the npm `packages` and (with
    `chromium`) /usr/bin/chromium are all there. Otherwise the test skips, naming what is
    missing and how to install it; with RELAY_REQUIRE_REAL_CLIENTS=1 it fails instead."""
    problems: list[str] = []
    node = shutil.which("node")
    if node is None:
        problems.append(f"Node.js not found: install it (20 or newer) and run {INSTALL}")
    else:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        major = version.lstrip("v").split(".")[0]
        if not major.isdigit() or int(major) < 20:
            problems.append(f"Node.js {version or '?'} is too old: these clients need 20+")
    missing = [p for p in packages if not (NODE_MODULES / p / "package.json").is_file()]
    if missing:
        problems.append(f"npm packages not installed ({', '.join(missing)}): run {INSTALL}")
    if chromium and not CHROMIUM.is_file():
        problems.append(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    if problems:
        reason = "; ".join(problems)
        if os.environ.get("RELAY_REQUIRE_REAL_CLIENTS") == "1":
            pytest.fail(f"{reason} (RELAY_REQUIRE_REAL_CLIENTS=1)", pytrace=False)
        pytest.skip(reason)
    assert node is not None
    return node


def run_node(node: str, script: str, *args: str, timeout: float) -> tuple[int, Any, str]:
    """Run a script of tests/clients; its exit code, its last stdout line as JSON, its stderr."""
    try:
        proc = subprocess.run(
            [node, str(CLIENTS / script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=CLIENTS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{script} did not finish within {timeout} s\nstdout: {exc.stdout!r}\n"
            f"stderr: {exc.stderr!r}"
        ) from None
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if report is None:
        raise AssertionError(
            f"{script} exited {proc.returncode} without a report\nstdout: {proc.stdout}\n"
            f"stderr: {proc.stderr}"
        )
    return proc.returncode, report, proc.stderr


# --- a recording proxy in front of relay ----------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # JSON when it was JSON (after gunzip), else text
    at: float = field(default_factory=time.monotonic)
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: Any = None


_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class Recorder:
    """Forwards every request to relay as it came (compressed bodies stay compressed) and
    relay's answers back as they came (CORS headers included); keeps both."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.exchanges: list[Exchange] = []
        self.url = ""
        self._server: TestServer | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
        )
        # The body goes on as it came: compressed when it came compressed.
        app = web.Application(
            client_max_size=10 * 1024 * 1024, handler_args={"auto_decompress": False}
        )
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self.url = str(self._server.make_url("")).rstrip("/")

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = _decoded(raw, headers)
        exchange = Exchange(request.method, request.path_qs, dict(request.headers), body)
        self.exchanges.append(exchange)
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            data=raw,
            headers=headers,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            exchange.status = resp.status
            exchange.response_headers = dict(resp.headers)
            exchange.response_body = _decoded(body, dict(resp.headers))
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=resp.status, body=body, headers=out)

    def posts(self, prefix: str = "/v1/") -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.path.startswith(prefix)]


def _decoded(raw: bytes, headers: dict[str, str]) -> Any:
    encoding = next((v for k, v in headers.items() if k.lower() == "content-encoding"), "")
    if encoding.lower() == "gzip":
        raw = gzip.decompress(raw)
    text = raw.decode(errors="replace")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


RecorderFactory = Callable[[str], Awaitable[Recorder]]


@pytest.fixture
async def recorder_factory() -> AsyncIterator[RecorderFactory]:
    recorders: list[Recorder] = []

    async def make(target: str) -> Recorder:
        recorder = Recorder(target)
        await recorder.start()
        recorders.append(recorder)
        return recorder

    yield make
    for recorder in recorders:
        await recorder.close()


# --- waiting for state ----------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], Any], timeout: float, what: Callable[[], str] | str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        await asyncio.sleep(0.05)


async def drained(
    app: web.Application, received: Callable[[], list[dict[str, Any]]], count: int
) -> list[dict[str, Any]]:
    """`received()` (the ops or messages a stand-in took), once it holds at least `count` and
    relay's queue is empty (every delivery done, none pending, retried or dead): nothing
    more is coming, so what is there is all there will be."""
    store = relay_of(app).store
    deadline = time.monotonic() + 20
    while True:
        items = received()
        counts = await store.counts()
        if len(items) >= count and counts == {}:
            return items
        assert time.monotonic() < deadline, (
            f"{len(items)} arrived (expected {count}), store counts {counts}"
        )
        await asyncio.sleep(0.05)


def basic_auth(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


# --- the calls the server libraries make, and the Customer.io ops they become ---------------


def at(second: int) -> str:
    return datetime.fromtimestamp(BASE_SECONDS + second, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def expected_ops(prefix: str) -> list[dict[str, Any]]:
    """The v2 ops for the six calls node_client.mjs (and `python_calls`) make as `prefix`:
    identify, track, page, screen, group, alias, one second apart, messageIds
    `<prefix>-<call>-1`."""
    user = f"{prefix}-user"
    person = {"id": user}

    def event_id(call: str, second: int) -> str:
        return deterministic_ulid(f"{prefix}-{call}-1", (BASE_SECONDS + second) * 1000)

    url = f"https://example.com/{prefix}/docs"
    return [
        {
            "type": "person",
            "identifiers": person,
            "action": "identify",
            "timestamp": BASE_SECONDS + 1,
            "attributes": {"email": f"{prefix}@example.com", "plan": "pro"},
        },
        {
            "type": "person",
            "identifiers": person,
            "action": "event",
            "name": "Client Event",
            "id": event_id("track", 2),
            "timestamp": BASE_SECONDS + 2,
            "attributes": {"answer": 42, "tags": ["a", "b"]},
        },
        {
            "type": "person",
            "identifiers": person,
            "action": "page",
            "name": url,
            "id": event_id("page", 3),
            "timestamp": BASE_SECONDS + 3,
            "attributes": {"url": url},
        },
        {
            "type": "person",
            "identifiers": person,
            "action": "screen",
            "name": "Home Screen",
            "id": event_id("screen", 4),
            "timestamp": BASE_SECONDS + 4,
            "attributes": {"tab": "main"},
        },
        {
            "type": "object",
            "identifiers": {"object_type_id": "1", "object_id": f"{prefix}-acme"},
            "action": "identify",
            "attributes": {"name": "Acme", "seats": 5},
            "cio_relationships": [{"identifiers": person}],
        },
        {
            "type": "person",
            "action": "merge",
            "primary": person,
            "secondary": {"id": f"{prefix}-anon"},
        },
    ]


def ops_of(ops: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The ops (in the order Customer.io received them) that belong to `prefix`'s person."""
    return [op for op in ops if f'"{prefix}-' in json.dumps(op)]


CALL_TYPES = ["identify", "track", "page", "screen", "group", "alias"]


# --- @segment/analytics-node ----------------------------------------------------------------


async def test_analytics_node_batched_and_one_by_one_arrive_exactly(
    relay_factory: RelayFactory, customerio: StandIn, recorder_factory: RecorderFactory
) -> None:
    node = require_clients([ANALYTICS_NODE])
    url, app = await relay_factory(cio_url=customerio.url)
    recorder = await recorder_factory(url)

    code, report, stderr = await asyncio.to_thread(
        run_node, node, "node_client.mjs", recorder.url, WRITE_KEY, timeout=60
    )
    assert code == 0, f"analytics-node reported errors: {report}\n{stderr}"
    batched, single = report["phases"]
    assert batched["statuses"] == [200] and single["statuses"] == [200] * 6

    # What the library sent: default batching puts all six calls in one /v1/batch; with
    # flushAt: 1 each call is a /v1/batch of its own.
    posts = recorder.posts()
    assert {e.path for e in posts} == {"/v1/batch"}
    assert [e.status for e in posts] == [200] * 7
    [first, *rest] = posts
    assert [m["type"] for m in first.body["batch"]] == CALL_TYPES
    assert [[m["type"] for m in e.body["batch"]] for e in rest] == [[t] for t in CALL_TYPES]
    for exchange in posts:
        assert exchange.headers["Authorization"] == basic_auth(WRITE_KEY)
        assert exchange.headers["Content-Type"] == "application/json"
        assert exchange.headers["User-Agent"] == "analytics-node-next/latest"
        assert exchange.body["writeKey"] == WRITE_KEY  # besides Basic auth
        assert isinstance(exchange.body["sentAt"], str)
        for message in exchange.body["batch"]:
            assert message["context"]["library"]["name"] == ANALYTICS_NODE
            assert message["_metadata"]["jsRuntime"] == "node"
            assert "writeKey" not in message

    # What Customer.io received: exactly the twelve ops, each person's in call order.
    ops = await drained(app, lambda: sent_ops(customerio), 12)
    assert len(ops) == 12
    assert ops_of(ops, "node-b") == expected_ops("node-b")
    assert ops_of(ops, "node-s") == expected_ops("node-s")


# --- analytics.js (@segment/analytics-next) in headless Chromium ----------------------------

# The page wraps window.fetch before the library loads and records, per request, the status
# the page saw or the error it got (a CORS refusal is "TypeError: Failed to fetch"); it
# tells analytics.js that its "CDN" is this page's own origin (window.analytics._cdn), so
# the webpack chunks it may load come from the bundle folder served beside the page. It
# loads the library with CONFIG.load: the settings inline (cdnSettings), so the library
# never asks Segment's CDN for them, or a `cdnURL` to load them from.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>%(title)s</title>
<link rel="icon" href="data:,">
<script>
window.__log = {fetches: [], errors: [], called: false, failure: null, anonymousId: null};
(function () {
  var realFetch = window.fetch.bind(window);
  window.fetch = function (input, init) {
    var entry = {
      url: String(input && input.url ? input.url : input),
      method: (init && init.method) || "GET",
      body: init && typeof init.body === "string" ? init.body : null,
      status: null,
      error: null
    };
    window.__log.fetches.push(entry);
    return realFetch(input, init).then(
      function (res) { entry.status = res.status; return res; },
      function (err) { entry.error = err.name + ": " + err.message; throw err; });
  };
})();
window.analytics = {_cdn: location.origin};
</script>
<script src="/analytics-next/bundles/index.js"></script>
</head><body><h1>relay</h1>
<script>
var CONFIG = %(config)s;
function relayFetches() {
  return window.__log.fetches.filter(function (f) { return f.url.indexOf(CONFIG.relay) === 0; });
}
window.__done = function () {
  var log = window.__log;
  if (log.failure) return true;
  var settled = relayFetches().filter(function (f) { return f.status !== null || f.error; });
  if (CONFIG.doneWhen.errors && log.errors.length >= CONFIG.doneWhen.errors) return true;
  if (CONFIG.doneWhen.attempts && relayFetches().length >= CONFIG.doneWhen.attempts) return true;
  return log.called && CONFIG.doneWhen.fetches > 0 && settled.length >= CONFIG.doneWhen.fetches;
};
(async function () {
  try {
    var loaded = await AnalyticsNext.AnalyticsBrowser.load(CONFIG.load, CONFIG.options);
    var analytics = loaded[0];
    analytics.on("error", function (e) {
      window.__log.errors.push({
        code: e.code, reason: String(e.reason && e.reason.message || e.reason),
        messageId: e.ctx && e.ctx.event && e.ctx.event.messageId
      });
    });
    analytics.setAnonymousId(CONFIG.anonymousId);
    window.__log.anonymousId = analytics.user().anonymousId();
    for (var i = 0; i < CONFIG.calls.length; i++) {
      var call = CONFIG.calls[i];
      var done = analytics[call[0]].apply(analytics, call.slice(1));
      if (CONFIG.awaitEach) await done;
    }
    window.__log.called = true;
  } catch (err) {
    window.__log.failure = String(err && err.stack || err);
  }
})();
</script></body></html>
"""

PAGE_TITLE = "relay real-client test"
WEB_USER = "web-user"
WEB_ANON = "anon-web-1"


def web_calls(prefix: str) -> list[list[Any]]:
    """analytics.js calls, as [method, ...arguments]: every call type, with fixed messageIds
    and times (through the options argument, which analytics.js lifts onto the message).

    alias comes first, while the visitor is still anonymous, as Segment's docs have it:
    analytics.js puts the identified user's id into every message's userId, alias too, so an
    alias(to, from) after identify() goes out with userId = the current user, not `to`."""

    def options(call: str, second: int) -> dict[str, str]:
        return {"messageId": f"{prefix}-{call}-1", "timestamp": at(second)}

    return [
        ["alias", WEB_USER, f"{prefix}-visitor", options("a", 1)],
        ["identify", WEB_USER, {"email": "web@example.com", "plan": "pro"}, options("i", 2)],
        ["track", "Web Event", {"answer": 42}, options("t", 3)],
        ["page", "Docs", "Setup", {"section": "intro"}, options("p", 4)],
        ["screen", "Home Screen", {"tab": "main"}, options("s", 5)],
        ["group", f"{prefix}-acme", {"name": "Acme", "seats": 5}, options("g", 6)],
    ]


WEB_PATHS = ["/v1/a", "/v1/i", "/v1/t", "/v1/p", "/v1/s", "/v1/g"]
WEB_TYPES = ["alias", "identify", "track", "page", "screen", "group"]


def expected_web_ops(prefix: str, page_url: str) -> list[dict[str, Any]]:
    """The v2 ops for `web_calls(prefix)` made on the page at `page_url`."""
    person = {"id": WEB_USER}

    def event_id(call: str, second: int) -> str:
        return deterministic_ulid(f"{prefix}-{call}-1", (BASE_SECONDS + second) * 1000)

    page_properties = {
        "path": "/index.html",
        "referrer": "",
        "search": "",
        "title": PAGE_TITLE,
        "url": page_url,
        "section": "intro",
        "category": "Docs",
        "name": "Setup",
    }
    return [
        {
            "type": "person",
            "action": "merge",
            "primary": person,
            "secondary": {"id": f"{prefix}-visitor"},
        },
        {
            "type": "person",
            "identifiers": person,
            "action": "identify",
            "timestamp": BASE_SECONDS + 2,
            # analytics.js always knows an anonymousId; relay passes it on for the merge.
            "attributes": {"email": "web@example.com", "plan": "pro", "anonymous_id": WEB_ANON},
        },
        {
            "type": "person",
            "identifiers": person,
            "action": "event",
            "name": "Web Event",
            "id": event_id("t", 3),
            "timestamp": BASE_SECONDS + 3,
            "attributes": {"answer": 42},
        },
        {
            "type": "person",
            "identifiers": person,
            "action": "page",
            "name": page_url,  # properties.url, which analytics.js fills in from location
            "id": event_id("p", 4),
            "timestamp": BASE_SECONDS + 4,
            "attributes": page_properties,
        },
        {
            "type": "person",
            "identifiers": person,
            "action": "screen",
            "name": "Home Screen",
            "id": event_id("s", 5),
            "timestamp": BASE_SECONDS + 5,
            "attributes": {"tab": "main"},
        },
        {
            "type": "object",
            "identifiers": {"object_type_id": "1", "object_id": f"{prefix}-acme"},
            "action": "identify",
            "attributes": {"name": "Acme", "seats": 5},
            "cio_relationships": [{"identifiers": person}],
        },
    ]


def page_config(
    relay: str,
    calls: list[list[Any]],
    *,
    write_key: str = WRITE_KEY,
    delivery: dict[str, Any] | None = None,
    done_when: dict[str, int],
    await_each: bool = True,
) -> dict[str, Any]:
    host = relay.removeprefix("http://") + "/v1"
    segmentio: dict[str, Any] = {"apiKey": write_key, "apiHost": host, "protocol": "http"}
    if delivery is not None:
        segmentio["deliveryStrategy"] = delivery
    return {
        "load": {
            "writeKey": write_key,
            "cdnSettings": {
                "integrations": {"Segment.io": segmentio},
                "plan": {},
                # Its own performance metrics (POST <apiHost>/m) off: relay has no /v1/m.
                "metrics": {"sampleRate": 0},
            },
        },
        "options": {"integrations": {"Segment.io": {"apiHost": host, "protocol": "http"}}},
        "relay": f"{relay}/v1/",
        "anonymousId": WEB_ANON,
        "calls": calls,
        "awaitEach": await_each,
        "doneWhen": done_when,
    }


async def run_page(node: str, config: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """Serve a page running `config` (and analytics.js' bundle folder) on a loopback port of
    its own, so that the page's origin is not relay's, and open it in Chromium."""
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE % {"config": json.dumps(config), "title": PAGE_TITLE},
            content_type="text/html",
        )

    app.router.add_get("/index.html", index)
    app.router.add_static("/analytics-next/bundles/", UMD_BUNDLES)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        page_url = str(server.make_url("/index.html"))
        code, report, stderr = await asyncio.to_thread(
            run_node,
            node,
            "browser_client.mjs",
            page_url,
            str(int(timeout * 1000)),
            timeout=timeout + 30,
        )
    finally:
        await server.close()
    assert code in (0, 3), f"browser_client.mjs failed ({code}): {report}\n{stderr}"
    log = report["log"]
    assert log is not None and log["failure"] is None, f"the page failed: {report}"
    assert report["pageErrors"] == [], report
    origin = page_url.removesuffix("/index.html")
    relay_origin = config["relay"].removesuffix("/v1/")
    # Nothing left loopback: only the page's own origin and relay were asked for anything.
    elsewhere = [
        r["url"]
        for r in report["requests"]
        if not (r["url"].startswith(origin + "/") or r["url"].startswith(relay_origin + "/"))
    ]
    assert elsewhere == [], f"the page reached beyond loopback: {elsewhere}"
    report["done_in_time"] = code == 0
    report["origin"] = origin
    report["page_url"] = page_url
    report["relay_fetches"] = [f for f in log["fetches"] if f["url"].startswith(config["relay"])]
    result: dict[str, Any] = report
    return result


def browser_node() -> str:
    return require_clients([ANALYTICS_NEXT, PLAYWRIGHT], chromium=True)


async def test_analytics_js_standard_delivery_sends_each_call_to_its_short_path(
    relay_factory: RelayFactory, customerio: StandIn, recorder_factory: RecorderFactory
) -> None:
    node = browser_node()
    url, app = await relay_factory(cio_url=customerio.url)
    recorder = await recorder_factory(url)
    config = page_config(recorder.url, web_calls("web"), done_when={"fetches": 6})
    report = await run_page(node, config)
    assert report["done_in_time"], report
    page_url = report["page_url"]

    # What the page saw: one request per call, to its short path, each answered 200.
    fetches = report["relay_fetches"]
    assert [(f["url"].removeprefix(recorder.url), f["status"]) for f in fetches] == [
        (path, 200) for path in WEB_PATHS
    ]
    assert report["log"]["errors"] == []
    # What relay got: a CORS preflight before each POST (analytics.js sends an Authorization
    # header, which no simple request may carry), then the text/plain POST.
    preflights = [e for e in recorder.exchanges if e.method == "OPTIONS"]
    assert [e.path for e in preflights] == WEB_PATHS
    for preflight in preflights:
        assert preflight.status == 204
        assert preflight.response_headers["Access-Control-Allow-Origin"] == report["origin"]
    posts = recorder.posts()
    assert [e.path for e in posts] == WEB_PATHS
    for exchange, kind in zip(posts, WEB_TYPES, strict=True):
        assert exchange.headers["Content-Type"] == "text/plain"
        assert exchange.headers["Authorization"] == basic_auth(WRITE_KEY)
        assert exchange.headers["Origin"] == report["origin"]
        message = exchange.body
        assert message["type"] == kind
        assert message["writeKey"] == WRITE_KEY  # in every message, besides the header
        assert isinstance(message["sentAt"], str)
        assert message["anonymousId"] == WEB_ANON
        assert message["context"]["library"]["name"] == "analytics.js"
        assert message["_metadata"]["bundled"] == ["Segment.io"]
        assert exchange.response_headers["Access-Control-Allow-Origin"] == report["origin"]

    ops = await drained(app, lambda: sent_ops(customerio), 6)
    assert ops == expected_web_ops("web", page_url)


async def test_analytics_js_batching_delivery_sends_v1_b_batches(
    relay_factory: RelayFactory, customerio: StandIn, recorder_factory: RecorderFactory
) -> None:
    node = browser_node()
    url, app = await relay_factory(cio_url=customerio.url)
    recorder = await recorder_factory(url)
    batching = {"strategy": "batching", "config": {"size": 3, "timeout": 300}}
    config = page_config(
        recorder.url,
        web_calls("webb"),
        delivery=batching,
        done_when={"fetches": 2},
        await_each=False,  # a batching call resolves at once; the batch goes out later
    )
    report = await run_page(node, config)
    assert report["done_in_time"], report
    fetches = report["relay_fetches"]
    assert [(f["url"].removeprefix(recorder.url), f["status"]) for f in fetches] == [
        ("/v1/b", 200),
        ("/v1/b", 200),
    ]
    for preflight in (e for e in recorder.exchanges if e.method == "OPTIONS"):
        assert preflight.path == "/v1/b" and preflight.status == 204
    posts = recorder.posts()
    assert [e.path for e in posts] == ["/v1/b", "/v1/b"]
    assert [m["type"] for e in posts for m in e.body["batch"]] == WEB_TYPES
    for exchange in posts:
        assert exchange.headers["Content-Type"] == "text/plain"
        assert exchange.headers["Authorization"] == basic_auth(WRITE_KEY)
        assert exchange.body["writeKey"] == WRITE_KEY
        assert isinstance(exchange.body["sentAt"], str)
        assert len(exchange.body["batch"]) == 3
        for message in exchange.body["batch"]:
            # Each item still carries the write key; its own sentAt is taken out.
            assert message["writeKey"] == WRITE_KEY
            assert "sentAt" not in message

    ops = await drained(app, lambda: sent_ops(customerio), 6)
    assert ops == expected_web_ops("webb", report["page_url"])


async def test_analytics_js_sees_401_for_a_wrong_write_key_and_gives_up(
    relay_factory: RelayFactory, customerio: StandIn, recorder_factory: RecorderFactory
) -> None:
    """The page must see relay's 401 (so relay's error answers need CORS headers too):
    analytics.js drops an event on a 4xx other than 408/410/429/460, after one attempt. A
    CORS refusal is a network error to it ("TypeError: Failed to fetch"), which it retries
    with backoff up to 10 times (and keeps in localStorage meanwhile)."""
    node = browser_node()
    url, app = await relay_factory(cio_url=customerio.url)
    recorder = await recorder_factory(url)
    calls = [["track", "Wrong Key", {"n": 1}, {"messageId": "wrong-t-1", "timestamp": at(1)}]]
    config = page_config(
        recorder.url,
        calls,
        write_key="not-a-write-key",
        # Done once the library reports that it gave up, or once it has tried 3 times.
        done_when={"errors": 1, "attempts": 3},
    )
    report = await run_page(node, config)
    seen = [f["status"] or f["error"] for f in report["relay_fetches"]]
    assert seen == [401], f"the page saw {seen} (one 401 expected)"
    assert report["done_in_time"], report
    assert report["log"]["errors"] == [
        {
            "code": "delivery_failure",
            "reason": "Non-retryable error: 401",
            "messageId": "wrong-t-1",
        }
    ]
    posts = recorder.posts()
    assert [(e.path, e.status) for e in posts] == [("/v1/t", 401)]
    assert posts[0].response_body["code"] == "unauthorized"
    assert customerio.requests == [] and await relay_of(app).store.counts() == {}


@pytest.mark.parametrize("strategy", ["standard", "batching"])
async def test_analytics_js_write_key_never_reaches_segment(
    relay_factory: RelayFactory,
    customerio: StandIn,
    segment: StandIn,
    recorder_factory: RecorderFactory,
    strategy: str,
) -> None:
    """analytics.js puts `writeKey` into every message, in /v1/b batches too: relay must take
    it out before a message travels on to Segment (it is the source's key, not Segment's)."""
    node = browser_node()
    url, app = await relay_factory(
        cio_url=customerio.url,
        segment_url=segment.url,
        routes="\n  - {name: fwd, from: segment, to: [segment.main]}\n",
    )
    recorder = await recorder_factory(url)
    prefix = f"fwd-{strategy}"
    if strategy == "batching":
        config = page_config(
            recorder.url,
            web_calls(prefix),
            delivery={"strategy": "batching", "config": {"size": 3, "timeout": 300}},
            done_when={"fetches": 2},
            await_each=False,
        )
    else:
        config = page_config(recorder.url, web_calls(prefix), done_when={"fetches": 6})
    report = await run_page(node, config)
    assert report["done_in_time"], report
    sent = [m for e in recorder.posts() for m in (e.body.get("batch") or [e.body])]
    assert all(m["writeKey"] == WRITE_KEY for m in sent)  # what analytics.js sent

    messages = await drained(app, lambda: sent_ops(segment), 6)
    assert sorted(m["messageId"] for m in messages) == sorted(m["messageId"] for m in sent)
    carrying = [m["messageId"] for m in messages if "writeKey" in m]
    assert carrying == [], f"messages forwarded to Segment with the source's writeKey: {carrying}"


async def test_analytics_js_loads_its_settings_from_relay_and_its_events_arrive(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    """`AnalyticsBrowser.load({writeKey, cdnURL: relay})` and nothing else: the library
    asks relay for its settings, and sends every call where they say, to relay (as the
    request reached it: no public_url is set), with nothing from Segment."""
    node = browser_node()
    url, app = await relay_factory(cio_url=customerio.url)
    config = page_config(url, web_calls("cdn"), done_when={"fetches": 7})
    config["load"] = {"writeKey": WRITE_KEY, "cdnURL": url}
    config["options"] = {}
    report = await run_page(node, config)
    assert report["done_in_time"], report
    assert report["log"]["errors"] == []

    fetches = [
        (f["method"].upper(), f["url"].removeprefix(url), f["status"])
        for f in report["relay_fetches"]
    ]
    assert fetches == [
        ("GET", f"/v1/projects/{WRITE_KEY}/settings", 200),
        *(("POST", path, 200) for path in WEB_PATHS),
    ]
    for fetch in report["relay_fetches"][1:]:
        message = json.loads(fetch["body"])
        assert message["writeKey"] == WRITE_KEY
        assert message["context"]["library"]["name"] == "analytics.js"
    # Every request the browser made went to the page's own origin or to relay (run_page
    # checks that nothing left loopback): the library's own metrics included.
    assert [r["url"] for r in report["requests"] if r["url"].endswith("/m")] == []

    ops = await drained(app, lambda: sent_ops(customerio), 6)
    assert ops == expected_web_ops("cdn", report["page_url"])


# --- segment-analytics-python ---------------------------------------------------------------


def python_calls(client: Any, prefix: str) -> None:
    """The six calls of node_client.mjs, made with segment-analytics-python."""
    user = f"{prefix}-user"

    def when(second: int) -> datetime:
        return datetime.fromtimestamp(BASE_SECONDS + second, UTC)

    def mid(call: str) -> str:
        return f"{prefix}-{call}-1"

    traits = {"email": f"{prefix}@example.com", "plan": "pro"}
    client.identify(user, traits, timestamp=when(1), message_id=mid("identify"))
    properties = {"answer": 42, "tags": ["a", "b"]}
    client.track(user, "Client Event", properties, timestamp=when(2), message_id=mid("track"))
    url = f"https://example.com/{prefix}/docs"
    client.page(
        user, name="Docs", properties={"url": url}, timestamp=when(3), message_id=mid("page")
    )
    client.screen(
        user,
        name="Home Screen",
        properties={"tab": "main"},
        timestamp=when(4),
        message_id=mid("screen"),
    )
    client.group(
        user,
        f"{prefix}-acme",
        {"name": "Acme", "seats": 5},
        timestamp=when(5),
        message_id=mid("group"),
    )
    client.alias(f"{prefix}-anon", user, timestamp=when(6), message_id=mid("alias"))


@contextlib.asynccontextmanager
async def python_client(host: str) -> AsyncIterator[tuple[Any, list[Any]]]:
    """A segment-analytics-python Client (its own consumer thread, gzip on) and the errors it
    reports through on_error; its consumer is stopped afterwards, whatever happened."""
    from segment.analytics import Client  # type: ignore[import-untyped]

    errors: list[Any] = []
    client = Client(
        write_key=WRITE_KEY,
        host=host,
        gzip=True,
        timeout=5,
        on_error=lambda error, batch: errors.append((error, batch)),
    )
    try:
        yield client, errors
    finally:
        for consumer in client.consumers or []:
            consumer.pause()  # its waits are sliced: it stops within about a second
        await asyncio.to_thread(lambda: [c.join(10) for c in client.consumers or []])


def statuses(recorder: Recorder) -> list[tuple[str, int, float]]:
    """What was posted through `recorder`: path, relay's status, seconds since the first."""
    posts = recorder.posts()
    return [(e.path, e.status, round(e.at - posts[0].at, 1)) for e in posts]


def uploaded(client: Any) -> bool:
    """Every call was uploaded (or given up on): nothing is left in the library's queue."""
    return bool(client.queue.unfinished_tasks == 0)


async def test_analytics_python_every_call_type_gzipped_arrives_exactly(
    relay_factory: RelayFactory, customerio: StandIn, recorder_factory: RecorderFactory
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    recorder = await recorder_factory(url)
    async with python_client(recorder.url) as (client, errors):
        python_calls(client, "py")
        await wait_until(lambda: uploaded(client), 15, "the library's queue did not empty")
    assert errors == []
    [exchange] = recorder.posts()  # one upload: its consumer batches what came in 0.5 s
    assert exchange.path == "/v1/batch" and exchange.status == 200
    assert exchange.headers["Content-Encoding"] == "gzip"
    assert exchange.headers["Content-Type"] == "application/json"
    assert exchange.headers["Authorization"] == basic_auth(WRITE_KEY)
    assert exchange.headers["User-Agent"].startswith("analytics-python/")
    assert exchange.body["writeKey"] == WRITE_KEY and isinstance(exchange.body["sentAt"], str)
    assert [m["type"] for m in exchange.body["batch"]] == CALL_TYPES
    for message in exchange.body["batch"]:
        assert message["context"]["library"]["name"] == "analytics-python"
        assert "writeKey" not in message and "sentAt" not in message

    ops = await drained(app, lambda: sent_ops(customerio), 6)
    assert ops == expected_ops("py")


async def test_analytics_python_waits_out_503_retry_after_and_loses_nothing(
    relay_factory: RelayFactory,
    customerio: StandIn,
    recorder_factory: RecorderFactory,
    tmp_path: Path,
) -> None:
    """relay answers 503 with Retry-After when its queue is full.

    What segment-analytics-python (2.4) does with it (request.py, consumer.py): 5xx other
    than 501/505 is retryable, and for any retryable status it reads Retry-After (seconds or
    an HTTP date, capped at 300 s). With a positive Retry-After it does not count a retry: it
    puts the batch back on its queue and holds the whole upload pipeline until then (the
    rate-limit episode ends the batch only after max_rate_limit_duration, 1800 s by
    default; a Retry-After longer than what is left of that drops the batch, through
    on_error). Without Retry-After it retries the same request with counted backoff (at
    once, then 0.5 s, 1 s, 2 s, ... up to 60 s; 10 retries) and then drops the batch. The
    batch is sent again whole, with the same messageIds, so relay's dedup keeps a retry
    that overlaps an earlier success from being queued twice.

    relay's Retry-After for a full queue is 30 s, so this test takes about 30 s."""
    down = True
    accepted: list[Any] = []  # the Customer.io requests answered 200

    def answer(request: Any) -> tuple[int, Any, dict[str, str]]:
        if down:
            return 503, {}, {}
        accepted.append(request)
        return 200, {}, {}

    customerio.answer = answer  # Customer.io is down: relay's queue stays full
    text = config_yaml(tmp_path / "full.db", customerio.url).replace(
        'sqlite: {path: "', 'sqlite: {max_pending: 6, path: "'
    )
    url, app = await relay_factory(text)
    recorder = await recorder_factory(url)
    auth = {"Authorization": basic_auth(WRITE_KEY)}
    # 2 queued + the library's 6 > max_pending 6; once the 2 are delivered, the 6 fit.
    for n in range(2):
        status, _, _ = await post(
            f"{url}/v1/track", track("filler", f"Filler {n}", f"f-{n}"), headers=auth
        )
        assert status == 200

    async with python_client(recorder.url) as (client, errors):
        python_calls(client, "py503")
        await wait_until(
            lambda: any(e.status == 503 for e in recorder.posts()),
            15,
            lambda: f"no 503 from relay; the library sent {statuses(recorder)}",
        )
        refused = recorder.posts()[0]
        assert refused.response_headers["Retry-After"] == "30"
        assert refused.response_body["code"] == "store_unavailable"
        down = False  # Customer.io is back: relay's queue drains well before the retry
        await drained(app, lambda: [op for r in accepted for op in r.body["batch"]], 2)
        assert len(recorder.posts()) == 1  # the library is still waiting out Retry-After
        await wait_until(
            lambda: uploaded(client),
            45,
            lambda: f"the library's calls are still queued; it sent {statuses(recorder)}",
        )
    assert errors == []
    posts = recorder.posts()
    assert [(e.path, e.status) for e in posts] == [("/v1/batch", 503), ("/v1/batch", 200)]
    assert posts[1].at - posts[0].at >= 29, "the library did not wait out Retry-After: 30"
    for exchange in posts:
        assert exchange.headers["Content-Encoding"] == "gzip"
        assert [m["messageId"] for m in exchange.body["batch"]] == [
            f"py503-{call}-1" for call in CALL_TYPES
        ]
    # A re-queued batch is a new request to it: no X-Retry-Count on the second attempt.
    assert "X-Retry-Count" not in posts[1].headers

    ops = await drained(app, lambda: [op for r in accepted for op in r.body["batch"]], 8)
    assert [op.get("name") for op in ops[:2]] == ["Filler 0", "Filler 1"]
    assert ops[2:] == expected_ops("py503")


async def test_the_status_page_shows_in_chromium_what_metrics_count(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    """relay's status page, loaded in headless Chromium after traffic: the figures it shows
    are those /metrics counts, and it loads nothing from anywhere else."""
    from prometheus_client.parser import text_string_to_metric_families

    node = require_clients([PLAYWRIGHT], chromium=True)
    url, _ = await relay_factory(config_yaml(tmp_path / "relay.db", customerio.url))
    auth = {"Authorization": basic_auth(WRITE_KEY)}
    customerio.respond(400, {"meta": {"error": "nope"}})
    for n in range(4):
        status, _, _ = await post(f"{url}/v1/track", track("u1", f"E{n}", f"sp-{n}"), headers=auth)
        assert status == 200
        await customerio.wait_for(n + 1)
    await asyncio.sleep(0.3)
    admin = json.loads((tmp_path / "relay.db.admin").read_text())["url"]
    code, report, stderr = await asyncio.to_thread(
        run_node, node, "status_page.mjs", f"{admin}/status", "15000", timeout=60
    )
    assert code == 0, (report, stderr)
    assert report["pageErrors"] == []
    assert all(r.startswith(admin) for r in report["requests"]), report["requests"]
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        metrics = await resp.text()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    dest = (("destination", "customerio.main"),)
    rows = {r[0]: r for r in report["tables"]["destinations"]}
    assert sorted(rows) == ["customerio.main", "segment.main"]
    name, state, queued, _oldest, delivered, dead, rate_limit = rows["customerio.main"][:7]
    assert (name, state, queued, rate_limit) == ("customerio.main", "ok", "0", "100/s")
    assert float(delivered) == values[("relay_delivered_events_total", dest)] == 3
    assert float(dead) == values[("relay_dead_lettered_events_total", dest)] == 1
    [source] = report["tables"]["sources"]
    queued_metric = values[
        (
            "relay_received_events_total",
            (("kind", "segment"), ("outcome", "queued"), ("source", "web")),
        )
    ]
    assert source[:2] == ["segment.web", f"{queued_metric:g}"] and queued_metric == 4
    assert report["summary"].startswith("accepting events")
