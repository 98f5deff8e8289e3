"""Customer.io's official Python library as an oracle for relay's v1 requests.

Each test makes a call with the `customerio` package, captures the HTTPS request it sends (with
`responses`, so nothing leaves the machine), and checks that relay writes the same method, path
and JSON body for the equivalent Segment message.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import responses
from customerio import CustomerIO  # type: ignore[import-untyped]
from customerio.constants import CIOID, EMAIL, ID  # type: ignore[import-untyped]

from relay.mapping import Rejection
from relay.mapping.to_customerio import encode_v1, map_message
from tests.conftest import API_KEY, SITE_ID, WRITE_KEY, RelayFactory, StandIn, basic

RECEIVED_AT = 1_700_000_000.0
TIMESTAMP = "2024-01-15T10:30:00Z"
TS = 1_705_314_600
# The ULID relay derives for messageId "m-1" at TIMESTAMP, worked out independently of relay.
EVENT_ID = "01HM6AQH20MHGV8WPB86MYRFFE"

Captured = tuple[str, str, Any]


@pytest.fixture
def library() -> Iterator[tuple[CustomerIO, Callable[[], Captured]]]:
    """A Customer.io client whose requests are captured instead of sent."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for method in ("GET", "POST", "PUT", "DELETE"):
            mock.add(method, re.compile(r"https://track\.customer\.io/.*"), json={})
        client = CustomerIO(site_id="site", api_key="key", retries=0)

        def last_request() -> Captured:
            assert len(mock.calls) == 1, "each library call sends exactly one request"
            request = mock.calls[0].request
            body = request.body
            assert isinstance(body, bytes | str), "the library sends every body as JSON"
            return request.method or "", urlsplit(request.url or "").path, json.loads(body)

        yield client, last_request


def relay_v1(message: dict[str, Any]) -> list[Captured]:
    ops = map_message(message, received_at=RECEIVED_AT)
    assert not isinstance(ops, Rejection), ops.reason
    return [(r.method, r.path, r.body) for op in ops for r in encode_v1(op)]


def test_identify_matches_the_library(library: Any) -> None:
    client, captured = library
    # `_timestamp` is v1's reserved attribute for the time of an identify; relay sends the
    # message timestamp there, so the library is given it the same way.
    client.identify(id="42", email="ann@example.com", plan="pro", created_at=TS, _timestamp=TS)
    message = {
        "type": "identify",
        "userId": "42",
        "timestamp": TIMESTAMP,
        "traits": {"email": "ann@example.com", "plan": "pro", "createdAt": TIMESTAMP},
    }
    assert relay_v1(message) == [captured()]


@pytest.mark.parametrize(
    ("user_id", "library_id"),
    [
        ("ann@example.com", "ann@example.com"),  # email: the library puts the address in the path
        ("cio_03000001", "cio_03000001"),  # cio_id: the library takes the `cio_`-prefixed form
        ("a/b c", "a/b c"),
        (42, 42),
    ],
)
def test_identify_addresses_people_as_the_library_does(
    library: Any, user_id: Any, library_id: Any
) -> None:
    client, captured = library
    client.identify(id=library_id, plan="pro")
    assert relay_v1({"type": "identify", "userId": user_id, "traits": {"plan": "pro"}}) == [
        captured()
    ]


def test_track_matches_the_library(library: Any) -> None:
    client, captured = library
    data = {"total": 30.5, "items": [{"sku": "A-1", "due": TS}]}
    client.track(customer_id="42", name="Order Completed", data=data, id=EVENT_ID, timestamp=TS)
    method, path, body = captured()
    message = {
        "type": "track",
        "userId": "42",
        "event": "Order Completed",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": {"total": 30.5, "items": [{"sku": "A-1", "due": TIMESTAMP}]},
    }
    # relay also states `type: event`, the v1 default the library leaves implicit; every other
    # field, including the de-duplication id, is the library's own.
    assert relay_v1(message) == [(method, path, {**body, "type": "event"})]


def test_anonymous_track_matches_the_library(library: Any) -> None:
    client, captured = library
    client.track_anonymous(
        anonymous_id="anon-1",
        name="Viewed Pricing",
        data={"plan": "pro"},
        id=EVENT_ID,
        timestamp=TS,
    )
    method, path, body = captured()
    message = {
        "type": "track",
        "anonymousId": "anon-1",
        "event": "Viewed Pricing",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": {"plan": "pro"},
    }
    # As for identified events, relay adds only the explicit `type: event`.
    assert relay_v1(message) == [(method, path, {**body, "type": "event"})]


def test_page_view_matches_the_library(library: Any) -> None:
    client, captured = library
    url = "https://example.com/pricing"
    client.pageview(customer_id="ann@example.com", page=url, url=url, ref="ad")
    method, path, body = captured()
    message = {
        "type": "page",
        "userId": "ann@example.com",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": {"url": "https://example.com/pricing", "ref": "ad"},
    }
    # The library's pageview takes neither an id nor a time. relay adds both, as v1 events
    # accept: the id so Customer.io de-duplicates a re-sent page view, the time so it lands
    # when it happened.
    assert relay_v1(message) == [(method, path, {**body, "id": EVENT_ID, "timestamp": TS})]


