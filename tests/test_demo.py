"""`relay demo`: the whole loop with nothing configured, run as the command; its stand-ins
answer as Customer.io and Segment do; `--keep-running` stays up until Ctrl-C, then cleans up."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from relay import demo
from relay.config import compile_config_routes, parse_config
from relay.destinations.customerio.sink import failed_ops
from relay.dryrun import dry_run
from tests.conftest import basic
from tests.helpers import ROOT, run_relay
from tests.test_customerio_e2e import EVERY_CALL

CIO_AUTH = basic(demo.SITE_ID, demo.API_KEY)
SEGMENT_AUTH = basic(demo.SEGMENT_OUT_KEY)


def _section(lines: list[str], title: str) -> list[str]:
    """The indented lines under the line that starts with `title`, up to the next title."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    out = []
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        out.append(line)
    return out


def _files(stdout: str) -> Path:
    found = re.search(r"^  files +(\S+)", stdout, re.M)
    assert found, stdout
    return Path(found.group(1))


def test_the_demo_delivers_both_ways_prints_what_arrived_and_exits_0(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_relay(["demo"], tmp_path, {})
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stderr) == (0, ""), result.stdout + result.stderr
    assert elapsed < 20
    lines = result.stdout.splitlines()

    sent = _section(lines, "Sent to relay as Segment's libraries send it")
    assert "  POST /v1/identify  identify  userId=ada  traits: email, name, plan  -> 200" in sent
    refused = sent.index(
        "  POST /v1/track     track  userId=ada  (no event)  -> 400"
        "   (no event name: relay refuses it at the door)"
    )
    assert json.loads(sent[refused + 1]) == {
        "success": False,
        "code": "invalid_request",
        "message": "a track call needs a non-empty 'event'",
        "error": "a track call needs a non-empty 'event'",
    }
    assert _section(lines, "Sent to relay as Customer.io's reporting webhooks") == [
        "  POST /webhooks/customerio  email delivered  customer_id=ada  -> 200",
        "  POST /webhooks/customerio  email opened  customer_id=ada  -> 200",
        "  POST /webhooks/customerio  email clicked  customer_id=ada  -> 200",
    ]
    assert any(line.startswith("Everything arrived as expected, ") for line in lines)

    # How relay groups the ops into requests depends on timing; which ops arrive does not.
    customerio = _section(lines, "The Customer.io stand-in received")
    assert sorted(line for line in customerio if line.startswith("      ")) == sorted(
        [
            "      person identify     id=ada",
            '      person event        id=ada  "Order Completed"',
            '      person page         id=ada  "https://example.com/pricing"',
            "      object identify     object_type_id=1 object_id=acme  with id=ada",
            "      person identify     id=grace",
            '      person event        id=grace  "Signed Up"',
            '      person screen       anonymous_id=anon-5f1c  "Onboarding"',
            '      person event        cio_id=0badc0ffee  "Plan Upgraded"',
        ]
    )
    [partial] = [line for line in customerio if " -> 207 " in line]
    assert re.fullmatch(
        r'  POST /api/v2/batch -> 207 \{"errors": \[\{"batch_index": \d+, "reason": "not_found",'
        r' "field": "identifiers.cio_id", "message": "no person has cio_id 0badc0ffee"\}\]\}',
        partial,
    ), partial
    assert all(
        re.fullmatch(r"  POST /api/v2/batch -> 20[07].*", line)
        for line in customerio
        if not line.startswith("      ")
    )
    segment = _section(lines, "The Segment stand-in received")
    assert [line for line in segment if line.startswith("      ")] == [
        '      track  userId=ada  "Email Delivered"',
        '      track  userId=ada  "Email Opened"',
        '      track  userId=ada  "Email Link Clicked"',
    ]
    assert _section(lines, "Dead letters") == [
        '  customerio.main  track  userId=cio_0badc0ffee  "Plan Upgraded"',
        "      Customer.io refused: reason=not_found, field=identifiers.cio_id,"
        " message=no person has cio_id 0badc0ffee",
    ]

    files = _files(result.stdout)
    places = _section(lines, "Where to look")
    relay_url = re.search(r"^  relay +(http://\S+)$", result.stdout, re.M)
    assert relay_url
    status_url = re.search(r"^  status page +(http://\S+)/status$", result.stdout, re.M)
    assert status_url
    assert places[:6] == [
        f"  {relay_url.group(1)}/metrics",
        "      counters: events received, delivered, dead-lettered; requests to each destination",
        f"  {status_url.group(1)}/status",
        "      the status page: each destination's state, queue and rate, each source's counts",
        f"  {relay_url.group(1)}/readyz",
        "      whether relay takes events, and the state of each destination",
    ]
    assert f"  relay dlq list --config {files / 'relay.yaml'}" in places
    assert (
        f"  relay routes test --config {files / 'relay.yaml'} {files / 'samples.jsonl'}" in places
    )
    assert lines[-1] == (
        "These ended with the demo; `relay demo --keep-running` keeps them up until Ctrl-C."
    )
    assert files.name.startswith("relay-demo-") and not files.exists()


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's stdout, line by line (None at its end), read in a thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _until(lines: queue.Queue[str | None], prefix: str, timeout: float = 20.0) -> list[str]:
    """The lines read up to and including the first that starts with `prefix`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "\n".join(seen)
        seen.append(line)
        if line.startswith(prefix):
            return seen


def _get(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_keep_running_stays_up_with_live_commands_until_ctrl_c_then_removes_its_files(
    tmp_path: Path,
) -> None:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ} | {
        "PYTHONPATH": str(ROOT)
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "demo", "--keep-running"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines_of(proc)
        shown = "\n".join(_until(lines, "Press Ctrl-C to stop"))
        relay_url = re.search(r"^  relay +(http://127\.0\.0\.1:\d+)$", shown, re.M)
        cio_url = re.search(r"^  Customer\.io stand-in +(http://127\.0\.0\.1:\d+)", shown, re.M)
        assert relay_url and cio_url, shown
        files = _files(shown)
        config = files / "relay.yaml"

        status_url = re.search(r"^  status page +(http://127\.0\.0\.1:\d+)/status$", shown, re.M)
        assert status_url, shown
        status, figures = _get(status_url.group(1) + "/status.json")
        assert status == 200
        assert figures["destinations"]["customerio.main"]["dead_letters"] == 1
        status, ready = _get(relay_url.group(1) + "/readyz")
        assert (status, ready["status"]) == (200, "ready")
        assert ready["destinations"] == {
            "customerio.main": {"state": "ok"},
            "segment.main": {"state": "ok"},
        }
        # The commands it printed work on what it runs.
        listed = run_relay(["dlq", "list", "--config", str(config)], tmp_path, {})
        assert listed.returncode == 0, listed.stderr
        [dead] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (dead["destination"], dead["message"]["userId"]) == (
            "customerio.main",
            "cio_0badc0ffee",
        )
        tested = run_relay(
            ["routes", "test", "--config", str(config), str(files / "samples.jsonl")],
            tmp_path,
            {},
        )
        assert tested.returncode == 0, tested.stderr
        entries = json.loads(tested.stdout)
        assert [e.get("rejected") for e in entries].count(
            "a track call needs a non-empty 'event'"
        ) == 1
        assert len(entries) == 12  # 9 Segment messages and 3 webhooks
        status, received = _get(cio_url.group(1) + "/")
        assert status == 200 and {r["path"] for r in received} == {"/api/v2/batch"}

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert _until(lines, "Stopping:")[-1] == (
            "Stopping: relay finishes what it is sending, then the files are removed."
        )
        assert proc.stderr is not None and proc.stderr.read() == ""
        assert not files.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_what_does_not_arrive_in_time_is_named_and_the_exit_code_is_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Customer.io down (503): relay keeps retrying, and the demo says what is missing."""
    monkeypatch.setattr(demo, "customerio_answer", lambda *_: (503, {}))
    assert demo.run_demo(timeout=1.0) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    problems = _section(lines, "relay demo: not everything arrived within 1 s:")
    assert "  the Customer.io stand-in has not received: person identify     id=ada" in problems
    assert (
        "  the Customer.io stand-in has not received: person event        cio_id=0badc0ffee"
        '  "Plan Upgraded"'
    ) in problems
    assert "  /metrics counts 0 deliveries to customerio.main, expected 7" in problems
    assert "  relay's store has 0 dead letters for customerio.main, expected 1" in problems
    assert not any("Segment" in p for p in problems)  # the other way went through
    assert not _files(out).exists()


