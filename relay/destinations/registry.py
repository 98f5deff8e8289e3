"""Each destination type, registered once: the schema and typed values of its settings, how
its sink is built, how much a lane leases, and how its credentials are described. Config
loading, the app, reloading and `relay routes test` ask here instead of telling the types
apart themselves."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marshmallow import Schema

from relay.delivery import Sink
from relay.destinations.customerio import settings as customerio
from relay.destinations.customerio.sink import CustomerIOSink
from relay.destinations.limiter import Limiter
from relay.destinations.segment import settings as segment
from relay.destinations.segment.sink import SegmentSink
from relay.destinations.transport import Transport
from relay.metrics import Metrics

if TYPE_CHECKING:
    from relay.config.positions import Path

Clock = Callable[[], float]

Destination = customerio.CustomerIODestination | segment.SegmentDestination


def _no_problems(body: dict[str, Any], path: Path) -> list[tuple[Path, str, str]]:
    return []


@dataclass(frozen=True)
class DestinationType:
    # The schema of one destination's settings (destinations.<kind>.<name>).
    schema: type[Schema]
    # Its typed settings, from its name, what the schema loaded, and the unset variables
    # its settings use.
    settings: Callable[[str, dict[str, Any], tuple[str, ...]], Destination]
    # What its settings look like, for the hint when they are not a mapping.
    example: str
    # Builds the sink that sends a lease's deliveries.
    sink: Callable[[Any, Transport, Limiter, Metrics, Clock], Sink]
    # How many deliveries a lane leases at a time.
    lease_size: Callable[[Any], int]
    # What is shown instead of the credentials (`relay routes test`).
    credentials_shown: Callable[[Any], str]
    # The same settings with blank credentials, for sinks that must not hold secrets.
    without_credentials: Callable[[Any], Any]
    # Problems of raw settings beyond the schema's, found even when others are wrong:
    # (path, message, hint) each.
    credential_problems: Callable[[dict[str, Any], Path], list[tuple[Path, str, str]]] = (
        _no_problems
    )


def _customerio_lease(dest: customerio.CustomerIODestination) -> int:
    # v1 sends one request per call: a lane leases fewer at a time, and more lanes run.
    return 10 if dest.api == "v1" else dest.batch_size


# In the order the config checker reads them.
TYPES: dict[str, DestinationType] = {
    customerio.KIND: DestinationType(
        schema=customerio.CustomerIODestinationSchema,
        settings=customerio.settings,
        example=customerio.EXAMPLE,
        sink=CustomerIOSink,
        lease_size=_customerio_lease,
        credentials_shown=lambda dest: f"Basic <site_id:api_key of {dest.key}>",
        without_credentials=lambda dest: dataclasses.replace(dest, site_id="", api_key=""),
        credential_problems=customerio.credential_problems,
    ),
    segment.KIND: DestinationType(
        schema=segment.SegmentDestinationSchema,
        settings=segment.settings,
        example=segment.EXAMPLE,
        sink=SegmentSink,
        lease_size=lambda dest: dest.batch_size,
        credentials_shown=lambda dest: f"Basic <write_key of {dest.key}>",
        without_credentials=lambda dest: dataclasses.replace(dest, write_key=""),
    ),
}


def type_of(dest: Destination) -> DestinationType:
    return TYPES[dest.kind]
