"""Reading request bodies with a size cap; gzip bodies arrive decompressed and are capped too."""

from __future__ import annotations

from aiohttp import web

from relay.errors import BadRequest, PayloadTooLarge


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit` bytes once decompressed."""
    if (
        request.content_length is not None
        and request.content_length > limit
        and not (request.headers.get("Content-Encoding"))
    ):
        raise PayloadTooLarge(f"{what} must be at most {limit // 1024} KB")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"{what} must be at most {limit // 1024} KB")
            chunks.append(chunk)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # aiohttp raises a payload error for corrupt gzip, cut bodies
        raise BadRequest(f"the body could not be read: {exc}") from None
    return b"".join(chunks)
