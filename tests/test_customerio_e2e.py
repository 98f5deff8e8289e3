"""Segment → Customer.io end to end: every call type in one batch, 207 and 400 answers,
batch sizes, limits checked before sending, regions."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from relay import USER_AGENT
from relay.config import parse_config
from relay.destinations.customerio import sink
from relay.destinations.customerio.sink import (
    MAX_BATCH_BYTES,
    Planned,
    batch_request,
    failed_ops,
    pack_v2,
)
from relay.mapping.dates import iso_to_millis
from relay.mapping.ulid import deterministic_ulid
from relay.outgoing import OutgoingRequest
from relay.store.base import Delivery
from tests.conftest import (
    API_KEY,
    SITE_ID,
    WRITE_KEY,
    Recorded,
    RelayFactory,
    StandIn,
    basic,
    relay_of,
)
from tests.helpers import post, track

AT = "2024-01-02T03:04:"

EVERY_CALL: list[dict[str, Any]] = [
    {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "a1",
        "messageId": "m-identify",
        "timestamp": AT + "05Z",
        "traits": {
            "email": "u1@example.com",
            "createdAt": "2023-05-06T07:08:09Z",
            "plan": "pro",
            "unsubscribed": False,
        },
    },
    {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "messageId": "m-track",
        "timestamp": AT + "06Z",
        "properties": {"total": 12.5, "shipped_at": "2024-01-03"},
    },
    {
        "type": "track",
        "anonymousId": "anon-9",
        "event": "Viewed Pricing",
        "messageId": "m-anon",
        "timestamp": AT + "07Z",
        "properties": {},
    },
    {
        "type": "page",
        "userId": "u1",
        "name": "Home",
        "messageId": "m-page",
        "timestamp": AT + "08Z",
        "properties": {"url": "https://shop.example/", "title": "Shop"},
    },
    {
        "type": "screen",
        "userId": "u1",
        "name": "Cart",
        "messageId": "m-screen",
        "timestamp": AT + "09Z",
        "properties": {"items": 3},
    },
    {
        "type": "group",
        "userId": "u1",
        "groupId": "acme",
        "messageId": "m-group",
        "timestamp": AT + "10Z",
        "traits": {"name": "Acme", "relationshipAttributes": {"role": "admin"}},
    },
    {
        "type": "alias",
        "userId": "u1",
        "previousId": "a1",
        "messageId": "m-alias",
        "timestamp": AT + "11Z",
    },
    {
        "type": "track",
        "userId": "u1",
        "event": "Application Installed",
        "messageId": "m-device",
        "timestamp": AT + "12Z",
        "context": {
            "device": {"token": "tok-1", "type": "ios", "model": "iPhone15,2"},
            "os": {"name": "iOS", "version": "17.1"},
            "app": {"version": "2.3.4"},
        },
        "properties": {"source": "store"},
    },
    {
        "type": "track",
        "userId": "u1",
        "event": "User Suppressed",
        "messageId": "m-suppress",
        "timestamp": AT + "13Z",
    },
    {"type": "delete", "userId": "u2", "messageId": "m-delete", "timestamp": AT + "14Z"},
]

EXPECTED_OPS: list[dict[str, Any]] = [
    {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "identify",
        "timestamp": 1704164645,
        "attributes": {
            "email": "u1@example.com",
            "plan": "pro",
            "unsubscribed": False,
            "created_at": 1683356889,
            "anonymous_id": "a1",
        },
    },
    {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "event",
        "name": "Order Completed",
        "id": "01HK421Q3GBS5R4Y818CVEM1JQ",
        "timestamp": 1704164646,
        "attributes": {"total": 12.5, "shipped_at": 1704240000},
    },
    {
        "type": "person",
        "identifiers": {"anonymous_id": "anon-9"},
        "action": "event",
        "name": "Viewed Pricing",
        "id": "01HK421R2RSGKV7XKF893PZF7B",
        "timestamp": 1704164647,
        "attributes": {},
    },
    {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "page",
        "name": "https://shop.example/",
        "id": "01HK421S20NZYVGVJY0R32ZV04",
        "timestamp": 1704164648,
        "attributes": {"url": "https://shop.example/", "title": "Shop"},
    },
    {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "screen",
        "name": "Cart",
        "id": "01HK421T18QWZJ1VWRCQKEYDRJ",
        "timestamp": 1704164649,
        "attributes": {"items": 3},
    },
    {
        "type": "object",
        "identifiers": {"object_type_id": "1", "object_id": "acme"},
        "action": "identify",
        "attributes": {"name": "Acme"},
        "cio_relationships": [
            {"identifiers": {"id": "u1"}, "relationship_attributes": {"role": "admin"}}
        ],
    },
    {"type": "person", "action": "merge", "primary": {"id": "u1"}, "secondary": {"id": "a1"}},
    {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "add_device",
        "device": {
            "token": "tok-1",
            "platform": "ios",
            "last_used": 1704164652,
            "attributes": {
                "source": "store",
                "app_version": "2.3.4",
                "device_model": "iPhone15,2",
                "device_os": "17.1",
            },
        },
    },
    {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "event",
        "name": "Application Installed",
        "id": "01HK421WZ0688J5NRZW3QMW00A",
        "timestamp": 1704164652,
        "attributes": {"source": "store"},
    },
    {"type": "person", "identifiers": {"id": "u1"}, "action": "suppress"},
    {"type": "person", "identifiers": {"id": "u2"}, "action": "delete"},
]


async def test_a_mixed_batch_of_every_call_type_becomes_one_exact_v2_batch(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(
        f"{url}/v1/batch", {"batch": EVERY_CALL}, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert (status, body) == (200, {"success": True})
    [request] = await customerio.wait_for(1)
    assert (request.method, request.path) == ("POST", "/api/v2/batch")
    assert request.headers["Authorization"] == basic(SITE_ID, API_KEY)
    assert request.body == {"batch": EXPECTED_OPS}


async def test_a_207_dead_letters_only_the_failed_op(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.respond(
        207,
        {
            "errors": [
                {
                    "batch_index": 1,
                    "reason": "invalid",
                    "field": "name",
                    "message": "name is too long",
                },
            ]
        },
    )
    url, app = await relay_factory(cio_url=customerio.url)
    status, _, _ = await post(
        f"{url}/v1/batch", {"batch": EVERY_CALL[:3]}, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert status == 200
    await customerio.wait_for(1)
    await asyncio.sleep(1.5)
    assert len(customerio.requests) == 1  # the others were accepted: nothing is re-sent
    store = relay_of(app).store
    [dead] = await store.dead_letters()
    assert dead.message["messageId"] == "m-track"
    assert dead.reason == (
        "Customer.io refused: reason=invalid, field=name, message=name is too long"
    )
    assert await store.counts() == {"customerio.main": {"dead": 1}}


def _planned(i: int, size: int) -> Planned:
    op = {
        "type": "person",
        "identifiers": {"id": str(i)},
        "action": "event",
        "name": "E",
        "attributes": {"blob": "x" * size},
    }
    d = Delivery(i, "customerio.main", f"u:{i}", 0, 0.0, "web", "segment", b"{}")
    return Planned(d, ops=[json.dumps(op, separators=(",", ":")).encode()])


def test_v2_batches_hold_at_most_batch_size_ops_and_stay_under_500_kb() -> None:
    small = [_planned(i, 10) for i in range(250)]
    assert [len(g) for g in pack_v2(small, 100)] == [100, 100, 50]
    big = [_planned(i, 30_000) for i in range(40)]
    groups = pack_v2(big, 100)
    assert [len(g) for g in groups] == [16, 16, 8]
    for group in groups:
        body = batch_request(group).body
        assert len(body) < MAX_BATCH_BYTES
        assert [op["identifiers"]["id"] for op in json.loads(body)["batch"]] == [
            str(p.delivery.id) for p in group
        ]
    assert [p.delivery.id for g in groups for p in g] == list(range(40))  # order kept


def test_regions_choose_the_hosts_and_base_url_overrides_them() -> None:
    text = f"""
