"""The Customer.io webhook vocabulary: routes and the mapping read a webhook alike."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from relay.mapping.to_segment import map_webhook
from relay.routing import compile_routes
from relay.vocab import customerio as cio

channels = st.sampled_from(cio.CHANNELS)
metrics = st.sampled_from(cio.METRICS)


@st.composite
def any_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


def routes_for(object_type: str, metric: str) -> Any:
    routes, problems = compile_routes(
        [
            {
                "name": "that-one",
                "from": "customerio",
                "match": {"object_type": object_type, "metric": metric},
                "to": ["segment.main"],
            }
        ],
        destinations={"segment.main"},
        segment_sources={"web"},
        customerio_sources={"marketing"},
    )
    assert problems == []
    return routes


@given(channel=channels, metric=metrics, data=st.data())
def test_a_legacy_event_type_in_any_case_is_routed_as_the_mapping_names_it(
    channel: str, metric: str, data: st.DataObject
) -> None:
    event_type = data.draw(any_case(f"{channel}_{metric}"))
    webhook = {"event_id": "e1", "event_type": event_type, "data": {"customer_id": "p1"}}
    mapped = map_webhook(webhook, received_at=1_700_000_000)
    assert isinstance(mapped, dict)
    assert mapped["event"] == cio.event_name(channel, metric)
    assert mapped["properties"]["object_type"] == channel
    assert mapped["properties"]["metric"] == metric
    taken = routes_for(channel, metric).route("customerio", "marketing", webhook)
    assert taken.destinations == ["segment.main"]
    other = next(m for m in cio.METRICS if m != metric)
    assert routes_for(channel, other).route("customerio", "marketing", webhook).destinations == []


@given(channel=channels, metric=metrics, data=st.data())
def test_known_names_in_any_case_read_as_their_own_spelling(
    channel: str, metric: str, data: st.DataObject
) -> None:
    webhook = {
        "object_type": data.draw(any_case(channel)),
        "metric": data.draw(any_case(metric)),
    }
    assert cio.kind(webhook) == (channel, metric)


def test_unknown_names_are_kept_as_sent() -> None:
    assert cio.kind({"object_type": "Fax", "metric": "Beeped"}) == ("Fax", "Beeped")
    assert cio.kind({"event_type": "Fax_Beeped"}) == ("Fax", "Beeped")
    assert cio.kind({"event_type": "in_app_Beeped"}) == ("in_app", "Beeped")
    assert cio.kind({"event_type": "nounderscore"}) == (
        "legacy event_type 'nounderscore' is not <channel>_<metric>"
    )
    assert cio.kind({}) == "webhook has neither object_type/metric nor a legacy event_type"
