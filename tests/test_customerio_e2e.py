"""Segment → Customer.io end to end: every call type in one batch, 207 answers, regions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from relay.config import parse_config
from relay.sinks.customerio import MAX_BATCH_BYTES, Planned, batch_request, pack_v2
from relay.store.base import Delivery
from tests.conftest import API_KEY, SITE_ID, WRITE_KEY, RelayFactory, StandIn, basic, relay_of
from tests.test_segment_api import post

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
    d = Delivery(i, "customerio.main", f"u:{i}", 0, 0.0, "web", "segment", {})
    return Planned(d, ops=[op], sizes=[len(json.dumps(op, separators=(",", ":")))])


def test_v2_batches_hold_at_most_batch_size_ops_and_stay_under_500_kb() -> None:
    small = [_planned(i, 10) for i in range(250)]
    assert [len(g) for g in pack_v2(small, 100)] == [100, 100, 50]
    big = [_planned(i, 30_000) for i in range(40)]
    groups = pack_v2(big, 100)
    assert [len(g) for g in groups] == [16, 16, 8]
    for group in groups:
        body = json.dumps(batch_request(group).body, separators=(",", ":"))
        assert len(body.encode()) < MAX_BATCH_BYTES
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
