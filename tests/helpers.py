"""What many test modules share: building Segment calls and Customer.io webhooks, posting
them, reading what a stand-in received, and running relay's command."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import StandIn

ROOT = Path(__file__).resolve().parent.parent
# RELAY_UPDATE_GOLDEN=1 rewrites the golden files instead of comparing with them.
UPDATE = os.environ.get("RELAY_UPDATE_GOLDEN") == "1"
HOOK = "/webhooks/customerio"


def track(user: str, event: str, message_id: str, **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": event,
        "properties": props,
        "messageId": message_id,
        "timestamp": "2024-01-02T03:04:05Z",
    }


async def post(
    url: str, body: Any, *, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, Any, dict[str, str]]:
    """POST `body` as JSON (or `raw` as it is): (status, the answer's JSON or text, headers)."""
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else json.dumps(body).encode()
        async with session.post(url, data=data, headers=headers or {}) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            return resp.status, payload, dict(resp.headers)


async def post_raw(
    url: str, raw: bytes, headers: dict[str, str]
) -> tuple[int, Any, dict[str, str]]:
    return await post(url, None, headers=headers, raw=raw)


def sent_ops(cio: StandIn) -> list[dict[str, Any]]:
    """Every v2 op the Customer.io stand-in received, in order."""
    return [op for r in cio.requests for op in r.body["batch"]]


def sign(key: str, timestamp: str, raw: bytes) -> str:
    """Customer.io's webhook signature: HMAC-SHA256 of `v0:<timestamp>:<body>`."""
    message = b"v0:" + timestamp.encode() + b":" + raw
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def webhook(
    event_id: str,
    user: str = "u1",
    metric: str = "opened",
    object_type: str = "email",
    **data: Any,
) -> bytes:
    body = {
        "event_id": event_id,
        "object_type": object_type,
        "metric": metric,
        "timestamp": 1704164645,
        "data": {"customer_id": user, "delivery_id": f"d-{event_id}", **data},
    }
    return json.dumps(body).encode()


async def post_webhook(
    base: str,
    raw: bytes,
    *,
    key: str = "signing-key",
    path: str = HOOK,
    timestamp: str | None = None,
) -> tuple[int, Any]:
    ts = timestamp or str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-CIO-Timestamp": ts,
        "X-CIO-Signature": sign(key, ts, raw),
    }
    status, body, _ = await post_raw(base + path, raw, headers)
    return status, body


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Until relay, run as a process, answers /readyz with a 200."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"relay exited with {proc.returncode}:\n{out}")
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("relay did not become ready")


def run_relay(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`relay ARGS` in a process of its own, with only `env` (and PATH, HOME, LANG) set."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "SYSTEMROOT") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
