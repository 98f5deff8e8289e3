"""`relay routes test`: routes matched and the exact outgoing requests, offline.

The golden case runs `python -m relay routes test` in tests/golden/routes_test on
messages.jsonl with a fixed `--now`; the output must equal expected.json exactly (relay's
version, which the Customer.io → Segment mapping writes into `context.library` and every
request carries in its User-Agent, stands as {VERSION}). Rewrite it after an intended change with
`RELAY_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_routes_test.py` and review the diff.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay import USER_AGENT, __version__
from relay.admin.commands import messages_of
from relay.config import check_text
from relay.dryrun import dry_run, dry_run_async, looks_like_customerio
from tests.conftest import (
    API_KEY,
    SEGMENT_OUT_KEY,
    SITE_ID,
    WRITE_KEY,
    RelayFactory,
    StandIn,
    basic,
    start_stand_in,
)
from tests.helpers import ROOT, UPDATE, post, post_webhook, run_relay, track
from tests.test_customerio_webhooks import EACH_CHANNEL

GOLDEN = Path(__file__).resolve().parent / "golden" / "routes_test"
NOW = "1714560000"  # 2024-05-01T10:40:00Z
VERSION_IN_OUTPUT = f'"version": "{__version__}"'
USER_AGENT_IN_OUTPUT = f'"User-Agent": "{USER_AGENT}"'
CIO_HEADERS = {
    "Authorization": "Basic <site_id:api_key of customerio.main>",
    "Content-Type": "application/json",
    "User-Agent": USER_AGENT,
    "Accept": "application/json",
}
SEGMENT_HEADERS = {
    "Authorization": "Basic <write_key of segment.warehouse>",
    "Content-Type": "application/json",
    "User-Agent": USER_AGENT,
}


def run_routes_test(*extra: str, cwd: Path = GOLDEN) -> tuple[int, str, str]:
    result = run_relay(
        ["routes", "test", "--config", "config.yaml", "messages.jsonl", "--now", NOW, *extra],
        cwd,
        {},
    )
    return result.returncode, result.stdout, result.stderr


def test_output_is_exactly_the_golden_one() -> None:
    code, out, err = run_routes_test()
    assert (code, err) == (0, "")
    out = out.replace(VERSION_IN_OUTPUT, '"version": "{VERSION}"').replace(
        USER_AGENT_IN_OUTPUT, '"User-Agent": "relay/{VERSION}"'
    )
    if UPDATE:
        (GOLDEN / "expected.json").write_text(out)
    assert out == (GOLDEN / "expected.json").read_text()
    assert not (GOLDEN / "var").exists(), "routes test must not open the store"


def test_golden_output_says_what_each_message_does() -> None:
    entries = json.loads((GOLDEN / "expected.json").read_text())
    summary = [
        (
            e["index"],
            e["kind"],
            e["source"],
            e.get("routes"),
            [d["destination"] for d in e.get("deliveries", [])],
            e.get("rejected"),
        )
        for e in entries
    ]
    assert summary == [
        (0, "segment", "web", ["product-events"], ["customerio.main", "segment.warehouse"], None),
        (1, "segment", "web", ["product-events"], ["customerio.main", "segment.warehouse"], None),
        (2, "segment", "web", ["product-events"], ["customerio.main", "segment.warehouse"], None),
        (3, "customerio", "marketing", ["email-engagement"], ["segment.warehouse"], None),
        (4, "segment", "web", [], [], None),
        (5, "segment", "web", None, [], "a track call needs a non-empty 'event'"),
        (6, "segment", "web", ["product-events"], ["segment.warehouse"], None),
    ]
    track_to_cio = entries[0]["deliveries"][0]["requests"]
    assert track_to_cio == [
        {
            "method": "POST",
            "url": "https://track.customer.io/api/v2/batch",
            "path": "/api/v2/batch",
            "headers": {**CIO_HEADERS, "User-Agent": "relay/{VERSION}"},
            "body": {
                "batch": [
                    {
                        "type": "person",
                        "identifiers": {"id": "u1"},
                        "action": "event",
                        "name": "Order Completed",
                        "id": "01HWSSHG80MHGV8WPB86MYRFFE",
                        "timestamp": 1714557600,
                        "attributes": {"total": 12.5},  # internal_note dropped by the route
                    }
                ]
            },
        }
    ]
    track_to_segment = entries[0]["deliveries"][1]["requests"][0]
    assert track_to_segment["url"] == "https://api.segment.io/v1/batch"
    assert track_to_segment["headers"]["Authorization"] == SEGMENT_HEADERS["Authorization"]
    assert track_to_segment["body"]["sentAt"] == "2024-05-01T10:40:00.000Z"
    clicked = entries[3]["deliveries"][0]["requests"][0]["body"]["batch"][0]
    assert clicked["event"] == "Email Clicked"
    assert clicked["messageId"] == "cio-01HX0000000000000000000001"
    assert entries[4]["note"].startswith("matches no route")
    assert entries[6]["suppressed"] == [
        {
            "destination": "customerio.main",
            "route": "product-events",
            "reason": "the message's integrations turn Customer.io off",
        }
    ]


def test_source_option_picks_the_source_of_its_direction() -> None:
    code, out, err = run_routes_test("--source", "backend")
    assert (code, err) == (0, "")
    sources = [(e["kind"], e["source"]) for e in json.loads(out)]
    assert sources[:4] == [
        ("segment", "backend"),
        ("segment", "backend"),
        ("segment", "backend"),
        ("customerio", "marketing"),
    ]


def test_unknown_source_is_a_usage_error() -> None:
    code, out, err = run_routes_test("--source", "mobile")
    assert (code, out) == (2, "")
    assert err == (
        'relay routes test: --source: no source is named "mobile"'
        " (configured: web, backend, webhook, marketing)\n"
    )


def test_a_config_with_problems_prints_them_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("routes:\n  - {from: segment, to: [customerio.x]}\n")
    (tmp_path / "messages.jsonl").write_text("{}\n")
    code, out, err = run_routes_test(cwd=tmp_path)
    assert (code, out) == (1, "")
    assert err == (
        'config.yaml:2:26: routes.0.to.0: unknown destination "customerio.x"'
        " (configure it under destinations.customerio.x)\n"
        "config.yaml: 1 problem; the config is not valid\n"
    )


def test_a_missing_messages_file_is_reported(tmp_path: Path) -> None:
    result = run_relay(
        ["routes", "test", "--config", str(GOLDEN / "config.yaml"), "nope.jsonl"], tmp_path, {}
    )
    assert result.returncode == 1
    assert result.stderr == (
        "relay routes test: nope.jsonl: cannot read it: No such file or directory\n"
    )


# --------------------------------------------------------------------------- in process

CONFIG = """
sources:
  segment: {write_keys: {web: wk-web}}
