"""The network seam of every sink: one HTTP call in, one answer (or a TransportError) out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Protocol

import aiohttp
import yarl


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class TransportError(Exception):
    """No answer: connection refused or reset, timeout, DNS failure."""


class Transport(Protocol):
    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        on_written: Callable[[], None] | None = None,
    ) -> Response:
        """`on_written` is called as the request is written to the network (the rate
        limiter counts it from then), at least once if it is written at all."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _Written:
    """What a request's trace callbacks are given: whom to tell it was written."""

    call: Callable[[], None]
    has_body: bool


async def _headers_sent(
    _session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    # A request without a body is written in the same step as its head; the head of one with
    # a body waits for its first chunk, and is written with it.
    written = ctx.trace_request_ctx
    if isinstance(written, _Written) and not written.has_body:
        written.call()


async def _chunk_sent(
    _session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    _params: aiohttp.TraceRequestChunkSentParams,
) -> None:
    # Called just before the chunk (and the head before it) goes to the socket.
    written = ctx.trace_request_ctx
    if isinstance(written, _Written):
        written.call()


class AiohttpTransport:
    """The production transport: one pooled aiohttp session for every destination."""

    def __init__(self, limit: int = 100) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_headers_sent)
            trace.on_request_chunk_sent.append(_chunk_sent)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                auto_decompress=True,
                trace_configs=[trace],
            )
        return self._session

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        on_written: Callable[[], None] | None = None,
    ) -> Response:
        session = self._get_session()
        try:
            async with session.request(
                method,
                # As built: a URL parsed by yarl is normalised (`%40` back to `@`, `;` `&`
                # `=` `:` `,` `$` left unencoded), and the path relay built is what it sends.
                yarl.URL(url, encoded=True),
                headers=dict(headers),
                data=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=True,
                trace_request_ctx=None if on_written is None else _Written(on_written, bool(body)),
            ) as resp:
                payload = await resp.read()
                return Response(resp.status, dict(resp.headers), payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True)
class Sent:
    """One request a sink made, as it went to the transport."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None


class RecordingTransport:
    """A transport that sends nothing: it keeps each request and answers `answer` (200 with
    an empty JSON object by default). What `relay routes test` shows, and what sink tests
    read, is therefore exactly what the sinks would have sent."""

    def __init__(self, answer: Response | None = None) -> None:
        self.answer = answer or Response(200, {"Content-Type": "application/json"}, b"{}")
        self.sent: list[Sent] = []

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        on_written: Callable[[], None] | None = None,
    ) -> Response:
        self.sent.append(Sent(method, url, dict(headers), body))
        if on_written is not None:
            on_written()
        return self.answer

    def take(self) -> list[Sent]:
        """The requests recorded since the last call."""
        sent, self.sent = self.sent, []
        return sent

    async def close(self) -> None:
        pass
