"""Each destination type, registered once: how its sink is built, how much a lane leases,
and how its credentials are described. The app, reloading and `relay routes test` ask here
instead of telling the types apart themselves."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.config import CustomerIODestination, Destination, SegmentDestination
from relay.delivery import Sink
from relay.destinations.customerio.sink import CustomerIOSink
from relay.destinations.limiter import DestinationLimiter
from relay.destinations.segment.sink import SegmentSink
from relay.destinations.transport import Transport
from relay.metrics import Metrics

Clock = Callable[[], float]


@dataclass(frozen=True)
class DestinationType:
    # Builds the sink that sends a lease's deliveries.
    sink: Callable[[Any, Transport, DestinationLimiter, Metrics, Clock], Sink]
    # How many deliveries a lane leases at a time.
    lease_size: Callable[[Any], int]
    # What is shown instead of the credentials (`relay routes test`).
    credentials_shown: Callable[[Any], str]
    # The same settings with blank credentials, for sinks that must not hold secrets.
    without_credentials: Callable[[Any], Any]


def _customerio_lease(dest: CustomerIODestination) -> int:
    # v1 sends one request per call: a lane leases fewer at a time, and more lanes run.
    return 10 if dest.api == "v1" else dest.batch_size


TYPES: dict[type, DestinationType] = {
    CustomerIODestination: DestinationType(
        sink=CustomerIOSink,
        lease_size=_customerio_lease,
        credentials_shown=lambda dest: f"Basic <site_id:api_key of {dest.key}>",
        without_credentials=lambda dest: dataclasses.replace(dest, site_id="", api_key=""),
    ),
    SegmentDestination: DestinationType(
        sink=SegmentSink,
        lease_size=lambda dest: dest.batch_size,
        credentials_shown=lambda dest: f"Basic <write_key of {dest.key}>",
        without_credentials=lambda dest: dataclasses.replace(dest, write_key=""),
    ),
}


def type_of(dest: Destination) -> DestinationType:
    return TYPES[type(dest)]
