"""What a loaded config is: typed values for the server, storage, sources and destinations,
read by the rest of relay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.config.positions import Path, position_of
from relay.errors import ConfigProblem
from relay.routing import Routes

CUSTOMERIO_HOSTS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}

SEGMENT_HOSTS = {"us": "https://api.segment.io", "eu": "https://events.eu1.segmentapis.com"}

SEGMENT_WEBHOOK_SOURCE = "webhook"


@dataclass(frozen=True)
class MissingVariable:
    """A variable a setting needs that is unset, or set but empty where a value must not be
    empty (a key, a Site ID): relay treats both alike."""

    name: str
    path: Path
    line: int | None
    empty: bool = False


@dataclass(frozen=True)
class CustomerIODestination:
    name: str
    site_id: str
    api_key: str
    region: str
    base_url: str
    rate_limit: float
    api: str
    batch_size: int
    concurrency: int
    timeout: float
    max_age: float
    missing: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"customerio.{self.name}"


@dataclass(frozen=True)
class SegmentDestination:
    name: str
    write_key: str
    region: str
    base_url: str
    rate_limit: float
    batch_size: int
    concurrency: int
    timeout: float
    max_age: float
    missing: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"segment.{self.name}"


Destination = CustomerIODestination | SegmentDestination


@dataclass(frozen=True)
class Config:
    path: str
    host: str
    port: int
    shutdown_timeout: float
    # A connection without a complete request head for this long (idle, or sending its
    # headers slowly) is closed; a body must arrive within body_timeout (408 otherwise).
    idle_timeout: float
    body_timeout: float
    sqlite_path: str
    max_pending: int
    max_size_mb: int | None
    min_free_mb: float
    segment_write_keys: dict[str, str]
    segment_webhook_secret: str | None
    segment_dedup_window: float
    customerio_signing_keys: dict[str, tuple[str, ...]]
    customerio_timestamp_tolerance: float | None
    customerio_dedup_window: float
    customerio_profile: str
    destinations: dict[str, Destination]
    routes: list[Any]
    missing: list[MissingVariable] = field(default_factory=list)
    # Variables that were unset and replaced by their ${VAR:-default}.
    defaulted: list[MissingVariable] = field(default_factory=list)
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # Every source name the file declares, including those whose key is unset (routes may
    # name them; such a source simply never authenticates until its key is set).
    segment_sources: tuple[str, ...] = ()
    customerio_sources: tuple[str, ...] = ()

    def locate(self, path: Path) -> tuple[int | None, int | None]:
        return position_of(self.positions, path)


@dataclass(frozen=True)
class ConfigCheck:
    """Everything `relay check` learns about a file.

    `config` and `routes` are set when the file can run (no problem other than, when they
    are not required, unset environment variables); `problems` lists every problem found,
    in file order.
    """

    config: Config | None
    routes: Routes | None
    problems: list[ConfigProblem]
