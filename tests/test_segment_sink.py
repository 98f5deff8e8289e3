"""The Segment sink's pure parts: how messages are cut into /v1/batch requests, and how an
HTTP answer from Segment decides what happens to a delivery (PROTOCOLS §4, DESIGN)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.outgoing import OutgoingRequest
from relay.sinks.outcome import Dead, Done, Pause, Retry, classify, retry_after
from relay.sinks.segment import batch_request, plan_batches
from relay.sinks.transport import Response

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
        # X-RateLimit-Reset as a delta in seconds
        ({"X-RateLimit-Reset": "12"}, 12.0),
        # ... as epoch seconds
        ({"X-RateLimit-Reset": "1704164655"}, 10.0),
        # ... as epoch milliseconds
        ({"X-RateLimit-Reset": "1704164655000"}, 10.0),
        ({"x-ratelimit-reset": "1704164650500"}, 5.5),
        # a reset already past waits no time
        ({"X-RateLimit-Reset": "1704164600"}, 0.0),
        # Retry-After wins over X-RateLimit-Reset
        ({"Retry-After": "4", "X-RateLimit-Reset": "1704164700"}, 4.0),
        # an unreadable Retry-After falls back to X-RateLimit-Reset
        ({"Retry-After": "soon", "X-RateLimit-Reset": "9"}, 9.0),
    ],
)
def test_retry_after_reads_seconds_dates_and_rate_limit_resets(
    headers: dict[str, str], expected: float
) -> None:
    assert retry_after(headers, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"Retry-After": ""},
        {"Retry-After": "soon"},
        {"X-RateLimit-Reset": "later"},
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
