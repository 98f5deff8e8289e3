"""Reading request bodies with a size cap, and decoding their Content-Encoding ourselves.

aiohttp's own decompression is turned off for relay's application (see `create_app`): its
parser leaves a request hanging when a deflate body turns out to be corrupt after the
headers were handed over, and it answers unsupported encodings in plain text. Here a body
is read raw, then decoded with the same cap applied to what it decompresses to, so a small
compressed body can never grow past the limit in memory.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from relay.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedEncoding

# How long a request's body may take to arrive, in seconds (server.body_timeout).
BODY_TIMEOUT = web.AppKey("body_timeout", float)

# zlib's window bits: 16 + 15 reads a gzip member, 15 a zlib stream, -15 raw deflate.
_GZIP = 31
_ZLIB = 15
_RAW_DEFLATE = -15
SUPPORTED_ENCODINGS = ("gzip", "deflate", "identity")


def content_encodings(header: str | None) -> list[str]:
    """The codings of a Content-Encoding header in the order they were applied."""
    if not header:
        return []
    codings = [c.strip().lower() for c in header.split(",")]
    return [c for c in codings if c and c != "identity"]


def _too_large(what: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} must be at most {limit // 1024} KB")


def _inflate(data: bytes, wbits: int, limit: int, what: str, coding: str) -> bytes:
    """One coding undone, stopping as soon as the output passes `limit` bytes."""
    out: list[bytes] = []
    size = 0
    while True:
        decompressor = zlib.decompressobj(wbits)
        try:
            chunk = decompressor.decompress(data, limit + 1 - size)
        except zlib.error:
            raise BadRequest(
                f"the body says Content-Encoding: {coding} but is not valid {coding} data"
                " (compress it, or leave the header out)"
            ) from None
        size += len(chunk)
        if size > limit or decompressor.unconsumed_tail:
            raise _too_large(what, limit)
        out.append(chunk)
        if not decompressor.eof:
            raise BadRequest(
                f"the {coding} body is cut short or is not {coding} data"
                " (send the whole compressed body, or leave the header out)"
            )
        data = decompressor.unused_data
        # gzip allows several members one after the other; anything else must end here.
        if not data or wbits != _GZIP:
            break
    if data and wbits != _GZIP:
        raise BadRequest(f"the {coding} body has data after its end")
    return b"".join(out)


def decode_body(raw: bytes, header: str | None, limit: int, what: str) -> bytes:
    """`raw` with the codings named by a Content-Encoding header undone (last applied first)."""
    data = raw
    for coding in reversed(content_encodings(header)):
        if coding in ("gzip", "x-gzip"):
            data = _inflate(data, _GZIP, limit, what, coding)
        elif coding == "deflate":
            # RFC 9110 says zlib-wrapped; some clients send raw deflate. The first byte tells.
            wbits = _ZLIB if data and data[0] & 0x0F == 8 else _RAW_DEFLATE
            data = _inflate(data, wbits, limit, what, coding)
        else:
            raise UnsupportedEncoding(
                f"Content-Encoding {coding!r} is not supported"
                f" (send the body as {', '.join(SUPPORTED_ENCODINGS)})"
            )
    if len(data) > limit:
        raise _too_large(what, limit)
    return data


async def read_raw(request: web.Request, limit: int, what: str) -> bytes:
    """The body as it came over the wire, refusing (413) once it passes `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(what, limit)
    chunks: list[bytes] = []
    size = 0
    timeout = request.app.get(BODY_TIMEOUT, 30.0)
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise _too_large(what, limit)
                chunks.append(chunk)
    except PayloadTooLarge:
        raise
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {timeout:g} s ({size} bytes came);"
            " send it at once (server.body_timeout)"
        ) from None
    except Exception as exc:  # a body cut short, a broken chunked encoding
        raise BadRequest(f"the body could not be read: {exc}") from None
    return b"".join(chunks)


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The whole body, decoded, refusing (413) as soon as it passes `limit` bytes either on
    the wire or once decompressed."""
    raw = await read_raw(request, limit, what)
    return decode_body(raw, request.headers.get("Content-Encoding"), limit, what)
