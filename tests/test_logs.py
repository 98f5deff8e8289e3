"""relay's log lines: the JSON and text formats, the flags and setting that choose them, the
request id on every line written while a request is handled, the delivery ids on lines
about deliveries, and no secret in any of them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.cli import build_parser
from relay.config import check_text
from relay.logs import (
    ContextFields,
    JsonFormatter,
    TextFormatter,
    about_deliveries,
    configure,
    request_id,
)
from tests.conftest import RelayFactory, SecretWatch, StandIn, basic, config_yaml, relay_of
from tests.helpers import (
    HOOK,
    SECRETS,
    SEGMENT_WEBHOOK_SECRET,
    SIGNING_KEY,
    WRITE_KEY,
    WRONG_WRITE_KEY,
    masked,
    post,
    post_raw,
    run_relay,
    secrets_in,
    track,
    webhook,
)

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def record(
    message: str = "destination %s: %d deliveries dead-lettered",
    args: tuple[Any, ...] = ("customerio.main", 7),
    level: int = logging.WARNING,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    rec = logging.LogRecord("relay.delivery", level, __file__, 1, message, args, exc_info)
    rec.created, rec.msecs = 1714560000.25, 250.0  # 2024-05-01T10:40:00.250Z
    for key, value in (extra or {}).items():
        setattr(rec, key, value)
    return rec


# --------------------------------------------------------------------------- the formats


def test_a_json_line_is_one_object_with_time_level_logger_message_and_context() -> None:
    extra = {"request_id": "req-1", **about_deliveries("customerio.main", [4, 5, 6])}
    line = JsonFormatter().format(record(extra=extra))
    assert json.loads(line) == {
        "time": "2024-05-01T10:40:00.250Z",
        "level": "WARNING",
        "logger": "relay.delivery",
        "message": "destination customerio.main: 7 deliveries dead-lettered",
        "request_id": "req-1",
        "destination": "customerio.main",
        "delivery_ids": [4, 5, 6],
    }
    assert "\n" not in line


def test_a_json_line_without_context_has_only_the_four_fields() -> None:
    line = JsonFormatter().format(record("relay listening", (), logging.INFO))
    assert json.loads(line) == {
        "time": "2024-05-01T10:40:00.250Z",
        "level": "INFO",
        "logger": "relay.delivery",
        "message": "relay listening",
    }


def test_a_traceback_is_the_exc_field_of_the_same_line() -> None:
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        exc_info = sys.exc_info()
    line = JsonFormatter().format(record("it failed", (), logging.ERROR, exc_info=exc_info))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "it failed"
    assert entry["exc"].startswith("Traceback (most recent call last):\n")
    assert entry["exc"].endswith("RuntimeError: a bug")


def test_a_text_line_is_the_classic_line_then_the_context_as_key_value() -> None:
    formatter = TextFormatter()
    extra = {"request_id": "req-1", **about_deliveries("customerio.main", [4, 5, 6])}
    line = formatter.format(record(extra=extra))
    assert line == (
        f"{formatter.formatTime(record())} WARNING relay.delivery: destination customerio.main:"
        " 7 deliveries dead-lettered request_id=req-1 destination=customerio.main"
        " delivery_ids=4,5,6"
    )


def test_many_delivery_ids_are_the_first_five_then_how_many_more() -> None:
    ids = list(range(10, 22))
    assert about_deliveries("segment.main", ids) == {
        "destination": "segment.main",
        "delivery_ids": [10, 11, 12, 13, 14],
        "delivery_ids_more": 7,
    }
    rec = record(extra=about_deliveries("segment.main", ids))
    assert (
        TextFormatter()
        .format(rec)
        .endswith(' destination=segment.main delivery_ids="10,11,12,13,14 +7 more"')
    )
    entry = json.loads(JsonFormatter().format(rec))
    assert (entry["delivery_ids"], entry["delivery_ids_more"]) == ([10, 11, 12, 13, 14], 7)
    assert about_deliveries("segment.main") == {"destination": "segment.main"}


def test_a_text_value_with_spaces_or_quotes_is_quoted() -> None:
    line = TextFormatter().format(record(extra={"request_id": 'a b"c'}))
    assert line.endswith(' request_id="a b\\"c"')


# --------------------------------------------------------------------------- choosing them


def test_configure_writes_json_off_a_terminal_and_text_on_one() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        assert configure("INFO", "auto", io.StringIO()) == "json"
        assert configure("INFO", "auto", Terminal()) == "text"
        assert configure("INFO", "text", io.StringIO()) == "text"
        stream = io.StringIO()
        assert configure("WARNING", "json", stream) == "json"
        ours = [h for h in root.handlers if h not in handlers]
        assert len(ours) == 1  # each call replaces the handler the one before set
        logging.getLogger("relay").warning("disk %s", "full")
        logging.getLogger("relay").info("not written: below WARNING")
        [line] = stream.getvalue().splitlines()
        assert {k: v for k, v in json.loads(line).items() if k != "time"} == {
            "level": "WARNING",
            "logger": "relay",
            "message": "disk full",
        }
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_log_level_is_one_of_four_in_any_case(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", "--config", "x.yaml", "--log-level", "debug"])
    assert args.log_level == "DEBUG"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--config", "x.yaml", "--log-level", "verbose"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "relay serve: error: argument --log-level: 'verbose' is not a log level:"
        " write DEBUG, INFO, WARNING or ERROR"
    )


def test_log_format_is_json_or_text(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", "--config", "x.yaml", "--log-format", "JSON"])
    assert args.log_format == "json"
    assert build_parser().parse_args(["serve", "--config", "x.yaml"]).log_format is None
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--config", "x.yaml", "--log-format", "yaml"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "relay serve: error: argument --log-format: 'yaml' is not a log format: write json or text"
    )


def test_server_log_format_is_checked_like_any_setting(tmp_path: Path) -> None:
    text = config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9")
    wrong = text.replace("shutdown_timeout: 5}", "shutdown_timeout: 5, log_format: yaml}")
    result = check_text(wrong, "relay.yaml", {})
    assert [str(p) for p in result.problems] == [
        "relay.yaml:2:69: server.log_format: must be one of: auto, json, text"
        " (write auto, json or text)"
    ]
    right = text.replace("shutdown_timeout: 5}", "shutdown_timeout: 5, log_format: text}")
    config = check_text(right, "relay.yaml", {}).config
    assert config is not None and config.server.log_format == "text"
    default = check_text(text, "relay.yaml", {}).config
    assert default is not None and default.server.log_format == "auto"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("setting", "flag", "expected"),
    [
        (None, [], "json"),  # auto, and stderr is a pipe here
        ("text", [], "text"),
        ("text", ["--log-format", "json"], "json"),  # the flag wins
        ("json", ["--log-format", "text"], "text"),
    ],
)
def test_serve_writes_the_format_the_flag_or_the_file_says(
    tmp_path: Path, taken_port: int, setting: str | None, flag: list[str], expected: str
) -> None:
    server = f"port: {taken_port}, shutdown_timeout: 5"
    if setting is not None:
        server += f", log_format: {setting}"
    text = config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9")
    config = tmp_path / "relay.yaml"
    config.write_text(text.replace("port: 0, shutdown_timeout: 5", server))
    result = run_relay(["serve", "--config", str(config), *flag], tmp_path, {})
    assert result.returncode == 1
    # The store's own process writes text lines of its own (relay.store); relay's are these.
    lines = [line for line in result.stderr.splitlines() if "relay.store" not in line]
    failure = (
        f"cannot listen on 127.0.0.1:{taken_port}: error while attempting to bind on address"
        f" ('127.0.0.1', {taken_port}): address already in use"
    )
    if expected == "json":
        entries = [json.loads(line) for line in lines]
        assert [e["message"] for e in entries if e["level"] == "ERROR"] == [failure]
        assert all(e["logger"] == "relay" for e in entries)
    else:
        errors = [line for line in lines if " ERROR " in line]
        assert len(errors) == 1 and errors[0].endswith(f" ERROR relay: {failure}")
        assert not any(line.startswith("{") for line in lines)


def test_an_invalid_config_is_told_in_json_before_any_config_is_read(tmp_path: Path) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text("server: {port: many}\n")
    result = run_relay(["serve", "--config", str(config)], tmp_path, {})
    assert result.returncode == 2
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(e["level"], e["message"]) for e in entries] == [
        (
            "ERROR",
            f"{config}:1:16: server.port: not a valid integer (write a whole number from 0 to"
            " 65535, such as 8080)",
        ),
        ("ERROR", f"not starting: fix the config (relay check --config {config})"),
    ]


# --------------------------------------------------------------------------- request ids


def rid(headers: dict[str, str]) -> str:
    """The X-Request-Id of an answer (header names are not case-sensitive)."""
    [value] = [v for k, v in headers.items() if k.lower() == "x-request-id"]
    return value


def test_a_sane_request_id_is_kept_and_any_other_is_replaced() -> None:
    assert request_id("abc-123_DEF.456") == "abc-123_DEF.456"
    assert request_id("a b") == "a b"
    assert request_id("x" * 128) == "x" * 128
    for wrong in (None, "", "x" * 129, "caf\u00e9", "a\tb", "a\x00b"):
        assert HEX32.match(request_id(wrong)), wrong
    assert request_id(None) != request_id(None)


class Lines(logging.Handler):
    """What relay logs, in both formats, with the context filter relay's own handler has."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFields())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(JsonFormatter().format(r)) for r in self.records]

    def text(self) -> list[str]:
        return [TextFormatter().format(r) for r in self.records]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    relay_logger = logging.getLogger("relay")
    level = relay_logger.level
    relay_logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)
    relay_logger.setLevel(level)