# --- the stand-ins ---------------------------------------------------------------------------


def test_the_stand_ins_refuse_wrong_credentials_with_401() -> None:
    batch = {"batch": []}
    assert demo.customerio_answer("POST", "/api/v2/batch", CIO_AUTH, batch) == (200, {})
    for auth in (
        None,
        basic(demo.SITE_ID, "x" * 20),
        basic("other-site", demo.API_KEY),
        "Bearer x",
    ):
        assert demo.customerio_answer("POST", "/api/v2/batch", auth, batch)[0] == 401
    assert demo.segment_answer("POST", "/v1/batch", SEGMENT_AUTH, batch) == (
        200,
        {"success": True},
    )
    for auth in (None, basic("another-write-key"), CIO_AUTH):
        assert demo.segment_answer("POST", "/v1/batch", auth, batch)[0] == 401


def test_a_refused_op_gets_customerio_partial_answer_as_relay_reads_it() -> None:
    ops = [
        {"type": "person", "identifiers": {"id": "ada"}, "action": "event", "name": "A"},
        {"type": "person", "identifiers": {"cio_id": "f00"}, "action": "event", "name": "B"},
    ]
    status, body = demo.customerio_answer("POST", "/api/v2/batch", CIO_AUTH, {"batch": ops})
    assert status == 207
    assert failed_ops(json.dumps(body).encode(), len(ops)) == {
        1: ["reason=not_found, field=identifiers.cio_id, message=no person has cio_id f00"]
    }
    assert demo.customerio_answer("POST", "/api/v2/entity", CIO_AUTH, ops[1]) == (
        400,
        {
            "errors": [
                {
                    "reason": "not_found",
                    "field": "identifiers.cio_id",
                    "message": "no person has cio_id f00",
                }
            ]
        },
    )


