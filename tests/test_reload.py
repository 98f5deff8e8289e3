"""Reloading the config while running: atomic swap, invalid files refused, nothing lost.

The in-process tests drive `Reloader.reload` directly; the last test runs relay as a process
under a steady stream of batches while its config file is rewritten (valid and invalid
versions, by SIGHUP and by the file changing) and checks that every acknowledged event
reaches Customer.io exactly once, by one and the same process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from relay.app import RELAY, Relay, create_app
from relay.config import load_config
from relay.reload import Reloader
from relay.signatures import customerio_signature, segment_signature
from tests.conftest import API_KEY, BACKEND_KEY, WRITE_KEY, StandIn, basic, config_yaml, free_port
from tests.helpers import post, sent_ops, track, wait_ready

TRACKS_TO_SEGMENT = """
  - name: tracks-to-segment
    from: segment
    match: {type: track}
    set_properties: {reloaded: true}
    to: [segment.main]
"""
EVERYTHING_TO_CIO = """
  - name: everything-to-customerio
    from: segment
    to: [customerio.main]
"""


@pytest.fixture
async def running(
    tmp_path: Path, customerio: StandIn, segment: StandIn
) -> AsyncIterator[tuple[str, Relay, Path]]:
    """A relay serving a config file whose Customer.io key is an unset variable."""
    path = tmp_path / "relay.yaml"
    path.write_text(
        config_yaml(
            tmp_path / "relay.db", customerio.url, segment.url, routes=EVERYTHING_TO_CIO
        ).replace(f'api_key: "{API_KEY}"', 'api_key: "${RELOAD_TEST_CIO_KEY}"')
    )
    app = create_app(load_config(str(path), {}))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), app[RELAY], path
    await server.close()


async def send(url: str, event: str, key: str = WRITE_KEY) -> int:
    status, _, _ = await post(
        f"{url}/v1/track", track("u1", event, f"m-{event}"), headers={"Authorization": basic(key)}
    )
    return status


async def test_a_new_route_sends_new_messages_elsewhere_and_accepted_ones_keep_theirs(
    running: tuple[str, Relay, Path],
    customerio: StandIn,
    segment: StandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, relay, path = running
    assert relay.workers["customerio.main"].state["state"] == "paused"  # key unset
    assert await send(url, "Before") == 200
    await asyncio.sleep(0.3)
    assert customerio.requests == []  # held: the destination is not configured yet

    # The new file holds the key itself, sends tracks to Segment instead, and swaps the
    # backend write key in as the only accepted one.
    text = path.read_text()
    text = text.replace('"${RELOAD_TEST_CIO_KEY}"', f'"{API_KEY}"')
    text = text.replace(EVERYTHING_TO_CIO, TRACKS_TO_SEGMENT)
    text = text.replace(f'web: "{WRITE_KEY}", ', "")
    path.write_text(text)
    caplog.set_level(logging.INFO, logger="relay")
    assert await Reloader(relay, str(path), env={}).reload("test") is True

    reloaded = [r.getMessage() for r in caplog.records if "config reloaded" in r.getMessage()]
    assert reloaded == [
        f"config reloaded (test) from {path}: routes added: tracks-to-segment; routes removed:"
        " everything-to-customerio; sources.segment.write_keys; customerio.main changed"
    ]
    assert await send(url, "After", WRITE_KEY) == 401  # the web key is gone
    assert await send(url, "After", BACKEND_KEY) == 200

    [to_segment] = await segment.wait_for(1)
    assert [(m["event"], m["properties"]) for m in to_segment.body["batch"]] == [
        ("After", {"reloaded": True})
    ]
    # "Before" was routed when it was accepted: to Customer.io, now configured.
    await customerio.wait_for(1)
    await asyncio.sleep(0.3)
    assert [op["name"] for op in sent_ops(customerio)] == ["Before"]
    assert relay.workers["customerio.main"].state == {"state": "ok"}


async def test_an_invalid_file_changes_nothing_and_every_problem_is_logged(
    running: tuple[str, Relay, Path], customerio: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    url, relay, path = running
    before = (relay.config, relay.routes, relay.intake.routes, dict(relay.workers))
    keys_before = relay.segment_api.write_keys if relay.segment_api else None
    good = path.read_text()
    path.write_text(
        good.replace("to: [customerio.main]", "to: [customerio.mian]").replace("api: v2", "api: v3")
    )
    caplog.set_level(logging.INFO, logger="relay")
    assert await Reloader(relay, str(path), env={}).reload("SIGHUP") is False

    assert (relay.config, relay.routes, relay.intake.routes, relay.workers) == before
    assert relay.segment_api is not None and relay.segment_api.write_keys is keys_before
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"{path}:18:12: destinations.customerio.main.api: must be one of: v1, v2 (write v1 or v2)",
        f"{path}:30:10: routes.0.to.0: unknown destination"
        ' "customerio.mian" (did you mean "customerio.main"?)',
        f"config reload (SIGHUP) rejected: 2 problems in {path}; still running the previous config",
    ]
    # The relay still routes with what it had.
    assert await send(url, "Still") == 200
    assert relay.intake.routes is before[1]


async def test_source_credentials_and_settings_apply_to_the_next_request(
    running: tuple[str, Relay, Path], segment: StandIn
) -> None:
    url, relay, path = running
    sent = 0

    def body() -> bytes:
        nonlocal sent
        sent += 1
        return json.dumps(
            {
                "event_id": f"e-{sent}",
                "object_type": "email",
                "metric": "opened",
                "timestamp": 1700000000,
                "data": {"customer_id": "u1", "subject": "Hi"},
            }
        ).encode()

    async def webhook(key: str) -> int:
        stamp, raw = str(int(time.time())), body()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/webhooks/customerio",
                data=raw,
                headers={
                    "X-CIO-Timestamp": stamp,
                    "X-CIO-Signature": customerio_signature(key, stamp, raw),
                },
            ) as resp,
        ):
            return resp.status

    async def segment_webhook(secret: str) -> int:
        raw = json.dumps(track("u1", "Hooked", "m-hooked")).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/webhooks/segment",
                data=raw,
                headers={"X-Signature": segment_signature(secret, raw)},
            ) as resp,
        ):
            return resp.status

    assert await webhook("signing-key") == 200
    assert await segment_webhook("segment-hook-secret") == 200
    text = path.read_text()
    text = text.replace('marketing: ["old-signing-key", "signing-key"]', 'marketing: "rotated-key"')
    text = text.replace('"segment-hook-secret"', '"new-hook-secret"')
    text = text.replace(
        "  customerio:\n    signing_keys:", "  customerio:\n    profile: raw\n    signing_keys:"
    )
    text = text.replace(EVERYTHING_TO_CIO, "\n  - {from: customerio, to: [segment.main]}\n")
    path.write_text(text)
    assert await Reloader(relay, str(path), env={}).reload("test") is True

    assert await webhook("signing-key") == 401
    assert await webhook("rotated-key") == 200
    assert await segment_webhook("segment-hook-secret") == 401
    assert await segment_webhook("new-hook-secret") == 200
    # The raw profile: the webhook's data as sent, plus its ids.
    [request] = await segment.wait_for(1)
    [message] = request.body["batch"]
    assert message["properties"] == {
        "customer_id": "u1",
        "subject": "Hi",
        "event_id": "e-3",
        "object_type": "email",
        "metric": "opened",
    }


async def test_server_and_storage_changes_wait_for_a_restart(
    running: tuple[str, Relay, Path], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    _, relay, path = running
    config = relay.config
    text = path.read_text().replace("port: 0", "port: 8099")
    text = text.replace(str(tmp_path / "relay.db"), str(tmp_path / "other.db"))
    path.write_text(text)
    caplog.set_level(logging.INFO, logger="relay")
    assert await Reloader(relay, str(path), env={}).reload("test") is True
    assert (relay.config.server.port, relay.config.storage) == (config.server.port, config.storage)
    assert relay.config is not config
    [line] = [r for r in caplog.records if "config reloaded" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        f"config reloaded (test) from {path}: server.port, storage.sqlite.path changed in the"
        " file but need a restart (still using the running values)"
    )


async def test_a_removed_destination_keeps_its_queue_until_it_comes_back(
    running: tuple[str, Relay, Path], customerio: StandIn
) -> None:
    url, relay, path = running
    original = path.read_text()
    assert await send(url, "Queued") == 200  # customerio.main is paused: stays queued
    without = original.replace(EVERYTHING_TO_CIO, "\n  []\n").replace("routes:\n  []", "routes: []")
    start = without.index("  customerio:\n    main:")
    end = without.index("  segment:\n    main:")
    path.write_text(without[:start] + without[end:])
    reloader = Reloader(relay, str(path), env={})
    assert await reloader.reload("test") is True
    assert "customerio.main" not in relay.workers
    assert (await relay.store.counts())["customerio.main"]["pending"] == 1

    path.write_text(original.replace('"${RELOAD_TEST_CIO_KEY}"', f'"{API_KEY}"'))
    assert await reloader.reload("test") is True
    await customerio.wait_for(1)
    assert [op["name"] for op in sent_ops(customerio)] == ["Queued"]


async def test_a_changed_file_is_noticed_once_it_settles(
    running: tuple[str, Relay, Path],
) -> None:
    _, relay, path = running
    reloader = Reloader(relay, str(path), env={}, interval=0.05)
    reloader.start()
    try:
        path.write_text(path.read_text().replace(EVERYTHING_TO_CIO, TRACKS_TO_SEGMENT))
        deadline = time.monotonic() + 5
        while [r.name for r in relay.routes] != ["tracks-to-segment"]:
            assert time.monotonic() < deadline, "the change was not picked up"
            await asyncio.sleep(0.05)
        assert [r.name for r in relay.intake.routes] == ["tracks-to-segment"]
    finally:
        await reloader.close()


# --------------------------------------------------------------------------- under traffic


def destination_settings(batch_size: int, concurrency: int) -> str:
    return f"      batch_size: {batch_size}\n      concurrency: {concurrency}\n"


async def wait_for_log(log: Path, text: str, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {count}x {text!r} in:\n{log.read_text()}"
        await asyncio.sleep(0.05)


async def test_reloads_under_traffic_lose_and_repeat_nothing(
    tmp_path: Path, customerio: StandIn
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "traffic.db"
    path = tmp_path / "relay.yaml"

    def version(n: int, *, valid: bool = True, batch_size: int = 100, lanes: int = 4) -> str:
        routes = f"""
  - name: everything-v{n}
    from: segment
    set_properties: {{config_version: {n}}}
    to: [customerio.main]