async def test_every_answer_carries_the_request_id(relay_factory: RelayFactory) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9")
    auth = {"Authorization": basic(WRITE_KEY)}
    given = {"X-Request-Id": "given-1"}
    answers = [
        await post(f"{url}/v1/track", track("u", "E", "m-1"), headers={**auth, **given}),
        await post(f"{url}/v1/track", track("u", "E", "m-2"), headers=given),  # 401
        await post(f"{url}/v1/track", None, raw=b"{", headers={**auth, **given}),  # 400
        await post(f"{url}/nowhere", {}, headers=given),  # 404
        await post(f"{url}/healthz", {}, headers=given),  # 405
    ]
    assert [(status, rid(headers)) for status, _, headers in answers] == [
        (200, "given-1"),
        (401, "given-1"),
        (400, "given-1"),
        (404, "given-1"),
        (405, "given-1"),
    ]
    status, _, headers = await post(f"{url}/v1/track", track("u", "E", "m-3"), headers=auth)
    assert status == 200 and HEX32.match(rid(headers))
    status, _, headers = await post(f"{url}/v1/track", {}, headers={"X-Request-Id": "é" * 3})
    assert status == 401 and HEX32.match(rid(headers))


async def test_a_cors_preflight_carries_the_request_id(relay_factory: RelayFactory) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9")
    async with (
        aiohttp.ClientSession() as session,
        session.options(
            f"{url}/v1/t", headers={"Origin": "https://shop.example", "X-Request-Id": "pre-1"}
        ) as resp,
    ):
        assert (resp.status, resp.headers["X-Request-Id"]) == (204, "pre-1")
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example"


