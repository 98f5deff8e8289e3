"""Shared fixtures: loopback stand-ins for Customer.io and Segment, and a relay built on them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.app import RELAY, create_app, start_admin, stop_admin
from relay.config import parse_config
from relay.logs import ContextFields, JsonFormatter, TextFormatter
from tests.helpers import (
    API_KEY,
    BACKEND_KEY,
    OLD_SIGNING_KEY,
    OTHER_SIGNING_KEY,
    SEGMENT_OUT_KEY,
    SEGMENT_WEBHOOK_SECRET,
    SIGNING_KEY,
    SITE_ID,
    WRITE_KEY,
    leaked_lines,
    masked,
    secrets_in,
)


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    raw_path: str = ""  # the path and query as the bytes on the wire had them


@dataclass
class StandIn:
    """A loopback HTTP server that records every request and answers from a script."""

    requests: list[Recorded] = field(default_factory=list)
    script: list[tuple[int, Any, dict[str, str]] | str] = field(default_factory=list)
    default: tuple[int, Any, dict[str, str]] = (200, {}, {})
    # Answers by content once the script is used up (e.g. refuse any batch holding a bad op).
    answer: Callable[[Recorded], tuple[int, Any, dict[str, str]]] | None = None
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Requests scripted with `hold()` wait for this, then get the default answer.
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def respond(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        for _ in range(times):
            self.script.append((status, {} if body is None else body, headers or {}))

    def reset_connection(self, times: int = 1) -> None:
        self.script.extend(["reset"] * times)

    def hang(self, times: int = 1) -> None:
        self.script.extend(["hang"] * times)

    def hold(self, times: int = 1) -> None:
        """The next requests wait (as a slow Customer.io would) until `released` is set."""
        self.script.extend(["hold"] * times)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        recorded = Recorded(
            request.method,
            request.path_qs,
            dict(request.headers),
            body,
            time.monotonic(),
            request.raw_path,
        )
        self.requests.append(recorded)
        self.arrived.set()
        if self.script:
            action = self.script.pop(0)
        else:
            action = self.answer(recorded) if self.answer is not None else self.default
        if action == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if action == "hang":
            await asyncio.sleep(30)
            return web.Response(status=200)
        if action == "hold":
            await self.released.wait()
            action = self.default
        status, payload, headers = action  # type: ignore[misc]
        if isinstance(payload, bytes):  # a body that is not JSON, sent as it is
            return web.Response(status=status, body=payload, headers=headers)
        return web.json_response(payload, status=status, headers=headers)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} requests, got {len(self.requests)}: "
                    f"{[(r.method, r.path) for r in self.requests]}"
                )
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.2)
        return self.requests


async def start_stand_in() -> tuple[StandIn, TestServer]:
    stand_in = StandIn()
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    stand_in.url = str(server.make_url("")).rstrip("/")
    return stand_in, server


@pytest.fixture
async def customerio() -> AsyncIterator[StandIn]:
    stand_in, server = await start_stand_in()
    yield stand_in
    await server.close()


@pytest.fixture
async def segment() -> AsyncIterator[StandIn]:
    stand_in, server = await start_stand_in()
    yield stand_in
    await server.close()


def config_yaml(
    db: Path,
    cio_url: str,
    segment_url: str = "http://127.0.0.1:9",
    *,
    api: str = "v2",
    rate_limit: float = 100,
    cio_timeout: float = 2,
    extra_cio: str = "",
    routes: str | None = None,
    sources_extra: str = "",
) -> str:
    routes = (
        routes
        or """
  - name: everything-to-customerio
    from: segment
    to: [customerio.main]
  - name: email-activity-to-segment
    from: customerio
    to: [segment.main]
"""
    )
    signing_keys = (
        f'{{marketing: ["{OLD_SIGNING_KEY}", "{SIGNING_KEY}"], other: "{OTHER_SIGNING_KEY}"}}'
    )
    return f"""
server: {{host: 127.0.0.1, port: 0, shutdown_timeout: 5}}
storage:
  sqlite: {{path: "{db}"}}
sources:
  segment:
    write_keys: {{web: "{WRITE_KEY}", backend: "{BACKEND_KEY}"}}
    webhook_secret: "{SEGMENT_WEBHOOK_SECRET}"
{sources_extra}
  customerio:
    signing_keys: {signing_keys}
destinations:
  customerio:
    main:
      site_id: "{SITE_ID}"
      api_key: "{API_KEY}"
      base_url: "{cio_url}"
      api: {api}
      rate_limit: {rate_limit}
      timeout: {cio_timeout}
{extra_cio}
  segment:
    main:
      write_key: "{SEGMENT_OUT_KEY}"
      base_url: "{segment_url}"
      timeout: 2
routes:{routes}
"""


RelayFactory = Callable[..., Awaitable[tuple[str, web.Application]]]


@pytest.fixture
async def relay_factory(tmp_path: Path) -> AsyncIterator[RelayFactory]:
    servers: list[TestServer] = []
    admins: list[tuple[Any, web.AppRunner]] = []

    async def make(yaml_text: str | None = None, **kwargs: Any) -> tuple[str, web.Application]:
        if yaml_text is None:
            yaml_text = config_yaml(tmp_path / "relay.db", **kwargs)
        config = parse_config(yaml_text, str(tmp_path / "relay.yaml"), {})
        app = create_app(config)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        # As `relay serve` does: the admin endpoint, which the `relay` commands use.
        admins.append((app[RELAY], await start_admin(app[RELAY])))
        return str(server.make_url("")).rstrip("/"), app

    yield make
    for relay, runner in admins:
        await stop_admin(relay, runner)
    for server in servers:
        await server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def relay_of(app: web.Application) -> Any:
    return app[RELAY]


class SecretWatch(logging.Handler):
    """Formats every record of the session in both of relay's formats, and keeps the lines
    that hold one of the suite's secrets."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFields())
        self.formatters = [JsonFormatter(), TextFormatter()]
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        for formatter in self.formatters:
            line = formatter.format(record)
            if secrets_in(line):
                self.leaks.append(masked(line))


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log_line() -> Iterator[SecretWatch]:
    """Every log line the suite makes relay write, at every level (relay's loggers are set
    to DEBUG for the session), and the output of the relay processes it runs."""
    watch = SecretWatch()
    root, relay_logger = logging.getLogger(), logging.getLogger("relay")
    level = relay_logger.level
    relay_logger.setLevel(logging.DEBUG)
    root.addHandler(watch)
    yield watch
    root.removeHandler(watch)
    relay_logger.setLevel(level)
    leaks = watch.leaks + leaked_lines()
    if leaks:
        pytest.fail(
            f"{len(leaks)} log lines hold a secret (shown masked):\n" + "\n".join(leaks[:20]),
            pytrace=False,
        )
