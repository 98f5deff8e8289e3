"""Redis for the tests: the one at RELAY_TEST_REDIS_URL (127.0.0.1:6379 by default), each
test under a key prefix of its own, deleted afterwards; tests skip, saying so, where no Redis
answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

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


class PrivateRedis:
    """A redis-server of the test's own, on a free port, writing its append-only file in
    `folder`: one that can be stopped and started again without touching anyone else's."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.args = args
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.folder),
                *self.args,
            ],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as a crash: only what is in its append-only file survives
            self.proc.wait(10)
