"""Plain batches: a batch read without decoding its messages is accepted, rejected, stored
and routed exactly as the same batch read the usual way (decoded, checked, encoded again)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.codec import decode
from relay.intake import Incoming, Intake
from relay.metrics import Metrics
from relay.routing import Routes, compile_routes
from relay.sources.segment import plain_batches as seg
from relay.sources.segment.api import SegmentAPI
from relay.sources.segment.settings import SegmentSource
from relay.store.base import EventTuple, NewEvent


def _routes(spec: list[dict[str, Any]]) -> Routes:
    routes, problems = compile_routes(
        spec,
        destinations=["customerio.main", "segment.analytics"],
        segment_sources=["web"],
        customerio_sources=["workspace"],
    )
    assert not problems
    return routes


PLAIN_ROUTES = _routes([{"from": "segment", "to": ["customerio.main", "segment.analytics"]}])
# Routes that read messages (match) and reshape them (edits): the message is decoded for them.
READING_ROUTES = _routes(
    [
        {
            "from": "segment",
            "match": {"any": [{"type": "track", "event": "?*"}, {"exists": "properties.a"}]},
            "rename_events": {"a": "b"},
            "set_properties": {"x": 1},
            "to": "segment.analytics",
        },
        {"from": "segment", "match": {"not": {"userId": "a"}}, "to": "customerio.main"},
    ]
)
ROUTES = {"plain": PLAIN_ROUTES, "reading": READING_ROUTES}


def _api(routes: Routes = PLAIN_ROUTES) -> SegmentAPI:
    # The store is never reached: only reading and routing are compared here.
    intake = Intake(None, routes, Metrics(), dedup_windows={"segment": 3600.0})  # type: ignore[arg-type]
    return SegmentAPI(intake, SegmentSource({"web": "web-key"}, None, 86400.0))


def _given_id(message: Any) -> Any:
    if isinstance(message, dict) and str(message.get("messageId", "")).startswith("relay-"):
        return {**message, "messageId": "(given by relay)"}
    return message


def _outcome(events: list[EventTuple]) -> list[tuple[Any, ...]]:
    """What would be stored for each message: itself, and each delivery's own message."""
    out = []
    for fields in events:
        event = NewEvent(*fields)
        assert (event.source, event.kind, event.received_at) == ("web", "segment", 1.0)
        deliveries = [
            (destination, None if routed is None else _given_id(decode(routed)))
            for destination, routed in event.deliveries
        ]
        out.append(
            (
                _given_id(decode(event.message_json)),
                event.ordering_key,
                event.dedup_id,
                event.dedup_until,
                event.rejected_reason,
                deliveries,
            )
        )
    return out


def _built(api: SegmentAPI, incoming: list[Incoming]) -> list[EventTuple]:
    return [api.intake.build("segment", "web", item, 1.0) for item in incoming]


def _both_ways(body: bytes, api: SegmentAPI | None = None) -> tuple[Any, Any] | None:
    """(usual, plain) outcomes of one body, or None when it is not a plain batch."""
    api = api or _api()
    plain = seg.plain_batch(body, decoded=api.intake.routes.reads_messages("segment"))
    if plain is None:
        return None
    full = decode(body)
    assert plain.write_key == full.get("writeKey")
    usual = api._explode(full["batch"], full)
    assert plain.every_one_plain == all(type(item) is tuple for item in plain.items)
    if plain.every_one_plain:  # stored as Intake.accept_plain stores them
        fast: tuple[list[EventTuple], list[dict[str, Any]]] = (
            api.intake.build_plain("web", plain.items, 1.0),
            [],
        )
    else:
        incoming, rejected = api._explode(plain.items, None)
        fast = (_built(api, incoming), rejected)
    return (_outcome(_built(api, usual[0])), usual[1]), (_outcome(fast[0]), fast[1])


