"""relay as a real process: SIGKILL loses nothing acknowledged, SIGTERM drains and exits 0,
and Segment's official Python library talks to it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, config_yaml, free_port
from tests.faults import children_of, is_store_process
from tests.helpers import sent_ops, track, wait_ready, watch_output


def start_relay(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def write_config(tmp_path: Path, db: Path, cio_url: str, port: int) -> Path:
    text = config_yaml(db, cio_url).replace("port: 0", f"port: {port}")
    path = tmp_path / f"relay-{port}.yaml"
    path.write_text(text)
    return path


async def test_sigkill_after_acknowledging_loses_nothing(
    tmp_path: Path, customerio: StandIn
) -> None:
    db = tmp_path / "kill.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # First life: Customer.io is unreachable, so everything acknowledged stays queued.
    dead_end = f"http://127.0.0.1:{free_port()}"
    proc = start_relay(write_config(tmp_path, db, dead_end, port))
    acknowledged: list[str] = []
    try:
        await wait_ready(url, proc)

        async def sender(worker: int) -> None:
            async with aiohttp.ClientSession() as session:
                for n in range(1000):
                    batch = [
                        track(f"p{worker}-{n % 5}", f"E{worker}-{n}-{k}", f"m-{worker}-{n}-{k}")
                        for k in range(10)
                    ]
                    try:
                        async with session.post(
                            f"{url}/v1/batch",
                            json={"batch": batch},
                            headers={"Authorization": basic(WRITE_KEY)},
                        ) as resp:
                            if resp.status == 200:
                                acknowledged.extend(m["event"] for m in batch)
                    except aiohttp.ClientError:
                        return

        senders = [asyncio.create_task(sender(w)) for w in range(4)]
        while len(acknowledged) < 400:
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-traffic, no chance to clean up
        proc.wait(10)
        await asyncio.gather(*senders)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(acknowledged) >= 400

    # Second life: Customer.io is back; every acknowledged event arrives.
    proc = start_relay(write_config(tmp_path, db, customerio.url, port))
    try:
        await wait_ready(url, proc)
        deadline = time.monotonic() + 60
        wanted = set(acknowledged)
        while time.monotonic() < deadline:
            names = {op["name"] for op in sent_ops(customerio)}
            if wanted <= names:
                break
            await asyncio.sleep(0.2)
        names = {op["name"] for op in sent_ops(customerio)}
        assert wanted - names == set()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


async def test_sigterm_drains_and_exits_zero(tmp_path: Path, customerio: StandIn) -> None:
    # Also: the server runs on uvloop and its first line says so; its store's process runs on
    # asyncio's loop, without uvloop's library loaded.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_relay(write_config(tmp_path, tmp_path / "term.db", customerio.url, port))
    try:
        await wait_ready(url, proc)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/v1/track",
                json=track("u1", "Before Stop", "m-1"),
                headers={"Authorization": basic(WRITE_KEY)},
            ) as resp,
        ):
            assert resp.status == 200
        await customerio.wait_for(1)
        if sys.platform.startswith("linux"):
            (store,) = [pid for pid in children_of(proc.pid) if is_store_process(pid)]
            assert "/uvloop/" in Path(f"/proc/{proc.pid}/maps").read_text()
            assert "/uvloop/" not in Path(f"/proc/{store}/maps").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        output = proc.stdout.read().decode() if proc.stdout else ""
        watch_output("relay serve", output)
        assert "shutting down" in output and "stopped" in output
        assert "Traceback" not in output
        # The loop that served the request above, as the server's first line names it.
        assert f"(store {tmp_path / 'term.db'}, event loop uvloop {version('uvloop')})" in output
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_segment_python_library_events_arrive(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    from segment.analytics import Client

    url, _ = await relay_factory(cio_url=customerio.url)
    errors: list[Any] = []

    def use_library() -> None:
        client = Client(
            write_key=WRITE_KEY,
            host=url,
            gzip=True,
            sync_mode=True,
            on_error=lambda e, batch: errors.append(e),
        )
        client.identify("lib-user", {"email": "lib@example.com", "plan": "pro"})
        client.track("lib-user", "Library Event", {"answer": 42})
        client.flush()

    await asyncio.to_thread(use_library)
    assert errors == []
    await customerio.wait_for(1)
    await asyncio.sleep(0.5)
    ops = sent_ops(customerio)
    assert [(op["action"], op["identifiers"]) for op in ops] == [
        ("identify", {"id": "lib-user"}),
        ("event", {"id": "lib-user"}),
    ]
    assert ops[0]["attributes"] == {"email": "lib@example.com", "plan": "pro"}
    assert ops[1]["name"] == "Library Event" and ops[1]["attributes"] == {"answer": 42}


def test_env_is_clean_of_secrets_in_error_output(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "destinations:\n  customerio:\n    main:\n      site_id: s\n"
        "      api_key: ${CIO_API_KEY}\n"
        "routes:\n  - {from: segment, to: [customerio.main]}\n"
    )
    env = {**os.environ, "CIO_API_KEY": "super-secret-value"}
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "super-secret-value" not in result.stdout + result.stderr
    assert (
        f"{config}:5:16: destinations.customerio.main.api_key: must be 20 or 64 characters"
        in result.stderr
    )
