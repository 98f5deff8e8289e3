"""The Segment sink: how messages are cut into /v1/batch requests, how an HTTP answer from
Segment decides what happens to a delivery, and, against a loopback
stand-in, that `sentAt` is the moment a request really goes out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.codec import encode
from relay.destinations.limiter import DestinationLimiter, Written
from relay.destinations.outcome import (
    Dead,
    Done,
    Pause,
    Retry,
    classify,
    parse_rate_limit_reset,
    parse_retry_after,
    retry_after,
)
from relay.destinations.segment.settings import SegmentDestination
from relay.destinations.segment.sink import SegmentSink, batch_request, plan_batches
from relay.destinations.transport import AiohttpTransport, Response
from relay.metrics import Metrics
from relay.outgoing import OutgoingRequest
from relay.store.base import Delivery
from tests.conftest import SEGMENT_OUT_KEY, StandIn, basic

# 2024-01-02T03:04:05Z
NOW = 1704164645.0


def sized(size: int, tag: str = "x", *, char: str = "x") -> dict[str, Any]:
    """A message whose compact UTF-8 JSON is exactly `size` bytes (for one-byte `char`s)."""
    prefix = {"t": tag, "p": ""}
    empty = len(json.dumps(prefix, separators=(",", ":")).encode())
    width = len(char.encode())
    assert (size - empty) % width == 0
    return {"t": tag, "p": char * ((size - empty) // width)}


def wire_size(messages: list[dict[str, Any]]) -> int:
    """Bytes of the request body as it goes on the wire (compact JSON, UTF-8)."""
    body = {"batch": messages, "sentAt": "2024-01-02T03:04:05.000Z"}
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def test_sized_helper_builds_exact_sizes() -> None:
    for size in (20, 1000, 32768):
        assert len(json.dumps(sized(size), separators=(",", ":")).encode()) == size
    assert (
        len(json.dumps(sized(32768, char="é"), ensure_ascii=False, separators=(",", ":")).encode())
        == 32768
    )


# --------------------------------------------------------------------------- plan_batches


def test_no_messages_plan_no_requests() -> None:
    assert plan_batches([], 100) == ([], {})


@pytest.mark.parametrize(
    "count, batch_size, expected",
    [
        (5, 2, [[0, 1], [2, 3], [4]]),
        (4, 2, [[0, 1], [2, 3]]),
        (3, 10, [[0, 1, 2]]),
        (3, 1, [[0], [1], [2]]),
    ],
)
def test_a_request_holds_at_most_batch_size_messages_in_order(
    count: int, batch_size: int, expected: list[list[int]]
) -> None:
    messages = [sized(50, f"m{i}") for i in range(count)]
    assert plan_batches(messages, batch_size) == (expected, {})


def test_a_request_never_holds_more_than_2500_messages_whatever_the_batch_size() -> None:
    messages = [{"i": i} for i in range(2600)]
    groups, too_large = plan_batches(messages, 5000)
    assert too_large == {}
    assert [len(g) for g in groups] == [2500, 100]
    assert groups[0] == list(range(2500))
    assert groups[1] == list(range(2500, 2600))


def test_a_request_stays_under_500_kb_and_keeps_order() -> None:
    # 16 messages of 30,999 bytes make a 496,047-byte body; a 17th would pass 500 KB
    # whether a KB is read as 1,000 or 1,024 bytes.
    messages = [sized(30_999, f"m{i:02}") for i in range(40)]
    groups, too_large = plan_batches(messages, 500)
    assert too_large == {}
    assert groups == [list(range(0, 16)), list(range(16, 32)), list(range(32, 40))]
    for group in groups:
        assert wire_size([messages[i] for i in group]) <= 500 * 1000


def test_a_small_message_still_joins_a_request_a_large_one_would_overflow() -> None:
    messages = [*(sized(30_999, f"m{i:02}") for i in range(16)), sized(100, "s"), sized(30_999)]
    groups, too_large = plan_batches(messages, 500)
    assert too_large == {}
    assert groups == [list(range(0, 17)), [17]]
    for group in groups:
        assert wire_size([messages[i] for i in group]) <= 500 * 1000


def test_a_message_of_exactly_32_kb_is_sent() -> None:
    assert plan_batches([sized(32768)], 100) == ([[0]], {})


def test_a_message_over_32_kb_is_reported_with_its_size_and_never_planned() -> None:
    messages = [sized(100, "a"), sized(32769, "big"), sized(100, "b"), sized(100, "c")]
    groups, too_large = plan_batches(messages, 2)
    assert groups == [[0, 2], [3]]
    assert too_large == {
        1: "the Segment message is 32769 bytes, over Segment's limit of 32768 bytes per message"
    }


def test_message_size_counts_utf8_bytes_not_characters() -> None:
    fits = sized(32768, char="é")  # 16,380 two-byte characters
    over = sized(32770, char="é")
    groups, too_large = plan_batches([fits, over], 100)
    assert groups == [[0]]
    assert too_large == {
        1: "the Segment message is 32770 bytes, over Segment's limit of 32768 bytes per message"
    }


def test_only_oversize_messages_plan_no_requests() -> None:
    groups, too_large = plan_batches([sized(40_000), sized(50_000)], 100)
    assert groups == []
    assert sorted(too_large) == [0, 1]


# --------------------------------------------------------------------------- batch_request


def test_batch_request_posts_the_messages_to_v1_batch_with_sent_at_now() -> None:
    messages = [{"type": "track", "event": "A", "userId": "u1"}, {"type": "track", "event": "B"}]
    assert batch_request(messages, 1704164645.5) == OutgoingRequest(
        "POST",
        "/v1/batch",
        {
            "batch": [
                {"type": "track", "event": "A", "userId": "u1"},
                {"type": "track", "event": "B"},
            ],
            "sentAt": "2024-01-02T03:04:05.500Z",
        },
    )


def test_sent_at_is_the_send_time_not_the_event_time() -> None:
    message = {
        "type": "track",
        "event": "A",
        "userId": "u1",
        "timestamp": "2020-03-26T19:16:39.000Z",
    }
    request = batch_request([message], NOW)
    assert request.body["sentAt"] == "2024-01-02T03:04:05.000Z"
    assert request.body["batch"][0]["timestamp"] == "2020-03-26T19:16:39.000Z"


def test_sent_at_keeps_milliseconds() -> None:
    assert batch_request([], 1704164645.678).body["sentAt"] == "2024-01-02T03:04:05.678Z"


# --------------------------------------------------------------------------- sending


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class WaitingLimiter(DestinationLimiter):
    """Holds every request back `wait` seconds of the fake clock, as the real limiter does
    after a 429 or when requests come faster than the destination's rate."""

    def __init__(self, clock: FakeClock, wait: float) -> None:
        super().__init__(1000.0)
        self.fake = clock
        self.wait = wait

    async def acquire(self) -> Written:
        self.fake.now += self.wait
        return await super().acquire()


