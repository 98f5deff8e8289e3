"""Prometheus metrics, named once here; each app gets its own registry (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
            "relay_destination_rate_limit",
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
