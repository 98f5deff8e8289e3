"""Ids that are not Unicode (a lone surrogate, from a `\\ud800` escape or the bytes ED A0 80)
are refused at the door and never make a store write fail: a single call gets a 400 naming
the field, a batch lists the item in `rejected` and queues the rest, and a signed Customer.io
webhook is answered 200 and kept as a dead letter with the reason. Elsewhere in a message
(properties, traits) such text is kept and sent as its escape, as JSON allows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.codec import holds_lone_surrogate
from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, relay_of
from tests.helpers import post, post_webhook, sent_ops

AUTH = {"Authorization": basic(WRITE_KEY), "Content-Type": "application/json"}
ESCAPE = b"\\ud800"  # as JSON text: a backslash, then ud800
RAW = b"\xed\xa0\x80"  # the same surrogate as (invalid) UTF-8 bytes


def _track(field: bytes, value: bytes) -> bytes:
    body = b'{"type":"track","event":"E","messageId":"m-bad","' + field + b'":"' + value + b'"'
    if field != b"userId":
        body += b',"userId":"u-bad"'
    return body + b"}"


@pytest.mark.parametrize("value", [ESCAPE, RAW, b"ok" + ESCAPE + b"ok"])
@pytest.mark.parametrize("field", [b"userId", b"anonymousId"])
async def test_a_single_call_with_a_lone_surrogate_gets_a_400_naming_the_field(
    relay_factory: RelayFactory, customerio: StandIn, field: bytes, value: bytes
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    for _ in range(2):  # the same answer every time: nothing in the store is harmed
        status, body, _ = await post(
            f"{url}/v1/track", None, raw=_track(field, value), headers=AUTH
        )
        assert status == 400, body
        assert f"field '{field.decode()}' is not valid Unicode" in body["message"]
    status, _, _ = await post(
        f"{url}/v1/track",
        None,
        raw=b'{"userId":"u1","event":"Good","messageId":"m-good"}',
        headers=AUTH,
    )
    assert status == 200
    await customerio.wait_for(1)
    assert [op["name"] for op in sent_ops(customerio)] == ["Good"]
    assert await relay_of(app).store.write_problem() is None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("group", b'{"userId":"u","groupId":"g\\udfff"}'),
        ("alias", b'{"userId":"u","previousId":"\\ud800x"}'),
        ("identify", b'{"userId":"u","anonymousId":"\xed\xbf\xbf"}'),
    ],
)
async def test_every_id_is_checked(
    relay_factory: RelayFactory, customerio: StandIn, path: str, body: bytes
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, answer, _ = await post(f"{url}/v1/{path}", None, raw=body, headers=AUTH)
    assert status == 400
    assert answer["message"].startswith("field '") and " is not valid Unicode" in answer["message"]


@pytest.mark.parametrize("value", [ESCAPE, RAW])
async def test_a_batch_lists_the_item_as_rejected_and_queues_the_others(
    relay_factory: RelayFactory, customerio: StandIn, value: bytes
) -> None:
    url, app = await relay_factory(cio_url=customerio.url)
    good = b'{"type":"track","userId":"u1","event":"Kept","messageId":"m-1"}'
    bad = b'{"type":"track","userId":"' + value + b'","event":"Lost","messageId":"m-2"}'
    raw = b'{"batch":[' + good + b"," + bad + b"]}"
    status, body, _ = await post(f"{url}/v1/batch", None, raw=raw, headers=AUTH)
    assert status == 200, body
    [rejected] = body["rejected"]
    assert rejected["index"] == 1
    assert "field 'userId' is not valid Unicode" in rejected["reason"]
    await customerio.wait_for(1)
    assert [op["name"] for op in sent_ops(customerio)] == ["Kept"]
    [dead] = [d for d in await relay_of(app).store.dead_letters() if d.destination is None]
    assert dead.reason == rejected["reason"]
    assert dead.message["event"] == "Lost"  # kept as it came, the surrogate as its escape
    assert dead.message["userId"] == "\ud800"


@pytest.mark.parametrize(
    "data",
    [
        b'{"customer_id":"' + ESCAPE + b'"}',
        b'{"customer_id":"42","identifiers":{"id":"' + RAW + b'"}}',
    ],
)
async def test_a_signed_webhook_is_answered_200_and_kept_as_a_dead_letter(
    relay_factory: RelayFactory, customerio: StandIn, segment: StandIn, data: bytes
) -> None:
    url, app = await relay_factory(cio_url=customerio.url, segment_url=segment.url)
    raw = (
        b'{"event_id":"01E4C4CT6YDC7Y5M7FE1GWWPQJ","object_type":"email","metric":"opened",'
        b'"timestamp":1704164645,"data":' + data + b"}"
    )
    for _ in range(2):  # Customer.io's retry is stored once
        status, body = await post_webhook(url, raw)
        assert (status, body) == (200, {"success": True})
    [dead] = await relay_of(app).store.dead_letters()
    assert dead.destination is None and dead.kind == "customerio"
    where = "data.customer_id" if b'customer_id":"\\' in data else "data.identifiers.id"
    assert dead.reason.startswith(f"the webhook's {where} is not valid Unicode")
    # The feed goes on: the next genuine webhook is delivered.
    good = raw.replace(b"01E4C4CT6YDC7Y5M7FE1GWWPQJ", b"01E4C4CT6YDC7Y5M7FE1GWWPQK")
    good = good.replace(data, b'{"customer_id":"42"}')
    assert (await post_webhook(url, good))[0] == 200
    await segment.wait_for(1)
    assert segment.requests[0].body["batch"][0]["userId"] == "42"


async def test_a_write_key_that_is_not_unicode_is_just_a_wrong_key(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    raw = b'{"userId":"u","event":"E","writeKey":"' + ESCAPE + b'"}'
    status, body, _ = await post(
        f"{url}/v1/t", None, raw=raw, headers={"Content-Type": "text/plain"}
    )
    assert (status, body["code"]) == (401, "unauthorized")


async def test_the_dead_letter_list_prints_a_kept_surrogate_as_its_escape(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Any
) -> None:
    from tests.helpers import run_relay

    url, app = await relay_factory(cio_url=customerio.url)
    raw = b'{"batch":[{"type":"track","userId":"' + ESCAPE + b'","event":"E","messageId":"m"}]}'
    status, _, _ = await post(f"{url}/v1/batch", None, raw=raw, headers=AUTH)
    assert status == 200
    config = relay_of(app).config
    db = config.storage.sqlite.path
    (tmp_path / "relay.yaml").write_text(f'storage: {{sqlite: {{path: "{db}"}}}}\n')
    result = await asyncio.to_thread(
        run_relay, ["dlq", "list", "--config", "relay.yaml"], tmp_path, {}
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[0]
    assert '"userId": "\\ud800"' in line


@given(st.text(alphabet=st.characters(codec="utf-16"), max_size=8))
def test_a_lone_surrogate_is_told_apart_from_any_other_text(text: str) -> None:
    lone = any(0xD800 <= ord(c) <= 0xDFFF for c in text)  # Python strings never pair them
    assert holds_lone_surrogate(text) is lone
