"""Fuzzing every endpoint: nothing a client can send makes relay answer 5xx, the process keeps
serving, what was queued is untouched and delivered, a valid event afterwards is delivered,
a correctly signed Customer.io webhook is always answered 200, and no client mistake is
logged as a traceback.

The bodies: random bytes, JSON of every shape, Segment-like messages with wrong types in
every field, truncated JSON, lone surrogates (as escapes and as raw bytes) and invalid UTF-8,
huge strings, deep nesting, gzip and deflate bodies that are valid, truncated or garbage;
with odd methods and headers. RELAY_FUZZ_EXAMPLES sets how many requests each property
sends (default 400; the closing figures of a change are taken with 20,000).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.app import create_app
from relay.config import parse_config
from tests.conftest import WRITE_KEY, StandIn, basic, config_yaml, relay_of, start_stand_in
from tests.helpers import track

EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "400"))
# The relay under test runs in a thread beside hypothesis, and its delivery workers draw
# their backoff jitter from `random`: hypothesis takes that for its strategies' doing.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module:hypothesis.errors.HypothesisDeprecationWarning"
)
SIGNING_KEY = "signing-key"  # one of config_yaml's Customer.io signing keys

PATHS = [
    "/v1/identify",
    "/v1/track",
    "/v1/page",
    "/v1/screen",
    "/v1/group",
    "/v1/alias",
    "/v1/batch",
    "/v1/import",
    "/v1/i",
    "/v1/t",
    "/v1/p",
    "/v1/s",
    "/v1/g",
    "/v1/a",
    "/v1/b",
    "/webhooks/segment",
    "/webhooks/customerio",
    "/webhooks/customerio/marketing",
    "/webhooks/customerio/unknown",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/unknown",
    "/v1/projects/x/settings",
    f"/v1/projects/{WRITE_KEY}/settings",
]

# Text with what breaks parsers and stores: lone surrogates, control characters, NUL.
odd_text = st.text(
    alphabet=st.characters(codec="utf-16") | st.sampled_from(["\x00", "\ud800", "\udfff", "é"]),
    max_size=12,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | odd_text
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4)
    ),
    max_leaves=12,
)

segment_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["identify", "track", "page", "screen", "group", "alias", "delete", "bogus", ""]
        )
        | json_values,
        "userId": st.text(max_size=10) | odd_text | json_values,
        "anonymousId": st.text(max_size=10) | odd_text | json_values,
        "event": st.text(max_size=10) | json_values,
        "messageId": st.text(max_size=120) | json_values,
        "timestamp": st.text(max_size=30) | json_values,
        "properties": json_values,
        "traits": json_values,
        "context": json_values,
        "integrations": json_values,
        "writeKey": st.sampled_from([WRITE_KEY, "nope"]) | json_values,
        "batch": st.lists(json_values, max_size=3) | json_values,
        "groupId": json_values,
        "previousId": json_values,
    },
)
webhook_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.text(max_size=30) | json_values,
        "object_type": st.sampled_from(["email", "push", "sms", "in_app", "customer"])
        | json_values,
        "metric": st.sampled_from(["opened", "clicked", "sent", "bounced"]) | json_values,
        "event_type": st.sampled_from(["email_opened", "customer_unsubscribed"]) | json_values,
        "timestamp": st.integers() | st.text(max_size=12) | json_values,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "customer_id": st.text(max_size=8) | odd_text | json_values,
                "identifiers": json_values,
                "email_address": odd_text | json_values,
                "recipient": odd_text | json_values,
                "delivery_id": json_values,
            },
        )
        | json_values,
    },
)


def _dump(value: Any) -> bytes:
    # Lone surrogates go out as \ud800 escapes, as JavaScript's JSON.stringify writes them.
    return json.dumps(value).encode()


def _raw_surrogates(body: bytes) -> bytes:
    # The same text as the bytes ED A0 80 (not valid UTF-8), which some senders write.
    return body.replace(b"\\ud800", b"\xed\xa0\x80").replace(b"\\udfff", b"\xed\xbf\xbf")


def _nested(depth: int, kind: str) -> bytes:
    inner = "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth
    return f'{{"type":"track","userId":"u","event":"E","properties":{{"p":{inner}}}}}'.encode()


json_bodies = segment_like.map(_dump) | webhook_like.map(_dump) | json_values.map(_dump)
bodies = st.one_of(
    st.binary(max_size=300),
    json_bodies,
    json_bodies.map(_raw_surrogates),
    # Truncated JSON: a valid body cut anywhere.
    st.tuples(json_bodies, st.floats(0, 1)).map(lambda p: p[0][: int(len(p[0]) * p[1])]),
    # Invalid UTF-8 inside a JSON string.
    st.binary(min_size=1, max_size=8).map(lambda b: b'{"userId":"' + b + b'","event":"E"}'),
    # Huge strings: near and over the 32 KB message and 500 KB batch limits.
    st.sampled_from([30_000, 33_000, 600_000]).map(
        lambda n: _dump({"type": "track", "userId": "u", "event": "E", "p": "x" * n})
    ),
    st.sampled_from([200, 1_100, 5_000]).flatmap(
        lambda d: st.sampled_from(["array", "object"]).map(lambda k: _nested(d, k))
    ),
    json_bodies.map(gzip.compress),
    json_bodies.map(zlib.compress),
    json_bodies.map(lambda b: gzip.compress(b)[:-5]),  # a gzip member cut short
    json_bodies.map(lambda b: gzip.compress(gzip.compress(b))),  # compressed twice
)

header_sets = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.sampled_from(
            [basic(WRITE_KEY), "Basic", "Basic ", "Bearer x", "Basic ***", basic("x")]
        )
        | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
        "Content-Type": st.sampled_from(
            ["application/json", "text/plain", "x/y", "", "application/json; charset=latin-1"]
        ),
        "Content-Encoding": st.sampled_from(
            ["gzip", "deflate", "br", "identity", "bogus", "gzip, gzip", "GZIP"]
        ),
        "X-Signature": st.text(alphabet="0123456789abcdef", max_size=40),
        "X-CIO-Timestamp": st.text(alphabet="0123456789", max_size=12),
        "X-CIO-Signature": st.text(alphabet="0123456789abcdef", max_size=64),
        "Origin": st.sampled_from(["https://shop.example", "null"]),
        "Accept": st.sampled_from(["text/html", "*/*"]),
    },
)


class RelayInThread:
    """A relay (and a Customer.io stand-in) on their own event loop, so that the synchronous
    property tests can talk to them over real HTTP; it keeps what relay logged."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.records: list[logging.LogRecord] = []
        self._handler = _Keep(self.records)
        logging.getLogger().addHandler(self._handler)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url, self.app, self.cio, self._servers = self.call(self._start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(self) -> tuple[str, web.Application, StandIn, list[TestServer]]:
        cio, cio_server = await start_stand_in()
        config = parse_config(config_yaml(self.tmp_path / "junk.db", cio.url), "relay.yaml", {})
        app = create_app(config)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        return str(server.make_url("")).rstrip("/"), app, cio, [server, cio_server]

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                await server.close()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        logging.getLogger().removeHandler(self._handler)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.INFO)
        self.kept = records

    def emit(self, record: logging.LogRecord) -> None:
        self.kept.append(record)


