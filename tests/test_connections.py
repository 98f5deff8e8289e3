"""What relay does with clients that misbehave on the wire: headers or a body sent slowly
are cut off in bounded time, and requests that are not HTTP are one short log line each,
at most a few every 10 seconds, never a traceback."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from relay.app import LINGERING
from relay.logs import ClientMistakes
from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, config_yaml

FAST = "server: {host: 127.0.0.1, port: 0, shutdown_timeout: 5, idle_timeout: 1, body_timeout: 1}"


async def fast_relay(relay_factory: RelayFactory, customerio: StandIn, tmp_path: Any) -> str:
    text = config_yaml(tmp_path / "relay.db", customerio.url).replace(
        "server: {host: 127.0.0.1, port: 0, shutdown_timeout: 5}", FAST
    )
    url, _ = await relay_factory(text)
    return url


async def trickled(
    url: str, first: bytes, rest: bytes, pause: float, limit: float = 10
) -> tuple[float, bytes]:
    """Send `first`, then `rest` a byte every `pause` seconds; the seconds until relay closed
    the connection, and all it answered."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(first)

    async def trickle() -> None:
        for byte in rest:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(pause)

    started = time.monotonic()
    sender = asyncio.create_task(trickle())
    try:
        data = await asyncio.wait_for(reader.read(), limit)  # reads until relay closes
    finally:
        sender.cancel()
        writer.close()
    return time.monotonic() - started, data


async def test_headers_sent_one_byte_a_second_are_cut_off(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Any
) -> None:
    url = await fast_relay(relay_factory, customerio, tmp_path)
    head = b"POST /v1/track HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
    seconds, data = await trickled(url, b"", head, 0.2)
    assert data == b""  # closed without an answer: there was no request to answer
    assert seconds < 1 + 1.5  # idle_timeout, and the check that notices it


async def test_a_body_sent_one_byte_a_second_gets_a_408_and_the_connection_closed(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Any
) -> None:
    url = await fast_relay(relay_factory, customerio, tmp_path)
    body = b'{"userId":"u1","event":"Slow","messageId":"m-slow"}'
    head = (
        b"POST /v1/track HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        + f"Authorization: {basic(WRITE_KEY)}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    seconds, data = await trickled(url, head + body[:5], body[5:], 0.5)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert b'"code": "request_timeout"' in data and b"server.body_timeout" in data
    assert seconds < 1 + LINGERING + 1.5  # body_timeout, then the rest is read a little longer
    assert customerio.requests == []  # nothing was queued


async def test_a_connection_that_sends_nothing_is_closed(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Any
) -> None:
    url = await fast_relay(relay_factory, customerio, tmp_path)
    seconds, data = await trickled(url, b"", b"", 0)
    assert data == b"" and seconds < 1 + 1.5


NOT_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/track HTTP/1.1\r\nAuthorization: Basic " + b"c2VjcmV0" * 2000 + b"\r\n\r\n",
    b"POST /v1/track HTTP/1.1\r\nHo st: x\r\n\r\n",
    b"POST /v1/track HTTP/9.9\r\n\r\n",
]


async def test_requests_that_are_not_http_are_one_short_line_each_and_never_a_traceback(
    relay_factory: RelayFactory,
    customerio: StandIn,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = await fast_relay(relay_factory, customerio, tmp_path)
    host, port = url.removeprefix("http://").split(":")
    caplog.set_level(logging.INFO)
    for _ in range(5):
        for raw in NOT_HTTP:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(raw)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "relay"))]
    assert [r for r in records if r.exc_info or "Traceback" in r.getMessage()] == []
    lines = [r.getMessage() for r in records if r.name == "aiohttp.server"]
    # 30 bad requests in well under 10 s: the first 5 are written, the rest counted.
    assert len(lines) == 5, lines
    assert all(line.startswith("bad request from 127.0.0.1: 400 ") for line in lines)
    assert all(len(line) < 160 and "\n" not in line for line in lines)
    assert "c2VjcmV0" not in "".join(lines)  # the bytes the client sent are never quoted


def test_a_flood_is_counted_and_the_next_line_says_how_many_were_left_out() -> None:
    now = [0.0]
    mistakes = ClientMistakes(clock=lambda: now[0])
    from aiohttp.http_exceptions import BadHttpMessage

    def record() -> logging.LogRecord:
        try:
            raise BadHttpMessage("Invalid header token:\n\n  b'x'")
        except BadHttpMessage:
            import sys

            return logging.LogRecord(
                "aiohttp.server",
                logging.ERROR,
                __file__,
                1,
                "Error handling request from %s",
                ("203.0.113.9",),
                sys.exc_info(),
            )

    written = [r for r in (record() for _ in range(12)) if mistakes.filter(r)]
    assert len(written) == 5
    now[0] = 11.0
    later = record()
    assert mistakes.filter(later)
    assert later.getMessage() == (
        "bad request from 203.0.113.9: 400 Invalid header token (7 more not logged)"
    )
    assert later.levelname == "WARNING" and later.exc_info is None
    # Relay's own faults keep their traceback.
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        import sys

        own = logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Unhandled exception", (), sys.exc_info()
        )
    assert mistakes.filter(own) and own.exc_info is not None
