"""The settings document analytics.js loads from `{cdnURL}/v1/projects/{writeKey}/settings`
before it sends anything, as relay answers it, and the address of relay it names; pure.

Segment's CDN answers that path with the source's settings: which integrations to load and,
under `Segment.io`, where to send events (`apiKey`, `apiHost`, `protocol`). relay's answer
names relay itself there and nothing else: any other integration, remote plugin, middleware
or edge function listed would make the library fetch code from Segment's servers, and its
own performance metrics (POST `{apiHost}/m`) are switched off (`sampleRate: 0`), as relay
has no such endpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

# Path of the settings document, under relay's address (the library's `cdnURL`).
SETTINGS_PATH: Final = "/v1/projects/{writeKey}/settings"
# What the library appends to apiHost's path: relay's Tracking API lives under /v1.
API_PREFIX: Final = "/v1"
# How long a browser (or a cache in between) may keep the document: a changed write key
# or address reaches pages within a minute.
MAX_AGE_SECONDS: Final = 60

# A Host header (or X-Forwarded-Host) relay is willing to write into the document: a name
# or an IPv4 address, or a bracketed IPv6 address, with an optional port.
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_PROTOCOLS: Final = ("http", "https")


@dataclass(frozen=True)
class Address:
    """Where analytics.js reaches relay: `protocol` and `api_host` (host, port and path
    prefix of relay's Tracking API, e.g. `relay.example.com/v1`), as the library wants them."""

    protocol: str
    api_host: str


def from_public_url(public_url: str) -> Address:
    """The address in `public_url` (`https://relay.example.com`, or with a path prefix when
    relay sits behind a proxy under one: `https://example.com/relay`). The URL is taken as
    validated by the settings schema."""
    parts = urlsplit(public_url)
    return Address(parts.scheme.lower(), parts.netloc + parts.path.rstrip("/") + API_PREFIX)


def from_request(
    scheme: str,
    host: str | None,
    forwarded_proto: str | None,
    forwarded_host: str | None,
    *,
    trust_forwarded: bool,
) -> Address | str:
    """The address a request reached relay at, or why it cannot be told.

    From the request's own scheme and Host header; with `trust_forwarded`, a proxy's
    `X-Forwarded-Proto` and `X-Forwarded-Host` override them (the first value where a chain
    of proxies listed several). Never from those headers otherwise: any client can send them.
    """
    if trust_forwarded:
        proto = _first(forwarded_proto)
        if proto is not None:
            scheme = proto
        host = _first(forwarded_host) or host
    scheme = scheme.lower()
    if scheme not in _PROTOCOLS:
        return (
            f"the request's protocol {scheme[:20]!r} is neither http nor https: set"
            " sources.segment.public_url to relay's address"
        )
    if not host or not _HOST.fullmatch(host):
        return (
            "the request's Host header is missing or not a host name: set"
            " sources.segment.public_url to relay's address"
        )
    return Address(scheme, host + API_PREFIX)


def _first(value: str | None) -> str | None:
    if value is None:
        return None
    first = value.split(",", 1)[0].strip()
    return first or None


def document(write_key: str, address: Address) -> dict[str, Any]:
    """The settings document for one source: the write key's own, and nothing of any other."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": address.api_host,
                "protocol": address.protocol,
                "addBundledMetadata": True,
                "unbundledIntegrations": [],
                "maybeBundledConfigIds": {},
                "versionSettings": {"componentTypes": []},
            }
        },
        # Every event allowed, as for a source with no tracking plan.
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
