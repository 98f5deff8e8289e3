"""`relay dlq list|show|replay|purge`: through the running relay's admin endpoint (never
opening its store behind its back), or on the store itself when no relay serves it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from relay.store.sqlite.schema import STATES
from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, config_yaml, relay_of
from tests.faults import WINDOW_JITTER, busiest_window
from tests.helpers import post, run_relay, track

AUTH = {"Authorization": basic(WRITE_KEY)}


def states(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [STATES[row[0]] for row in conn.execute("SELECT state FROM queue ORDER BY id")]


async def relay_cli(tmp_path: Path, *args: str) -> Any:
    return await asyncio.to_thread(run_relay, list(args), tmp_path, {})


async def wait_states(db: Path, wanted: list[str], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while states(db) != wanted:
        assert asyncio.get_running_loop().time() < deadline, states(db)
        await asyncio.sleep(0.05)


def lines(result: Any) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


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
    for command in (["list"], ["replay", "--all"], ["purge", "--all"]):
        result = await relay_cli(tmp_path, "dlq", *command, "--config", str(config))
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert states(db) == ["leased"]  # still in flight: nothing was taken back
    await asyncio.sleep(1.5)  # a lane would lease a delivery taken back within its poll
    assert len(customerio.requests) == 1
    customerio.released.set()
    await wait_states(db, [])
    assert [op["name"] for r in customerio.requests for op in r.body["batch"]] == ["Slow"]


async def dead_letters_of(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path, count: int, **kwargs: Any
) -> tuple[Path, str, Any]:
    """A running relay whose Customer.io refused `count` tracks (dead-lettered at once)."""
    db = tmp_path / "relay.db"
    config = tmp_path / "cli.yaml"
    config.write_text(config_yaml(db, customerio.url, **kwargs))
    customerio.respond(422, {"meta": {"error": "bad op"}}, times=count)
    url, app = await relay_factory(config.read_text())
    for n in range(count):
        message = track(f"p{n}", f"Refused{n}", f"m-{n}")
        status, _, _ = await post(f"{url}/v1/track", message, headers=AUTH)
        assert status == 200
    await wait_states(db, ["dead"] * count)
    return config, url, app


async def test_dead_letters_are_listed_shown_replayed_and_purged_through_the_relay(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    config, url, app = await dead_letters_of(relay_factory, customerio, tmp_path, 3, api="v1")
    bad = b'{"batch":[{"type":"track","userId":"x"}]}'  # no event: rejected at the door
    assert (await post(f"{url}/v1/batch", None, raw=bad, headers=AUTH))[0] == 200
    listed = lines(await relay_cli(tmp_path, "dlq", "list", "--config", str(config)))
    assert [(d["destination"], d["message"].get("event")) for d in listed] == [
        ("customerio.main", "Refused0"),
        ("customerio.main", "Refused1"),
        ("customerio.main", "Refused2"),
        (None, None),
    ]
    first, rejected = listed[0], listed[3]
    assert first["reason"].startswith("HTTP 422: ") and first["attempts"] == 1
    assert rejected["id"].startswith("r") and "event" in rejected["reason"]
    only = await relay_cli(
        tmp_path, "dlq", "list", "--destination", "customerio.main", "--limit", "2",
        "--config", str(config),
    )  # fmt: skip
    assert [d["id"] for d in lines(only)] == [listed[0]["id"], listed[1]["id"]]
    by_reason = await relay_cli(
        tmp_path, "dlq", "list", "--reason", "NON-EMPTY 'EVENT'", "--since", "1h", "--config",
        str(config),
    )  # fmt: skip
    assert [d["id"] for d in lines(by_reason)] == [rejected["id"]]
    none_yet = await relay_cli(tmp_path, "dlq", "list", "--until", "1h", "--config", str(config))
    assert lines(none_yet) == []

    [shown] = lines(await relay_cli(tmp_path, "dlq", "show", first["id"], "--config", str(config)))
    assert shown["message"] == {**first["message"]}
    [attempt] = shown["history"]
    assert attempt["error"] == first["reason"] and attempt["at"] == first["dead_at"]
    missing = await relay_cli(tmp_path, "dlq", "show", "999", "--config", str(config))
    assert (missing.returncode, missing.stderr) == (
        1,
        "relay dlq show: the relay answered 404: there is no dead letter 999"
        " (relay dlq list shows those there are)\n",
    )

    replayed = await relay_cli(tmp_path, "dlq", "replay", first["id"], "--config", str(config))
    assert (replayed.returncode, replayed.stdout) == (
        0,
        "1 deliveries put back in the queue (the running relay)\n",
    )
    await customerio.wait_for(4)
    assert customerio.requests[-1].path.endswith("/events")
    purged = await relay_cli(
        tmp_path, "dlq", "purge", "--reason", "http 422", "--config", str(config)
    )
    assert (purged.returncode, purged.stdout) == (0, "2 dead letters deleted (the running relay)\n")
    left = lines(await relay_cli(tmp_path, "dlq", "list", "--config", str(config)))
    assert [d["id"] for d in left] == [rejected["id"]]
    assert await relay_of(app).store.counts() == {}


async def test_replay_and_purge_need_something_named(tmp_path: Path) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text(config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9"))
    for command in ("replay", "purge"):
        result = await relay_cli(tmp_path, "dlq", command, "--config", str(config))
        assert (result.returncode, result.stderr) == (
            1,
            f"relay dlq {command}: name what to {command}: dead letter ids,"
            " --destination/--reason/--since/--until, or --all\n",
        )
    bad = await relay_cli(tmp_path, "dlq", "replay", "x7", "--config", str(config))
    assert bad.returncode == 1 and bad.stderr.startswith("relay dlq replay: 'x7' is not a dead")
    when = await relay_cli(tmp_path, "dlq", "list", "--since", "yesterday", "--config", str(config))
    assert when.returncode == 1 and "'yesterday' is not a time: write 30m" in when.stderr


async def test_replay_sends_again_within_the_rate_limit(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    config, _, _ = await dead_letters_of(
        relay_factory, customerio, tmp_path, 12, api="v1", rate_limit=4
    )
    sent_before = len(customerio.requests)
    result = await relay_cli(tmp_path, "dlq", "replay", "--all", "--config", str(config))
    assert result.stdout == "12 deliveries put back in the queue (the running relay)\n"
    replays = await customerio.wait_for(sent_before + 12, timeout=15)
    times = [r.at for r in replays[sent_before:]]
    # In windows of 0.98 s, as the fault tests count: sends a whole window apart can arrive
    # a little closer on a busy machine (seen: 0.998 s).
    busiest, _ = busiest_window(times, 1.0 - WINDOW_JITTER)
    assert busiest <= 4, times


async def test_on_a_stopped_store_dead_letters_are_listed_and_replayed(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    config, _, app = await dead_letters_of(relay_factory, customerio, tmp_path, 1)
    db = tmp_path / "relay.db"
    await relay_of(app).store.close()  # as if relay were stopped
    (tmp_path / "relay.db.admin").unlink()  # and its admin endpoint gone

    [line] = lines(await relay_cli(tmp_path, "dlq", "list", "--config", str(config)))
    assert line["destination"] == "customerio.main" and "HTTP 422" in line["reason"]
    replayed = await relay_cli(tmp_path, "dlq", "replay", "--all", "--config", str(config))
    assert (replayed.returncode, replayed.stdout) == (
        0,
        "1 deliveries put back in the queue (the store (no relay serves it))\n",
    )
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