@pytest.fixture(scope="module")
def relay_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayInThread]:
    relay = RelayInThread(tmp_path_factory.mktemp("junk"))
    status = requests.post(
        f"{relay.url}/v1/track",
        json=track("keep", "Kept", "m-keep"),
        headers={"Authorization": basic(WRITE_KEY)},
        timeout=10,
    ).status_code
    assert status == 200  # something real is queued first: junk must not disturb it
    yield relay
    relay.close()


STATUSES: Counter[int] = Counter()
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@FUZZ
@given(
    path=st.sampled_from(PATHS),
    body=bodies,
    headers=header_sets,
    method=st.sampled_from(["POST", "POST", "POST", "GET", "OPTIONS", "PUT", "DELETE", "PATCH"]),
)
# Besides what hypothesis draws, one request of each kind that real code answers: accepted,
# invalid, unauthenticated, compressed, a lone surrogate in an id.
@example(
    path="/v1/track",
    body=json.dumps(track("ex", "Example", "m-ex")).encode(),
    headers={"Authorization": basic(WRITE_KEY)},
    method="POST",
)
@example(path="/v1/track", body=b"{", headers={"Authorization": basic(WRITE_KEY)}, method="POST")
@example(path="/v1/identify", body=b"{}", headers={}, method="POST")
@example(
    path="/v1/batch",
    body=zlib.compress(json.dumps({"batch": [track("ex2", "Example", "m-ex2")]}).encode()),
    headers={"Authorization": basic(WRITE_KEY), "Content-Encoding": "deflate"},
    method="POST",
)
@example(
    path="/v1/track",
    body=b'{"userId":"\\ud800","event":"E"}',
    headers={"Authorization": basic(WRITE_KEY)},
    method="POST",
)
def test_junk_at_every_endpoint_never_gets_a_5xx(
    relay_thread: RelayInThread, path: str, body: bytes, headers: dict[str, str], method: str
) -> None:
    resp = requests.request(
        method, f"{relay_thread.url}{path}", data=body, headers=headers, timeout=30
    )
    STATUSES[resp.status_code] += 1
    assert resp.status_code < 500, (path, method, headers, body[:300], resp.status_code, resp.text)
    if resp.status_code >= 400 and method != "HEAD":
        payload: Any = resp.json()
        assert payload["code"] and payload["message"]


