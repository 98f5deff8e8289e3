"""redis-py's asyncio client, as the Redis store uses it: an optional dependency, so that a
relay on SQLite needs none of it; what to install is said where it is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from relay.errors import StoreCannotOpen
from relay.store.redis.settings import INSTALL, available

try:
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - where redis is not installed
    if not TYPE_CHECKING:

        class RedisError(Exception):
            """Stands in for redis-py's errors where it is missing (nothing raises it)."""


# redis-py's asyncio client. Its type hints differ between the versions relay supports (5.0
# types each command as returning a value or an awaitable), so relay calls it untyped.
Redis = Any

__all__ = ["Redis", "RedisError", "connect", "describe", "where"]


def connect(url: str, timeout: float) -> Redis:
    """A client for `url`; commands that take longer than `timeout` fail (a 503 for intake)."""
    if not available():
        raise StoreCannotOpen(INSTALL)
    from redis.asyncio import Redis as Client
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Client.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        # A command whose answer was lost is not sent again: a resent enqueue could store
        # its events twice. The caller answers 503 instead, and the sender retries (with
        # its message ids, which dedup catches).
        retry=Retry(NoBackoff(), 0),  # type: ignore[no-untyped-call,unused-ignore]
    )


def where(url: str) -> str:
    """Host, port and database of `url`, without the password it may carry."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    db = parts.path.lstrip("/") or "0"
    return f"{host}:{port}/{db}"


def describe(exc: BaseException) -> str:
    """What went wrong, in a line, without the URL (which may hold a password)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
