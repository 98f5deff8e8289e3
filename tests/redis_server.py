"""Redis for the tests: the one at RELAY_TEST_REDIS_URL (127.0.0.1:6379 by default), each
test under a key prefix of its own, deleted afterwards; tests skip, saying so, where no Redis
answers."""

from __future__ import annotations

import os
import uuid

import pytest

URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_answers() -> str | None:
    """Why the tests cannot use Redis, or None when they can."""
    try:
        import redis
    except ImportError:
        return "the Python package redis is not installed (pip install -e '.[test]')"
    try:
        client = redis.Redis.from_url(URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"no Redis answers at {URL} (set RELAY_TEST_REDIS_URL): {exc}"
    return None


def need_redis() -> None:
    reason = redis_answers()
    if reason is not None:
        pytest.skip(reason)


def new_prefix() -> str:
    return f"relay-test:{uuid.uuid4().hex[:12]}:"


def delete_prefix(prefix: str, url: str = URL) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