async def test_refusals_carrying_secrets_log_their_request_id_and_no_secret(
    relay_factory: RelayFactory, lines: Lines
) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9")
    # A wrong write key in Basic auth.
    status, _, headers = await post(
        f"{url}/v1/track",
        track("u", "E", "m-1"),
        headers={"Authorization": basic(WRONG_WRITE_KEY), "X-Request-Id": "wrong-key"},
    )
    assert (status, rid(headers)) == (401, "wrong-key")
    # A Customer.io webhook whose signature is the signing key itself.
    raw = webhook("e-1")
    status, _, headers = await post_raw(
        url + HOOK,
        raw,
        {"X-CIO-Timestamp": "1704164645", "X-CIO-Signature": SIGNING_KEY, "X-Request-Id": "cio"},
    )
    assert (status, rid(headers)) == (401, "cio")
    # Segment's Webhooks destination, with the shared secret as the signature.
    status, _, headers = await post_raw(
        f"{url}/webhooks/segment",
        json.dumps(track("u", "E", "m-2")).encode(),
        {"X-Signature": SEGMENT_WEBHOOK_SECRET, "X-Request-Id": "seg"},
    )
    assert (status, rid(headers)) == (401, "seg")

    # (Besides the line saying where the admin endpoint listens, written before any request.)
    assert [
        (e["request_id"], e["level"], e["logger"], e["message"])
        for e in lines.json()
        if not e["message"].startswith("admin endpoint on ")
    ] == [
        (
            "wrong-key",
            "DEBUG",
            "relay",
            "refused POST /v1/track: 401 the write key is not one of sources.segment.write_keys",
        ),
        (
            "cio",
            "DEBUG",
            "relay",
            "refused POST /webhooks/customerio: 401 X-CIO-Signature is missing or does not"
            " match any signing key",
        ),
        (
            "seg",
            "DEBUG",
            "relay",
            "refused POST /webhooks/segment: 401 X-Signature is missing or does not match"
            " sources.segment.webhook_secret",
        ),
    ]
    text = lines.text()
    assert [
        line.rsplit(" request_id=", 1)[1] for line in text if "admin endpoint on " not in line
    ] == ["wrong-key", "cio", "seg"]
    for line in [*text, *(json.dumps(e) for e in lines.json())]:
        assert secrets_in(line) == [], masked(line)