def _signed(body: bytes, timestamp: str) -> dict[str, str]:
    signature = hmac.new(
        SIGNING_KEY.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256
    ).hexdigest()
    return {"X-CIO-Timestamp": timestamp, "X-CIO-Signature": signature}


SIGNED: Counter[int] = Counter()


@FUZZ
@given(
    body=bodies,
    path=st.sampled_from(["/webhooks/customerio", "/webhooks/customerio/marketing"]),
    encoding=st.sampled_from([None, "gzip"]),
)
@example(body=b'{"event_id":"e","data":{"customer_id":"\\ud800"}}', path=PATHS[16], encoding=None)
def test_a_correctly_signed_webhook_is_always_answered_200(
    relay_thread: RelayInThread, body: bytes, path: str, encoding: str | None
) -> None:
    # Customer.io holds back every later webhook behind one that fails: whatever a genuine
    # webhook holds, it is taken (stored as a dead letter when it cannot be mapped).
    headers = _signed(body, str(int(time.time())))
    if encoding == "gzip":
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
    resp = requests.post(f"{relay_thread.url}{path}", data=body, headers=headers, timeout=30)
    SIGNED[resp.status_code] += 1
    assert resp.status_code == 200, (body[:300], resp.status_code, resp.text)


def test_after_the_junk_relay_serves_delivers_and_logged_no_traceback(
    relay_thread: RelayInThread,
) -> None:
    assert {200, 400, 401} <= set(STATUSES)  # the property test reached real code paths
    status = requests.post(
        f"{relay_thread.url}/v1/track",
        json=track("after", "After The Junk", "m-after"),
        headers={"Authorization": basic(WRITE_KEY)},
        timeout=10,
    ).status_code
    assert status == 200
    relay_thread.call(relay_thread.cio.wait_for(1))

    def delivered() -> set[str]:
        return {
            op.get("name")
            for r in relay_thread.cio.requests
            for op in (r.body or {}).get("batch", [])
        }

    deadline = time.monotonic() + 20
    while not {"Kept", "After The Junk"} <= delivered():
        assert time.monotonic() < deadline, sorted(str(n) for n in delivered())
        time.sleep(0.1)
    assert relay_thread.call(relay_of(relay_thread.app).store.write_problem()) is None
    tracebacks = [r.getMessage() for r in relay_thread.records if r.exc_info]
    assert tracebacks == []
    print(
        f"\nfuzz: {sum(STATUSES.values())} requests by status {dict(sorted(STATUSES.items()))};"
        f" {sum(SIGNED.values())} signed webhooks by status {dict(sorted(SIGNED.items()))}"
    )