async def test_sent_at_is_stamped_after_the_rate_limiter_wait(segment: StandIn) -> None:
    clock = FakeClock(NOW)
    dest = SegmentDestination("main", SEGMENT_OUT_KEY, "us", segment.url, 100.0, 1, 1, 2.0, 86400.0)
    transport = AiohttpTransport()
    sink = SegmentSink(dest, transport, WaitingLimiter(clock, 30.0), Metrics(), clock)
    first = {"type": "track", "event": "A", "userId": "u1", "timestamp": "2020-03-26T19:16:39.000Z"}
    second = {**first, "event": "B", "userId": "u2"}
    deliveries = [
        Delivery(1, dest.key, "user:u1", 0, NOW, "marketing", "customerio", encode(first)),
        Delivery(2, dest.key, "user:u2", 0, NOW, "marketing", "customerio", encode(second)),
    ]
    try:
        outcomes = await sink.deliver(deliveries)
    finally:
        await transport.close()
    assert outcomes == {1: Done(), 2: Done()}
    # batch_size 1: two requests, each let go 30 s after the one before, each stamped then
    # (NOW is 03:04:05), while the events keep their own time.
    assert [(r.method, r.path, r.headers["Authorization"]) for r in segment.requests] == [
        ("POST", "/v1/batch", basic(SEGMENT_OUT_KEY)),
        ("POST", "/v1/batch", basic(SEGMENT_OUT_KEY)),
    ]
    assert [r.body for r in segment.requests] == [
        {"batch": [first], "sentAt": "2024-01-02T03:04:35.000Z"},
        {"batch": [second], "sentAt": "2024-01-02T03:05:05.000Z"},
    ]


