"""The Customer.io webhook vocabulary: routes and the mapping read a webhook alike."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
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


# --- every channel and metric Customer.io's reporting webhooks reference documents -------

# (object_type, metric, the Segment event), written out here rather than derived, so that a
# change to the vocabulary shows up. Subscription changes are reported with the channel
# that triggered them, or `customer`.
PREFS = "cio_subscription_preferences_changed"
DOCUMENTED = [
    ("customer", "subscribed", "Customer Subscribed"),
    ("customer", "unsubscribed", "Customer Unsubscribed"),
    ("customer", PREFS, "Customer Subscription Preferences Changed"),
    ("email", "drafted", "Email Drafted"),
    ("email", "attempted", "Email Attempted"),
    ("email", "sent", "Email Sent"),
    ("email", "delivered", "Email Delivered"),
    ("email", "opened", "Email Opened"),
    ("email", "clicked", "Email Link Clicked"),
    ("email", "converted", "Email Converted"),
    ("email", "unsubscribed", "Email Unsubscribed"),
    ("email", "bounced", "Email Bounced"),
    ("email", "dropped", "Email Dropped"),
    ("email", "spammed", "Email Marked as Spam"),
    ("email", "failed", "Email Failed"),
    ("email", "undeliverable", "Email Undeliverable"),
    ("email", "subscribed", "Email Subscribed"),
    ("email", PREFS, "Email Subscription Preferences Changed"),
    ("push", "drafted", "Push Drafted"),
    ("push", "attempted", "Push Attempted"),
    ("push", "sent", "Push Sent"),
    ("push", "delivered", "Push Delivered"),
    ("push", "opened", "Push Opened"),
    ("push", "clicked", "Push Link Clicked"),
    ("push", "converted", "Push Converted"),
    ("push", "bounced", "Push Bounced"),
    ("push", "dropped", "Push Dropped"),
    ("push", "failed", "Push Failed"),
    ("push", "undeliverable", "Push Undeliverable"),
    ("push", "subscribed", "Push Subscribed"),
    ("push", "unsubscribed", "Push Unsubscribed"),
    ("push", PREFS, "Push Subscription Preferences Changed"),
    ("sms", "drafted", "SMS Drafted"),
    ("sms", "attempted", "SMS Attempted"),
    ("sms", "sent", "SMS Sent"),
    ("sms", "delivered", "SMS Delivered"),
    ("sms", "clicked", "SMS Link Clicked"),
    ("sms", "converted", "SMS Converted"),
    ("sms", "bounced", "SMS Bounced"),
    ("sms", "failed", "SMS Failed"),
    ("sms", "undeliverable", "SMS Undeliverable"),
    ("sms", "replied", "SMS Replied"),
    ("sms", "subscribed", "SMS Subscribed"),
    ("sms", "unsubscribed", "SMS Unsubscribed"),
    ("sms", PREFS, "SMS Subscription Preferences Changed"),
    ("in_app", "drafted", "In-App Message Drafted"),
    ("in_app", "attempted", "In-App Message Attempted"),
    ("in_app", "sent", "In-App Message Sent"),
    ("in_app", "opened", "In-App Message Opened"),
    ("in_app", "clicked", "In-App Message Link Clicked"),
    ("in_app", "converted", "In-App Message Converted"),
    ("in_app", "failed", "In-App Message Failed"),
    ("in_app", "undeliverable", "In-App Message Undeliverable"),
    ("in_app", "subscribed", "In-App Message Subscribed"),
    ("in_app", "unsubscribed", "In-App Message Unsubscribed"),
    ("in_app", PREFS, "In-App Message Subscription Preferences Changed"),
    ("slack", "drafted", "Slack Message Drafted"),
    ("slack", "attempted", "Slack Message Attempted"),
    ("slack", "sent", "Slack Message Sent"),
    ("slack", "clicked", "Slack Message Link Clicked"),
    ("slack", "failed", "Slack Message Failed"),
    ("slack", "undeliverable", "Slack Message Undeliverable"),
    ("slack", "subscribed", "Slack Message Subscribed"),
    ("slack", "unsubscribed", "Slack Message Unsubscribed"),
    ("slack", PREFS, "Slack Message Subscription Preferences Changed"),
    ("webhook", "drafted", "Webhook Message Drafted"),
    ("webhook", "attempted", "Webhook Message Attempted"),
    ("webhook", "sent", "Webhook Message Sent"),
    ("webhook", "clicked", "Webhook Message Link Clicked"),
    ("webhook", "failed", "Webhook Message Failed"),
    ("webhook", "undeliverable", "Webhook Message Undeliverable"),
    ("webhook", "subscribed", "Webhook Message Subscribed"),
    ("webhook", "unsubscribed", "Webhook Message Unsubscribed"),
    ("webhook", PREFS, "Webhook Message Subscription Preferences Changed"),
    ("whatsapp", "drafted", "WhatsApp Message Drafted"),
    ("whatsapp", "attempted", "WhatsApp Message Attempted"),
    ("whatsapp", "sent", "WhatsApp Message Sent"),
    ("whatsapp", "delivered", "WhatsApp Message Delivered"),
    ("whatsapp", "opened", "WhatsApp Message Opened"),
    ("whatsapp", "clicked", "WhatsApp Message Link Clicked"),
    ("whatsapp", "converted", "WhatsApp Message Converted"),
    ("whatsapp", "bounced", "WhatsApp Message Bounced"),
    ("whatsapp", "dropped", "WhatsApp Message Dropped"),
    ("whatsapp", "failed", "WhatsApp Message Failed"),
    ("whatsapp", "undeliverable", "WhatsApp Message Undeliverable"),
    ("whatsapp", "replied", "WhatsApp Message Replied"),
    ("whatsapp", "subscribed", "WhatsApp Message Subscribed"),
    ("whatsapp", "unsubscribed", "WhatsApp Message Unsubscribed"),
    ("whatsapp", PREFS, "WhatsApp Message Subscription Preferences Changed"),
]  # fmt: skip


def test_the_vocabulary_documents_exactly_the_pairs_of_the_reference() -> None:
    pairs = [(c, m) for c in cio.CHANNELS for m in cio.documented(c)]
    assert sorted(pairs) == sorted((c, m) for c, m, _ in DOCUMENTED)
    assert len(set(pairs)) == len(pairs)
    # Every documented metric has its own name: none is left to the Title Case fallback.
    assert {m for _, m, _ in DOCUMENTED} <= set(cio.METRIC_NAMES)


@pytest.mark.parametrize(("object_type", "metric", "event"), DOCUMENTED)
def test_every_documented_webhook_becomes_its_named_segment_event(
    object_type: str, metric: str, event: str
) -> None:
    webhook = {
        "event_id": f"e-{object_type}-{metric}",
        "object_type": object_type,
        "metric": metric,
        "timestamp": 1_700_000_000,
        "data": {"customer_id": "p1"},
    }
    mapped = map_webhook(webhook, received_at=1_700_000_000)
    assert isinstance(mapped, dict), mapped
    assert mapped["event"] == event
    assert (mapped["properties"]["object_type"], mapped["properties"]["metric"]) == (
        object_type,
        metric,
    )
    # The legacy form of the same activity is named alike.
    legacy = {
        "event_id": "e",
        "event_type": f"{object_type}_{metric}",
        "data": {"customer_id": "p1"},
    }
    legacy_mapped = map_webhook(legacy, received_at=1_700_000_000)
    assert isinstance(legacy_mapped, dict) and legacy_mapped["event"] == event
    # And a route that names the pair takes it, and only it.
    assert routes_for(object_type, metric).route(
        "customerio", "marketing", webhook
    ).destinations == ["segment.main"]


def test_deferred_is_named_though_no_channel_documents_it() -> None:
    # A metric of the Track API's delivery reports; Customer.io may post it all the same.
    assert "deferred" not in {m for c in cio.CHANNELS for m in cio.documented(c)}
    assert cio.event_name("email", "deferred") == "Email Deferred"


def test_an_undocumented_channel_documents_nothing() -> None:
    assert cio.documented("fax") == ()


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        # Customer.io's reference spells this event's channel `object_type_type`.
        (
            {"metric": "cio_subscription_preferences_changed", "object_type_type": "email"},
            ("email", "cio_subscription_preferences_changed"),
        ),
        # No channel at all: no message triggered the change.
        (
            {"metric": "cio_subscription_preferences_changed"},
            ("customer", "cio_subscription_preferences_changed"),
        ),
        (
            {"metric": "CIO_Subscription_Preferences_Changed", "object_type_type": "SMS"},
            ("sms", "cio_subscription_preferences_changed"),
        ),
        # `object_type` wins where both are there.
        (
            {
                "metric": "cio_subscription_preferences_changed",
                "object_type": "push",
                "object_type_type": "email",
            },
            ("push", "cio_subscription_preferences_changed"),
        ),
    ],
)
def test_a_preferences_change_without_object_type_takes_its_channel_from_the_reference(
    payload: dict[str, Any], found: tuple[str, str]
) -> None:
    assert cio.kind(payload) == found


@pytest.mark.parametrize(
    "payload",
    [
        {"metric": "opened"},
        {"metric": "cio_subscription_preferences_changed", "object_type_type": 3},
    ],
)
def test_other_metrics_still_need_their_object_type(payload: dict[str, Any]) -> None:
    assert isinstance(cio.kind(payload), str)


def test_the_readme_lists_every_documented_pair_by_its_segment_name() -> None:
    """The README's tables under "How Customer.io webhooks map to Segment" are what the
    vocabulary says: each channel with every event it documents, and every metric's words."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## How Customer.io webhooks map to Segment", 1)[1].split("\n## ")[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| `") and not line.startswith(("| `object_type`", "| `metric`"))
    ]
    channels = {r[0].strip("`"): re.findall(r"`([^`]+)`", r[1]) for r in rows if "," in r[1]}
    words = {r[0].strip("`"): r[1].strip("`") for r in rows if "," not in r[1]}
    assert channels == {c: [cio.event_name(c, m) for m in cio.documented(c)] for c in cio.CHANNELS}
    assert words == dict(cio.METRIC_NAMES)