"""
        text = config_yaml(
            db, customerio.url, extra_cio=destination_settings(batch_size, lanes), routes=routes
        ).replace("port: 0", f"port: {port}")
        return text if valid else text.replace("to: [customerio.main]", "to: [customerio.nope]")

    path.write_text(version(0))
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    acknowledged: list[str] = []
    stop = asyncio.Event()
    try:
        await wait_ready(url, proc)
        pid = proc.pid

        async def sender(worker: int) -> None:
            n = 0
            async with aiohttp.ClientSession() as session:
                while not stop.is_set():
                    batch = [
                        track(f"p{worker}-{n % 7}", f"E-{worker}-{n}-{k}", f"m-{worker}-{n}-{k}")
                        for k in range(10)
                    ]
                    n += 1
                    async with session.post(
                        f"{url}/v1/batch",
                        json={"batch": batch},
                        headers={"Authorization": basic(WRITE_KEY)},
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                        acknowledged.extend(m["event"] for m in batch)
                    await asyncio.sleep(0.01)

        senders = [asyncio.create_task(sender(w)) for w in range(3)]

        async def rewrite(text: str, *, hup: bool, expect: str, count: int) -> None:
            await asyncio.sleep(0.3)  # traffic flows under the old config for a while
            path.write_text(text)
            if hup:
                proc.send_signal(signal.SIGHUP)
            await wait_for_log(log, expect, count)
            assert proc.poll() is None

        # Each valid version changes the destination's settings, so its worker is replaced
        # while deliveries are in flight.
        await rewrite(
            version(1, batch_size=7), hup=True, expect="config reloaded (SIGHUP)", count=1
        )
        await rewrite(version(2, valid=False), hup=False, expect="rejected", count=1)
        await rewrite(
            version(3, batch_size=50, lanes=2),
            hup=False,
            expect="config reloaded (file changed)",
            count=1,
        )
        await rewrite(version(4, valid=False), hup=True, expect="rejected", count=2)
        await rewrite(
            version(5, batch_size=13, lanes=3), hup=True, expect="config reloaded", count=3
        )
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*senders)

        wanted = Counter(acknowledged)
        assert len(wanted) == len(acknowledged) > 300
        deadline = time.monotonic() + 30
        while set(wanted) - {op["name"] for op in sent_ops(customerio)}:
            assert time.monotonic() < deadline, "acknowledged events were not delivered"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # anything repeated would arrive by now
        delivered = Counter(op["name"] for op in sent_ops(customerio))
        assert delivered == wanted  # every one, exactly once
        versions = {op["attributes"]["config_version"] for op in sent_ops(customerio)}
        assert versions <= {0, 1, 3, 5} and {0, 5} <= versions
        assert proc.poll() is None and proc.pid == pid
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output
    assert output.count(" listening on ") == 1  # started once, never restarted


async def test_an_empty_file_is_refused(
    running: tuple[str, Relay, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, relay, path = running
    routes = relay.routes
    path.write_text("# nothing here yet\n")
    caplog.set_level(logging.INFO, logger="relay")
    assert await Reloader(relay, str(path), env={}).reload("SIGHUP") is False
    assert relay.routes is routes and "customerio.main" in relay.workers
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"{path}: the file holds no settings at all (write the settings into it;"
        " config/relay.yaml is a commented example to start from)",
        f"config reload (SIGHUP) rejected: 1 problem in {path}; still running the previous config",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "routes: &r\n  - *r\n",
            ":2:5: not valid YAML: the alias *r is inside &r, the node it repeats",
            id="alias_loop",
        ),
        pytest.param(
            "server: {port: 1, port: 2}\n",
            ':1:19: server.port: the key "port" is given twice',
            id="duplicate_key",
        ),
    ],
)
async def test_a_file_relay_check_refuses_is_refused_with_the_same_problem(
    running: tuple[str, Relay, Path], caplog: pytest.LogCaptureFixture, text: str, problem: str
) -> None:
    _, relay, path = running
    routes = relay.routes
    path.write_text(text)
    caplog.set_level(logging.INFO, logger="relay")
    assert await Reloader(relay, str(path), env={}).reload("SIGHUP") is False
    assert relay.routes is routes
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and errors[0].startswith(f"{path}{problem}"), errors
    assert errors[1].startswith("config reload (SIGHUP) rejected: 1 problem")


async def test_a_changed_destination_keeps_the_retry_after_it_was_told(
    tmp_path: Path, customerio: StandIn
) -> None:
    # Customer.io asks for 4 s; a reload changes only the destination's timeout meanwhile.
    customerio.respond(429, {}, {"Retry-After": "4"})
    path = tmp_path / "relay.yaml"
    path.write_text(config_yaml(tmp_path / "relay.db", customerio.url, routes=EVERYTHING_TO_CIO))
    app = create_app(load_config(str(path), {}))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url, relay = str(server.make_url("")).rstrip("/"), app[RELAY]
        assert await send(url, "Throttled") == 200
        [refused] = await customerio.wait_for(1)
        path.write_text(path.read_text().replace("timeout: 2\n", "timeout: 3\n", 1))
        assert await Reloader(relay, str(path), env={}).reload("test") is True
        assert relay.config.destinations["customerio.main"].timeout == 3
        # Someone else's event, not held by the retry of the first: it waits all the same.
        status, _, _ = await post(
            f"{url}/v1/track",
            track("u2", "Other", "m-other"),
            headers={"Authorization": basic(WRITE_KEY)},
        )
        assert status == 200
        requests = await customerio.wait_for(2, timeout=15)
        assert requests[1].at - refused.at >= 3.9  # not sooner than Retry-After
    finally:
        await server.close()