# --------------------------------------------------------------------------- retry_after


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": " 2.5 "}, 2.5),
        ({"Retry-After": "0"}, 0.0),
        ({"retry-after": "7"}, 7.0),
        ({"RETRY-AFTER": "7"}, 7.0),
        ({"Retry-After": "-5"}, 0.0),
        # HTTP date, 30 s after NOW
        ({"Retry-After": "Tue, 02 Jan 2024 03:04:35 GMT"}, 30.0),
        # an HTTP date already past waits no time
        ({"Retry-After": "Tue, 02 Jan 2024 03:00:00 GMT"}, 0.0),
        # X-RateLimit-Reset alone: see the table below; here, that it is read at all
        ({"X-RateLimit-Reset": "12"}, 12.0),
        ({"x-ratelimit-reset": "1704164650500"}, 5.5),
        # both: the later one wins, so Retry-After: 0 cannot cut a reset short ...
        ({"Retry-After": "0", "X-RateLimit-Reset": "1704164700"}, 55.0),
        ({"Retry-After": "4", "X-RateLimit-Reset": "1704164700"}, 55.0),
        ({"Retry-After": "0", "X-RateLimit-Reset": "12"}, 12.0),
        # ... and a reset cannot cut Retry-After short
        ({"Retry-After": "40", "X-RateLimit-Reset": "1704164655"}, 40.0),
        ({"Retry-After": "Tue, 02 Jan 2024 03:05:05 GMT", "X-RateLimit-Reset": "3"}, 60.0),
        # an unreadable one of the two leaves the other
        ({"Retry-After": "soon", "X-RateLimit-Reset": "9"}, 9.0),
        ({"Retry-After": "9", "X-RateLimit-Reset": "later"}, 9.0),
        # capped at an hour, from either header
        ({"Retry-After": "86400"}, 3600.0),
        ({"Retry-After": "inf"}, 3600.0),
        ({"X-RateLimit-Reset": "1704264645"}, 3600.0),
        ({"Retry-After": "1", "X-RateLimit-Reset": "1904164645000"}, 3600.0),
    ],
)
def test_retry_after_reads_seconds_dates_and_rate_limit_resets(
    headers: dict[str, str], expected: float
) -> None:
    assert retry_after(headers, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value, expected",
    [
        # a delay in seconds (small numbers)
        ("12", 12.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("999999999", 999999999.0),  # 10^9 - 1: still a delay (the cap applies later)
        # unix seconds
        ("1704164655", 10.0),
        ("1704164655.25", 10.25),
        ("1704164600", 0.0),  # already past
        # unix milliseconds (numbers > 10^12)
        ("1704164655000", 10.0),
        ("1704164650500", 5.5),
        ("1704164000000", 0.0),
        # HTTP dates: RFC 7231's preferred form, RFC 850, asctime, and RFC 5322 zones
        ("Tue, 02 Jan 2024 03:04:35 GMT", 30.0),
        ("Tuesday, 02-Jan-24 03:04:35 GMT", 30.0),
        ("Tue Jan  2 03:04:35 2024", 30.0),
        ("Tue, 02 Jan 2024 03:04:35 -0000", 30.0),
        ("Tue, 02 Jan 2024 04:04:35 +0100", 30.0),
        ("Tue, 02 Jan 2024 03:00:00 GMT", 0.0),
        # nothing readable
        (None, None),
        ("", None),
        ("   ", None),
        ("later", None),
        ("nan", None),
        ("Tue, 32 Jan 2024 03:04:35 GMT", None),
    ],
)
def test_rate_limit_reset_is_seconds_milliseconds_a_delay_or_a_date(
    value: str | None, expected: float | None
) -> None:
    assert parse_rate_limit_reset(value, NOW) == (
        None if expected is None else pytest.approx(expected)
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        ("3", 3.0),
        ("-1", 0.0),
        ("Tue, 02 Jan 2024 03:04:35 GMT", 30.0),
        ("Tue Jan  2 03:04:35 2024", 30.0),
        # Retry-After is never epoch time: a big number is a (long) delay
        ("1704164655", 1704164655.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_header_is_seconds_or_an_http_date(
    value: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, NOW) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"Retry-After": ""},
        {"Retry-After": "soon"},
        {"X-RateLimit-Reset": "later"},
        {"Retry-After": "nan", "X-RateLimit-Reset": "nan"},
    ],
)
def test_retry_after_is_none_when_nothing_says_how_long(headers: dict[str, str]) -> None:
    assert retry_after(headers, NOW) is None


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_done(status: int) -> None:
    assert classify(Response(status, {}, b'{"success":true}'), NOW) == Done()


