"""`relay dlq list|replay` beside a running relay: listing reads without taking back what the
relay has in flight, replaying is refused while it runs, and both work on a stopped store."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, config_yaml, relay_of
from tests.helpers import post, run_relay, track

AUTH = {"Authorization": basic(WRITE_KEY)}


def states(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT state FROM deliveries ORDER BY id")]


async def relay_cli(tmp_path: Path, *args: str) -> Any:
    return await asyncio.to_thread(run_relay, list(args), tmp_path, {})


async def test_listing_beside_a_running_relay_never_sends_what_is_in_flight_again(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    db = tmp_path / "relay.db"
    config = tmp_path / "cli.yaml"
    config.write_text(config_yaml(db, customerio.url, cio_timeout=30))
    url, _ = await relay_factory(config.read_text())
    customerio.hold()  # Customer.io takes its time with the first request
    status, _, _ = await post(f"{url}/v1/track", track("p1", "Slow", "m-1"), headers=AUTH)
    assert status == 200
    await customerio.wait_for(1)
    assert states(db) == ["leased"]
    result = await relay_cli(tmp_path, "dlq", "list", "--config", str(config))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert states(db) == ["leased"]  # still in flight: nothing was taken back
    await asyncio.sleep(1.5)  # a lane would lease a delivery taken back within its poll
    assert len(customerio.requests) == 1
    customerio.released.set()
    deadline = asyncio.get_running_loop().time() + 10
    while states(db):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert [op["name"] for r in customerio.requests for op in r.body["batch"]] == ["Slow"]


async def test_replaying_beside_a_running_relay_is_refused_and_says_why(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text(config_yaml(tmp_path / "relay.db", customerio.url))
    await relay_factory(config.read_text())
    result = await relay_cli(tmp_path, "dlq", "replay", "--all", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith(
        "relay dlq replay: another relay process (pid "
    ) and result.stderr.rstrip().endswith(
        "stop it, replay, and start it again (replaying beside it would send what it has in"
        " flight a second time)"
    )
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


async def test_on_a_stopped_store_dead_letters_are_listed_and_replayed(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    db = tmp_path / "relay.db"
    config = tmp_path / "cli.yaml"
    config.write_text(config_yaml(db, customerio.url))
    customerio.respond(422, {"meta": {"error": "bad op"}})  # dead-lettered at once
    url, app = await relay_factory(config.read_text())
    status, _, _ = await post(f"{url}/v1/track", track("p1", "Refused", "m-1"), headers=AUTH)
    assert status == 200
    await customerio.wait_for(1)
    deadline = asyncio.get_running_loop().time() + 10
    while states(db) != ["dead"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    await relay_of(app).store.close()  # as if relay were stopped

    listed = await relay_cli(tmp_path, "dlq", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert '"destination": "customerio.main"' in line and "HTTP 422" in line
    replayed = await relay_cli(tmp_path, "dlq", "replay", "--all", "--config", str(config))
    assert (replayed.returncode, replayed.stdout) == (0, "1 deliveries put back in the queue\n")
    assert states(db) == ["pending"]


async def test_listing_a_store_that_does_not_exist_says_so(tmp_path: Path) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text(config_yaml(tmp_path / "nowhere.db", "http://127.0.0.1:9"))
    result = await relay_cli(tmp_path, "dlq", "list", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr == (
        f"relay dlq list: there is no event store at {tmp_path / 'nowhere.db'}"
        " (storage.sqlite.path)\n"
    )