async def test_lines_written_outside_requests_carry_no_request_id(
    relay_factory: RelayFactory, customerio: StandIn, lines: Lines
) -> None:
    customerio.respond(422, {"meta": {"error": "bad op"}})  # dead-lettered at once
    url, app = await relay_factory(cio_url=customerio.url)
    status, _, _ = await post(
        f"{url}/v1/track",
        track("u", "E", "m-1"),
        headers={"Authorization": basic(WRITE_KEY), "X-Request-Id": "accepted"},
    )
    assert status == 200
    await customerio.wait_for(1)
    dead = await wait_for_line(lines, "dead-lettered")
    assert "request_id" not in dead  # the delivery runs in its worker, not in the request


async def wait_for_line(lines: Lines, words: str, timeout: float = 10) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [e for e in lines.json() if words in e["message"]]
        if found:
            return found[0]
        assert asyncio.get_running_loop().time() < deadline, [e["message"] for e in lines.json()]
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- delivery ids


async def test_a_dead_letter_line_names_its_destination_and_delivery(
    relay_factory: RelayFactory, customerio: StandIn, lines: Lines
) -> None:
    customerio.respond(422, {"meta": {"error": "bad op"}})
    url, app = await relay_factory(cio_url=customerio.url)
    auth = {"Authorization": basic(WRITE_KEY)}
    assert (await post(f"{url}/v1/track", track("u", "E", "m-1"), headers=auth))[0] == 200
    dead = await wait_for_line(lines, "dead-lettered")
    [letter] = await relay_of(app).store.dead_letters()
    assert {k: v for k, v in dead.items() if k != "time"} == {
        "level": "WARNING",
        "logger": "relay.delivery",
        "message": "destination customerio.main: 1 deliveries dead-lettered (HTTP 422:"
        ' {"meta": {"error": "bad op"}})',
        "destination": "customerio.main",
        "delivery_ids": [letter.id],
    }


async def test_a_failing_batch_names_five_deliveries_and_how_many_more(
    relay_factory: RelayFactory, customerio: StandIn, lines: Lines
) -> None:
    customerio.respond(500, {"error": "down"})
    url, app = await relay_factory(cio_url=customerio.url)
    batch = {"batch": [track(f"u{i}", "E", f"m-{i}") for i in range(7)]}
    status, _, _ = await post(f"{url}/v1/batch", batch, headers={"Authorization": basic(WRITE_KEY)})
    assert status == 200
    retried = await wait_for_line(lines, "will be retried")
    failing = await wait_for_line(lines, "is failing")
    ids = sorted(await delivery_ids(app))
    assert len(ids) == 7
    for entry in (retried, failing):
        assert entry["destination"] == "customerio.main"
        assert (entry["delivery_ids"], entry["delivery_ids_more"]) == (ids[:5], 2)
    assert retried["message"] == (
        'destination customerio.main: 7 deliveries will be retried (HTTP 500: {"error": "down"})'
    )


async def delivery_ids(app: Any) -> list[int]:
    """The ids of every delivery in the store, read beside the running relay."""
    path = relay_of(app).config.storage.sqlite.path
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM queue")]


# --------------------------------------------------------------------------- no secret


def test_the_secret_watch_finds_a_secret_as_it_is_and_in_base64() -> None:
    watch = SecretWatch()
    watch.emit(record("key %s", (WRITE_KEY,)))
    watch.emit(record("header %s", (basic(WRITE_KEY),)))
    watch.emit(record("header %s", (basic("site-123", SECRETS["API_KEY"]),)))
    watch.emit(record("nothing secret here", ()))
    # Each line twice: once as JSON, once as text.
    assert len(watch.leaks) == 6
    assert all("<" in leak and WRITE_KEY not in leak for leak in watch.leaks)
    assert json.loads(watch.leaks[0])["message"] == "key <WRITE_KEY>"
    assert secrets_in(basic("x", SECRETS["API_KEY"])) == ["API_KEY"]
