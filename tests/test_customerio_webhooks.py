"""Customer.io reporting webhooks through relay to Segment, end to end on loopback.

Signed webhooks are posted to `/webhooks/customerio[/{source}]` and the exact `/v1/batch`
requests are read at the Segment stand-in.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay import __version__
from relay.store.base import DeadLetterFilter
from tests.conftest import (
    WRITE_KEY,
    RelayFactory,
    StandIn,
    basic,
    config_yaml,
    relay_of,
)
from tests.helpers import HOOK, post_raw, post_webhook, sign, webhook

# base64("wk-out-0123456789:"), the Segment destination's write key as Basic user.
SEGMENT_AUTH = "Basic d2stb3V0LTAxMjM0NTY3ODk6"
SENT_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UNAUTHORIZED = "X-CIO-Signature is missing or does not match any signing key"

# The example payload of Customer.io's reporting webhooks docs, byte for byte as Customer.io
# would post it.
CLICKED = (
    b'{"event_id":"01E4C4CT6YDC7Y5M7FE1GWWPQJ","object_type":"email","metric":"clicked",'
    b'"timestamp":1585250199,'
    b'"data":{"customer_id":"42","identifiers":{"id":"42","email":"a@b.co","cio_id":"d9c106000001"},'
    b'"delivery_id":"RPILAgABcRhIBqSp7kiPekGBIeVh","campaign_id":23,"action_id":36,'
    b'"subject":"Welcome","recipient":"a@b.co","href":"https://x.co/p","link_id":3}}'
)
CONTEXT = {
    "library": {"name": "relay", "version": __version__},
    "integration": {"name": "Customer.io"},
}
CLICKED_TRACK: dict[str, Any] = {
    "type": "track",
    "event": "Email Link Clicked",
    "userId": "42",
    "properties": {
        "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
        "object_type": "email",
        "metric": "clicked",
        "email_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
        "email_subject": "Welcome",
        "campaign_id": 23,
        "link_url": "https://x.co/p",
        "link_id": "3",
        "delivery_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
        "action_id": 36,
    },
    "timestamp": "2020-03-26T19:16:39.000Z",
    "messageId": "cio-01E4C4CT6YDC7Y5M7FE1GWWPQJ",
    "context": {**CONTEXT, "traits": {"email": "a@b.co", "cio_id": "d9c106000001"}},
    "integrations": {"Customer.io": False},
}


# --------------------------------------------------------------------------- helpers


def sent_messages(segment: StandIn, first: int = 0) -> list[dict[str, Any]]:
    return [m for r in segment.requests[first:] for m in r.body["batch"]]


async def wait_for_messages(
    segment: StandIn, count: int, *, first: int = 0, timeout: float = 10.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(sent_messages(segment, first)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"expected {count} messages at Segment, got "
                f"{[m.get('messageId') for m in sent_messages(segment, first)]}"
            )
        await asyncio.sleep(0.05)
    return sent_messages(segment, first)


async def wait_for_dead(app: web.Application, count: int, timeout: float = 10.0) -> list[Any]:
    store = relay_of(app).store
    deadline = time.monotonic() + timeout
    while True:
        dead: list[Any] = await store.dead_letters(DeadLetterFilter(destination="segment.main"))
        if len(dead) >= count:
            return dead
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} dead letters, got {dead}")
        await asyncio.sleep(0.05)


def received(app: web.Application, source: str, outcome: str) -> float:
    value: float = relay_of(app).metrics.received.labels("customerio", source, outcome)._value.get()
    return value


def assert_sent_at_is_now(sent_at: Any, event_time: str) -> None:
    assert isinstance(sent_at, str) and SENT_AT.match(sent_at), sent_at
    moment = datetime.fromisoformat(sent_at.replace("Z", "+00:00"))
    assert abs(moment.timestamp() - time.time()) < 30
    assert sent_at != event_time


def yaml_with_customerio(tmp_path: Path, segment_url: str, extra: str) -> str:
    """The shared test config with more keys under `sources.customerio`."""
    text = config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9", segment_url)
    line = '    signing_keys: {marketing: ["old-signing-key", "signing-key"], other: "other-key"}'
    assert line in text
    return text.replace(line, line + "\n" + extra)


# --------------------------------------------------------------------------- the happy path


async def test_signed_webhook_reaches_segment_as_the_exact_batch_request(
    relay_factory: RelayFactory, customerio: StandIn, segment: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url, segment_url=segment.url)
    assert await post_webhook(url, CLICKED) == (200, {"success": True})
    [request] = await segment.wait_for(1)
    assert request.method == "POST"
    assert request.path == "/v1/batch"
    assert request.headers["Authorization"] == SEGMENT_AUTH
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"relay/{__version__}"
    assert set(request.body) == {"batch", "sentAt"}
    assert request.body["batch"] == [CLICKED_TRACK]
    assert_sent_at_is_now(request.body["sentAt"], CLICKED_TRACK["timestamp"])
    assert customerio.requests == []


def _track(event: str, user: str, properties: dict[str, Any], **context: Any) -> dict[str, Any]:
    """The track call a webhook of the table below becomes (event time 1613063089)."""
    event_id = properties["event_id"]
    return {
        "type": "track",
        "event": event,
        "userId": user,
        "properties": properties,
        "timestamp": "2021-02-11T17:04:49.000Z",
        "messageId": f"cio-{event_id}",
        "context": {**CONTEXT, **context},
        "integrations": {"Customer.io": False},
    }


# One webhook of each channel, as Customer.io's reporting webhooks reference shapes it, and
# the exact track call it becomes.
EACH_CHANNEL: list[tuple[bytes, dict[str, Any]]] = [
    (
        b'{"event_id":"01HCUSTOMER0000000000000001","metric":"cio_subscription_preferences_changed",'
        b'"object_type":"customer","timestamp":1613063089,"data":{"customer_id":"c1",'
        b'"email_address":"c1@example.com","identifiers":{"id":"c1","email":"c1@example.com"},'
        b'"content":"{\\"topics\\":{\\"topic_1\\":true,\\"topic_2\\":false}}"}}',
        _track(
            "Customer Subscription Preferences Changed",
            "c1",
            {
                "event_id": "01HCUSTOMER0000000000000001",
                "object_type": "customer",
                "metric": "cio_subscription_preferences_changed",
                "content": '{"topics":{"topic_1":true,"topic_2":false}}',
                "subscription_preferences": {"topics": {"topic_1": True, "topic_2": False}},
            },
            traits={"email": "c1@example.com"},
        ),
    ),
    (
        b'{"event_id":"01HEMAIL000000000000000001","metric":"undeliverable","object_type":"email",'
        b'"timestamp":1613063089,"data":{"customer_id":"e1","identifiers":{"id":"e1",'
        b'"email":"e1@example.com","cio_id":"d9c106000001"},"delivery_id":"DLV-E1",'
        b'"campaign_id":23,"action_id":96,"subject":"Hello","recipient":"e1@example.com",'
        b'"failure_message":"no email address"}}',
        _track(
            "Email Undeliverable",
            "e1",
            {
                "event_id": "01HEMAIL000000000000000001",
                "object_type": "email",
                "metric": "undeliverable",
                "email_id": "DLV-E1",
                "email_subject": "Hello",
                "campaign_id": 23,
                "reason": "no email address",
                "delivery_id": "DLV-E1",
                "action_id": 96,
            },
            traits={"email": "e1@example.com", "cio_id": "d9c106000001"},
        ),
    ),
    (
        b'{"event_id":"01HPUSH0000000000000000001","metric":"delivered","object_type":"push",'
        b'"timestamp":1613063089,"data":{"customer_id":"p1","identifiers":{"id":"p1"},'
        b'"delivery_id":"DLV-P1","broadcast_id":9,"action_id":42,'
        b'"recipients":[{"device_id":"fcm-token-1","device_platform":"android"}]}}',
        _track(
            "Push Delivered",
            "p1",
            {
                "event_id": "01HPUSH0000000000000000001",
                "object_type": "push",
                "metric": "delivered",
                "email_id": "DLV-P1",
                "delivery_id": "DLV-P1",
                "action_id": 42,
                "broadcast_id": 9,
                "recipients": [{"device_id": "fcm-token-1", "device_platform": "android"}],
            },
            device={"token": "fcm-token-1", "type": "android"},
        ),
    ),
    (
        b'{"event_id":"01HSMS00000000000000000001","metric":"replied","object_type":"sms",'
        b'"timestamp":1613063089,"data":{"customer_id":"s1","identifiers":{"id":"s1"},'
        b'"delivery_id":"DLV-S1","campaign_id":5,"action_id":6,"recipient":"+15551234567",'
        b'"to":"+15557654321","inbound_event_id":"01HINBOUND"}}',
        _track(
            "SMS Replied",
            "s1",
            {
                "event_id": "01HSMS00000000000000000001",
                "object_type": "sms",
                "metric": "replied",
                "email_id": "DLV-S1",
                "campaign_id": 5,
                "delivery_id": "DLV-S1",
                "action_id": 6,
                "inbound_event_id": "01HINBOUND",
                "to": "+15557654321",
                "recipient": "+15551234567",
            },
            traits={"phone": "+15551234567"},
        ),
    ),
    (
        b'{"event_id":"01HINAPP000000000000000001","metric":"clicked","object_type":"in_app",'
        b'"timestamp":1613063089,"data":{"customer_id":"i1","identifiers":{"id":"i1"},'
        b'"delivery_id":"DLV-I1","campaign_id":7,"action_id":8,"recipient":"i1",'
        b'"tracked_response":"accept","href":"app://offers/1","link_id":2}}',
        _track(
            "In-App Message Link Clicked",
            "i1",
            {
                "event_id": "01HINAPP000000000000000001",
                "object_type": "in_app",
                "metric": "clicked",
                "email_id": "DLV-I1",
                "campaign_id": 7,
                "link_url": "app://offers/1",
                "link_id": "2",
                "delivery_id": "DLV-I1",
                "action_id": 8,
                "tracked_response": "accept",
                "recipient": "i1",
            },
        ),
    ),
    (
        b'{"event_id":"01HSLACK00000000000000001","metric":"sent","object_type":"slack",'
        b'"timestamp":1613063089,"data":{"customer_id":"k1","identifiers":{"id":"k1"},'
        b'"delivery_id":"DLV-K1","newsletter_id":11,"content_id":3,"recipient":"#general",'
        b'"content":"Deploy done"}}',
        _track(
            "Slack Message Sent",
            "k1",
            {
                "event_id": "01HSLACK00000000000000001",
                "object_type": "slack",
                "metric": "sent",
                "email_id": "DLV-K1",
                "delivery_id": "DLV-K1",
                "newsletter_id": 11,
                "content_id": 3,
                "content": "Deploy done",
                "recipient": "#general",
            },
        ),
    ),
    (
        b'{"event_id":"01HWEBHOOK000000000000001","metric":"failed","object_type":"webhook",'
        b'"timestamp":1613063089,"data":{"customer_id":"w1","identifiers":{"id":"w1"},'
        b'"delivery_id":"DLV-W1","campaign_id":12,"action_id":13,'
        b'"failure_message":"500 from https://hooks.example.com/in"}}',
        _track(
            "Webhook Message Failed",
            "w1",
            {
                "event_id": "01HWEBHOOK000000000000001",
                "object_type": "webhook",
                "metric": "failed",
                "email_id": "DLV-W1",
                "campaign_id": 12,
                "reason": "500 from https://hooks.example.com/in",
                "delivery_id": "DLV-W1",
                "action_id": 13,
            },
        ),
    ),
    (
        b'{"event_id":"01HWHATSAPP00000000000001","metric":"delivered","object_type":"whatsapp",'
        b'"timestamp":1613063089,"data":{"customer_id":"a1","identifiers":{"id":"a1"},'
        b'"delivery_id":"DLV-A1","transactional_message_id":14,"recipient":"+447700900123"}}',
        _track(
            "WhatsApp Message Delivered",
            "a1",
            {
                "event_id": "01HWHATSAPP00000000000001",
                "object_type": "whatsapp",
                "metric": "delivered",
                "email_id": "DLV-A1",
                "delivery_id": "DLV-A1",
                "transactional_message_id": 14,
                "recipient": "+447700900123",
            },
            traits={"phone": "+447700900123"},
        ),
    ),
]


@pytest.mark.parametrize(("raw", "track"), EACH_CHANNEL, ids=[t["event"] for _, t in EACH_CHANNEL])
async def test_a_signed_webhook_of_each_channel_reaches_segment_exactly(
    relay_factory: RelayFactory,
    customerio: StandIn,
    segment: StandIn,
    raw: bytes,
    track: dict[str, Any],
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url, segment_url=segment.url)
    assert await post_webhook(url, raw) == (200, {"success": True})
    [request] = await segment.wait_for(1)
    assert (request.method, request.path) == ("POST", "/v1/batch")
    assert request.headers["Authorization"] == SEGMENT_AUTH
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"relay/{__version__}"
    assert set(request.body) == {"batch", "sentAt"}
    assert request.body["batch"] == [track]
    assert_sent_at_is_now(request.body["sentAt"], track["timestamp"])
    assert customerio.requests == []


async def test_signature_is_checked_over_the_raw_bytes_not_a_reserialisation(
    relay_factory: RelayFactory, customerio: StandIn, segment: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url, segment_url=segment.url)
    # Odd spacing, key order and a float written as 1.0: re-encoding would change the bytes.
    raw = (
        b'{ "metric" : "opened", "event_id":"raw-1",  "object_type":"email",\n'
        b'  "timestamp": 1704164645.0, "data": {"customer_id": "u1", "campaign_id": 1.0} }'
    )
    assert await post_webhook(url, raw) == (200, {"success": True})
    [message] = await wait_for_messages(segment, 1)
    assert message["messageId"] == "cio-raw-1"
    assert message["timestamp"] == "2024-01-02T03:04:05.000Z"


async def test_the_published_test_vector_is_accepted(
    relay_factory: RelayFactory, tmp_path: Path, segment: StandIn
) -> None:
    text = config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9", segment.url).replace(
        'other: "other-key"', 'other: "other-key", vector: "signing-secret"'
    )
    url, app = await relay_factory(yaml_text=text)
    raw = b'{"event_id":"abc","object_type":"email","metric":"delivered"}'
    headers = {
        "X-CIO-Timestamp": "1614265384",
        "X-CIO-Signature": "6f55cf23f9b73a2ff07733fe04421f64ce9ec5e409696edda6b2a80311944230",
    }
    status, body, _ = await post_raw(url + HOOK, raw, headers)
    assert (status, body) == (200, {"success": True})
    # Genuine, but it names no person: kept as rejected, under the source whose key matched.
    assert received(app, "vector", "rejected") == 1


# --------------------------------------------------------------------------- who may post


@pytest.mark.parametrize(
    "path, key, source",
    [
        (HOOK, "old-signing-key", "marketing"),
        (HOOK, "signing-key", "marketing"),
        (HOOK, "other-key", "other"),
        (f"{HOOK}/marketing", "old-signing-key", "marketing"),
        (f"{HOOK}/marketing", "signing-key", "marketing"),
        (f"{HOOK}/other", "other-key", "other"),
    ],
    ids=[
        "any-source-rotation-old-key",
        "any-source-rotation-new-key",
        "any-source-second-source",
        "scoped-rotation-old-key",
        "scoped-rotation-new-key",
        "scoped-second-source",
    ],
)
async def test_any_configured_key_of_the_source_is_accepted(
    relay_factory: RelayFactory, segment: StandIn, path: str, key: str, source: str
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    assert await post_webhook(url, webhook("k-1"), key=key, path=path) == (
        200,
        {"success": True},
    )
    assert received(app, source, "queued") == 1
    [message] = await wait_for_messages(segment, 1)
    assert message["messageId"] == "cio-k-1"


@pytest.mark.parametrize(
    "path, key, message",
    [
        (f"{HOOK}/marketing", "other-key", UNAUTHORIZED),
        (f"{HOOK}/other", "signing-key", UNAUTHORIZED),
        (f"{HOOK}/other", "old-signing-key", UNAUTHORIZED),
        (HOOK, "not-a-configured-key", UNAUTHORIZED),
        (HOOK, "", UNAUTHORIZED),
        (f"{HOOK}/unknown", "signing-key", "no signing key is configured for source 'unknown'"),
    ],
    ids=[
        "scoped-marketing-other-sources-key",
        "scoped-other-marketing-key",
        "scoped-other-marketing-old-key",
        "unknown-key",
        "empty-key",
        "unknown-source",
    ],
)
async def test_a_key_that_is_not_the_sources_own_is_401(
    relay_factory: RelayFactory, segment: StandIn, path: str, key: str, message: str
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    status, body = await post_webhook(url, webhook("k-1"), key=key, path=path)
    assert status == 401
    assert body == {"success": False, "code": "unauthorized", "message": message, "error": message}
    await assert_nothing_stored_or_sent(url, app, segment)


async def assert_nothing_stored_or_sent(url: str, app: web.Application, segment: StandIn) -> None:
    """Nothing from the refused requests was kept: the next genuine webhook is alone."""
    assert await relay_of(app).store.dead_letters() == []
    assert await post_webhook(url, webhook("after")) == (200, {"success": True})
    [request] = await segment.wait_for(1)
    assert [m["messageId"] for m in request.body["batch"]] == ["cio-after"]


def _headers_without(*names: str) -> dict[str, str]:
    raw = webhook("h-1")
    ts = str(int(time.time()))
    headers = {"X-CIO-Timestamp": ts, "X-CIO-Signature": sign("signing-key", ts, raw)}
    return {k: v for k, v in headers.items() if k not in names}


@pytest.mark.parametrize(
    "headers",
    [
        _headers_without("X-CIO-Timestamp"),
        _headers_without("X-CIO-Signature"),
        _headers_without("X-CIO-Timestamp", "X-CIO-Signature"),
        {**_headers_without(), "X-CIO-Signature": ""},
        {**_headers_without(), "X-CIO-Timestamp": ""},
        {**_headers_without(), "X-CIO-Signature": "0" * 64},
        {**_headers_without(), "X-CIO-Signature": "not hex at all"},
        # a valid signature for another moment: the timestamp is part of what is signed
        {**_headers_without(), "X-CIO-Timestamp": "1614265384"},
    ],
    ids=[
        "no-timestamp",
        "no-signature",
        "no-headers",
        "empty-signature",
        "empty-timestamp",
        "wrong-signature",
        "garbage-signature",
        "other-timestamp",
    ],
)
async def test_missing_or_wrong_signature_headers_are_401_with_a_json_error(
    relay_factory: RelayFactory, segment: StandIn, headers: dict[str, str]
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    status, body, response_headers = await post_raw(url + HOOK, webhook("h-1"), headers)
    assert status == 401
    assert response_headers["Content-Type"].startswith("application/json")
    assert body == {
        "success": False,
        "code": "unauthorized",
        "message": UNAUTHORIZED,
        "error": UNAUTHORIZED,
    }
    await assert_nothing_stored_or_sent(url, app, segment)


@pytest.mark.parametrize(
    "alter",
    [
        lambda raw: raw.replace(b'"opened"', b'"clicked"'),
        lambda raw: raw + b"\n",
        lambda raw: b" " + raw,
        lambda raw: raw[:-1],
        lambda raw: b"",
    ],
    ids=["changed-value", "trailing-newline", "leading-space", "truncated", "emptied"],
)
async def test_a_body_altered_after_signing_is_401(
    relay_factory: RelayFactory, segment: StandIn, alter: Any
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    raw = webhook("alt-1")
    ts = str(int(time.time()))
    headers = {"X-CIO-Timestamp": ts, "X-CIO-Signature": sign("signing-key", ts, raw)}
    status, body, _ = await post_raw(url + HOOK, alter(raw), headers)
    assert status == 401
    assert body["code"] == "unauthorized" and body["message"] == UNAUTHORIZED
    await assert_nothing_stored_or_sent(url, app, segment)


# --------------------------------------------------------------------------- mapping


async def test_legacy_event_type_webhook_maps_to_the_same_track_shape(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    raw = json.dumps(
        {
            "event_id": "legacy-1",
            "event_type": "email_delivered",
            "timestamp": "1585250199",
            "data": {
                "customer_id": "42",
                "email_address": "a@b.co",
                "email_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
                "campaign_id": 23,
                "campaign_name": "Welcome series",
                "template_id": 7,
                "subject": "Welcome",
            },
        }
    ).encode()
    assert await post_webhook(url, raw) == (200, {"success": True})
    [request] = await segment.wait_for(1)
    assert request.body["batch"] == [
        {
            "type": "track",
            "event": "Email Delivered",
            "userId": "42",
            "properties": {
                "event_id": "legacy-1",
                "object_type": "email",
                "metric": "delivered",
                "email_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
                "email_subject": "Welcome",
                "campaign_id": 23,
                "campaign_name": "Welcome series",
                "template_id": 7,
            },
            "timestamp": "2020-03-26T19:16:39.000Z",
            "messageId": "cio-legacy-1",
            "context": {**CONTEXT, "traits": {"email": "a@b.co"}},
            "integrations": {"Customer.io": False},
        }
    ]
    assert_sent_at_is_now(request.body["sentAt"], "2020-03-26T19:16:39.000Z")


async def test_legacy_event_types_are_split_on_the_known_channel_prefix(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    table = [
        ("email_delivered", "Email Delivered"),
        ("email_clicked", "Email Link Clicked"),
        ("email_spammed", "Email Marked as Spam"),
        ("in_app_opened", "In-App Message Opened"),
        ("customer_unsubscribed", "Customer Unsubscribed"),
        ("sms_clicked", "SMS Link Clicked"),
        ("push_bounced", "Push Bounced"),
        ("slack_failed", "Slack Message Failed"),
        ("webhook_sent", "Webhook Message Sent"),
    ]
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    for i, (event_type, _) in enumerate(table):
        raw = json.dumps(
            {"event_id": f"lg-{i}", "event_type": event_type, "data": {"customer_id": "7"}}
        ).encode()
        assert await post_webhook(url, raw) == (200, {"success": True})
    messages = await wait_for_messages(segment, len(table))
    # One person: delivered in the order received.
    assert [m["event"] for m in messages] == [name for _, name in table]


async def test_raw_profile_copies_data_as_sent(
    relay_factory: RelayFactory, tmp_path: Path, segment: StandIn
) -> None:
    url, _ = await relay_factory(
        yaml_text=yaml_with_customerio(tmp_path, segment.url, "    profile: raw")
    )
    assert await post_webhook(url, CLICKED) == (200, {"success": True})
    [message] = await wait_for_messages(segment, 1)
    assert message["properties"] == {
        "customer_id": "42",
        "identifiers": {"id": "42", "email": "a@b.co", "cio_id": "d9c106000001"},
        "delivery_id": "RPILAgABcRhIBqSp7kiPekGBIeVh",
        "campaign_id": 23,
        "action_id": 36,
        "subject": "Welcome",
        "recipient": "a@b.co",
        "href": "https://x.co/p",
        "link_id": 3,
        "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
        "object_type": "email",
        "metric": "clicked",
    }
    assert {k: v for k, v in message.items() if k != "properties"} == {
        k: v for k, v in CLICKED_TRACK.items() if k != "properties"
    }


# --------------------------------------------------------------------------- genuine but unmappable


NO_PERSON_REASON = (
    "webhook names no person: no data.identifiers.id, data.customer_id, "
    "data.identifiers.email, data.email_address or email recipient"
)


@pytest.mark.parametrize(
    "raw, reason, stored",
    [
        (
            b'{"event_id":"np-1","object_type":"email","metric":"sent","data":{"delivery_id":"d1"}}',
            NO_PERSON_REASON,
            {
                "event_id": "np-1",
                "object_type": "email",
                "metric": "sent",
                "data": {"delivery_id": "d1"},
            },
        ),
        (
            b"not json {",
            "the webhook body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
            {"body": "not json {"},
        ),
        (
            b'[{"event_id":"arr-1"}]',
            "the webhook body is not a JSON object",
            {"body": [{"event_id": "arr-1"}]},
        ),
        (
            b'{"object_type":"email","metric":"sent","data":{"customer_id":"u1"}}',
            "webhook has no event_id (a non-empty string)",
            {"object_type": "email", "metric": "sent", "data": {"customer_id": "u1"}},
        ),
        (
            b'{"event_id":"nt-1","data":{"customer_id":"u1"}}',
            "webhook has neither object_type/metric nor a legacy event_type",
            {"event_id": "nt-1", "data": {"customer_id": "u1"}},
        ),
    ],
    ids=["no-person", "not-json", "json-array", "no-event-id", "no-event-type"],
)
async def test_a_genuine_webhook_that_cannot_be_mapped_is_200_and_kept_as_rejected(
    relay_factory: RelayFactory,
    segment: StandIn,
    raw: bytes,
    reason: str,
    stored: Any,
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    assert await post_webhook(url, raw) == (200, {"success": True})
    [dead] = await relay_of(app).store.dead_letters()
    assert dead.destination is None
    assert (dead.kind, dead.source) == ("customerio", "marketing")
    assert dead.reason == reason
    assert dead.message == stored
    assert received(app, "marketing", "rejected") == 1
    # Nothing went to Segment for it: the next good webhook arrives alone.
    assert await post_webhook(url, webhook("good-1")) == (200, {"success": True})
    [request] = await segment.wait_for(1)
    assert [m["messageId"] for m in request.body["batch"]] == ["cio-good-1"]


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    "depth, reason",
    [
        # orjson reads it, but relay could not write it back out
        (
            1000,
            "the webhook body is nested too deeply (more than 512 levels of arrays and objects)",
        ),
        # no parser takes it
        (
            5000,
            "the webhook body is not valid JSON: the JSON is nested too deeply: more than about"
            " 1,000 levels of arrays and objects (send flatter JSON)",
        ),
    ],
)
async def test_a_genuine_webhook_nested_too_deeply_is_200_and_kept_as_rejected(
    relay_factory: RelayFactory, segment: StandIn, depth: int, reason: str
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    raw = (
        '{"event_id":"deep-1","object_type":"email","metric":"sent",'
        f'"data":{{"customer_id":"u1","x":{nested(depth)}}}}}'
    ).encode()
    assert await post_webhook(url, raw) == (200, {"success": True})
    [dead] = await relay_of(app).store.dead_letters()
    assert (dead.destination, dead.kind, dead.source) == (None, "customerio", "marketing")
    assert dead.reason == reason
    assert dead.message == {"body": raw.decode()}
    assert received(app, "marketing", "rejected") == 1
    assert await post_webhook(url, webhook("good-1")) == (200, {"success": True})
    [request] = await segment.wait_for(1)
    assert [m["messageId"] for m in request.body["batch"]] == ["cio-good-1"]


def oversize_webhook(event_id: str) -> bytes:
    """A webhook of a little over 1 MB, most of it an email's content."""
    raw = webhook(event_id, user="u1", content="<p>" + "c" * (1024 * 1024) + "</p>")
    assert 1024 * 1024 < len(raw) < 1024 * 1024 + 1000
    return raw


