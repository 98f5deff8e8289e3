"""Nothing a client can send makes relay answer 500, and junk never harms what is queued."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import zlib
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
from tests.test_segment_api import track

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
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
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
        "userId": st.text(max_size=10) | json_values,
        "anonymousId": st.text(max_size=10) | json_values,
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

bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    segment_like.map(lambda v: json.dumps(v).encode()),
    segment_like.map(lambda v: gzip.compress(json.dumps(v).encode())),
    segment_like.map(lambda v: zlib.compress(json.dumps(v).encode())),
)

header_sets = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.sampled_from(
            [basic(WRITE_KEY), "Basic", "Basic ", "Bearer x", "Basic ***", basic("x")]
        )
        | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
        "Content-Type": st.sampled_from(["application/json", "text/plain", "x/y", ""]),
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "bogus"]),
        "X-Signature": st.text(alphabet="0123456789abcdef", max_size=40),
        "X-CIO-Timestamp": st.text(alphabet="0123456789", max_size=12),
        "X-CIO-Signature": st.text(alphabet="0123456789abcdef", max_size=64),
    },
)


class RelayInThread:
    """A relay (and a Customer.io stand-in) on their own event loop, so that the synchronous
    property test can talk to them over real HTTP."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url, self.app, self.cio, self._servers = self.call(self._start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

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


SEEN_STATUSES: set[int] = set()


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(PATHS),
    body=bodies,
    headers=header_sets,
    method=st.sampled_from(["POST", "POST", "POST", "GET", "OPTIONS", "PUT"]),
)
# Besides what hypothesis draws, one request of each kind that real code answers: accepted,
# invalid, unauthenticated, compressed.
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
def test_junk_at_every_endpoint_never_gets_a_500(
    relay_thread: RelayInThread, path: str, body: bytes, headers: dict[str, str], method: str
) -> None:
    resp = requests.request(
        method, f"{relay_thread.url}{path}", data=body, headers=headers, timeout=10
    )
    SEEN_STATUSES.add(resp.status_code)
    assert resp.status_code < 500, (path, method, headers, body, resp.status_code, resp.text)
    if resp.status_code >= 400:
        payload: Any = resp.json()
        assert payload["code"] and payload["message"]


def test_what_was_queued_before_the_junk_is_delivered(relay_thread: RelayInThread) -> None:
    assert {200, 400, 401} <= SEEN_STATUSES  # the property test reached real code paths
    relay_thread.call(relay_thread.cio.wait_for(1))
    names = [op.get("name") for r in relay_thread.cio.requests for op in r.body["batch"]]
    assert "Kept" in names
    assert relay_thread.call(relay_of(relay_thread.app).store.write_problem()) is None