ids = st.text(max_size=4) | st.integers(-5, 5) | st.none() | st.booleans()
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)
integrations = st.none() | st.dictionaries(
    st.sampled_from(["All", "Customer.io", "Other"]),
    st.booleans() | st.dictionaries(st.text(max_size=2), scalars, max_size=1),
    max_size=3,
)
types = st.sampled_from(["identify", "track", "page", "screen", "group", "alias", "delete", "x"])
messages = st.fixed_dictionaries(
    {"type": types | values},
    optional={
        "userId": ids,
        "anonymousId": ids,
        "previousId": ids,
        "groupId": ids,
        "messageId": st.text(max_size=4) | st.integers() | st.text(min_size=98, max_size=101),
        "event": st.text(max_size=3) | values,
        "name": st.text(max_size=3) | values,
        "timestamp": st.just("2024-05-06T07:08:09.123Z") | values,
        "properties": st.dictionaries(st.text(max_size=3), values, max_size=3) | values,
        "traits": st.dictionaries(st.text(max_size=3), values, max_size=3),
        "context": st.dictionaries(st.text(max_size=3), values, max_size=2) | values,
        "integrations": integrations | values,
        "writeKey": st.just("web-key") | values,
        "other": values,
    },
)
# Messages as libraries send them, with now and then a field that is not.
short_text = st.text(min_size=1, max_size=4)
plainish = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["identify", "track", "page", "screen", "group", "alias"]),
        "messageId": short_text,
        "userId": short_text,
        "event": short_text,
        "groupId": short_text,
        "previousId": short_text,
    },
    optional={
        "anonymousId": short_text | ids,
        "properties": st.dictionaries(st.text(max_size=3), values, max_size=3),
        "context": st.dictionaries(st.text(max_size=3), values, max_size=2),
        "integrations": integrations,
        "timestamp": st.just("2024-05-06T07:08:09.123Z"),
        "writeKey": st.just("web-key"),
        "other": values,
    },
).flatmap(
    lambda m: (
        st.dictionaries(
            st.sampled_from(sorted(m)),
            st.sampled_from([None, "", 7, 2.5, True, [], {}]),
            max_size=1,
        ).map(lambda changed: {**m, **changed})
        | st.just({k: v for k, v in m.items() if k != "userId"})
        | st.just(m)
    )
)
bodies = st.fixed_dictionaries(
    {"batch": st.lists(plainish | messages | values, max_size=5)},
    optional={
        "writeKey": st.just("web-key") | values,
        "sentAt": st.just("2024-05-06T07:08:10Z"),
        "context": st.just({}) | st.just({"ip": "203.0.113.9"}),
        "integrations": st.just({"Customer.io": False}),
    },
)


def _render(body: Any, style: int) -> bytes:
    if style == 0:
        return json.dumps(body).encode()
    if style == 1:
        return json.dumps(body, indent=2, ensure_ascii=False).encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, style=st.integers(0, 2), routes=st.sampled_from(sorted(ROUTES)))
def test_a_plain_batch_is_read_as_the_usual_way_reads_it(
    body: dict[str, Any], style: int, routes: str
) -> None:
    raw = _render(body, style)
    both = _both_ways(raw, _api(ROUTES[routes]))
    if both is not None:
        usual, fast = both
        assert fast == usual


def test_the_usual_batch_of_a_library_is_plain() -> None:
    body = {
        "batch": [
            {
                "type": "track",
                "userId": "u1",
                "event": "Order Completed",
                "messageId": "m1",
                "properties": {"total": 42.5, "products": [{"sku": "a"}]},
                "context": {"library": {"name": "analytics-python", "version": "2.3.0"}},
            },
            {"type": "identify", "anonymousId": "a1", "messageId": "m2", "traits": {}},
        ],
        "sentAt": "2024-05-06T07:08:10.000Z",
    }
    raw = json.dumps(body, indent=1).encode()
    plain = seg.plain_batch(raw)
    assert plain is not None
    assert plain.write_key is None and plain.every_one_plain
    (data, key, message_id, view), second = plain.items
    assert (key, message_id, view) == ("u:u1", "m1", None)  # None: no integrations to route
    # Kept as it came, whitespace and all: a part of the body.
    assert data in raw and data.startswith(b'{\n   "type"') and decode(data) == body["batch"][0]
    assert second[1:] == ("a:a1", "m2", None)
    both = _both_ways(raw)
    assert both is not None and both[0] == both[1]