destinations:
  customerio:
    classic: {site_id: site-1, api_key: kkkkkkkkkkkkkkkkkkkk, api: v1}
routes:
  - {name: all, from: segment, to: [customerio.classic]}
"""


def run_in_process(messages: list[Any], config: str = CONFIG) -> list[dict[str, Any]]:
    result = check_text(config, "relay.yaml", {})
    assert result.problems == []
    assert result.config is not None and result.routes is not None
    return dry_run(result.config, result.routes, messages, 1714560000.0)


def test_customerio_v1_shows_the_classic_requests() -> None:
    out = run_in_process(
        [{"type": "identify", "userId": "u 1", "messageId": "m", "traits": {"plan": "pro"}}]
    )
    assert out[0]["deliveries"][0]["requests"] == [
        {
            "method": "PUT",
            "url": "https://track.customer.io/api/v1/customers/u%201",
            "path": "/api/v1/customers/u%201",
            "headers": {
                **CIO_HEADERS,
                "Authorization": "Basic <site_id:api_key of customerio.classic>",
            },
            "body": {"plan": "pro"},
        }
    ]


def test_an_alias_of_a_person_to_itself_shows_nothing_sent_and_why() -> None:
    out = run_in_process([{"type": "alias", "userId": "u1", "previousId": "u1", "messageId": "m"}])
    assert out[0]["deliveries"] == [
        {
            "destination": "customerio.classic",
            "route": "all",
            "skipped": "alias userId and previousId name the same person: nothing to merge",
            "requests": [],
        }
    ]


def test_a_message_without_message_id_gets_a_stable_stand_in() -> None:
    out = run_in_process([{"type": "track", "userId": "u1", "event": "E"}] * 2)
    ids = [e["deliveries"][0]["requests"][0]["body"]["id"] for e in out]
    assert ids[0] != ids[1]
    assert run_in_process([{"type": "track", "userId": "u1", "event": "E"}] * 2) == out


def test_without_a_customerio_source_a_webhook_would_be_refused() -> None:
    webhook = {"event_id": "e1", "object_type": "email", "metric": "opened", "data": {}}
    assert run_in_process([webhook]) == [
        {
            "index": 0,
            "kind": "customerio",
            "source": None,
            "rejected": "relay would refuse it: no Customer.io signing key is configured"
            " (sources.customerio.signing_keys)",
        }
    ]


V2_CONFIG = CONFIG.replace("api: v1", "api: v2")
DELIVERY_EVENT = {
    "type": "track",
    "anonymousId": "device-1",
    "event": "Report Delivery Event",
    "messageId": "m",
    "timestamp": "2024-05-01T10:00:00Z",
    "properties": {"deliveryId": "dlv-1", "metric": "opened", "recipient": "tok-1"},
}


@pytest.mark.parametrize("config", [CONFIG, V2_CONFIG], ids=["v1", "v2"])
def test_a_delivery_metric_shows_its_own_request_to_the_metrics_endpoint(config: str) -> None:
    [entry] = run_in_process([DELIVERY_EVENT], config)
    assert entry["deliveries"] == [
        {
            "destination": "customerio.classic",
            "route": "all",
            "requests": [
                {
                    "method": "POST",
                    "url": "https://track.customer.io/api/v1/metrics",
                    "path": "/api/v1/metrics",
                    "headers": {
                        **CIO_HEADERS,
                        "Authorization": "Basic <site_id:api_key of customerio.classic>",
                    },
                    "body": {
                        "delivery_id": "dlv-1",
                        "metric": "opened",
                        "timestamp": 1714557600,
                        "recipient": "tok-1",
                    },
                }
            ],
        }
    ]


def test_a_delivery_event_with_an_unknown_metric_shows_why_it_would_be_dead_lettered() -> None:
    message = {**DELIVERY_EVENT, "properties": {"deliveryId": "dlv-1", "metric": "read"}}
    [entry] = run_in_process([message], V2_CONFIG)
    assert entry["deliveries"] == [
        {
            "destination": "customerio.classic",
            "route": "all",
            "rejected": "Report Delivery Event: properties.metric must be one of delivered,"
            " opened, clicked, converted, bounced, spammed, dropped, deferred; got 'read'",
        }
    ]


def test_a_content_event_shows_the_person_action_it_names() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Report Content Event",
        "messageId": "m",
        "timestamp": "2024-05-01T10:00:00Z",
        "properties": {"actionType": "clicked_content", "contentId": 3},
    }
    [entry] = run_in_process([message], V2_CONFIG)
    [request] = entry["deliveries"][0]["requests"]
    assert (request["method"], request["path"]) == ("POST", "/api/v2/batch")
    assert request["body"] == {
        "batch": [
            {
                "type": "person",
                "identifiers": {"id": "u1"},
                "action": "clicked_content",
                "name": "clicked_content",
                "timestamp": 1714557600,
                "attributes": {"contentId": 3},
            }
        ]
    }


def test_a_destination_with_phone_identifiers_and_update_only_shows_them() -> None:
    config = CONFIG.replace(
        "api: v1", "api: v1, identifiers: [id, email, phone], update_only: true"
    )
    message = {
        "type": "identify",
        "userId": "+14155552671",
        "messageId": "m",
        "timestamp": "2024-05-01T10:00:00Z",
        "traits": {"cio_subscription_preferences.topics.topic_7": False},
    }
    [entry] = run_in_process([message], config)
    [request] = entry["deliveries"][0]["requests"]
    assert (request["method"], request["path"]) == ("POST", "/api/v2/entity")
    assert request["body"] == {
        "type": "person",
        "identifiers": {"phone": "+14155552671"},
        "action": "identify",
        "timestamp": 1714557600,
        "attributes": {"cio_subscription_preferences.topics.topic_7": False, "_update": True},
    }


WEBHOOK_CONFIG = """
sources:
  segment: {write_keys: {web: wk-web-secret}}
  customerio: {signing_keys: {marketing: signing-key-secret}}
