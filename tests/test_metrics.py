"""GET /metrics: every answer counted by route and status, the build, the process, the queue
from the start, timeouts timed, units in every name, and no `_created` series."""

from __future__ import annotations

import asyncio
import platform
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__
from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, config_yaml, relay_of
from tests.helpers import SIGNING_KEY, post, post_raw, sign, track, webhook

AUTH = {"Authorization": basic(WRITE_KEY)}


async def scrape(url: str) -> dict[str, Any]:
    """Every family of /metrics by name (counters without their `_total`)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels[label] for label in labels): s.value
        for s in family.samples
        if s.name == name
    }


async def request(method: str, url: str, **kwargs: Any) -> int:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as r:
        await r.read()
        return r.status


async def test_every_answer_is_counted_by_its_route_and_status(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Any
) -> None:
    customerio.default = (503, {}, {})  # nothing is delivered: the queue fills
    text = config_yaml(tmp_path / "relay.db", customerio.url).replace(
        'sqlite: {path: "', 'sqlite: {max_pending: 1, path: "'
    )
    url, app = await relay_factory(text)
    assert (await post(f"{url}/v1/track", track("u", "E", "m-1"), headers=AUTH))[0] == 200
    assert (await post(f"{url}/v1/track", track("u", "E", "m-2"), headers=AUTH))[0] == 503
    assert (await post(f"{url}/v1/track", track("u", "E", "m-3")))[0] == 401
    big = track("u", "E", "m-4", blob="x" * 40_000)
    assert (await post(f"{url}/v1/track", big, headers=AUTH))[0] == 413
    assert (await post(f"{url}/v1/batch", None, raw=b"{", headers=AUTH))[0] == 400
    raw = webhook("e-1")
    headers = {"X-CIO-Timestamp": "1704164645", "X-CIO-Signature": sign("wrong", "1", raw)}
    assert (await post_raw(f"{url}/webhooks/customerio/marketing", raw, headers))[0] == 401
    assert (await post_raw(f"{url}/webhooks/customerio/nobody", raw, headers))[0] == 401
    # A 404's path is the client's to choose: it is never a label.
    assert await request("GET", f"{url}/v1/unknown/{SIGNING_KEY}") == 404
    assert await request("GET", f"{url}/nowhere/at/all") == 404
    assert await request("GET", f"{url}/v1/track") == 405
    assert await request("GET", f"{url}/webhooks/customerio/marketing") == 405
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    assert await request("OPTIONS", f"{url}/v1/t", headers=preflight) == 204
    assert await request("GET", f"{url}/healthz") == 200
    assert await request("GET", f"{url}/metrics") == 200

    families = await scrape(url)
    counted = samples(
        families["relay_http_requests"], "relay_http_requests_total", "path", "status"
    )
    assert counted == {
        ("/v1/track", "200"): 1,
        ("/v1/track", "503"): 1,
        ("/v1/track", "401"): 1,
        ("/v1/track", "413"): 1,
        ("/v1/batch", "400"): 1,
        ("/webhooks/customerio/{source}", "401"): 2,
        ("unmatched", "404"): 2,
        ("/v1/track", "405"): 1,  # a known path asked with the wrong method
        ("unmatched", "405"): 1,  # a dynamic route is not looked up again
        ("/v1/t", "204"): 1,
        ("/healthz", "200"): 1,
        ("/metrics", "200"): 1,  # this scrape is counted once it is answered
    }
    durations = families["relay_http_request_duration_seconds"]
    by_path: dict[str, float] = {}
    for (path, _), count in counted.items():
        by_path[path] = by_path.get(path, 0) + count
    assert samples(durations, "relay_http_request_duration_seconds_count", "path") == {
        (path,): count for path, count in by_path.items()
    }
    assert relay_of(app).accepting


async def test_the_build_the_process_and_the_platform_are_exposed(
    relay_factory: RelayFactory,
) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9")
    families = await scrape(url)
    assert samples(families["relay_build_info"], "relay_build_info", "version", "python") == {
        (__version__, platform.python_version()): 1.0
    }
    for name in (
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert families[name].samples, name
    [info] = families["python_info"].samples
    assert info.labels["version"] == platform.python_version()


async def test_no_counter_or_histogram_has_a_created_series(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    assert (await post(f"{url}/v1/track", track("u", "E", "m-1"), headers=AUTH))[0] == 200
    await customerio.wait_for(1)
    families = await scrape(url)
    names = {s.name for family in families.values() for s in family.samples}
    assert "relay_received_events_total" in names
    assert "relay_destination_request_seconds_count" in names
    assert [n for n in names if n.endswith("_created")] == []


async def test_every_relay_metric_name_says_its_unit(relay_factory: RelayFactory) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9")
    families = await scrape(url)
    relay = {name: f.type for name, f in families.items() if name.startswith("relay_")}
    # Counters count events, requests or deliveries; times are seconds; gauges say theirs.
    assert {n for n, t in relay.items() if t == "histogram"} == {
        "relay_destination_request_seconds",
        "relay_http_request_duration_seconds",
    }
    assert "relay_destination_rate_limit" not in relay
    rate = families["relay_destination_rate_limit_requests_per_second"]
    assert samples(rate, "relay_destination_rate_limit_requests_per_second", "destination") == {
        ("customerio.main",): 100.0,
        ("segment.main",): 50.0,
    }


async def test_the_queue_gauges_are_set_at_start(relay_factory: RelayFactory) -> None:
    url, _ = await relay_factory(cio_url="http://127.0.0.1:9")
    deadline = asyncio.get_running_loop().time() + 5  # not 30 s: set as relay starts
    while not (queue := (await scrape(url))["relay_queue_deliveries"]).samples:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert samples(queue, "relay_queue_deliveries", "destination", "state") == {
        (dest, state): 0.0
        for dest in ("customerio.main", "segment.main")
        for state in ("pending", "leased", "dead")
    }


async def test_a_request_that_times_out_is_timed_too(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.hang(times=1000)
    url, _ = await relay_factory(cio_url=customerio.url, cio_timeout=0.3)
    assert (await post(f"{url}/v1/track", track("u", "E", "m-1"), headers=AUTH))[0] == 200
    await customerio.wait_for(1)
    families = await scrape(url)
    deadline = asyncio.get_running_loop().time() + 5
    while not samples(
        families["relay_destination_requests"],
        "relay_destination_requests_total",
        "destination",
        "status",
    ):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
        families = await scrape(url)
    sent = samples(
        families["relay_destination_requests"],
        "relay_destination_requests_total",
        "destination",
        "status",
    )
    assert set(sent) == {("customerio.main", "error")}
    timed = families["relay_destination_request_seconds"]
    [count] = samples(timed, "relay_destination_request_seconds_count", "destination").values()
    [seconds] = samples(timed, "relay_destination_request_seconds_sum", "destination").values()
    assert count == sent[("customerio.main", "error")] >= 1
    assert seconds >= 0.3 * count