def test_add_device_matches_the_library(library: Any) -> None:
    client, captured = library
    client.add_device(
        customer_id="42",
        device_id="tok-1",
        platform="android",
        last_used=TS,
        attributes={"app_version": "4.2.0", "device_model": "Pixel 8", "device_os": "14"},
    )
    message = {
        "type": "track",
        "userId": "42",
        "event": "Device Created or Updated",
        "timestamp": TIMESTAMP,
        "context": {
            "device": {"token": "tok-1", "type": "android", "model": "Pixel 8"},
            "app": {"version": "4.2.0"},
            "os": {"name": "Android", "version": "14"},
        },
    }
    device_request, event_request = relay_v1(message)
    assert device_request == captured()
    assert event_request[:2] == ("POST", "/api/v1/customers/42/events")


def test_delete_device_matches_the_library(library: Any) -> None:
    client, captured = library
    client.delete_device(customer_id="42", device_id="tok/1")
    message = {
        "type": "track",
        "userId": "42",
        "event": "Application Uninstalled",
        "context": {"device": {"token": "tok/1"}},
    }
    assert relay_v1(message) == [captured()]


@pytest.mark.parametrize(
    ("user_id", "previous_id", "library_args"),
    [
        ("42", "old@example.com", (ID, "42", EMAIL, "old@example.com")),
        ("cio_0300", "41", (CIOID, "0300", ID, "41")),
    ],
)
def test_merge_matches_the_library(
    library: Any, user_id: str, previous_id: str, library_args: tuple[str, str, str, str]
) -> None:
    client, captured = library
    client.merge_customers(*library_args)
    message = {"type": "alias", "userId": user_id, "previousId": previous_id}
    assert relay_v1(message) == [captured()]


@pytest.mark.parametrize(
    "message",
    [
        {"type": "delete", "userId": "42"},
        {"type": "track", "userId": "42", "event": "User Deleted"},
    ],
)
def test_delete_matches_the_library(library: Any, message: dict[str, Any]) -> None:
    client, captured = library
    client.delete(customer_id="42")
    assert relay_v1(message) == [captured()]


@pytest.mark.parametrize(
    ("event", "call"), [("User Suppressed", "suppress"), ("User Unsuppressed", "unsuppress")]
)
def test_suppress_and_unsuppress_match_the_library(library: Any, event: str, call: str) -> None:
    client, captured = library
    getattr(client, call)(customer_id="ann@example.com")
    message = {"type": "track", "userId": "ann@example.com", "event": event}
    assert relay_v1(message) == [captured()]


# ------------------------------------------------------------------ on the wire
#
# The checks above compare the requests relay builds. These compare what reaches a server:
# the library and relay both send to one loopback stand-in, which records each request line
# as it came, so that an HTTP client normalising a URL on the way (`%40` back to `@`) shows.

WIRE_IDS = [
    "ada+x@example.com",
    "a;b&c=d:e,f$g",
    "a/b c?d#e",
    "100%",
    "zoë",
]


def _library_on_the_wire(url: str, calls: Callable[[CustomerIO], None]) -> None:
    client = CustomerIO(site_id=SITE_ID, api_key=API_KEY, retries=0)
    client.base_url = f"{url}/api/v1"  # plain HTTP to the stand-in; the paths are the library's
    calls(client)


@pytest.mark.parametrize("user_id", WIRE_IDS)
async def test_v1_paths_on_the_wire_are_the_librarys_byte_for_byte(
    relay_factory: RelayFactory, customerio: StandIn, user_id: str
) -> None:
    def calls(client: CustomerIO) -> None:
        client.identify(id=user_id, plan="pro")
        client.track(customer_id=user_id, name="Signed Up", data={"plan": "pro"}, id=EVENT_ID)
        client.delete(customer_id=user_id)

    await asyncio.to_thread(_library_on_the_wire, customerio.url, calls)
    library = [(r.method, r.path, r.body) for r in await customerio.wait_for(3)]
    customerio.requests.clear()

    url, _ = await relay_factory(cio_url=customerio.url, api="v1")
    auth = {"Authorization": basic(WRITE_KEY)}
    for sent, (path, message) in enumerate(
        [
            ("identify", {"userId": user_id, "traits": {"plan": "pro"}, "messageId": "m-0"}),
            (
                "track",
                {
                    "userId": user_id,
                    "event": "Signed Up",
                    "properties": {"plan": "pro"},
                    "messageId": "m-1",
                    "timestamp": TIMESTAMP,
                },
            ),
            ("track", {"userId": user_id, "event": "User Deleted", "messageId": "m-2"}),
        ],
        start=1,
    ):
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/{path}", json=message, headers=auth) as resp,
        ):
            assert resp.status == 200, await resp.text()
        # Each call's request before the next call, counted from the calls: relay may have
        # sent it before the answer above was read.
        await customerio.wait_for(sent)
    relay = [(r.method, r.path, r.body) for r in customerio.requests]

    # The same request lines, byte for byte; the bodies as JSON. relay also sends the event's
    # time and `type: event`, as the tests above explain.
    assert [(m, p) for m, p, _ in relay] == [(m, p) for m, p, _ in library]
    assert relay[0][2] == library[0][2]
    assert relay[1][2] == {**library[1][2], "type": "event", "timestamp": TS}
    assert relay[2][2] == library[2][2] == {}
