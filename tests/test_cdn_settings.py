"""The settings analytics.js loads from relay (`GET /v1/projects/{writeKey}/settings`): the
document, where it says to send, the 404 for an unknown key, CORS and caching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import parse_config
from relay.errors import ConfigError
from relay.sources.segment import cdn_settings
from relay.sources.segment.cdn_settings import Address
from tests.conftest import BACKEND_KEY, WRITE_KEY, RelayFactory, StandIn, config_yaml
from tests.helpers import SECRETS

ORIGIN = "https://shop.example"


def expected_document(write_key: str, protocol: str, api_host: str) -> dict[str, Any]:
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "addBundledMetadata": True,
                "unbundledIntegrations": [],
                "maybeBundledConfigIds": {},
                "versionSettings": {"componentTypes": []},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


# --- the pure parts --------------------------------------------------------------------------


def test_the_document_names_relay_as_the_only_integration_and_loads_no_code() -> None:
    doc = cdn_settings.document("wk-1", Address("https", "relay.example.com/v1"))
    assert doc == expected_document("wk-1", "https", "relay.example.com/v1")
    # analytics.js loads code for any other integration, remote plugin or enabled middleware.
    assert list(doc["integrations"]) == ["Segment.io"]
    assert doc["remotePlugins"] == [] and not any(doc["enabledMiddleware"].values())
    assert doc["middlewareSettings"] == {} and doc["edgeFunction"] == {}


@pytest.mark.parametrize(
    ("public_url", "address"),
    [
        ("https://relay.example.com", Address("https", "relay.example.com/v1")),
        ("https://relay.example.com/", Address("https", "relay.example.com/v1")),
        ("HTTP://relay.example.com:8080", Address("http", "relay.example.com:8080/v1")),
        ("https://example.com/relay/", Address("https", "example.com/relay/v1")),
    ],
)
def test_the_public_url_gives_protocol_and_api_host(public_url: str, address: Address) -> None:
    assert cdn_settings.from_public_url(public_url) == address


@pytest.mark.parametrize(
    ("scheme", "host", "proto", "fwd_host", "trust", "expected"),
    [
        ("http", "relay.internal:8080", None, None, False, ("http", "relay.internal:8080/v1")),
        ("https", "relay.example.com", None, None, False, ("https", "relay.example.com/v1")),
        ("http", "127.0.0.1:8080", None, None, False, ("http", "127.0.0.1:8080/v1")),
        ("http", "[::1]:8080", None, None, False, ("http", "[::1]:8080/v1")),
        # Forwarded headers are ignored unless trusted: any client can send them.
        ("http", "10.0.0.5:8080", "https", "fwd.example", False, ("http", "10.0.0.5:8080/v1")),
        ("http", "10.0.0.5:8080", "https", "fwd.example", True, ("https", "fwd.example/v1")),
        # Through a chain of proxies, the first (the client's side) counts.
        ("http", "10.0.0.5", "https, http", "a.example, b.local", True, ("https", "a.example/v1")),
        ("http", "10.0.0.5", "HTTPS", None, True, ("https", "10.0.0.5/v1")),
        ("http", "10.0.0.5", None, "fwd.example", True, ("http", "fwd.example/v1")),
    ],
)  # fmt: skip
def test_the_address_a_request_came_to(
    scheme: str,
    host: str,
    proto: str | None,
    fwd_host: str | None,
    trust: bool,
    expected: tuple[str, str],
) -> None:
    got = cdn_settings.from_request(scheme, host, proto, fwd_host, trust_forwarded=trust)
    assert got == Address(*expected)


@pytest.mark.parametrize(
    ("scheme", "host", "proto", "fwd_host", "problem"),
    [
        ("http", None, None, None, "Host header is missing or not a host name"),
        ("http", "", None, None, "Host header is missing or not a host name"),
        ("http", "evil.example/path", None, None, "Host header is missing or not a host name"),
        ("http", 'a"b', None, None, "Host header is missing or not a host name"),
        ("http", "relay", "ftp", None, "protocol 'ftp' is neither http nor https"),
        ("http", "relay", None, "a b", "Host header is missing or not a host name"),
    ],
)
def test_an_address_that_cannot_be_told_says_to_set_public_url(
    scheme: str, host: str | None, proto: str | None, fwd_host: str | None, problem: str
) -> None:
    got = cdn_settings.from_request(scheme, host, proto, fwd_host, trust_forwarded=True)
    assert isinstance(got, str)
    assert problem in got and "sources.segment.public_url" in got


@given(st.text(max_size=300))
def test_a_host_written_into_the_document_is_only_ever_a_host(host: str) -> None:
    got = cdn_settings.from_request("http", host, None, None, trust_forwarded=False)
    if isinstance(got, Address):
        assert got.api_host == host + "/v1"
        assert not set(host) & set("/?#@\"'\\ <>") and host.isascii()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("relay.example.com", "not a valid URL"),
        ("ftp://relay.example.com", "not a valid URL"),
        ("https://relay.example.com/?a=1", "without a query or fragment"),
    ],
)
def test_a_public_url_that_is_not_an_address_is_a_config_problem(
    tmp_path: Path, value: str, problem: str
) -> None:
    text = config_yaml(
        tmp_path / "r.db", "http://127.0.0.1:9", sources_extra=f"    public_url: {value!r}"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, str(tmp_path / "relay.yaml"), {})
    assert "sources.segment.public_url" in str(caught.value)
    assert problem in str(caught.value)


# --- as relay serves it ----------------------------------------------------------------------


async def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers or {}) as resp,
    ):
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body, dict(resp.headers)


async def test_each_write_key_gets_its_own_document_pointing_at_relay(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    host = url.removeprefix("http://")
    for key in (WRITE_KEY, BACKEND_KEY):
        status, body, headers = await get(f"{url}/v1/projects/{key}/settings", {"Origin": ORIGIN})
        assert status == 200
        assert body == expected_document(key, "http", f"{host}/v1")
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        assert headers["Cache-Control"] == "public, max-age=60"
        assert headers["Access-Control-Allow-Origin"] == ORIGIN
        assert headers["Vary"] == "Host, Origin"
    # Nothing of any other source, and no other secret of the config, is in it.
    status, body, _ = await get(f"{url}/v1/projects/{WRITE_KEY}/settings")
    text = str(body)
    assert BACKEND_KEY not in text
    assert [s for s in SECRETS if s in text and s != WRITE_KEY] == []


async def test_the_public_url_wins_over_the_request(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(
        cio_url=customerio.url,
        sources_extra="    public_url: https://example.com/relay/\n"
        "    trust_forwarded_headers: true",
    )
    status, body, headers = await get(
        f"{url}/v1/projects/{WRITE_KEY}/settings",
        {"X-Forwarded-Host": "other.example", "X-Forwarded-Proto": "http"},
    )
    assert status == 200
    assert body == expected_document(WRITE_KEY, "https", "example.com/relay/v1")
    assert headers["Vary"] == "Origin"  # the same answer for every host


@pytest.mark.parametrize("trust", [False, True])
async def test_forwarded_headers_count_only_when_trusted(
    relay_factory: RelayFactory, customerio: StandIn, trust: bool
) -> None:
    forwarded = {"X-Forwarded-Host": "relay.example.com", "X-Forwarded-Proto": "https"}
    url, _ = await relay_factory(
        cio_url=customerio.url,
        sources_extra=f"    trust_forwarded_headers: {'true' if trust else 'false'}",
    )
    _, body, headers = await get(f"{url}/v1/projects/{WRITE_KEY}/settings", forwarded)
    segmentio = body["integrations"]["Segment.io"]
    if trust:
        assert (segmentio["protocol"], segmentio["apiHost"]) == ("https", "relay.example.com/v1")
        assert headers["Vary"] == "Host, X-Forwarded-Proto, X-Forwarded-Host, Origin"
    else:
        # Any client can send these headers: the address stays the one it really reached.
        host = url.removeprefix("http://")
        assert (segmentio["protocol"], segmentio["apiHost"]) == ("http", f"{host}/v1")
        assert headers["Vary"] == "Host, Origin"


async def test_a_host_header_that_is_no_host_is_400_naming_public_url(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(
        cio_url=customerio.url, sources_extra="    trust_forwarded_headers: true"
    )
    status, body, headers = await get(
        f"{url}/v1/projects/{WRITE_KEY}/settings",
        {"X-Forwarded-Host": "evil.example/x?", "Origin": ORIGIN},
    )
    assert status == 400
    assert body["code"] == "invalid_request"
    assert "sources.segment.public_url" in body["message"]
    assert headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize(
    "key", ["wk-wrong-0123456789", WRITE_KEY[:-1], WRITE_KEY + "x", WRITE_KEY.upper(), "%C3%A9"]
)
async def test_an_unknown_write_key_is_a_404_with_cors_headers(
    relay_factory: RelayFactory, customerio: StandIn, key: str
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, headers = await get(f"{url}/v1/projects/{key}/settings", {"Origin": ORIGIN})
    assert status == 404
    assert body == {
        "success": False,
        "code": "not_found",
        "message": body["message"],
        "error": body["message"],
    }
    assert "sources.segment.write_keys" in body["message"]
    assert key not in body["message"] and WRITE_KEY not in str(body)
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Cache-Control" not in headers


async def test_a_source_whose_key_is_unset_has_no_settings(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    text = config_yaml(tmp_path / "r.db", customerio.url).replace(
        f'backend: "{BACKEND_KEY}"', 'backend: "${UNSET_BACKEND_KEY}"'
    )
    url, _ = await relay_factory(text)
    status, _, _ = await get(f"{url}/v1/projects/{BACKEND_KEY}/settings")
    assert status == 404
    status, _, _ = await get(f"{url}/v1/projects/$%7BUNSET_BACKEND_KEY%7D/settings")
    assert status == 404


async def test_a_preflight_for_the_settings_allows_get(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, _, headers = await get(
        f"{url}/v1/projects/{WRITE_KEY}/settings",
        {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-custom",
        },
        method="OPTIONS",
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert headers["Access-Control-Allow-Headers"] == "x-custom"


async def test_head_answers_like_get_without_a_body(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    status, body, headers = await get(f"{url}/v1/projects/{WRITE_KEY}/settings", method="HEAD")
    assert (status, body) == (200, None)
    assert headers["Cache-Control"] == "public, max-age=60"


async def test_the_settings_are_counted_under_the_route_never_the_key(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url)
    await get(f"{url}/v1/projects/{WRITE_KEY}/settings")
    await get(f"{url}/v1/projects/nope/settings")
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        metrics = await resp.text()
    assert WRITE_KEY not in metrics
    assert 'path="/v1/projects/{writeKey}/settings",status="200"' in metrics
    assert 'path="/v1/projects/{writeKey}/settings",status="404"' in metrics
