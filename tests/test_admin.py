"""relay import, relay tail, the status JSON, and the admin endpoint's token, against a
running relay."""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, config_yaml, relay_of
from tests.helpers import ADMIN_TOKEN, ROOT, post, run_relay, track

AUTH = {"Authorization": basic(WRITE_KEY)}


async def relay_cli(tmp_path: Path, *args: str) -> Any:
    return await asyncio.to_thread(run_relay, list(args), tmp_path, {})


def events_sent(cio: StandIn) -> list[str]:
    return [op["name"] for r in cio.requests for op in r.body["batch"] if op.get("name")]


async def served(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path, **kwargs: Any
) -> tuple[Path, str, Any]:
    config = tmp_path / "cli.yaml"
    config.write_text(config_yaml(tmp_path / "relay.db", customerio.url, **kwargs))
    url, app = await relay_factory(config.read_text())
    return config, url, app


def import_file(tmp_path: Path) -> Path:
    lines = [
        json.dumps(track("u1", "Old Order", "imp-1")),
        json.dumps({"type": "track", "userId": "u2", "event": "No Id"}),  # id derived
        "{not json",
        json.dumps({"type": "track", "userId": "u3"}),  # no event
        "",
        json.dumps({"batch": [track("u4", "In A Batch", "imp-4")]}),
    ]
    path = tmp_path / "history.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    return path


