"""Segment's HTTP Tracking API as relay serves it: paths, auth forms, limits, batches, dedup."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import zlib
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    API_KEY,
    BACKEND_KEY,
    SITE_ID,
    WRITE_KEY,
    RelayFactory,
    StandIn,
    basic,
    relay_of,
)
from tests.helpers import post, sent_ops, track

CIO_AUTH = basic(SITE_ID, API_KEY)


def identify(user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {
        "userId": user,
        "traits": {"email": f"{user}@example.com"},
        "messageId": f"m-{user}",
        "timestamp": "2024-01-02T03:04:05Z",
        **extra,
    }


async def test_identify_with_basic_auth_reaches_customerio_as_exact_batch(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(
        f"{url}/v1/identify", identify(), headers={"Authorization": basic(WRITE_KEY)}
    )
    assert (status, body) == (200, {"success": True})
    [request] = await customerio.wait_for(1)
    assert request.method == "POST"
    assert request.path == "/api/v2/batch"
    assert request.headers["Authorization"] == CIO_AUTH
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("relay/")
    assert request.body == {
        "batch": [
            {
                "type": "person",
                "identifiers": {"id": "u1"},
                "action": "identify",
                "timestamp": 1704164645,
                "attributes": {"email": "u1@example.com"},
            }
        ]
    }


async def test_track_reaches_customerio_as_event(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, _, _ = await post(
        f"{url}/v1/track",
        track("u1", "Order Completed", "m-1", total=12.5),
        headers={"Authorization": basic(WRITE_KEY)},
    )
    assert status == 200
    [request] = await customerio.wait_for(1)
    [op] = request.body["batch"]
    assert op["type"] == "person" and op["action"] == "event"
    assert op["identifiers"] == {"id": "u1"}
    assert op["name"] == "Order Completed"
    assert op["attributes"] == {"total": 12.5}
    assert op["timestamp"] == 1704164645
    assert len(op["id"]) == 26  # a ULID derived from the messageId


@pytest.mark.parametrize(
    "headers, body_extra",
    [
        ({"Authorization": basic(WRITE_KEY)}, {}),
        (
            {
                "Authorization": "Basic "
                + __import__("base64").b64encode(WRITE_KEY.encode()).decode()
            },
            {},
        ),
        ({}, {"writeKey": WRITE_KEY}),
        ({"Authorization": "Bearer some-oauth-token"}, {"writeKey": WRITE_KEY}),
        ({"Authorization": basic(BACKEND_KEY)}, {}),
    ],
    ids=[
        "basic-with-colon",
        "basic-without-colon",
        "write-key-in-body",
        "bearer-plus-body-key",
        "second-source",
    ],
)
async def test_every_auth_form_is_accepted(
    relay_factory: RelayFactory,
    customerio: StandIn,
    headers: dict[str, str],
    body_extra: dict[str, Any],
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(
        f"{url}/v1/identify", {**identify(), **body_extra}, headers=headers
    )
    assert (status, body) == (200, {"success": True})
    await customerio.wait_for(1)


@pytest.mark.parametrize(
    "headers, body_extra, fragment",
    [
        ({}, {}, "no write key"),
        ({"Authorization": basic("wrong-key")}, {}, "not one of"),
        ({}, {"writeKey": "wrong-key"}, "not one of"),
        ({"Authorization": "Bearer token"}, {}, "not one of"),
        ({"Authorization": "Basic !!!not-base64"}, {}, "not one of"),
    ],
)
async def test_bad_or_missing_write_key_is_401_with_json_error(
    relay_factory: RelayFactory,
    customerio: StandIn,
    headers: dict[str, str],
    body_extra: dict[str, Any],
    fragment: str,
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(
        f"{url}/v1/track", {**track("u", "E", "m"), **body_extra}, headers=headers
    )
    assert status == 401
    assert body["code"] == "unauthorized"
    assert fragment in body["message"] and body["error"] == body["message"]
    assert "wrong-key" not in body["message"]


async def test_gzip_body_is_accepted(relay_factory: RelayFactory, customerio: StandIn) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    raw = gzip.compress(
        json.dumps(
            {
                "batch": [
                    {**identify("g1"), "type": "identify"},
                    {**identify("g2"), "type": "identify"},
                ]
            }
        ).encode()
    )
    status, body, _ = await post(
        f"{url}/v1/batch",
        None,
        raw=raw,
        headers={"Authorization": basic(WRITE_KEY), "Content-Encoding": "gzip"},
    )
    assert (status, body) == (200, {"success": True})
    await customerio.wait_for(1)
    assert {op["identifiers"]["id"] for op in sent_ops(customerio)} == {"g1", "g2"}


async def test_corrupt_gzip_is_400(relay_factory: RelayFactory, customerio: StandIn) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(
        f"{url}/v1/track",
        None,
        raw=b"not gzip at all",
        headers={"Authorization": basic(WRITE_KEY), "Content-Encoding": "gzip"},
    )
    assert status == 400 and body["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("encoding", "status", "code"),
    [
        ("deflate", 400, "invalid_request"),
        ("gzip", 400, "invalid_request"),
        ("br", 415, "unsupported_encoding"),
    ],
)
async def test_a_bad_encoding_in_a_body_sent_after_its_headers_is_answered_in_json(
    relay_factory: RelayFactory, customerio: StandIn, encoding: str, status: int, code: str
) -> None:
    # The body arrives in a second packet, after the handler already started: aiohttp's own
    # decompression would leave this request hanging.
    url, _ = await relay_factory(cio_url=customerio.url)
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/track HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        + f"Authorization: {basic(WRITE_KEY)}\r\nContent-Encoding: {encoding}\r\n".encode()
        + b"Content-Length: 2\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"{}")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["code"] == code


async def test_deflate_body_is_accepted(relay_factory: RelayFactory, customerio: StandIn) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(
        f"{url}/v1/track",
        None,
        raw=zlib.compress(json.dumps(track("d1", "Deflated", "m-d1")).encode()),
        headers={"Authorization": basic(WRITE_KEY), "Content-Encoding": "deflate"},
    )
    assert (status, body) == (200, {"success": True})
    [request] = await customerio.wait_for(1)
    assert request.body["batch"][0]["name"] == "Deflated"


async def test_gzip_bomb_is_413(relay_factory: RelayFactory, customerio: StandIn) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(
        f"{url}/v1/batch",
        None,
        raw=gzip.compress(b" " * 20_000_000),
        headers={"Authorization": basic(WRITE_KEY), "Content-Encoding": "gzip"},
    )
    assert status == 413
    assert body["message"] == "a batch must be at most 500 KB"


async def test_browser_short_path_with_text_plain_and_cors(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    async with (
        aiohttp.ClientSession() as session,
        session.options(
            f"{url}/v1/t",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        ) as resp,
    ):
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "content-type"
    body = {**track("b1", "Clicked", "m-b1"), "writeKey": WRITE_KEY}
    del body["type"]  # the short path says what the call is
    status, payload, headers = await post(
        f"{url}/v1/t",
        body,
        headers={"Content-Type": "text/plain", "Origin": "https://shop.example"},
    )
    assert (status, payload) == (200, {"success": True})
    assert headers["Access-Control-Allow-Origin"] == "https://shop.example"
    [request] = await customerio.wait_for(1)
    assert request.body["batch"][0]["name"] == "Clicked"


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/t", {"event": "E", "userId": "u", "writeKey": "wrong"}, {}, 401),
        ("/v1/t", {"userId": "u", "writeKey": WRITE_KEY}, {}, 400),
        ("/v1/t", b"{", {}, 400),
        ("/v1/b", {"batch": "no", "writeKey": WRITE_KEY}, {}, 400),
        ("/v1/t", {"writeKey": WRITE_KEY, "event": "x" * 40_000, "userId": "u"}, {}, 413),
        ("/v1/t", {"event": "E", "userId": "u", "writeKey": WRITE_KEY}, {"gzip": "1"}, 400),
        ("/v1/nothing", {}, {}, 404),
    ],
)
async def test_every_answer_to_a_browser_carries_cors_headers(
    relay_factory: RelayFactory,
    customerio: StandIn,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
) -> None:
    # Without them a browser reports a network error instead of the status, and analytics.js
    # retries the event (up to 10 times) instead of dropping what relay refused.
    url, _ = await relay_factory(cio_url=customerio.url)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "text/plain", "Origin": "https://shop.example"}
    if headers:
        sent["Content-Encoding"] = "gzip"  # a body that says gzip but is not
    got, payload, answer = await post(f"{url}{path}", None, raw=raw, headers=sent)
    assert got == status, payload
    assert answer["Access-Control-Allow-Origin"] == "https://shop.example"
    assert answer["Vary"] == "Origin"
    assert payload["code"] and payload["message"]


async def test_a_503_to_a_browser_carries_cors_headers_and_retry_after(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    await relay_of(app).store.close()  # the store is gone: every write is refused
    status, payload, answer = await post(
        f"{url}/v1/t",
        {"event": "E", "userId": "u", "writeKey": WRITE_KEY},
        headers={"Content-Type": "text/plain", "Origin": "https://shop.example"},
    )
    assert (status, payload["code"]) == (503, "store_unavailable")
    assert answer["Access-Control-Allow-Origin"] == "https://shop.example"
    assert answer["Retry-After"] == "5"
    # Exposed, so that a page's script may read it.
    assert "Retry-After" in answer["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("path", ["i", "t", "p", "s", "g", "a"])
async def test_every_short_path_accepts_its_call(
    relay_factory: RelayFactory, customerio: StandIn, path: str
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    body = {
        "userId": "u1",
        "event": "E",
        "name": "Home",
        "groupId": "g1",
        "previousId": "p1",
        "properties": {"url": "https://x.example/"},
        "messageId": f"m-{path}",
        "writeKey": WRITE_KEY,
    }
    status, payload, _ = await post(
        f"{url}/v1/{path}", body, headers={"Content-Type": "text/plain"}
    )
    assert (status, payload) == (200, {"success": True})


@pytest.mark.parametrize("path", ["identify", "track", "page", "screen", "group", "alias"])
async def test_every_single_call_path_accepts_its_call(
    relay_factory: RelayFactory, customerio: StandIn, path: str
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    body = {
        "userId": "u1",
        "event": "E",
        "name": "Home",
        "groupId": "g1",
        "previousId": "p1",
        "properties": {"url": "https://x.example/"},
        "messageId": f"m-{path}",
    }
    status, payload, _ = await post(
        f"{url}/v1/{path}", body, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert (status, payload) == (200, {"success": True})


async def test_import_path_takes_a_batch(relay_factory: RelayFactory, customerio: StandIn) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, _, _ = await post(
        f"{url}/v1/import",
        {"batch": [track("u1", "A", "m-a"), track("u1", "B", "m-b")]},
        headers={"Authorization": basic(WRITE_KEY)},
    )
    assert status == 200
    await customerio.wait_for(1)
    assert [op["name"] for op in sent_ops(customerio)] == ["A", "B"]


async def test_invalid_single_call_is_400_saying_what(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(
        f"{url}/v1/track",
        {"userId": "u1", "messageId": "x"},
        headers={"Authorization": basic(WRITE_KEY)},
    )
    assert status == 400
    assert body == {
        "success": False,
        "code": "invalid_request",
        "message": "a track call needs a non-empty 'event'",
        "error": "a track call needs a non-empty 'event'",
    }
    status, body, _ = await post(
        f"{url}/v1/identify", None, raw=b"{not json", headers={"Authorization": basic(WRITE_KEY)}
    )
    assert status == 400 and "not valid JSON" in body["message"]
    status, body, _ = await post(
        f"{url}/v1/identify", {"traits": {}}, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert status == 400 and "userId" in body["message"]


async def test_a_track_nested_5000_levels_deep_is_a_json_400(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    raw = (
        '{"userId":"u1","event":"Deep","messageId":"m-deep","properties":{"x":' + deep + "}}"
    ).encode()
    status, body, headers = await post(
        f"{url}/v1/track", None, raw=raw, headers={"Authorization": basic(WRITE_KEY)}
    )
    message = (
        "the body is not valid JSON: the JSON is nested too deeply: more than about 1,000"
        " levels of arrays and objects (send flatter JSON)"
    )
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert body == {
        "success": False,
        "code": "invalid_request",
        "message": message,
        "error": message,
    }
    assert await relay_of(app).store.dead_letters() == []


async def test_single_message_over_32kb_is_413(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    big = track("u1", "Big", "m-big", blob="x" * (33 * 1024))
    status, body, _ = await post(
        f"{url}/v1/track", big, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert status == 413 and body["code"] == "payload_too_large"
    assert "32 KB" in body["message"]


async def test_batch_over_500kb_is_413(relay_factory: RelayFactory, customerio: StandIn) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    items = [track("u1", "E", f"m-{i}", blob="x" * 20_000) for i in range(27)]
    status, body, _ = await post(
        f"{url}/v1/batch", {"batch": items}, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert status == 413 and "500 KB" in body["message"]


async def test_batch_of_more_than_2500_messages_is_400(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    items = [{"type": "track", "userId": "u", "event": "E"} for _ in range(2501)]
    status, body, _ = await post(
        f"{url}/v1/batch", {"batch": items}, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert status == 400 and "2500" in body["message"]


async def test_partial_batch_queues_good_items_and_lists_rejected(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    items = [
        track("u1", "Good One", "m-1"),
        {"type": "track", "userId": "u1", "messageId": "m-2"},  # no event
        "not an object",
        track("u2", "Good Two", "m-4"),
        {**track("u3", "Too Big", "m-5"), "properties": {"blob": "x" * 40_000}},
    ]
    status, body, _ = await post(
        f"{url}/v1/batch", {"batch": items}, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert status == 200
    assert body == {
        "success": True,
        "rejected": [
            {"index": 1, "reason": "batch[1]: a track call needs a non-empty 'event'"},
            {"index": 2, "reason": "batch[2]: each message must be a JSON object"},
            {"index": 4, "reason": "batch[4]: the message is larger than 32 KB"},
        ],
    }
    await customerio.wait_for(1)
    assert sorted(op["name"] for op in sent_ops(customerio)) == ["Good One", "Good Two"]
    dead = await relay_of(app).store.dead_letters()
    assert sorted(d.reason for d in dead if d.destination is None) == [
        "batch[1]: a track call needs a non-empty 'event'",
        "batch[2]: each message must be a JSON object",
        "batch[4]: the message is larger than 32 KB",
    ]


async def test_batch_context_and_integrations_merge_into_items(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    body = {
        "batch": [
            {**track("u1", "Kept", "m-1"), "context": {"traits": {"email": "u1@example.com"}}},
            {**track("u2", "Dropped", "m-2"), "integrations": {"Customer.io": False}},
        ],
        "context": {"library": {"name": "analytics-test"}},
        "integrations": {"All": True},
    }
    status, _, _ = await post(f"{url}/v1/batch", body, headers={"Authorization": basic(WRITE_KEY)})
    assert status == 200
    await customerio.wait_for(1)
    assert [op["name"] for op in sent_ops(customerio)] == ["Kept"]


async def test_duplicate_message_id_is_accepted_once(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    for _ in range(3):
        status, body, _ = await post(
            f"{url}/v1/track",
            track("u1", "Once", "m-dup"),
            headers={"Authorization": basic(WRITE_KEY)},
        )
        assert (status, body) == (200, {"success": True})
    # the same messageId from another source is another message
    status, _, _ = await post(
        f"{url}/v1/track",
        track("u1", "Once", "m-dup"),
        headers={"Authorization": basic(BACKEND_KEY)},
    )
    assert status == 200
    # and inside one batch, the second copy is dropped
    status, _, _ = await post(
        f"{url}/v1/batch",
        {"batch": [track("u9", "Twice", "m-x"), track("u9", "Twice", "m-x")]},
        headers={"Authorization": basic(WRITE_KEY)},
    )
    assert status == 200
    await customerio.wait_for(1)
    await __import__("asyncio").sleep(0.5)
    names = sorted(op["name"] for op in sent_ops(customerio))
    assert names == ["Once", "Once", "Twice"]
    received = relay_of(app).metrics.received
    assert received.labels("segment", "web", "duplicate")._value.get() == 3


def _sign_sha1(secret: str, raw: bytes) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha1).hexdigest()


async def test_segment_webhook_single_event_with_signature(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    raw = json.dumps(track("w1", "Hooked", "m-w1")).encode()
    status, _, _ = await post(
        f"{url}/webhooks/segment",
        None,
        raw=raw,
        headers={
            "X-Signature": _sign_sha1("segment-hook-secret", raw),
            "User-Agent": "Segment.io/1.0",
        },
    )
    assert status == 200
    [request] = await customerio.wait_for(1)
    assert request.body["batch"][0]["name"] == "Hooked"


async def test_segment_webhook_array_form_signs_first_element_raw_bytes(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    first = (
        b'{"type":"track","userId":"w2","event":"First","messageId":"m-a","properties":{"n":1.0}}'
    )
    second = json.dumps(track("w2", "Second", "m-b")).encode()
    raw = b"[" + first + b", " + second + b"]"
    status, _, _ = await post(
        f"{url}/webhooks/segment",
        None,
        raw=raw,
        headers={"X-Signature": _sign_sha1("segment-hook-secret", first)},
    )
    assert status == 200
    await customerio.wait_for(1)
    assert [op["name"] for op in sent_ops(customerio)] == ["First", "Second"]


@pytest.mark.parametrize("signature", [None, "0" * 40, "zz"])
async def test_segment_webhook_with_bad_signature_is_401(
    relay_factory: RelayFactory, customerio: StandIn, signature: str | None
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    raw = json.dumps(track("w1", "Hooked", "m-w1")).encode()
    headers = {"X-Signature": signature} if signature else {}
    status, body, _ = await post(f"{url}/webhooks/segment", None, raw=raw, headers=headers)
    assert status == 401 and "X-Signature" in body["message"]


async def test_unknown_path_is_json_404(relay_factory: RelayFactory, customerio: StandIn) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, _ = await post(f"{url}/v1/nope", {})
    assert status == 404 and body["code"] == "not_found"


async def test_health_ready_and_metrics(relay_factory: RelayFactory, customerio: StandIn) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{url}/readyz") as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["store"] == "writable"
            assert body["destinations"]["customerio.main"] == {"state": "ok"}
        await post(
            f"{url}/v1/track", track("u1", "E", "m-1"), headers={"Authorization": basic(WRITE_KEY)}
        )
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
            assert (
                'relay_received_events_total{kind="segment",outcome="queued",source="web"} 1.0'
                in text
            )


@pytest.mark.parametrize("depth", [300, 1000])
async def test_a_track_nested_deeper_than_json_can_be_written_again_is_a_json_400(
    relay_factory: RelayFactory, customerio: StandIn, depth: int
) -> None:
    # Parsed (under 1,024 levels) but too deep to write back: refused, not a 500.
    url, _ = await relay_factory(cio_url=customerio.url)
    deep = "[" * depth + "]" * depth
    raw = '{"userId":"u1","event":"Deep","messageId":"m-d","properties":{"x":' + deep + "}}"
    status, body, _ = await post(
        f"{url}/v1/track", None, raw=raw.encode(), headers={"Authorization": basic(WRITE_KEY)}
    )
    if depth == 300:  # the standard library writes what orjson will not
        assert (status, body) == (200, {"success": True})
    else:
        assert status == 400
        assert body["message"].startswith("the message cannot be stored: the JSON is nested")


async def test_a_batch_item_too_deep_to_store_is_rejected_alone(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    deep = "[" * 1000 + "]" * 1000
    items = [
        json.dumps({**track("u1", "Fine", "m-fine"), "type": "track"}),
        '{"type":"track","userId":"u2","event":"Deep","properties":{"x":' + deep + "}}",
    ]
    raw = ('{"batch":[' + ",".join(items) + "]}").encode()
    status, body, _ = await post(
        f"{url}/v1/batch", None, raw=raw, headers={"Authorization": basic(WRITE_KEY)}
    )
    assert status == 200
    [rejected] = body["rejected"]
    assert rejected["index"] == 1
    assert rejected["reason"].startswith("batch[1]: the message cannot be stored: the JSON is")
    [request] = await customerio.wait_for(1)
    assert [op["name"] for op in request.body["batch"]] == ["Fine"]
    [dead] = [d for d in await relay_of(app).store.dead_letters() if d.destination is None]
    assert dead.message == {"body": "(not kept: it cannot be written as JSON)"}


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
async def test_a_lone_surrogate_is_stored_and_delivered_escaped(
    relay_factory: RelayFactory, customerio: StandIn, path: str
) -> None:
    # JSON allows "\ud800" on its own; it cannot be written as UTF-8, so it stays escaped.
    url, _ = await relay_factory(cio_url=customerio.url)
    message = '{"type":"track","userId":"u1","event":"Odd","messageId":"m-odd",'
    message += '"properties":{"note":"\\ud800"}}'
    raw = message if path == "/v1/track" else '{"batch":[' + message + "]}"
    status, body, _ = await post(
        f"{url}{path}", None, raw=raw.encode(), headers={"Authorization": basic(WRITE_KEY)}
    )
    assert (status, body) == (200, {"success": True})
    [request] = await customerio.wait_for(1)
    assert request.body["batch"][0]["attributes"] == {"note": "\ud800"}


async def test_the_write_key_a_message_was_sent_with_never_travels_on(
    relay_factory: RelayFactory, customerio: StandIn, segment: StandIn
) -> None:
    # analytics.js puts `writeKey` into each message of a /v1/b batch and into single calls.
    url, app = await relay_factory(
        cio_url=customerio.url,
        segment_url=segment.url,
        routes="\n  - {name: forward, from: segment, to: [segment.main]}\n",
    )
    browser = {"Content-Type": "text/plain"}
    single = {**track("w1", "Single", "m-w1"), "writeKey": WRITE_KEY}
    del single["type"]
    status, _, _ = await post(f"{url}/v1/t", single, headers=browser)
    assert status == 200
    batch = [
        {**track("w2", "Batched", "m-w2"), "writeKey": WRITE_KEY},
        {**track("w3", "Plain", "m-w3")},
        {"type": "track", "userId": "w4", "messageId": "m-w4", "writeKey": WRITE_KEY},  # no event
    ]
    status, body, _ = await post(
        f"{url}/v1/b", {"batch": batch, "writeKey": WRITE_KEY}, headers=browser
    )
    assert status == 200 and [r["index"] for r in body["rejected"]] == [2]
    status, _, _ = await post(
        f"{url}/v1/batch",
        {"batch": [{**track("w5", "Server", "m-w5"), "writeKey": WRITE_KEY}]},
        headers={"Authorization": basic(WRITE_KEY)},
    )
    assert status == 200
    await segment.wait_for(1)
    deadline = asyncio.get_running_loop().time() + 10
    while len([m for r in segment.requests for m in r.body["batch"]]) < 4:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    forwarded = [m for r in segment.requests for m in r.body["batch"]]
    assert sorted(m["event"] for m in forwarded) == ["Batched", "Plain", "Server", "Single"]
    assert [m for m in forwarded if "writeKey" in m] == []
    [rejected] = [d for d in await relay_of(app).store.dead_letters() if d.destination is None]
    assert "writeKey" not in rejected.message