destinations:
  customerio:
    main: {site_id: site-secret, api_key: api-key-secret-xxxxx}
  segment:
    warehouse: {write_key: wk-warehouse-secret}
routes:
  - {name: all, from: segment, to: [customerio.main, segment.warehouse]}
  - {name: activity, from: customerio, to: [segment.warehouse]}
"""

SHAPE_CASES: list[tuple[str, Any, bool]] = [
    # (rule, message, taken for a Customer.io webhook)
    ("webhook", {"event_id": "e1", "object_type": "email", "metric": "opened"}, True),
    ("webhook_without_event_id", {"object_type": "email", "metric": "opened", "data": {}}, True),
    ("metric_alone", {"metric": "sent"}, True),
    ("legacy_webhook_without_event_id", {"event_type": "email_opened", "data": {}}, True),
    ("event_id_alone", {"event_id": "e1"}, True),
    ("data_with_delivery_id", {"data": {"delivery_id": "d1", "customer_id": "42"}}, True),
    ("segment_message", {"type": "track", "event": "E", "userId": "u1"}, False),
    ("segment_message_without_type", {"event": "E", "userId": "u1"}, False),
    ("segment_message_with_data_property", {"type": "track", "data": {"customer_id": 1}}, False),
    ("data_without_webhook_fields", {"data": {"x": 1}}, False),
    ("not_an_object", ["event_id"], False),
]


@pytest.mark.parametrize(
    ("message", "expected"),
    [pytest.param(m, e, id=rule) for rule, m, e in SHAPE_CASES],
)
def test_webhooks_are_told_from_segment_messages_by_their_shape(
    message: Any, expected: bool
) -> None:
    assert looks_like_customerio(message) is expected


def test_a_webhook_without_event_id_is_refused_for_that_reason() -> None:
    webhook = {"object_type": "email", "metric": "opened", "data": {"customer_id": "42"}}
    assert run_in_process([webhook], WEBHOOK_CONFIG) == [
        {
            "index": 0,
            "kind": "customerio",
            "source": "marketing",
            "rejected": "webhook has no event_id (a non-empty string)",
        }
    ]


def test_requests_show_the_sinks_headers_with_the_credentials_described() -> None:
    webhook = {
        "event_id": "e1",
        "object_type": "email",
        "metric": "opened",
        "data": {"customer_id": "42"},
    }
    out = run_in_process([{"type": "identify", "userId": "u1"}, webhook], WEBHOOK_CONFIG)
    headers = [
        (d["destination"], r["headers"])
        for entry in out
        for d in entry["deliveries"]
        for r in d["requests"]
    ]
    assert headers == [
        ("customerio.main", CIO_HEADERS),
        ("segment.warehouse", SEGMENT_HEADERS),
        ("segment.warehouse", SEGMENT_HEADERS),
    ]
    printed = json.dumps(out)
    assert "secret" not in printed
    for credentials in (b"site-secret:api-key-secret-xxxxx", b"wk-warehouse-secret:"):
        assert base64.b64encode(credentials).decode() not in printed


def test_messages_may_be_an_object_an_array_json_lines_or_a_batch(tmp_path: Path) -> None:
    one = {"type": "track", "userId": "u1", "event": "E"}
    two = {"type": "identify", "userId": "u1"}
    forms = {
        "object.json": json.dumps(one),
        "array.json": json.dumps([one, two]),
        "lines.jsonl": json.dumps(one) + "\n\n" + json.dumps(two) + "\n",
        "batch.json": json.dumps({"batch": [one, two], "context": {"ip": "1.2.3.4"}}),
    }
    forms["pretty.json"] = json.dumps([one, two], indent=2)
    read = {}
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        problems: list[str] = []
        read[name] = [m.value for m in messages_of(str(tmp_path / name), problems)]
        assert problems == []
    (tmp_path / "lines.jsonl.gz").write_bytes(gzip.compress(forms["lines.jsonl"].encode()))
    assert [m.value for m in messages_of(str(tmp_path / "lines.jsonl.gz"), [])] == [one, two]
    assert read["pretty.json"] == [one, two]
    assert read["object.json"] == [one]
    assert read["array.json"] == read["lines.jsonl"] == [one, two]
    assert read["batch.json"] == [
        {**one, "context": {"ip": "1.2.3.4"}},
        {**two, "context": {"ip": "1.2.3.4"}},
    ]


def test_a_line_that_is_not_json_is_reported_with_its_place_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lines.jsonl"
    path.write_text('\n{"type": "track", "event": "A"}\n{"type": \n{"type": "page"}\n')
    problems: list[str] = []
    read = [(m.line, m.value["type"]) for m in messages_of(str(path), problems)]
    assert read == [(2, "track"), (4, "page")]
    [problem] = problems
    assert problem.startswith(f"{path}:3: not valid JSON: ")
    assert [p for p in [str(tmp_path / "absent.jsonl")] if list(messages_of(p, problems))] == []
    assert problems[1] == f"{tmp_path / 'absent.jsonl'}: cannot read it: No such file or directory"


def test_runs_from_the_repository_root_too() -> None:
    result = run_relay(
        [
            "routes",
            "test",
            "--config",
            "tests/golden/routes_test/config.yaml",
            "tests/golden/routes_test/messages.jsonl",
        ],
        ROOT,
        {},
    )
    assert result.returncode == 0 and result.stderr == ""
    assert len(json.loads(result.stdout)) == 7


async def test_an_unrouted_message_is_accepted_and_counted_as_routes_test_says(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    routes = (
        "\n  - {name: orders, from: segment, match: {event: 'Order *'}, to: [customerio.main]}\n"
    )
    url, _ = await relay_factory(cio_url=customerio.url, routes=routes)
    for n in (0, 1, 1):  # the repeat of m-ping-1 is a duplicate, not a second unrouted event
        status, body, _ = await post(
            f"{url}/v1/track",
            track("u1", "Test Ping", f"m-ping-{n}"),
            headers={"Authorization": basic(WRITE_KEY)},
        )
        assert (status, body) == (200, {"success": True})
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        metrics = await resp.text()
    assert 'relay_unrouted_events_total{kind="segment",source="web"} 2.0' in metrics
    assert 'relay_received_events_total{kind="segment",outcome="queued",source="web"} 2.0' in (
        metrics
    )
    await asyncio.sleep(0.3)
    assert customerio.requests == []


def test_text_that_is_not_unicode_is_printed_as_its_escape(tmp_path: Path) -> None:
    # JSON allows a lone surrogate as an escape; relay sends it on as that escape, and shows it.
    messages = tmp_path / "odd.json"
    messages.write_text(
        '{"type":"track","userId":"u1","event":"E","messageId":"m","properties":{"x":"\\ud800"}}'
    )
    result = run_relay(
        ["routes", "test", "--config", str(GOLDEN / "config.yaml"), str(messages), "--now", NOW],
        tmp_path,
        {},
    )
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)
    [request] = entry["deliveries"][0]["requests"]
    assert request["body"]["batch"][0]["attributes"] == {"x": "\ud800"}


# --------------------------------------------------------------------------- the same as sent

SAME_AS_SENT_MESSAGES: list[dict[str, Any]] = [
    {
        "type": "identify",
        "userId": "ada+x@example.com",
        "traits": {"email": "ada+x@example.com", "plan": "pro", "unsubscribed": False},
        "messageId": "same-1",
        "timestamp": "2024-05-01T10:00:00Z",
    },
    {
        "type": "track",
        "userId": "a;b&c=d:e,f$g",
        "event": "Order Completed",
        "properties": {"revenue": 12.5, "items": [{"sku": "x"}]},
        "messageId": "same-2",
        "timestamp": "2024-05-01T10:00:01Z",
    },
    {
        "type": "page",
        "anonymousId": "anon 7",
        "name": "Pricing",
        "properties": {"url": "https://example.com/pricing"},
        "messageId": "same-3",
        "timestamp": "2024-05-01T10:00:02Z",
    },
    {
        "type": "group",
        "userId": "u1",
        "groupId": "acme/eu",
        "traits": {"name": "Acme"},
        "messageId": "same-4",
        "timestamp": "2024-05-01T10:00:03Z",
    },
    {
        "type": "alias",
        "userId": "u1",
        "previousId": "anon 7",
        "messageId": "same-5",
        "timestamp": "2024-05-01T10:00:04Z",
    },
]
SAME_AS_SENT_WEBHOOK: dict[str, Any] = {
    "event_id": "01HX0SAME00000000000000001",
    "object_type": "email",
    "metric": "clicked",
    "timestamp": 1714557600,
    "data": {
        "customer_id": "u1",
        "email_address": "ada@example.com",
        "delivery_id": "d-1",
        "href": "https://example.com/start",
        "link_id": 7,
    },
}


def same_as_sent_config(db: Path, v2_url: str, v1_url: str, segment_url: str) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0, shutdown_timeout: 5}}
storage:
  sqlite: {{path: "{db}"}}
sources:
  segment:
    write_keys: {{web: "{WRITE_KEY}"}}
  customerio:
    signing_keys: {{marketing: "signing-key"}}
destinations:
  customerio:
    main: {{site_id: "{SITE_ID}", api_key: "{API_KEY}", base_url: "{v2_url}", timeout: 2}}
    classic:
      site_id: "{SITE_ID}"
      api_key: "{API_KEY}"
      base_url: "{v1_url}"
      api: v1
      timeout: 2
  segment:
    main: {{write_key: "{SEGMENT_OUT_KEY}", base_url: "{segment_url}", timeout: 2}}
routes:
  - name: everything
    from: segment
    set_properties: {{via: relay}}
    to: [customerio.main, customerio.classic]
  - name: activity
    from: customerio
    rename_events: {{"Email Link Clicked": "Clicked"}}
    to: [segment.main]
"""


