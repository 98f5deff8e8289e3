"""What many test modules share: the suite's secrets, building Segment calls and Customer.io
webhooks, posting them, reading what a stand-in received, and running relay's command."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:  # conftest takes the secrets from here: no import back at run time
    from tests.conftest import StandIn

ROOT = Path(__file__).resolve().parent.parent

# The secrets the shared config (conftest.config_yaml) and requests use, written once here.
# No log line of the suite may hold any of them, in either format (conftest checks every
# line at the end of the session, and the output of the relay processes noted below).
SITE_ID = "site-123"  # not a secret, but written with the API key in Basic auth
API_KEY = "k" * 20
WRITE_KEY = "wk-web-0123456789"
BACKEND_KEY = "wk-backend-0123456789"
SEGMENT_OUT_KEY = "wk-out-0123456789"
SEGMENT_WEBHOOK_SECRET = "segment-hook-secret"
SIGNING_KEY = "signing-key"
OLD_SIGNING_KEY = "old-signing-key"
OTHER_SIGNING_KEY = "other-key"
# A key a client sends by mistake is no less a secret.
WRONG_WRITE_KEY = "wk-wrong-0123456789"
ADMIN_TOKEN = "tok-s3cret-admin"
SECRETS = {
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "API_KEY": API_KEY,
    "WRITE_KEY": WRITE_KEY,
    "BACKEND_KEY": BACKEND_KEY,
    "SEGMENT_OUT_KEY": SEGMENT_OUT_KEY,
    "SEGMENT_WEBHOOK_SECRET": SEGMENT_WEBHOOK_SECRET,
    "SIGNING_KEY": SIGNING_KEY,
    "OLD_SIGNING_KEY": OLD_SIGNING_KEY,
    "OTHER_SIGNING_KEY": OTHER_SIGNING_KEY,
    "WRONG_WRITE_KEY": WRONG_WRITE_KEY,
}


def _base64_forms(secret: str) -> list[str]:
    """What a secret becomes inside any base64 text (an Authorization header): at each of
    the three alignments, the characters that depend on the secret's bytes alone."""
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret.encode()).decode()
        start = 4 if offset else 0
        end = len(encoded) - (4 if (offset + len(secret)) % 3 else 0)
        if end - start >= 8:
            forms.append(encoded[start:end])
    return forms


_SECRET_FORMS = [
    (name, form) for name, value in SECRETS.items() for form in (value, *_base64_forms(value))
]


def secrets_in(text: str) -> list[str]:
    """The names of the suite's secrets that `text` holds, as they are or in base64."""
    return sorted({name for name, form in _SECRET_FORMS if form in text})


def masked(text: str) -> str:
    """`text` with every secret replaced by its name, fit to be shown in a failure."""
    for name, form in sorted(_SECRET_FORMS, key=lambda f: -len(f[1])):
        text = text.replace(form, f"<{name}>")
    return text


# Where the suite's relay processes wrote their output: files (RelayProcess's log), and
# the lines of outputs already read (run_relay) that hold a secret.
RELAY_LOG_FILES: list[Path] = []
LEAKED_LINES: list[str] = []


def watch_output(where: str, text: str) -> None:
    """Note each line of a relay process's output that holds a secret."""
    LEAKED_LINES.extend(f"{where}: {line}" for line in text.splitlines() if secrets_in(line))


def leaked_lines() -> list[str]:
    """Every line, noted or in the relay log files, that holds a secret (masked)."""
    found = list(LEAKED_LINES)
    for path in RELAY_LOG_FILES:
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()
            found.extend(f"{path}: {line}" for line in lines if secrets_in(line))
    return [masked(line) for line in found]


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
    key: str = SIGNING_KEY,
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
    result = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    watch_output(f"relay {' '.join(args)}", result.stdout + result.stderr)
    return result
