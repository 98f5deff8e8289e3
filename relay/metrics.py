"""Prometheus metrics, named once here; each app gets its own registry (no globals).

Every name ends in its unit (`_seconds`, `_requests_per_second`) or says what it counts
(`_events_total`, `_deliveries`). Counters and histograms are exposed without their
`_created` series: prometheus_client's switch for that (`disable_created_metrics`, or the
PROMETHEUS_DISABLE_CREATED_SERIES variable) is process-wide, so `render` leaves them out
of this registry's page instead.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from relay import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_WITH_CREATED = ("counter", "histogram", "summary")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "relay_received_events_total",
            "Messages received, by direction, source and outcome (queued, duplicate, rejected)",
            ["kind", "source", "outcome"],
            registry=r,
        )
        self.unrouted = Counter(
            "relay_unrouted_events_total",
            "Accepted messages that matched no route",
            ["kind", "source"],
            registry=r,
        )
        self.delivered = Counter(
            "relay_delivered_events_total", "Deliveries completed", ["destination"], registry=r
        )
        self.skipped = Counter(
            "relay_skipped_events_total",
            "Deliveries done without a request: nothing to send (an alias of a person to itself)",
            ["destination"],
            registry=r,
        )
        self.retried = Counter(
            "relay_retried_events_total",
            "Deliveries scheduled for a retry",
            ["destination"],
            registry=r,
        )
        self.dead = Counter(
            "relay_dead_lettered_events_total",
            "Deliveries dead-lettered",
            ["destination"],
            registry=r,
        )
        self.requests = Counter(
            "relay_destination_requests_total",
            "HTTP requests sent to destinations, by status (or 'error' for no answer)",
            ["destination", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "relay_destination_request_seconds",
            "Time for one request to a destination",
            ["destination"],
            registry=r,
        )
        self.paused = Gauge(
            "relay_destination_paused",
            "1 while a destination is paused (bad credentials, unconfigured)",
            ["destination"],
            registry=r,
        )
        self.retrying = Gauge(
            "relay_destination_retrying",
            "1 while a destination fails and is probed with one request at a time",
            ["destination"],
            registry=r,
        )
        self.rate = Gauge(
            "relay_destination_rate_limit_requests_per_second",
            "Requests/s allowed to a destination (its rate_limit)",
            ["destination"],
            registry=r,
        )
        self.queue = Gauge(
            "relay_queue_deliveries",
            "Deliveries in the store by destination and state",
            ["destination", "state"],
            registry=r,
        )

        self.oldest = Gauge(
            "relay_queue_oldest_age_seconds",
            "How long the oldest delivery waiting for a destination (queued or in flight) has"
            " waited; 0 when none waits",
            ["destination"],
            registry=r,
        )
        self.http_requests = Counter(
            "relay_http_requests_total",
            "Requests answered, refusals included, by route (its canonical path, or"
            " 'unmatched') and status",
            ["path", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "relay_http_request_duration_seconds",
            "Time from a request's head to its answer, by route",
            ["path"],
            registry=r,
        )
        Gauge(
            "relay_build_info",
            "Always 1; the labels say which relay runs, on which Python",
            ["version", "python"],
            registry=r,
        ).labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated(CollectorRegistry):
    """A registry's metrics without the `_created` series of its counters and histograms.

    A registry itself only because older prometheus-client releases type `generate_latest`
    as taking one; it registers nothing."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(auto_describe=False)
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            if family.type in _WITH_CREATED:
                created = family.name + "_created"
                family.samples = [s for s in family.samples if s.name != created]
            yield family