destinations:
  customerio:
    eu: {{site_id: s, api_key: "{API_KEY}", region: eu}}
    us: {{site_id: s, api_key: "{API_KEY}"}}
    proxy: {{site_id: s, api_key: "{API_KEY}", region: eu, base_url: "http://127.0.0.1:9/"}}
  segment:
    eu: {{write_key: w, region: eu}}
    us: {{write_key: w}}
"""
    config = parse_config(text, "regions.yaml", {})
    hosts = {k: d.base_url for k, d in config.destinations.items()}
    assert hosts == {
        "customerio.eu": "https://track-eu.customer.io",
        "customerio.us": "https://track.customer.io",
        "customerio.proxy": "http://127.0.0.1:9",
        "segment.eu": "https://events.eu1.segmentapis.com",
        "segment.us": "https://api.segment.io",
    }


# --- refusals, batch sizes and limits, end to end ---------------------------------------------

AUTH = {"Authorization": basic(WRITE_KEY)}
TRACK_AT = "2024-01-02T03:04:05Z"  # the timestamp of tests.test_segment_api.track
TRACK_TS = 1704164645


def event_op(user: str, name: str, message_id: str, **attributes: Any) -> dict[str, Any]:
    """The v2 op of `track(user, name, message_id, **attributes)`."""
    millis = iso_to_millis(TRACK_AT)
    assert millis is not None
    return {
        "type": "person",
        "identifiers": {"id": user},
        "action": "event",
        "name": name,
        "id": deterministic_ulid(message_id, millis),
        "timestamp": TRACK_TS,
        "attributes": attributes,
    }


async def counts_settle_on(
    app: Any, expected: dict[str, dict[str, int]], timeout: float = 15.0
) -> dict[str, dict[str, int]]:
    """The store's counts once they equal `expected` (or the last seen, after `timeout`)."""
    store = relay_of(app).store
    deadline = time.monotonic() + timeout
    while (counts := await store.counts()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    result: dict[str, dict[str, int]] = counts
    return result


BAD = "bad"


def refuse_batches_holding_a_bad_op(request: Recorded) -> tuple[int, Any, dict[str, str]]:
    """Customer.io's way with one invalid op in a batch: a 400 for the whole request."""
    if any(op.get("attributes", {}).get("marker") == BAD for op in request.body["batch"]):
        return 400, {"meta": {"error": "invalid op"}}, {}
    return 200, {}, {}


async def test_a_400_on_a_batch_of_several_deliveries_sends_each_alone_and_dead_letters_the_bad(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.answer = refuse_batches_holding_a_bad_op
    url, app = await relay_factory(cio_url=customerio.url)
    markers = ["ok", "ok", BAD, "ok", "ok"]
    messages = [track(f"u{i}", "Clicked", f"m-{i}", marker=m) for i, m in enumerate(markers)]
    status, _, _ = await post(f"{url}/v1/batch", {"batch": messages}, headers=AUTH)
    assert status == 200
    requests = await customerio.wait_for(6)
    ops = [event_op(f"u{i}", "Clicked", f"m-{i}", marker=m) for i, m in enumerate(markers)]
    # The refused batch, then each of its deliveries again in a request of its own.
    assert [(r.method, r.path) for r in requests] == [("POST", "/api/v2/batch")] * 6
    assert [r.body for r in requests] == [{"batch": ops}] + [{"batch": [op]} for op in ops]
    assert await counts_settle_on(app, {"customerio.main": {"dead": 1}}) == {
        "customerio.main": {"dead": 1}
    }
    [dead] = await relay_of(app).store.dead_letters()
    assert dead.message["messageId"] == "m-2"
    assert dead.reason == 'HTTP 400: {"meta": {"error": "invalid op"}}'
    assert len(customerio.requests) == 6  # the four good ones were delivered, once each


@pytest.mark.parametrize(
    "body",
    [
        b"<html>upstream hiccup</html>",
        {"ok": True},
        {"errors": []},
        {"errors": [{"batch_index": True, "reason": "invalid"}]},
        {"errors": [{"reason": "invalid"}]},
    ],
    ids=["not-json", "no-errors-list", "empty-errors", "bool-index", "no-index"],
)
async def test_an_unreadable_207_retries_the_whole_request(
    relay_factory: RelayFactory, customerio: StandIn, body: Any
) -> None:
    customerio.respond(207, body)
    url, app = await relay_factory(cio_url=customerio.url)
    messages = [track("u1", "First", "m-1"), track("u2", "Second", "m-2")]
    status, _, _ = await post(f"{url}/v1/batch", {"batch": messages}, headers=AUTH)
    assert status == 200
    assert await counts_settle_on(app, {}) == {}  # both delivered after the 207, none dead
    ops = [event_op("u1", "First", "m-1"), event_op("u2", "Second", "m-2")]
    first, *again = customerio.requests
    assert first.body == {"batch": ops}
    # Each delivery is retried on its own backoff, so the two may come back in one request or
    # two; either way each op goes again exactly once, with the same ULID for de-duplication.
    resent = sorted((op for r in again for op in r.body["batch"]), key=lambda op: op["name"])
    assert resent == ops


@pytest.mark.parametrize(
    ("body", "failed"),
    [
        (
            {"errors": [{"batch_index": 1, "reason": "r", "field": "f", "message": "m"}]},
            {1: ["reason=r, field=f, message=m"]},
        ),
        (
            {"errors": [{"batch_index": 0}, {"batch_index": 0, "message": "m"}]},
            {0: ["rejected without a reason", "message=m"]},
        ),
        (b"not json", None),
        (b"\xff\xfe", None),
        ([], None),
        ({"errors": "x"}, None),
        ({"errors": []}, None),
        ({"errors": ["x"]}, None),
        ({"errors": [{"batch_index": True}]}, None),
        ({"errors": [{"batch_index": 1.0}]}, None),
        ({"errors": [{"batch_index": "1"}]}, None),
        ({"errors": [{"batch_index": -1}]}, None),
        ({"errors": [{"batch_index": 2}]}, None),
        ({"errors": [{"batch_index": 0}, {"reason": "no index"}]}, None),
    ],
)
def test_207_failed_ops_are_read_only_from_real_indexes_in_range(
    body: Any, failed: dict[int, list[str]] | None
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert failed_ops(raw, count=2) == failed


async def test_a_delivery_with_more_ops_than_batch_size_goes_whole_in_one_request(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url, extra_cio="      batch_size: 1")
    opened = track("u1", "Application Opened", "m-1")
    opened["context"] = {"device": {"token": "tok-1", "type": "ios"}}
    messages = [opened, track("u2", "Clicked", "m-2")]
    status, _, _ = await post(f"{url}/v1/batch", {"batch": messages}, headers=AUTH)
    assert status == 200
    first, second = await customerio.wait_for(2)
    device_op = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "add_device",
        "device": {"token": "tok-1", "platform": "ios", "last_used": TRACK_TS},
    }
    # Two ops in one request despite batch_size 1: a delivery's ops succeed or fail together.
    assert first.body == {"batch": [device_op, event_op("u1", "Application Opened", "m-1")]}
    assert second.body == {"batch": [event_op("u2", "Clicked", "m-2")]}


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_an_op_over_a_limit_is_dead_lettered_unsent_while_a_good_one_is_delivered(
    relay_factory: RelayFactory, customerio: StandIn, api: str
) -> None:
    url, app = await relay_factory(cio_url=customerio.url, api=api)
    for message in (track("u1", "E" * 101, "m-long"), track("u2", "Good", "m-good")):
        status, body, _ = await post(f"{url}/v1/track", message, headers=AUTH)
        assert (status, body) == (200, {"success": True})
    [request] = await customerio.wait_for(1)
    good = event_op("u2", "Good", "m-good")
    if api == "v2":
        assert (request.method, request.path, request.body) == (
            "POST",
            "/api/v2/batch",
            {"batch": [good]},
        )
    else:
        v1_body = {
            "name": "Good",
            "type": "event",
            "data": {},
            "id": good["id"],
            "timestamp": TRACK_TS,
        }
        assert (request.method, request.path, request.body) == (
            "POST",
            "/api/v1/customers/u2/events",
            v1_body,
        )
    assert await counts_settle_on(app, {"customerio.main": {"dead": 1}}) == {
        "customerio.main": {"dead": 1}
    }
    [dead] = await relay_of(app).store.dead_letters()
    assert dead.message["messageId"] == "m-long"
    assert dead.reason == (
        "person event: event name is 101 bytes; Customer.io accepts event names of at most "
        "100 bytes"
    )
    assert len(customerio.requests) == 1  # the long name never reached Customer.io


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_an_alias_of_a_person_to_itself_is_counted_and_never_dead_lettered(
    relay_factory: RelayFactory, customerio: StandIn, api: str
) -> None:
    # What analytics.js sends after identify: userId == previousId.
    url, app = await relay_factory(cio_url=customerio.url, api=api)
    relay = relay_of(app)
    auth = {"Authorization": basic(WRITE_KEY)}
    batch = [
        {"type": "identify", "userId": "u9", "messageId": "m-i", "traits": {"plan": "pro"}},
        {"type": "alias", "userId": "u9", "previousId": "u9", "messageId": "m-a"},
        {"type": "track", "userId": "u9", "event": "After", "messageId": "m-t"},
    ]
    status, _, _ = await post(f"{url}/v1/batch", {"batch": batch}, headers=auth)
    assert status == 200
    await customerio.wait_for(1 if api == "v2" else 2)
    deadline = time.monotonic() + 10
    while relay.metrics.delivered.labels("customerio.main")._value.get() < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert relay.metrics.skipped.labels("customerio.main")._value.get() == 1
    assert await relay.store.dead_letters() == []
    assert (await relay.store.counts()).get("customerio.main", {}).get("pending", 0) == 0
    sent = [r.path for r in customerio.requests]
    assert sent == (
        ["/api/v2/batch"]
        if api == "v2"
        else ["/api/v1/customers/u9", "/api/v1/customers/u9/events"]
    )
    if api == "v2":
        assert [op["action"] for op in customerio.requests[0].body["batch"]] == [
            "identify",
            "event",
        ]


# --- delivery metrics and content events, end to end -----------------------------------------


def cio_headers(request: Recorded) -> dict[str, str]:
    """The headers relay chose for a request to Customer.io (not those aiohttp adds)."""
    names = ("Authorization", "Content-Type", "User-Agent", "Accept")
    return {name: request.headers[name] for name in names}


CIO_HEADERS = {
    "Authorization": basic(SITE_ID, API_KEY),
    "Content-Type": "application/json",
    "User-Agent": USER_AGENT,
    "Accept": "application/json",
}


def assert_one_v2_op_sent(request: Recorded, api: str, op: dict[str, Any]) -> None:
    """`request` carried exactly `op`, with Customer.io's headers: in a v2 batch of its own,
    or, from a v1 destination, to `/api/v2/entity` (v1 has no call for it)."""
    assert cio_headers(request) == CIO_HEADERS
    if api == "v2":
        assert (request.method, request.path, request.body) == (
            "POST",
            "/api/v2/batch",
            {"batch": [op]},
        )
    else:
        assert (request.method, request.path, request.body) == ("POST", "/api/v2/entity", op)


def delivery_event(message_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "anonymousId": "device-1",
        "event": "Report Delivery Event",
        "messageId": message_id,
        "timestamp": TRACK_AT,
        "properties": properties,
    }


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_a_delivery_metric_goes_to_the_metrics_endpoint_as_a_request_of_its_own(
    relay_factory: RelayFactory, customerio: StandIn, api: str
) -> None:
    url, app = await relay_factory(cio_url=customerio.url, api=api)
    opened = delivery_event(
        "m-metric", deliveryId="RPILAgABcRhIBqSp7kiPekGBIeVh", metric="opened", recipient="tok-1"
    )
    status, _, _ = await post(f"{url}/v1/track", opened, headers=AUTH)
    assert status == 200
    [request] = await customerio.wait_for(1)
    assert (request.method, request.path) == ("POST", "/api/v1/metrics")
    assert cio_headers(request) == CIO_HEADERS
    assert request.body == {
        "delivery_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
        "metric": "opened",
        "timestamp": TRACK_TS,
        "recipient": "tok-1",
    }
    assert await counts_settle_on(app, {}) == {}


async def test_metrics_keep_their_place_between_batches_of_other_deliveries(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    clicked = delivery_event("m-metric", deliveryId="d-1", metric="clicked", actionName="buy")
    clicked["userId"] = "u2"  # one person throughout: their deliveries go out in order
    messages = [track("u2", "Before", "m-1"), clicked, track("u2", "After", "m-3")]
    status, _, _ = await post(f"{url}/v1/batch", {"batch": messages}, headers=AUTH)
    assert status == 200
    requests = await customerio.wait_for(3)
    assert [(r.method, r.path, r.body) for r in requests] == [
        ("POST", "/api/v2/batch", {"batch": [event_op("u2", "Before", "m-1")]}),
        (
            "POST",
            "/api/v1/metrics",
            {
                "delivery_id": "d-1",
                "metric": "clicked",
                "timestamp": TRACK_TS,
                "metadata": {"action_name": "buy"},
            },
        ),
        ("POST", "/api/v2/batch", {"batch": [event_op("u2", "After", "m-3")]}),
    ]
    assert await counts_settle_on(app, {}) == {}


async def test_a_metric_is_retried_on_a_5xx_and_dead_lettered_on_a_4xx_with_the_answer(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.respond(503)
    url, app = await relay_factory(cio_url=customerio.url)
    first = delivery_event("m-a", deliveryId="d-1", metric="delivered")
    status, _, _ = await post(f"{url}/v1/track", first, headers=AUTH)
    assert status == 200
    sent, again = await customerio.wait_for(2)
    assert sent.path == again.path == "/api/v1/metrics"
    assert sent.body == again.body  # the same metric, sent again after the 503
    assert await counts_settle_on(app, {}) == {}

    customerio.respond(400, {"meta": {"error": "unknown delivery"}})
    second = delivery_event("m-b", deliveryId="d-404", metric="opened")
    status, _, _ = await post(f"{url}/v1/track", second, headers=AUTH)
    assert status == 200
    await customerio.wait_for(3)
    assert await counts_settle_on(app, {"customerio.main": {"dead": 1}}) == {
        "customerio.main": {"dead": 1}
    }
    [dead] = await relay_of(app).store.dead_letters()
    assert dead.message["messageId"] == "m-b"
    assert dead.reason == 'HTTP 400: {"meta": {"error": "unknown delivery"}}'


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_a_delivery_event_without_delivery_id_or_with_an_unknown_metric_is_dead_lettered(
    relay_factory: RelayFactory, customerio: StandIn, api: str
) -> None:
    url, app = await relay_factory(cio_url=customerio.url, api=api)
    batch = [
        delivery_event("m-no-id", metric="opened"),
        delivery_event("m-bad-metric", deliveryId="d-1", metric="read"),
        delivery_event("m-good", deliveryId="d-2", metric="converted"),
    ]
    status, body, _ = await post(f"{url}/v1/batch", {"batch": batch}, headers=AUTH)
    assert (status, body) == (200, {"success": True})
    [request] = await customerio.wait_for(1)
    assert request.body == {"delivery_id": "d-2", "metric": "converted", "timestamp": TRACK_TS}
    assert await counts_settle_on(app, {"customerio.main": {"dead": 2}}) == {
        "customerio.main": {"dead": 2}
    }
    reasons = {d.message["messageId"]: d.reason for d in await relay_of(app).store.dead_letters()}
    assert reasons == {
        "m-no-id": "Report Delivery Event needs properties.deliveryId, the CIO-Delivery-ID of"
        " the message the metric is about",
        "m-bad-metric": "Report Delivery Event: properties.metric must be one of delivered,"
        " opened, clicked, converted, bounced, spammed, dropped, deferred; got 'read'",
    }
    assert len(customerio.requests) == 1


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_a_content_event_is_the_person_action_it_names(
    relay_factory: RelayFactory, customerio: StandIn, api: str
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url, api=api)
    viewed = track("u1", "Report Content Event", "m-c", actionType="viewed_content", contentId=3)
    status, _, _ = await post(f"{url}/v1/track", viewed, headers=AUTH)
    assert status == 200
    [request] = await customerio.wait_for(1)
    op = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "viewed_content",
        "name": "viewed_content",
        "timestamp": TRACK_TS,
        "attributes": {"contentId": 3},
    }
    assert_one_v2_op_sent(request, api, op)


# --- phone identifiers, subscription preferences, update-only identifies, end to end ---------


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_a_destination_with_phone_identifiers_and_update_only_sends_them_exactly(
    relay_factory: RelayFactory, customerio: StandIn, api: str
) -> None:
    extra = "      identifiers: [id, email, phone]\n      update_only: true"
    url, app = await relay_factory(cio_url=customerio.url, api=api, extra_cio=extra)
    identify = {
        "type": "identify",
        "userId": "+14155552671",
        "messageId": "m-phone",
        "timestamp": TRACK_AT,
        "traits": {
            "plan": "pro",
            "cio_subscription_preferences": {"topics": {"topic_1": True, "topic_2": False}},
        },
    }
    status, _, _ = await post(f"{url}/v1/identify", identify, headers=AUTH)
    assert status == 200
    [request] = await customerio.wait_for(1)
    op = {
        "type": "person",
        "identifiers": {"phone": "+14155552671"},
        "action": "identify",
        "timestamp": TRACK_TS,
        "attributes": {
            "plan": "pro",
            "cio_subscription_preferences": {"topics": {"topic_1": True, "topic_2": False}},
            "_update": True,
        },
    }
    # v1 cannot address a person by phone: the v2 op goes to /api/v2/entity.
    assert_one_v2_op_sent(request, api, op)
    assert await counts_settle_on(app, {}) == {}


async def test_update_only_v1_identify_carries_update_flat_in_its_body(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(
        cio_url=customerio.url, api="v1", extra_cio="      update_only: true"
    )
    identify = {
        "type": "identify",
        "userId": "u1",
        "messageId": "m-1",
        "timestamp": TRACK_AT,
        "traits": {"cio_subscription_preferences.topics.topic_3": True},
    }
    status, _, _ = await post(f"{url}/v1/identify", identify, headers=AUTH)
    assert status == 200
    [request] = await customerio.wait_for(1)
    assert (request.method, request.path, request.body) == (
        "PUT",
        "/api/v1/customers/u1",
        {
            "cio_subscription_preferences.topics.topic_3": True,
            "_update": True,
            "_timestamp": TRACK_TS,
        },
    )


async def test_a_bad_phone_number_or_topic_is_dead_lettered_with_its_field(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    extra = "      identifiers: [id, email, phone]"
    url, app = await relay_factory(cio_url=customerio.url, extra_cio=extra)
    batch = [
        {"type": "identify", "userId": "+1 415 555 2671", "messageId": "m-phone"},
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "m-topic",
            "traits": {"cio_subscription_preferences": {"topics": {"news": True}}},
        },
        {"type": "identify", "userId": "u2", "messageId": "m-good", "traits": {"plan": "pro"}},
    ]
    status, _, _ = await post(f"{url}/v1/batch", {"batch": batch}, headers=AUTH)
    assert status == 200
    [request] = await customerio.wait_for(1)
    assert [op["identifiers"] for op in request.body["batch"]] == [{"id": "u2"}]
    assert await counts_settle_on(app, {"customerio.main": {"dead": 2}}) == {
        "customerio.main": {"dead": 2}
    }
    reasons = {d.message["messageId"]: d.reason for d in await relay_of(app).store.dead_letters()}
    assert reasons["m-phone"].startswith(
        "userId '+1 415 555 2671' starts with + but is not a phone number in E.164 form"
    )
    assert reasons["m-topic"].startswith(
        "traits.cio_subscription_preferences.topics.news: Customer.io names subscription topics"
        " topic_<id>"
    )


def test_a_v2_delivery_with_an_op_no_batch_carries_goes_whole_as_requests_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No message maps to both today; the plan must still keep such a delivery's ops together
    # and in order, each batch op as a request to /api/v2/entity.
    op = b'{"type":"person","identifiers":{"id":"u1"},"action":"identify"}'
    metric = OutgoingRequest("POST", "/api/v1/metrics", b'{"delivery_id":"d","metric":"opened"}')
    monkeypatch.setattr(sink, "map_and_encode_v2", lambda *a, **k: [op, metric])
    d = Delivery(1, "customerio.main", "u:u1", 0, 0.0, "web", "segment", b"{}")
    [planned] = sink.plan([d], "v2")
    assert planned.ops == ()
    assert list(planned.requests) == [OutgoingRequest("POST", "/api/v2/entity", op), metric]