MORE_CALLS: list[dict[str, Any]] = [
    {
        "type": "track",
        "userId": "u1",
        "event": "Application Uninstalled",
        "context": {"device": {"token": "tok-1", "type": "ios"}},
        "messageId": "m-uninstall",
    },
    {"type": "track", "userId": "u1", "event": "User Unsuppressed", "messageId": "m-unsup"},
    {"type": "track", "anonymousId": "a9", "event": "Browsed", "messageId": "m-anon"},
    {"type": "identify", "anonymousId": "a9", "traits": {"plan": "free"}, "messageId": "m-anon-id"},
]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_the_customerio_stand_in_takes_every_request_relay_sends(api: str) -> None:
    text = demo.config_text(Path("/nonexistent"), "http://127.0.0.1:9", "http://127.0.0.1:9")
    config = parse_config(text, "demo.yaml", {})
    dest = dataclasses.replace(config.destinations["customerio.main"], api=api)
    config = dataclasses.replace(config, destinations={**config.destinations, dest.key: dest})
    out = dry_run(config, compile_config_routes(config), EVERY_CALL + MORE_CALLS, 1704164645.0)
    requests = [r for e in out for d in e["deliveries"] for r in d["requests"]]
    calls = {(r["method"], re.sub(r"customers/[^/]+", "customers/ID", r["path"])) for r in requests}
    if api == "v1":
        assert {
            ("PUT", "/api/v1/customers/ID"),
            ("POST", "/api/v1/customers/ID/events"),
            ("POST", "/api/v1/events"),
            ("PUT", "/api/v1/customers/ID/devices"),
            ("DELETE", "/api/v1/customers/ID/devices/tok-1"),
            ("DELETE", "/api/v1/customers/ID"),
            ("POST", "/api/v1/customers/ID/suppress"),
            ("POST", "/api/v1/customers/ID/unsuppress"),
            ("POST", "/api/v1/merge_customers"),
            ("POST", "/api/v2/entity"),
        } == calls
    else:
        assert calls == {("POST", "/api/v2/batch")}
    for r in requests:
        assert demo.customerio_answer(r["method"], r["path"], CIO_AUTH, r["body"]) == (200, {}), r