async def test_routes_test_shows_exactly_what_a_running_relay_sends(
    tmp_path: Path, relay_factory: RelayFactory, customerio: StandIn, segment: StandIn
) -> None:
    classic, classic_server = await start_stand_in()
    try:
        text = same_as_sent_config(tmp_path / "relay.db", customerio.url, classic.url, segment.url)
        url, _ = await relay_factory(text)
        for message in SAME_AS_SENT_MESSAGES:
            status, body, _ = await post(
                f"{url}/v1/{message['type']}", message, headers={"Authorization": basic(WRITE_KEY)}
            )
            assert status == 200, body
        status, _ = await post_webhook(url, json.dumps(SAME_AS_SENT_WEBHOOK).encode())
        assert status == 200
        shown = await dry(text)
        v1_calls = sum(
            len(d["requests"])
            for entry in shown
            for d in entry.get("deliveries", [])
            if d["destination"] == "customerio.classic"
        )
        await customerio.wait_for(1)
        await classic.wait_for(v1_calls)
        await segment.wait_for(1)
        await asyncio.sleep(0.3)  # nothing more comes

        by_destination: dict[str, list[dict[str, Any]]] = {}
        for entry in shown:
            for delivery in entry["deliveries"]:
                by_destination.setdefault(delivery["destination"], []).extend(delivery["requests"])

        # v1: every request, method and path bytes and body (lanes may interleave people).
        v1 = by_destination["customerio.classic"]
        assert in_any_order([(r["method"], r["path"], r["body"]) for r in v1]) == in_any_order(
            [(r.method, r.raw_path, r.body) for r in classic.requests]
        )
        assert any("%2Bx%40example.com" in r.raw_path for r in classic.requests)
        # v2: the same ops (relay batched the running relay's into fewer requests).
        assert in_any_order(
            [op for r in by_destination["customerio.main"] for op in r["body"]["batch"]]
        ) == in_any_order([op for r in customerio.requests for op in r.body["batch"]])
        # Segment: the same messages; only sentAt, the moment of sending, differs.
        assert [m for r in by_destination["segment.main"] for m in r["body"]["batch"]] == [
            m for r in segment.requests for m in r.body["batch"]
        ]
        # And every header shown is on the wire as shown, credentials aside (the HTTP client
        # adds its own: Host, Content-Length, Accept-Encoding, and Accept where none is set).
        for name, stand_in in (
            ("customerio.main", customerio),
            ("customerio.classic", classic),
            ("segment.main", segment),
        ):
            sent = stand_in.requests[0].headers
            shown_headers = by_destination[name][0]["headers"]
            assert set(shown_headers) == {
                "Content-Type",
                "User-Agent",
                "Accept",
                "Authorization",
            } - (set() if name.startswith("customerio.") else {"Accept"})
            for header, value in shown_headers.items():
                if header == "Authorization":
                    assert sent[header].startswith("Basic ") and value.startswith("Basic <")
                else:
                    assert sent[header] == value, (name, header)
    finally:
        await classic_server.close()


def in_any_order(items: list[Any]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True) for item in items)


async def dry(text: str) -> list[dict[str, Any]]:
    result = check_text(text, "relay.yaml", {})
    assert result.problems == []
    assert result.config is not None and result.routes is not None
    messages = [*SAME_AS_SENT_MESSAGES, SAME_AS_SENT_WEBHOOK]
    return await dry_run_async(result.config, result.routes, messages, time.time())


def test_a_webhook_of_each_channel_shows_the_track_a_running_relay_sends() -> None:
    """`relay routes test` shows, for one webhook of each channel, the very track call the
    end-to-end test (tests/test_customerio_webhooks.py) reads at the Segment stand-in."""
    out = run_in_process([json.loads(raw) for raw, _ in EACH_CHANNEL], WEBHOOK_CONFIG)
    shown = [
        message
        for entry in out
        for delivery in entry["deliveries"]
        for request in delivery["requests"]
        for message in request["body"]["batch"]
    ]
    assert shown == [track for _, track in EACH_CHANNEL]