@pytest.mark.parametrize("status", [408, 423, 429, 500, 502, 503, 504, 599])
def test_timeouts_locks_throttling_and_server_errors_are_retried(status: int) -> None:
    assert classify(Response(status, {}, b"try later"), NOW) == Retry(
        f"HTTP {status}: try later", None
    )


def test_429_retry_carries_retry_after() -> None:
    response = Response(429, {"Retry-After": "7"}, b'{"message":"slow down"}')
    assert classify(response, NOW) == Retry('HTTP 429: {"message":"slow down"}', 7.0)


def test_503_retry_carries_rate_limit_reset_in_epoch_seconds() -> None:
    response = Response(503, {"X-RateLimit-Reset": "1704164665"}, b"")
    assert classify(response, NOW) == Retry("HTTP 503", 20.0)


def test_501_is_not_retried() -> None:
    assert classify(Response(501, {}, b"not implemented"), NOW) == Dead("HTTP 501: not implemented")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_pause_the_destination(status: int) -> None:
    assert classify(Response(status, {}, b'{"message":"bad write key"}'), NOW) == Pause(
        f'the destination refused the credentials (HTTP {status}: {{"message":"bad write key"}})'
    )


@pytest.mark.parametrize("status", [400, 404, 405, 410, 413, 422])
def test_other_4xx_is_dead_with_the_response_body(status: int) -> None:
    body = b'{"code":"invalid_request","message":"Invalid JSON"}'
    assert classify(Response(status, {}, body), NOW) == Dead(
        f'HTTP {status}: {{"code":"invalid_request","message":"Invalid JSON"}}'
    )


def test_dead_reason_without_a_body_is_the_status() -> None:
    assert classify(Response(400, {}, b""), NOW) == Dead("HTTP 400")


def test_dead_reason_keeps_an_excerpt_of_a_long_body() -> None:
    body = b"e" * 600
    assert classify(Response(400, {}, body), NOW) == Dead("HTTP 400: " + "e" * 500 + "…")


def test_dead_reason_survives_a_body_that_is_not_utf8() -> None:
    assert classify(Response(400, {}, b"bad \xff byte"), NOW) == Dead("HTTP 400: bad \ufffd byte")