@pytest.mark.parametrize(
    "item",
    [
        {"type": "track", "userId": 42, "event": "e", "messageId": "m"},  # a number to convert
        {"type": "track", "userId": "u", "event": "e"},  # relay gives the id
        {"type": "track", "userId": "u", "messageId": "m"},  # invalid: no event
        {"type": "track", "userId": "u", "event": "e", "messageId": "m", "properties": [1]},
        {"type": "track", "userId": "u", "event": "e", "messageId": "m", "p": "x" * 8000},
        {"type": "track", "userId": "u", "event": "e", "messageId": "m", "p": [[[]]] * 260},
        "not an object",
    ],
)
def test_what_is_not_plain_is_read_the_usual_way_beside_plain_messages(item: Any) -> None:
    plain_item = {"type": "identify", "userId": "u", "messageId": "m0"}
    raw = json.dumps({"batch": [plain_item, item]}).encode()
    plain = seg.plain_batch(raw)
    assert plain is not None and not plain.every_one_plain
    first, second = plain.items
    assert first == (json.dumps(plain_item).encode(), "u:u", "m0", None)
    assert second == item
    both = _both_ways(raw)
    assert both is not None and both[0] == both[1]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"batch": [], "context": {}}',  # batch-wide fields are merged into each message
        b'{"batch": [], "integrations": {"All": false}}',
        b'{"batch": [{"type": "identify", "userId": "u", "messageId": "m", "x": NaN}]}',
        b'{"batch": [{"type": "identify", "userId": "u", "messageId": "m", "x": "\\ud800"}]}',
        b'{"batch": [{"type": "identify", "userId": "u", "messageId": "m", "x": "\xff"}]}',
        b'{"batch": [' + b"[" * 2000 + b"]" * 2000 + b"]}",
        b'{"batch": {}}',
        b'{"batch": [], "writeKey": 5}',
        b'{"batch": []} trailing',
        b"[]",
    ],
)
def test_bodies_that_need_the_usual_reading_are_not_plain(raw: bytes) -> None:
    assert seg.plain_batch(raw) is None


@pytest.mark.parametrize("depth", [250, 600, *range(960, 1030), 1100])
def test_deeply_nested_messages_are_read_alike(depth: int) -> None:
    # Near the recursion limit, the usual way refuses what msgspec could still read.
    item = '{"type":"identify","userId":"u","messageId":"m","p":' + "[" * depth + "]" * depth
    raw = ('{"batch":[' + item + "}]}").encode()
    both = _both_ways(raw)
    if both is not None:
        assert both[0] == both[1]


def test_routes_that_read_or_reshape_messages_need_them_decoded() -> None:
    assert not PLAIN_ROUTES.reads_messages("segment")
    matching = _routes([{"from": "segment", "match": {"type": "track"}, "to": ["customerio.main"]}])
    assert matching.reads_messages("segment")
    assert not matching.reads_messages("customerio")
    renaming = _routes(
        [{"from": "segment", "rename_events": {"A": "B"}, "to": ["customerio.main"]}]
    )
    assert renaming.reads_messages("segment")


@pytest.mark.parametrize(
    "turned_off",
    [
        {"Customer.io": False},
        {"All": False},
        {"All": False, "Customer.io": True},
        {"All": False, "Customer.io": {"x": 1}},
        {},
    ],
)
def test_integrations_route_plain_messages_as_they_route_decoded_ones(
    turned_off: dict[str, Any],
) -> None:
    item = {"type": "identify", "userId": "u", "messageId": "m", "integrations": turned_off}
    both = _both_ways(json.dumps({"batch": [item]}).encode())
    assert both is not None
    usual, fast = both
    assert fast == usual