async def test_a_genuine_webhook_over_1_mb_is_200_and_kept_as_rejected_in_summary(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    raw = oversize_webhook("huge-1")
    assert await post_webhook(url, raw) == (200, {"success": True})
    [dead] = await relay_of(app).store.dead_letters()
    assert (dead.destination, dead.kind, dead.source) == (None, "customerio", "marketing")
    assert dead.reason == (
        f"the webhook is larger than 1 MB ({len(raw)} bytes), so it was not routed; kept here"
        " are its size, its short top-level fields and its first 2000 characters"
    )
    assert dead.message == {
        "event_id": "huge-1",
        "object_type": "email",
        "metric": "opened",
        "timestamp": 1704164645,
        "body_bytes": len(raw),
        "body_start": raw[:2000].decode(),
    }
    assert received(app, "marketing", "rejected") == 1
    # Not sent, and the feed goes on: the person's next webhook arrives alone.
    assert await post_webhook(url, webhook("after-huge", user="u1")) == (200, {"success": True})
    [request] = await segment.wait_for(1)
    assert [m["messageId"] for m in request.body["batch"]] == ["cio-after-huge"]


@pytest.mark.parametrize("signed", ["wrong-key", "unsigned"])
async def test_a_webhook_over_1_mb_that_is_not_genuine_is_401(
    relay_factory: RelayFactory, segment: StandIn, signed: str
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    raw = oversize_webhook("huge-2")
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json"}
    if signed == "wrong-key":
        headers |= {"X-CIO-Timestamp": ts, "X-CIO-Signature": sign("wrong-key", ts, raw)}
    status, body, _ = await post_raw(url + HOOK, raw, headers)
    assert status == 401
    assert body == {
        "success": False,
        "code": "unauthorized",
        "message": UNAUTHORIZED,
        "error": UNAUTHORIZED,
    }
    await assert_nothing_stored_or_sent(url, app, segment)


# --------------------------------------------------------------------------- dedup, latency


async def test_the_same_event_id_twice_reaches_segment_once(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    raw = webhook("dup-1")
    now = int(time.time())
    # A retry by Customer.io may carry a new timestamp, and may be signed with the new key
    # during a rotation: still the same event.
    assert await post_webhook(url, raw, key="old-signing-key", timestamp=str(now)) == (
        200,
        {"success": True},
    )
    assert await post_webhook(url, raw, key="signing-key", timestamp=str(now + 5)) == (
        200,
        {"success": True},
    )
    assert await post_webhook(url, webhook("dup-2")) == (200, {"success": True})
    await wait_for_messages(segment, 2)
    await asyncio.sleep(0.3)
    assert [m["messageId"] for m in sent_messages(segment)] == ["cio-dup-1", "cio-dup-2"]
    assert received(app, "marketing", "duplicate") == 1
    assert received(app, "marketing", "queued") == 2


async def test_retries_of_a_webhook_that_cannot_be_mapped_are_kept_once(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    raw = json.dumps({"event_id": "nobody-1", "object_type": "email", "metric": "opened"})
    for _ in range(3):  # Customer.io retries until it gets a 200, and may again after one
        assert await post_webhook(url, raw.encode()) == (200, {"success": True})
    [dead] = await relay_of(app).store.dead_letters()
    assert dead.message["event_id"] == "nobody-1"
    assert received(app, "marketing", "rejected") == 1
    assert received(app, "marketing", "duplicate") == 2


async def test_an_event_id_is_forgotten_after_dedup_window(
    relay_factory: RelayFactory, tmp_path: Path, segment: StandIn
) -> None:
    url, app = await relay_factory(
        yaml_text=yaml_with_customerio(tmp_path, segment.url, "    dedup_window: 1s")
    )
    raw = webhook("win-1")
    assert await post_webhook(url, raw) == (200, {"success": True})
    assert await post_webhook(url, raw) == (200, {"success": True})
    await wait_for_messages(segment, 1)
    assert received(app, "marketing", "duplicate") == 1
    await asyncio.sleep(1.5)  # past the 1 s window
    assert await post_webhook(url, raw) == (200, {"success": True})
    await wait_for_messages(segment, 2)
    assert [m["messageId"] for m in sent_messages(segment)] == ["cio-win-1", "cio-win-1"]
    assert received(app, "marketing", "queued") == 2
    assert received(app, "marketing", "duplicate") == 1


async def test_timestamp_tolerance_in_the_config_refuses_an_old_or_future_timestamp(
    relay_factory: RelayFactory, tmp_path: Path, segment: StandIn
) -> None:
    url, app = await relay_factory(
        yaml_text=yaml_with_customerio(tmp_path, segment.url, "    timestamp_tolerance: 5m")
    )
    message = UNAUTHORIZED + " (or X-CIO-Timestamp is outside the allowed tolerance)"
    now = int(time.time())
    # Correctly signed, but for a moment an hour away: a replay, or a clock far off.
    for moment in (now - 3600, now + 3600):
        status, body = await post_webhook(url, webhook("old-1"), timestamp=str(moment))
        assert status == 401
        assert body == {
            "success": False,
            "code": "unauthorized",
            "message": message,
            "error": message,
        }
    assert await relay_of(app).store.dead_letters() == []
    assert await post_webhook(url, webhook("fresh-1"), timestamp=str(now)) == (
        200,
        {"success": True},
    )
    [request] = await segment.wait_for(1)
    assert [m["messageId"] for m in request.body["batch"]] == ["cio-fresh-1"]


async def test_the_webhook_answer_comes_well_under_a_second(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    timings: list[float] = []

    async def timed(i: int) -> int:
        started = time.perf_counter()
        status, _ = await post_webhook(url, webhook(f"lat-{i}", user=f"u{i % 5}"))
        timings.append(time.perf_counter() - started)
        return status

    for i in range(10):
        assert await timed(i) == 200
    assert await asyncio.gather(*(timed(i) for i in range(10, 40))) == [200] * 30
    # A loose sanity bound: Customer.io gives up after 4 s.
    assert max(timings) < 2.0
    await wait_for_messages(segment, 40)


# --------------------------------------------------------------------------- Segment's answers


async def test_429_with_retry_after_loses_nothing_and_keeps_each_persons_order(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    segment.respond(429, {"message": "rate limited"}, {"Retry-After": "1"})
    users = ["u1", "u2", "u1", "u2", "u1", "u3"]
    for i, user in enumerate(users):
        assert await post_webhook(url, webhook(f"rl-{i}", user=user)) == (
            200,
            {"success": True},
        )
    # The first request was answered 429: everything else was answered 200.
    delivered = await wait_for_messages(segment, len(users), first=1)
    await asyncio.sleep(0.3)
    delivered = sent_messages(segment, first=1)
    assert sorted(m["messageId"] for m in delivered) == [f"cio-rl-{i}" for i in range(6)]
    for user in ("u1", "u2", "u3"):
        expected = [f"cio-rl-{i}" for i, u in enumerate(users) if u == user]
        assert [m["messageId"] for m in delivered if m["userId"] == user] == expected
    # The refused messages came again no sooner than Retry-After.
    refused = {m["messageId"] for m in segment.requests[0].body["batch"]}
    assert refused
    again = next(
        r for r in segment.requests[1:] if refused & {m["messageId"] for m in r.body["batch"]}
    )
    assert again.at - segment.requests[0].at >= 0.9


@pytest.mark.parametrize("failure", ["500", "reset"])
async def test_a_server_error_or_dropped_connection_is_retried(
    relay_factory: RelayFactory, segment: StandIn, failure: str
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    if failure == "500":
        segment.respond(500, {"message": "internal"})
    else:
        segment.reset_connection()
    assert await post_webhook(url, CLICKED) == (200, {"success": True})
    first, second = await segment.wait_for(2)
    assert first.body["batch"] == second.body["batch"] == [CLICKED_TRACK]
    assert second.headers["Authorization"] == SEGMENT_AUTH
    # sentAt is the time of each send, so the retry carries a later one.
    assert second.body["sentAt"] > first.body["sentAt"]
    assert_sent_at_is_now(second.body["sentAt"], CLICKED_TRACK["timestamp"])
    assert second.at - first.at >= 0.9
    metrics = relay_of(app).metrics
    assert metrics.retried.labels("segment.main")._value.get() == 1
    for _ in range(100):
        if metrics.delivered.labels("segment.main")._value.get() == 1:
            break
        await asyncio.sleep(0.05)
    assert metrics.delivered.labels("segment.main")._value.get() == 1
    assert await relay_of(app).store.dead_letters() == []


async def test_429_with_only_x_ratelimit_reset_is_honoured_and_loses_nothing(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    segment.respond(429, {"message": "rate limited"}, {"X-RateLimit-Reset": "1"})
    assert await post_webhook(url, CLICKED) == (200, {"success": True})
    first, second = await segment.wait_for(2)
    assert first.body["batch"] == second.body["batch"] == [CLICKED_TRACK]
    # The reset held the whole destination back for a second from when the 429 came in.
    limiter = relay_of(app).workers["segment.main"].sink.sender.limiter
    assert limiter.blocked_until >= first.at + 1.0
    metrics = relay_of(app).metrics
    for _ in range(100):
        if metrics.delivered.labels("segment.main")._value.get() == 1:
            break
        await asyncio.sleep(0.05)
    assert metrics.delivered.labels("segment.main")._value.get() == 1
    assert await relay_of(app).store.dead_letters() == []
    assert len(segment.requests) == 2


async def test_a_segment_request_that_times_out_is_retried_then_delivered(
    relay_factory: RelayFactory, tmp_path: Path, segment: StandIn
) -> None:
    text = config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9", segment.url)
    segment_dest = f'      base_url: "{segment.url}"\n      timeout: 2\n'
    assert segment_dest in text
    url, app = await relay_factory(
        yaml_text=text.replace(segment_dest, segment_dest.replace("timeout: 2", "timeout: 1s"))
    )
    segment.hang()  # answers only after 30 s, long past the destination's 1 s timeout
    assert await post_webhook(url, CLICKED) == (200, {"success": True})
    first, second = await segment.wait_for(2, timeout=20)
    assert first.body["batch"] == second.body["batch"] == [CLICKED_TRACK]
    assert second.headers["Authorization"] == SEGMENT_AUTH
    assert second.body["sentAt"] > first.body["sentAt"]
    metrics = relay_of(app).metrics
    for _ in range(100):
        if metrics.delivered.labels("segment.main")._value.get() == 1:
            break
        await asyncio.sleep(0.05)
    assert metrics.delivered.labels("segment.main")._value.get() == 1
    assert metrics.retried.labels("segment.main")._value.get() == 1
    assert metrics.requests.labels("segment.main", "error")._value.get() == 1
    assert await relay_of(app).store.dead_letters() == []


async def test_a_400_from_segment_dead_letters_the_delivery_with_the_response_body(
    relay_factory: RelayFactory, segment: StandIn
) -> None:
    url, app = await relay_factory(cio_url="http://127.0.0.1:9", segment_url=segment.url)
    segment.respond(400, {"code": "invalid_request", "message": "Invalid JSON"})
    assert await post_webhook(url, CLICKED) == (200, {"success": True})
    [dead] = await wait_for_dead(app, 1)
    assert dead.destination == "segment.main"
    assert (dead.kind, dead.source) == ("customerio", "marketing")
    assert dead.reason == 'HTTP 400: {"code": "invalid_request", "message": "Invalid JSON"}'
    # Kept as it came, to be mapped again if it is replayed (after a fix to the mapping).
    assert dead.message == {"webhook": json.loads(CLICKED), "profile": "default", "edits": None}
    assert dead.attempts == 1
    # Not retried: the same person's next event goes out alone, not held behind it.
    later = webhook("after-400", user="42")
    assert await post_webhook(url, later) == (200, {"success": True})
    first, second = await segment.wait_for(2)
    assert first.body["batch"] == [CLICKED_TRACK]
    assert [m["messageId"] for m in second.body["batch"]] == ["cio-after-400"]


@pytest.mark.parametrize(
    "profile, data",
    [
        ("default", {"subject": "s" * 40_000}),
        ("raw", {"content": "<p>" + "c" * 40_000 + "</p>"}),
    ],
    ids=["default-profile-big-subject", "raw-profile-big-content"],
)
async def test_a_message_over_32_kb_is_dead_lettered_and_never_sent(
    relay_factory: RelayFactory,
    tmp_path: Path,
    segment: StandIn,
    profile: str,
    data: dict[str, Any],
) -> None:
    url, app = await relay_factory(
        yaml_text=yaml_with_customerio(tmp_path, segment.url, f"    profile: {profile}")
    )
    assert await post_webhook(url, webhook("big-1", user="big", **data)) == (
        200,
        {"success": True},
    )
    [dead] = await wait_for_dead(app, 1)
    match = re.fullmatch(
        r"the Segment message is (\d+) bytes, over Segment's limit of 32768 bytes per message",
        dead.reason,
    )
    assert match, dead.reason
    assert 40_000 < int(match.group(1)) < 42_000
    assert dead.message["webhook"]["event_id"] == "big-1"
    # The same person's next event is not held behind it, and the big one never goes out.
    assert await post_webhook(url, webhook("small-1", user="big")) == (200, {"success": True})
    await wait_for_messages(segment, 1)
    await asyncio.sleep(0.2)
    assert [m["messageId"] for m in sent_messages(segment)] == ["cio-small-1"]


# --------------------------------------------------------------------------- loop breaking


def segment_track(user: str, event: str, message_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": event,
        "messageId": message_id,
        "timestamp": "2024-01-02T03:04:05Z",
        **extra,
    }


async def test_integrations_customerio_false_on_v1_track_never_reaches_customerio(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    auth = {"Authorization": basic(WRITE_KEY), "Content-Type": "application/json"}
    calls = [
        segment_track("u1", "Off", "m-1", integrations={"Customer.io": False}),
        segment_track("u1", "All Off", "m-2", integrations={"All": False}),
        segment_track(
            "u1", "Explicitly On", "m-3", integrations={"All": False, "Customer.io": True}
        ),
        segment_track("u1", "Plain", "m-4"),
    ]
    for call in calls:
        status, body, _ = await post_raw(f"{url}/v1/track", json.dumps(call).encode(), auth)
        assert (status, body) == (200, {"success": True})
    await customerio.wait_for(1)
    await asyncio.sleep(0.3)
    names = [op["name"] for r in customerio.requests for op in r.body["batch"]]
    assert names == ["Explicitly On", "Plain"]


async def test_a_message_made_from_a_webhook_and_sent_back_in_never_reaches_customerio(
    relay_factory: RelayFactory, customerio: StandIn, segment: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url, segment_url=segment.url)
    assert await post_webhook(url, CLICKED) == (200, {"success": True})
    [made] = await wait_for_messages(segment, 1)
    auth = {"Authorization": basic(WRITE_KEY), "Content-Type": "application/json"}
    # As if Segment forwarded relay's own track call back to relay.
    status, _, _ = await post_raw(f"{url}/v1/track", json.dumps(made).encode(), auth)
    assert status == 200
    marker = segment_track("42", "Marker", "m-marker")
    status, _, _ = await post_raw(f"{url}/v1/track", json.dumps(marker).encode(), auth)
    assert status == 200
    await customerio.wait_for(1)
    await asyncio.sleep(0.3)
    names = [op["name"] for r in customerio.requests for op in r.body["batch"]]
    assert names == ["Marker"]


# --------------------------------------------------------------------------- mapped at delivery


async def test_a_queued_webhook_is_mapped_when_it_is_delivered_with_its_routes_edits(
    relay_factory: RelayFactory, segment: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mapping fix reaches what is queued: the webhook waits (Segment answers 503), the
    # mapping changes meanwhile (as a new release would), and the event goes out mapped
    # by the new one, with the edits of the route that took it when it was accepted.
    routes = """
  - name: activity
    from: customerio
    rename_events: {"Email Link Clicked": "Clicked"}
    set_properties: {via: relay}
    to: [segment.main]
"""
    segment.respond(503, {}, {"Retry-After": "1"})
    url, app = await relay_factory(
        cio_url="http://127.0.0.1:9", segment_url=segment.url, routes=routes
    )
    assert await post_webhook(url, CLICKED) == (200, {"success": True})
    await segment.wait_for(1)  # refused: still queued

    from relay.destinations.segment import sink

    original = sink.map_webhook

    def fixed_mapping(payload: Any, **kwargs: Any) -> Any:
        mapped = original(payload, **kwargs)
        mapped["properties"]["fixed"] = True
        return mapped

    monkeypatch.setattr(sink, "map_webhook", fixed_mapping)
    first, second = await segment.wait_for(2, timeout=15)
    assert first.body["batch"] == [
        {
            **CLICKED_TRACK,
            "event": "Clicked",
            "properties": {**CLICKED_TRACK["properties"], "via": "relay"},
        }
    ]
    assert second.body["batch"] == [
        {
            **CLICKED_TRACK,
            "event": "Clicked",
            "properties": {**CLICKED_TRACK["properties"], "via": "relay", "fixed": True},
        }
    ]