async def test_an_import_is_queued_as_live_traffic_and_a_second_run_queues_nothing(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    config, _, app = await served(relay_factory, customerio, tmp_path)
    path = import_file(tmp_path)
    first = await relay_cli(tmp_path, "import", "--config", str(config), str(path))
    assert first.returncode == 1  # two lines could not be imported; the rest was
    assert first.stderr.splitlines() == [
        f"{path}:3: not valid JSON: " + first.stderr.splitlines()[0].split("not valid JSON: ")[1],
        f"{path}:4: a track call needs a non-empty 'event'",
    ]
    assert first.stdout == (
        "imported 4 messages through the running relay: 3 queued, 0 already imported"
        " (same messageId), 1 refused; 2 problems above\n"
    )
    await customerio.wait_for(1)
    await asyncio.sleep(0.5)
    again = await relay_cli(tmp_path, "import", "--config", str(config), str(path))
    assert again.stdout.startswith(
        "imported 4 messages through the running relay: 0 queued, 3 already imported"
    )
    await asyncio.sleep(1.0)
    assert sorted(events_sent(customerio)) == ["In A Batch", "No Id", "Old Order"]
    received = relay_of(app).metrics.received.labels("segment", "web", "duplicate")._value.get()
    assert received == 3


async def test_identifies_can_be_imported_without_their_old_timestamp(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    config, _, _ = await served(relay_factory, customerio, tmp_path)
    old = {
        "type": "identify",
        "userId": "u1",
        "traits": {"plan": "pro"},
        "timestamp": "2020-01-01T00:00:00Z",
        "messageId": "idf-1",
    }
    path = tmp_path / "people.json"
    path.write_text(json.dumps([old, {**old, "messageId": "idf-2", "userId": "u2"}], indent=2))
    result = await relay_cli(
        tmp_path, "import", "--identify-timestamp", "now", "--config", str(config), str(path)
    )
    assert result.returncode == 0, result.stderr
    await customerio.wait_for(1)
    ops = [op for r in customerio.requests for op in r.body["batch"]]
    assert [op["identifiers"]["id"] for op in ops] == ["u1", "u2"]
    assert all("timestamp" not in op for op in ops)
    kept = await relay_cli(tmp_path, "import", "--config", str(config), str(path))
    assert "0 queued, 2 already imported" in kept.stdout  # same messageIds


def test_progress_is_a_bar_on_a_terminal_and_plain_otherwise(tmp_path: Path) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text(config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9"))
    (tmp_path / "relay.db").touch()
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(track("u1", "E", "pm-1")) + "\n")
    piped = run_relay(["import", "--config", str(config), str(path)], tmp_path, {})
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""  # no bar, and too quick for a progress line
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "import", "--config", str(config), str(path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=60,
        check=False,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"1/1" in shown and b"msg" in shown  # tqdm's bar: count, unit, rate
    assert proc.stdout.startswith(b"imported 1 messages through the store (no relay serves it)")


async def test_the_tail_shows_what_came_in_its_routes_and_what_went_out(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    config, url, _ = await served(relay_factory, customerio, tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "tail",
        "--route",
        "everything-to-customerio",
        "--config",
        str(config),
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(100):  # until the tail is connected
            if (await admin_status(tmp_path))["tailing"]:
                break
            await asyncio.sleep(0.1)
        assert (await post(f"{url}/v1/track", track("u1", "Watched", "t-1"), headers=AUTH))[
            0
        ] == 200
        assert proc.stdout is not None
        came = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        went = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
    finally:
        proc.terminate()
        await proc.wait()
    assert (came["what"], came["source"], came["routes"], came["outcome"]) == (
        "in",
        "web",
        ["everything-to-customerio"],
        "queued",
    )
    assert came["message"] == {
        "type": "track",
        "event": "Watched",
        "userId": "u1",
        "messageId": "t-1",
    }
    assert (went["what"], went["destination"], went["method"], went["status"]) == (
        "out",
        "customerio.main",
        "POST",
        200,
    )
    assert went["url"].endswith("/api/v2/batch")
    assert [op["name"] for op in went["body"]["batch"]] == ["Watched"]
    assert "Authorization" not in json.dumps(went)


async def admin_status(tmp_path: Path, token: str | None = None) -> Any:
    url = json.loads((tmp_path / "relay.db.admin").read_text())["url"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/status.json", headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


def metric_value(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_the_status_json_shows_what_metrics_count(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    _, url, _ = await served(relay_factory, customerio, tmp_path)
    customerio.respond(400, {"meta": {"error": "nope"}})
    for n in range(3):
        assert (await post(f"{url}/v1/track", track("u1", f"E{n}", f"s-{n}"), headers=AUTH))[
            0
        ] == 200
        await customerio.wait_for(n + 1)
    bad = b'{"batch":[{"type":"track","userId":"x"}]}'
    assert (await post(f"{url}/v1/batch", None, raw=bad, headers=AUTH))[0] == 200
    await asyncio.sleep(0.3)
    status = await admin_status(tmp_path)
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        metrics = await resp.text()
    cio = status["destinations"]["customerio.main"]
    assert cio["delivered"] == metric_value(
        metrics, "relay_delivered_events_total", destination="customerio.main"
    )
    assert (
        cio["dead_lettered"]
        == 1
        == metric_value(metrics, "relay_dead_lettered_events_total", destination="customerio.main")
    )
    assert (cio["state"], cio["queued"], cio["dead_letters"], cio["rate_limit"]) == (
        "ok",
        0,
        1,
        100,
    )
    assert cio["last_errors"][-1]["error"].startswith("HTTP 400: ")
    assert status["sources"]["segment.web"] == {
        "queued": metric_value(
            metrics, "relay_received_events_total", kind="segment", source="web", outcome="queued"
        ),
        "duplicate": 0,
        "rejected": 1,
    }
    assert status["sources"]["segment.web"]["queued"] == 3


async def test_an_exposed_admin_endpoint_needs_its_token(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    text = config_yaml(tmp_path / "relay.db", customerio.url) + (
        'admin: {host: 0.0.0.0, port: 0, token: "${ADMIN_TOKEN}"}\n'
    )
    config = tmp_path / "cli.yaml"
    config.write_text(text.replace("${ADMIN_TOKEN}", ADMIN_TOKEN))
    await relay_factory(config.read_text())
    url = json.loads((tmp_path / "relay.db.admin").read_text())["url"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/status.json") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="relay admin"'
            assert "tok-" not in await resp.text()
        async with session.get(
            f"{url}/status.json", headers={"Authorization": basic("any", ADMIN_TOKEN)}
        ) as resp:
            assert resp.status == 200
        async with session.get(
            f"{url}/status.json", headers={"Authorization": "Bearer tok-s3cret-adminX"}
        ) as resp:
            assert resp.status == 401
    assert (await admin_status(tmp_path, ADMIN_TOKEN))["accepting"] is True
    listed = await relay_cli(tmp_path, "dlq", "list", "--config", str(config))
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", "")
    no_token = tmp_path / "no-token.yaml"
    no_token.write_text(text.replace('token: "${ADMIN_TOKEN}"', "token: null"))
    checked = await relay_cli(tmp_path, "check", "--config", str(no_token))
    assert checked.returncode == 1
    assert "admin.token: admin.host 0.0.0.0 is not a loopback address: set admin.token" in (
        checked.stderr
    )


async def test_the_oldest_waiting_delivery_has_an_age_in_metrics(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    _, url, app = await served(relay_factory, customerio, tmp_path)
    relay = relay_of(app)
    customerio.hold()  # the first request hangs: its delivery waits
    assert (await post(f"{url}/v1/track", track("u1", "Held", "o-1"), headers=AUTH))[0] == 200
    await customerio.wait_for(1)
    await asyncio.sleep(0.5)
    await relay._count_queue()
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        metrics = await resp.text()
    age = metric_value(metrics, "relay_queue_oldest_age_seconds", destination="customerio.main")
    assert 0.4 <= age < 10
    assert metric_value(metrics, "relay_queue_oldest_age_seconds", destination="segment.main") == 0
    status = await admin_status(tmp_path)
    assert status["destinations"]["customerio.main"]["oldest_queued_seconds"] >= 0.4
    customerio.released.set()
