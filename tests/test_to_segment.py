"""Tests for mapping Customer.io reporting webhooks to Segment track messages."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import __version__
from relay.mapping import Rejection
from relay.mapping.to_segment import PROFILES, map_webhook
from relay.vocab.customerio import event_id as webhook_event_id
from relay.vocab.customerio import event_name
from relay.vocab.customerio import person_key as webhook_person_key

RECEIVED = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
RECEIVED_ISO = "2023-11-14T22:13:20.250Z"
LIBRARY = {"name": "relay", "version": __version__}

# Written out here rather than imported so that a change to the module's tables shows up.
CHANNELS = {
    "email": "Email",
    "push": "Push",
    "sms": "SMS",
    "in_app": "In-App Message",
    "slack": "Slack Message",
    "webhook": "Webhook Message",
    "whatsapp": "WhatsApp Message",
    "customer": "Customer",
}
METRICS = {
    "drafted": "Drafted",
    "attempted": "Attempted",
    "sent": "Sent",
    "delivered": "Delivered",
    "opened": "Opened",
    "clicked": "Link Clicked",
    "converted": "Converted",
    "bounced": "Bounced",
    "dropped": "Dropped",
    "spammed": "Marked as Spam",
    "failed": "Failed",
    "undeliverable": "Undeliverable",
    "deferred": "Deferred",
    "subscribed": "Subscribed",
    "unsubscribed": "Unsubscribed",
    "replied": "Replied",
    "cio_subscription_preferences_changed": "Subscription Preferences Changed",
}


def webhook(
    object_type: str = "email",
    metric: str = "opened",
    *,
    event_id: Any = "01HQ7Z8K3M4N5P6Q7R8S9T0V1W",
    timestamp: Any = 1_710_000_000,
    **data: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"event_id": event_id, "object_type": object_type, "metric": metric}
    if timestamp is not None:
        payload["timestamp"] = timestamp
    payload["data"] = data or {"customer_id": "cust-7"}
    return payload


def mapped(payload: Any, profile: str = "default") -> dict[str, Any]:
    result = map_webhook(payload, received_at=RECEIVED, profile=profile)
    assert isinstance(result, dict), result
    return result


def rejected(payload: Any, profile: str = "default") -> Rejection:
    result = map_webhook(payload, received_at=RECEIVED, profile=profile)
    assert isinstance(result, Rejection), result
    assert result.reason
    return result


# --- event names -------------------------------------------------------------------------


@pytest.mark.parametrize(("object_type", "metric"), list(itertools.product(CHANNELS, METRICS)))
def test_event_name_for_every_channel_and_metric(object_type: str, metric: str) -> None:
    message = mapped(webhook(object_type, metric))
    assert message["event"] == f"{CHANNELS[object_type]} {METRICS[metric]}"
    assert message["properties"]["object_type"] == object_type
    assert message["properties"]["metric"] == metric


@pytest.mark.parametrize(
    ("object_type", "metric", "expected"),
    [
        ("email", "opened", "Email Opened"),
        ("email", "clicked", "Email Link Clicked"),
        ("email", "spammed", "Email Marked as Spam"),
        ("sms", "clicked", "SMS Link Clicked"),
        ("customer", "unsubscribed", "Customer Unsubscribed"),
        ("email", "foo_bar", "Email Foo Bar"),
        ("push", "very_new__metric", "Push Very New Metric"),
        ("sms", "reAction", "SMS ReAction"),
        ("carrier_pigeon", "sent", "Carrier Pigeon Sent"),
        ("Email", "OPENED", "Email Opened"),
    ],
)
def test_event_names(object_type: str, metric: str, expected: str) -> None:
    assert event_name(object_type, metric) == expected
    assert mapped(webhook(object_type, metric))["event"] == expected


def test_unknown_metric_keeps_raw_metric_in_properties() -> None:
    message = mapped(webhook("whatsapp", "read_receipt"))
    assert message["event"] == "WhatsApp Message Read Receipt"
    assert message["properties"]["metric"] == "read_receipt"


@pytest.mark.parametrize(
    ("object_type", "metric"),
    [("", "opened"), ("email", ""), ("email", "___"), ("  ", "sent")],
)
def test_wordless_channel_or_metric_is_rejected(object_type: str, metric: str) -> None:
    assert "event" in rejected(webhook(object_type, metric)).reason


# --- legacy format -----------------------------------------------------------------------


def legacy(event_type: Any, **data: Any) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "event_id": "a1b2c3d4e5f6a7b8c9d0",
        "timestamp": 1_400_000_000,
        "data": data or {"customer_id": "legacy-1"},
    }


@pytest.mark.parametrize(
    ("event_type", "event", "object_type", "metric"),
    [
        ("email_delivered", "Email Delivered", "email", "delivered"),
        ("email_clicked", "Email Link Clicked", "email", "clicked"),
        ("email_spammed", "Email Marked as Spam", "email", "spammed"),
        ("customer_unsubscribed", "Customer Unsubscribed", "customer", "unsubscribed"),
        ("customer_subscribed", "Customer Subscribed", "customer", "subscribed"),
        ("in_app_opened", "In-App Message Opened", "in_app", "opened"),
        ("in_app_clicked", "In-App Message Link Clicked", "in_app", "clicked"),
        ("push_sent", "Push Sent", "push", "sent"),
        ("sms_bounced", "SMS Bounced", "sms", "bounced"),
        ("slack_failed", "Slack Message Failed", "slack", "failed"),
        ("webhook_attempted", "Webhook Message Attempted", "webhook", "attempted"),
        ("whatsapp_replied", "WhatsApp Message Replied", "whatsapp", "replied"),
        (
            "email_cio_subscription_preferences_changed",
            "Email Subscription Preferences Changed",
            "email",
            "cio_subscription_preferences_changed",
        ),
        ("email_foo_bar", "Email Foo Bar", "email", "foo_bar"),
        ("fax_sent", "Fax Sent", "fax", "sent"),
    ],
)
def test_legacy_event_type(event_type: str, event: str, object_type: str, metric: str) -> None:
    message = mapped(legacy(event_type))
    assert message["event"] == event
    assert message["properties"]["object_type"] == object_type
    assert message["properties"]["metric"] == metric


@pytest.mark.parametrize("event_type", ["delivered", "email_", "_sent", "", 7, None, ["email"]])
def test_legacy_event_type_unusable(event_type: Any) -> None:
    rejected(legacy(event_type))


def test_legacy_email_full_message() -> None:
    payload = {
        "event_type": "email_opened",
        "event_id": "9f8e7d6c5b4a39281706",
        "timestamp": 1_420_070_400,
        "data": {
            "customer_id": "881",
            "email_address": "reader@example.org",
            "email_id": "5120",
            "subject": "Your weekly digest",
            "campaign_id": "77",
            "campaign_name": "Weekly digest",
            "template_id": "402",
        },
    }
    assert mapped(payload) == {
        "type": "track",
        "event": "Email Opened",
        "userId": "881",
        "properties": {
            "event_id": "9f8e7d6c5b4a39281706",
            "object_type": "email",
            "metric": "opened",
            "email_id": "5120",
            "email_subject": "Your weekly digest",
            "campaign_id": "77",
            "campaign_name": "Weekly digest",
            "template_id": "402",
        },
        "timestamp": "2015-01-01T00:00:00.000Z",
        "messageId": "cio-9f8e7d6c5b4a39281706",
        "context": {
            "library": LIBRARY,
            "integration": {"name": "Customer.io"},
            "traits": {"email": "reader@example.org"},
        },
        "integrations": {"Customer.io": False},
    }


def test_current_format_wins_over_legacy_event_type() -> None:
    payload = webhook("sms", "sent")
    payload["event_type"] = "email_opened"
    assert mapped(payload)["event"] == "SMS Sent"


def test_delivery_id_preferred_over_legacy_email_id() -> None:
    props = mapped(webhook(delivery_id="DLV-1", email_id="legacy-9", customer_id="c"))["properties"]
    assert props["email_id"] == "DLV-1"
    assert props["delivery_id"] == "DLV-1"


# --- the person --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("object_type", "data", "identity"),
    [
        ("email", {"identifiers": {"id": "id-1"}, "customer_id": "cust-1"}, {"userId": "id-1"}),
        ("email", {"customer_id": "cust-1"}, {"userId": "cust-1"}),
        ("email", {"identifiers": {"email": "x@y.io"}, "customer_id": 55}, {"userId": "55"}),
        ("push", {"identifiers": {"id": 12}}, {"userId": "12"}),
        ("email", {"identifiers": {"id": ""}, "customer_id": "cust-2"}, {"userId": "cust-2"}),
        ("email", {"identifiers": {"email": "a@b.co"}}, {"anonymousId": "a@b.co"}),
        (
            "email",
            {"identifiers": {"email": "a@b.co"}, "email_address": "c@d.co", "recipient": "e@f.co"},
            {"anonymousId": "a@b.co"},
        ),
        ("customer", {"email_address": "c@d.co"}, {"anonymousId": "c@d.co"}),
        ("email", {"email_address": "c@d.co", "recipient": "e@f.co"}, {"anonymousId": "c@d.co"}),
        ("email", {"recipient": "e@f.co"}, {"anonymousId": "e@f.co"}),
        (
            "email",
            {"identifiers": {"cio_id": "c10"}, "recipient": "e@f.co"},
            {"anonymousId": "e@f.co"},
        ),
        ("email", {"identifiers": "not-an-object", "customer_id": "c3"}, {"userId": "c3"}),
    ],
)
def test_identity(object_type: str, data: dict[str, Any], identity: dict[str, str]) -> None:
    message = mapped(webhook(object_type, "sent", **data))
    assert {k: message[k] for k in ("userId", "anonymousId") if k in message} == identity


@pytest.mark.parametrize(
    ("object_type", "data"),
    [
        ("sms", {"recipient": "+15550100"}),
        ("slack", {"recipient": "#general"}),
        ("webhook", {"recipient": "https://hooks.example.com/x"}),
        ("push", {"identifiers": {"cio_id": "abc123"}}),
        ("email", {"identifiers": {"id": None, "email": None}, "customer_id": None}),
        ("email", {"identifiers": {"id": True}, "customer_id": False}),
        ("email", {"customer_id": "   ", "email_address": ""}),
        ("email", {"customer_id": 4.5, "identifiers": {"id": ["x"]}}),
        ("email", {"delivery_id": "only-a-delivery"}),
    ],
)
def test_no_person_is_rejected(object_type: str, data: dict[str, Any]) -> None:
    reason = rejected(webhook(object_type, "sent", **data)).reason
    assert "person" in reason


def test_missing_or_null_data_is_rejected_for_no_person() -> None:
    payload = webhook()
    del payload["data"]
    assert "person" in rejected(payload).reason
    payload["data"] = None
    assert "person" in rejected(payload).reason


# --- context.traits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("object_type", "data", "traits"),
    [
        (
            "email",
            {"customer_id": "1", "recipient": "r@x.io", "identifiers": {"cio_id": "cio9"}},
            {"email": "r@x.io", "cio_id": "cio9"},
        ),
        (
            "email",
            {"customer_id": "1", "identifiers": {"email": "i@x.io"}, "recipient": "r@x.io"},
            {"email": "i@x.io"},
        ),
        ("sms", {"customer_id": "1", "recipient": "+447700900123"}, {"phone": "+447700900123"}),
        (
            "sms",
            {"customer_id": "1", "recipient": "+15550100", "email_address": "s@x.io"},
            {"email": "s@x.io", "phone": "+15550100"},
        ),
        # A WhatsApp recipient is a phone number too.
        ("whatsapp", {"customer_id": "1", "recipient": "+15550100"}, {"phone": "+15550100"}),
        ("slack", {"customer_id": "1", "recipient": "#alerts"}, None),
        ("webhook", {"customer_id": "1", "recipient": "https://h.example.com"}, None),
        ("push", {"customer_id": "1", "identifiers": {"cio_id": "p1"}}, {"cio_id": "p1"}),
        ("in_app", {"customer_id": "1"}, None),
        ("customer", {"customer_id": "1", "email_address": "c@x.io"}, {"email": "c@x.io"}),
    ],
)
def test_context_traits_by_channel(
    object_type: str, data: dict[str, Any], traits: dict[str, str] | None
) -> None:
    context = mapped(webhook(object_type, "sent", **data))["context"]
    assert context.get("traits") == traits
    assert context["library"] == LIBRARY
    assert context["integration"] == {"name": "Customer.io"}


# --- properties --------------------------------------------------------------------------

EVERY_FIELD = {
    "customer_id": "42",
    "identifiers": {"id": "42", "email": "p@q.io", "cio_id": "cio42"},
    "email_address": "p@q.io",
    "recipient": "+15550199",
    "recipients": [{"device_id": "tok-1", "device_platform": "ios"}],
    "delivery_id": "DLV42",
    "campaign_id": 3,
    "action_id": 4,
    "broadcast_id": 5,
    "newsletter_id": 6,
    "transactional_message_id": 7,
    "journey_id": "jrn-8",
    "parent_action_id": 9,
    "trigger_id": "trg-10",
    "content_id": 11,
    "subject": "Subject line",
    "content": "Body text",
    "headers": {"X-Thing": ["1"]},
    "href": "https://example.com/a?b=c",
    "link_id": 12,
    "failure_message": "carrier rejected",
    "trigger_event_id": "01HQTRIGGER",
    "prefetched": False,
    "proxied": True,
    "synthetic": False,
    "machine": False,
    "tracked_response": "accept",
    "inbound_event_id": "01HQINBOUND",
    "to": "+15550000",
}


def test_default_profile_every_field() -> None:
    props = mapped(webhook("sms", "clicked", **EVERY_FIELD))["properties"]
    assert props == {
        "event_id": "01HQ7Z8K3M4N5P6Q7R8S9T0V1W",
        "object_type": "sms",
        "metric": "clicked",
        "email_id": "DLV42",
        "email_subject": "Subject line",
        "campaign_id": 3,
        "link_url": "https://example.com/a?b=c",
        "link_id": "12",
        "reason": "carrier rejected",
        "delivery_id": "DLV42",
        "action_id": 4,
        "broadcast_id": 5,
        "newsletter_id": 6,
        "transactional_message_id": 7,
        "journey_id": "jrn-8",
        "parent_action_id": 9,
        "trigger_id": "trg-10",
        "trigger_event_id": "01HQTRIGGER",
        "content_id": 11,
        "recipient": "+15550199",
        "recipients": [{"device_id": "tok-1", "device_platform": "ios"}],
        "content": "Body text",
        "prefetched": False,
        "proxied": True,
        "synthetic": False,
        "machine": False,
        "tracked_response": "accept",
        "inbound_event_id": "01HQINBOUND",
        "to": "+15550000",
    }


def test_email_recipient_not_repeated_in_properties() -> None:
    props = mapped(webhook("email", "sent", customer_id="1", recipient="r@x.io"))["properties"]
    assert "recipient" not in props


def test_absent_and_null_fields_are_omitted() -> None:
    data: dict[str, Any] = {key: None for key in EVERY_FIELD}
    data["customer_id"] = "only-me"
    props = mapped(webhook("push", "sent", **data))["properties"]
    assert props == {
        "event_id": "01HQ7Z8K3M4N5P6Q7R8S9T0V1W",
        "object_type": "push",
        "metric": "sent",
    }
    assert None not in props.values()


@pytest.mark.parametrize(
    ("link_id", "expected"),
    [(3, "3"), ("3", "3"), (3.0, "3"), (0, "0"), (None, None), (True, None), ({"a": 1}, None)],
)
def test_link_id_is_a_string(link_id: Any, expected: str | None) -> None:
    props = mapped(webhook("email", "clicked", customer_id="1", link_id=link_id))["properties"]
    assert props.get("link_id") == expected


def test_properties_keep_falsy_values_that_are_not_null() -> None:
    props = mapped(webhook("email", "sent", customer_id="1", campaign_id=0, subject=""))[
        "properties"
    ]
    assert props["campaign_id"] == 0
    assert props["email_subject"] == ""


def test_raw_profile_copies_data_as_is() -> None:
    data = dict(EVERY_FIELD, unknown_field={"nested": [1, 2]}, nothing=None)
    message = mapped(webhook("sms", "clicked", **data), profile="raw")
    assert message["properties"] == {
        **data,
        "event_id": "01HQ7Z8K3M4N5P6Q7R8S9T0V1W",
        "object_type": "sms",
        "metric": "clicked",
    }
    # Only properties differ between the profiles.
    default = mapped(webhook("sms", "clicked", **data))
    assert {k: v for k, v in message.items() if k != "properties"} == {
        k: v for k, v in default.items() if k != "properties"
    }


def test_raw_profile_envelope_fields_override_data() -> None:
    payload = webhook("email", "opened")
    payload["data"] = {"customer_id": "1", "metric": "spoofed", "event_id": "x"}
    props = mapped(payload, profile="raw")["properties"]
    assert props["metric"] == "opened"
    assert props["event_id"] == "01HQ7Z8K3M4N5P6Q7R8S9T0V1W"
    assert props["customer_id"] == "1"


def test_raw_profile_legacy_gets_derived_object_type_and_metric() -> None:
    props = mapped(legacy("in_app_opened", customer_id="9", template_id=1), profile="raw")[
        "properties"
    ]
    assert props == {
        "customer_id": "9",
        "template_id": 1,
        "event_id": "a1b2c3d4e5f6a7b8c9d0",
        "object_type": "in_app",
        "metric": "opened",
    }


def test_unknown_profile_is_rejected() -> None:
    assert "profile" in rejected(webhook(), profile="camelCase").reason
    assert PROFILES == ("default", "raw")


def test_input_is_not_modified() -> None:
    payload = webhook("email", "clicked", **EVERY_FIELD)
    before = copy.deepcopy(payload)
    for profile in PROFILES:
        message = mapped(payload, profile=profile)
        message["properties"]["event_id"] = "changed"
    assert payload == before


# --- timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1_585_250_199, "2020-03-26T19:16:39.000Z"),
        ("1585250199", "2020-03-26T19:16:39.000Z"),
        (1_585_250_199.5, "2020-03-26T19:16:39.500Z"),
        (1_585_250_199.1239, "2020-03-26T19:16:39.123Z"),
        ("1585250199.75", "2020-03-26T19:16:39.750Z"),
        (1, "1970-01-01T00:00:01.000Z"),
        (253_402_300_799, "9999-12-31T23:59:59.000Z"),
        (None, RECEIVED_ISO),
        ("abc", RECEIVED_ISO),
        ("", RECEIVED_ISO),
        (" 1585250199", RECEIVED_ISO),
        ("1.5e9", RECEIVED_ISO),
        ("-1585250199", RECEIVED_ISO),
        ("2020-03-26T19:16:39Z", RECEIVED_ISO),
        (0, RECEIVED_ISO),
        (-5, RECEIVED_ISO),
        (True, RECEIVED_ISO),
        (float("nan"), RECEIVED_ISO),
        (float("inf"), RECEIVED_ISO),
        (1e300, RECEIVED_ISO),
        (253_402_300_800, RECEIVED_ISO),
        (1_585_250_199_000, RECEIVED_ISO),
        ([1585250199], RECEIVED_ISO),
        ({"s": 1}, RECEIVED_ISO),
    ],
)
def test_timestamp(timestamp: Any, expected: str) -> None:
    payload = webhook()
    if timestamp is None:
        del payload["timestamp"]
    else:
        payload["timestamp"] = timestamp
    assert mapped(payload)["timestamp"] == expected


def test_invalid_received_at_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="received_at"):
        map_webhook(webhook(), received_at=float("nan"))


# --- whole messages ----------------------------------------------------------------------


def test_full_message_email_clicked() -> None:
    payload = {
        "event_id": "01HR2B3C4D5E6F7G8H9J0K1M2N",
        "object_type": "email",
        "metric": "clicked",
        "timestamp": 1_712_345_678,
        "data": {
            "customer_id": "u-1001",
            "identifiers": {"id": "u-1001", "email": "ada@example.net", "cio_id": "f00d0001"},
            "delivery_id": "DLVabc==",
            "campaign_id": 14,
            "action_id": 88,
            "subject": "Spring sale",
            "recipient": "ada@example.net",
            "href": "https://shop.example.net/sale",
            "link_id": 2,
        },
    }
    assert mapped(payload) == {
        "type": "track",
        "event": "Email Link Clicked",
        "userId": "u-1001",
        "properties": {
            "event_id": "01HR2B3C4D5E6F7G8H9J0K1M2N",
            "object_type": "email",
            "metric": "clicked",
            "email_id": "DLVabc==",
            "email_subject": "Spring sale",
            "campaign_id": 14,
            "link_url": "https://shop.example.net/sale",
            "link_id": "2",
            "delivery_id": "DLVabc==",
            "action_id": 88,
        },
        "timestamp": "2024-04-05T19:34:38.000Z",
        "messageId": "cio-01HR2B3C4D5E6F7G8H9J0K1M2N",
        "context": {
            "library": LIBRARY,
            "integration": {"name": "Customer.io"},
            "traits": {"email": "ada@example.net", "cio_id": "f00d0001"},
        },
        "integrations": {"Customer.io": False},
    }


def test_full_message_anonymous_email_bounced_with_string_timestamp() -> None:
    payload = {
        "event_id": "01HS000000000000000000BNCE",
        "object_type": "email",
        "metric": "bounced",
        "timestamp": "1700000123",
        "data": {
            "identifiers": {"cio_id": "beef0002"},
            "recipient": "gone@example.com",
            "delivery_id": "DLVbounce",
            "newsletter_id": 31,
            "failure_message": "550 mailbox unavailable",
        },
    }
    assert mapped(payload) == {
        "type": "track",
        "event": "Email Bounced",
        "anonymousId": "gone@example.com",
        "properties": {
            "event_id": "01HS000000000000000000BNCE",
            "object_type": "email",
            "metric": "bounced",
            "email_id": "DLVbounce",
            "reason": "550 mailbox unavailable",
            "delivery_id": "DLVbounce",
            "newsletter_id": 31,
        },
        "timestamp": "2023-11-14T22:15:23.000Z",
        "messageId": "cio-01HS000000000000000000BNCE",
        "context": {
            "library": LIBRARY,
            "integration": {"name": "Customer.io"},
            "traits": {"email": "gone@example.com", "cio_id": "beef0002"},
        },
        "integrations": {"Customer.io": False},
    }


def test_full_message_sms_sent_without_timestamp() -> None:
    payload = {
        "event_id": "01HT1111111111111111111SMS",
        "object_type": "sms",
        "metric": "sent",
        "data": {
            "customer_id": 9001,
            "recipient": "+15550123",
            "delivery_id": "DLVsms",
            "broadcast_id": 4,
            "content": "Your code is 1234",
        },
    }
    assert mapped(payload) == {
        "type": "track",
        "event": "SMS Sent",
        "userId": "9001",
        "properties": {
            "event_id": "01HT1111111111111111111SMS",
            "object_type": "sms",
            "metric": "sent",
            "email_id": "DLVsms",
            "delivery_id": "DLVsms",
            "broadcast_id": 4,
            "content": "Your code is 1234",
            "recipient": "+15550123",
        },
        "timestamp": RECEIVED_ISO,
        "messageId": "cio-01HT1111111111111111111SMS",
        "context": {
            "library": LIBRARY,
            "integration": {"name": "Customer.io"},
            "traits": {"phone": "+15550123"},
        },
        "integrations": {"Customer.io": False},
    }


def test_full_message_customer_unsubscribed_raw_profile() -> None:
    payload = {
        "event_id": "01HV2222222222222222222UNS",
        "object_type": "customer",
        "metric": "unsubscribed",
        "timestamp": 1_600_000_000,
        "data": {"customer_id": "c-5", "email_address": "leaver@example.com"},
    }
    assert mapped(payload, profile="raw") == {
        "type": "track",
        "event": "Customer Unsubscribed",
        "userId": "c-5",
        "properties": {
            "customer_id": "c-5",
            "email_address": "leaver@example.com",
            "event_id": "01HV2222222222222222222UNS",
            "object_type": "customer",
            "metric": "unsubscribed",
        },
        "timestamp": "2020-09-13T12:26:40.000Z",
        "messageId": "cio-01HV2222222222222222222UNS",
        "context": {
            "library": LIBRARY,
            "integration": {"name": "Customer.io"},
            "traits": {"email": "leaver@example.com"},
        },
        "integrations": {"Customer.io": False},
    }


def test_message_is_json_serialisable() -> None:
    for profile in PROFILES:
        json.dumps(mapped(webhook("push", "clicked", **EVERY_FIELD), profile=profile))


# --- rejections --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [[], [webhook()], "text", 12, 1.5, None, True])
def test_non_object_body_is_rejected(body: Any) -> None:
    assert "not an object" in rejected(body).reason


@pytest.mark.parametrize("event_id", [None, "", "   ", True, 1.5, ["id"], {"id": 1}])
def test_missing_or_unusable_event_id_is_rejected(event_id: Any) -> None:
    assert "event_id" in rejected(webhook(event_id=event_id)).reason


def test_missing_event_id_key_is_rejected() -> None:
    payload = webhook()
    del payload["event_id"]
    assert "event_id" in rejected(payload).reason


def test_integer_event_id_is_accepted() -> None:
    assert mapped(webhook(event_id=12345))["messageId"] == "cio-12345"


def test_overlong_event_id_is_rejected() -> None:
    assert mapped(webhook(event_id="e" * 95))["messageId"] == "cio-" + "e" * 95
    assert "too long" in rejected(webhook(event_id="e" * 96)).reason


@pytest.mark.parametrize("data", [[{"customer_id": "1"}], "x", 3, True])
def test_data_of_wrong_type_is_rejected(data: Any) -> None:
    payload = webhook()
    payload["data"] = data
    assert "data" in rejected(payload).reason


@pytest.mark.parametrize(
    "changes",
    [
        {"object_type": None},
        {"metric": None},
        {"object_type": None, "metric": None},
        {"metric": 3},
        {"object_type": ["email"]},
    ],
)
def test_missing_object_type_or_metric_is_rejected(changes: dict[str, Any]) -> None:
    payload = webhook()
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    rejected(payload)


# --- helpers -----------------------------------------------------------------------------


def test_webhook_event_id() -> None:
    assert webhook_event_id({"event_id": "abc"}) == "abc"
    assert webhook_event_id({"event_id": 17}) == "17"
    assert webhook_event_id({"event_id": ""}) is None
    assert webhook_event_id({"event_id": None}) is None
    assert webhook_event_id({"event_id": False}) is None
    assert webhook_event_id({}) is None
    assert webhook_event_id([{"event_id": "abc"}]) is None
    assert webhook_event_id("abc") is None


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (webhook(customer_id="c1", identifiers={"id": "i1"}), "user:i1"),
        (webhook(customer_id="c1"), "user:c1"),
        (legacy("email_sent", customer_id=5), "user:5"),
        (webhook(identifiers={"email": "m@x.io", "cio_id": "z"}), "email:m@x.io"),
        (webhook("email", "sent", recipient="r@x.io"), "email:r@x.io"),
        (webhook("sms", "sent", recipient="+1555", identifiers={"cio_id": "z9"}), "cio:z9"),
        (webhook("sms", "sent", recipient="+1555"), "event:01HQ7Z8K3M4N5P6Q7R8S9T0V1W"),
        ({"event_id": "e1", "data": []}, "event:e1"),
        ({"event_id": "e2"}, "event:e2"),
        ({}, "unidentified"),
        ([1, 2], "unidentified"),
        (None, "unidentified"),
    ],
)
def test_webhook_person_key(payload: Any, key: str) -> None:
    assert webhook_person_key(payload) == key


def test_person_key_matches_mapped_identity() -> None:
    for data in (
        {"customer_id": "c1"},
        {"identifiers": {"email": "x@y.io"}},
        {"recipient": "r@y.io"},
    ):
        payload = webhook("email", "delivered", **data)
        message = mapped(payload)
        identity = message.get("userId") or message["anonymousId"]
        assert webhook_person_key(payload).endswith(":" + identity)


def test_person_key_is_stable() -> None:
    payload = webhook("push", "sent", identifiers={"cio_id": "k"})
    assert webhook_person_key(payload) == webhook_person_key(copy.deepcopy(payload))


# --- never raises ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
field_names = st.sampled_from(
    sorted(EVERY_FIELD) + ["email_id", "campaign_name", "template_id", "unknown"]
)
webhook_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.text(max_size=30) | json_values,
        "object_type": st.sampled_from([*CHANNELS, "fax", ""]) | json_values,
        "metric": st.sampled_from([*METRICS, "foo_bar", ""]) | json_values,
        "event_type": st.sampled_from(["email_sent", "in_app_opened", "x"]) | json_values,
        "timestamp": st.integers() | st.text(max_size=14) | json_values,
        "data": st.dictionaries(field_names, json_values, max_size=8)
        | st.fixed_dictionaries(
            {
                "identifiers": st.dictionaries(
                    st.sampled_from(["id", "email", "cio_id"]), json_values
                )
            }
        )
        | json_values,
    },
)


@settings(max_examples=300)
@given(
    payload=webhook_like | json_values,
    profile=st.sampled_from([*PROFILES, "other"]),
)
def test_map_webhook_never_raises(payload: Any, profile: str) -> None:
    result = map_webhook(payload, received_at=RECEIVED, profile=profile)
    assert isinstance(result, dict | Rejection)
    if isinstance(result, dict):
        assert result["type"] == "track"
        assert result["event"]
        assert ("userId" in result) != ("anonymousId" in result)
        assert result["messageId"].startswith("cio-")
        assert {"event_id", "object_type", "metric"} <= result["properties"].keys()
        json.dumps(result, allow_nan=True)
    assert isinstance(webhook_event_id(payload), str | None)
    assert isinstance(webhook_person_key(payload), str)


@given(
    data=st.dictionaries(field_names, json_values, max_size=10),
    object_type=st.sampled_from(list(CHANNELS)),
    metric=st.sampled_from(list(METRICS)),
)
def test_default_profile_never_emits_null(
    data: dict[str, Any], object_type: str, metric: str
) -> None:
    payload = {"event_id": "e", "object_type": object_type, "metric": metric, "data": data}
    result = map_webhook(payload, received_at=RECEIVED)
    if isinstance(result, dict):
        assert None not in result["properties"].values()
        assert result["event"] == f"{CHANNELS[object_type]} {METRICS[metric]}"


# --- what each channel carries -----------------------------------------------------------


@pytest.mark.parametrize(
    ("recipients", "device"),
    [
        ([{"device_id": "tok-1", "device_platform": "ios"}], {"token": "tok-1", "type": "ios"}),
        ([{"device_id": "tok-2"}], {"token": "tok-2"}),
        ([{"device_id": "tok-3", "device_platform": None}], {"token": "tok-3"}),
        # Several devices: none of them is the event's device.
        ([{"device_id": "a", "device_platform": "ios"}, {"device_id": "b"}], None),
        ([], None),
        ([{"device_id": ""}], None),
        ([{"device_id": 7}], None),
        (["tok"], None),
        ({"device_id": "tok"}, None),
    ],
)
def test_a_push_to_one_device_names_it_in_context_device(
    recipients: Any, device: dict[str, str] | None
) -> None:
    message = mapped(webhook("push", "delivered", customer_id="1", recipients=recipients))
    assert message["context"].get("device") == device
    # The devices are in the properties whatever their number.
    assert message["properties"]["recipients"] == recipients


def test_only_a_push_names_a_device() -> None:
    recipients = [{"device_id": "tok-1", "device_platform": "ios"}]
    message = mapped(webhook("in_app", "opened", customer_id="1", recipients=recipients))
    assert "device" not in message["context"]


@pytest.mark.parametrize(
    ("object_type", "metric", "data", "properties", "traits"),
    [
        (
            "whatsapp",
            "replied",
            {"recipient": "+15550123", "to": "+15559999", "inbound_event_id": "in-1"},
            {"recipient": "+15550123", "to": "+15559999", "inbound_event_id": "in-1"},
            {"phone": "+15550123"},
        ),
        (
            "sms",
            "replied",
            {"recipient": "+447700900123", "to": "+447700900999", "inbound_event_id": "in-2"},
            {"recipient": "+447700900123", "to": "+447700900999", "inbound_event_id": "in-2"},
            {"phone": "+447700900123"},
        ),
        ("slack", "sent", {"recipient": "#general"}, {"recipient": "#general"}, None),
        (
            "webhook",
            "clicked",
            {"recipient": "https://hooks.example.com/in", "href": "https://x.example"},
            {"recipient": "https://hooks.example.com/in", "link_url": "https://x.example"},
            None,
        ),
        (
            "in_app",
            "clicked",
            {"recipient": "42", "tracked_response": "accept", "href": "app://offer"},
            {"recipient": "42", "tracked_response": "accept", "link_url": "app://offer"},
            None,
        ),
        (
            "email",
            "opened",
            {"recipient": "o@x.io", "prefetched": True, "proxied": True, "synthetic": False},
            {"prefetched": True, "proxied": True, "synthetic": False},
            {"email": "o@x.io"},
        ),
        (
            "email",
            "clicked",
            {"recipient": "o@x.io", "machine": True, "trigger_event_id": "t-1"},
            {"machine": True, "trigger_event_id": "t-1"},
            {"email": "o@x.io"},
        ),
    ],
)
def test_channel_fields(
    object_type: str,
    metric: str,
    data: dict[str, Any],
    properties: dict[str, Any],
    traits: dict[str, str] | None,
) -> None:
    message = mapped(webhook(object_type, metric, customer_id="1", **data))
    assert message["properties"] == {
        "event_id": "01HQ7Z8K3M4N5P6Q7R8S9T0V1W",
        "object_type": object_type,
        "metric": metric,
        **properties,
    }
    assert message["context"].get("traits") == traits


PREFERENCES = {"topics": {"topic_1": True, "topic_7": False}}


@pytest.mark.parametrize(
    ("data", "preferences"),
    [
        # As Customer.io's reference gives it: the preferences as JSON text in `content`.
        ({"content": json.dumps(PREFERENCES)}, PREFERENCES),
        ({"subscription_preferences": PREFERENCES}, PREFERENCES),
        (
            {"subscription_preferences": PREFERENCES, "content": '{"topics": {}}'},
            PREFERENCES,
        ),
        ({"content": "not json"}, None),
        ({"content": "[1, 2]"}, None),
        ({"content": "[" * 100_000}, None),
        ({"subscription_preferences": "text", "content": None}, None),
        ({}, None),
    ],
)
def test_a_subscription_preferences_change_carries_the_preferences(
    data: dict[str, Any], preferences: dict[str, Any] | None
) -> None:
    message = mapped(
        webhook("customer", "cio_subscription_preferences_changed", customer_id="1", **data)
    )
    assert message["event"] == "Customer Subscription Preferences Changed"
    assert message["properties"].get("subscription_preferences") == preferences
    if isinstance(data.get("content"), str):
        assert message["properties"]["content"] == data["content"]  # kept as it came


def test_preferences_are_read_only_for_a_preferences_change() -> None:
    message = mapped(webhook("email", "sent", customer_id="1", content=json.dumps(PREFERENCES)))
    assert "subscription_preferences" not in message["properties"]


def test_a_preferences_change_as_the_reference_spells_it() -> None:
    payload = {
        "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
        "metric": "cio_subscription_preferences_changed",
        "object_type_type": "email",
        "timestamp": 1613063089,
        "data": {
            "customer_id": "42",
            "email_address": "test@example.com",
            "identifiers": {"id": "42", "email": "test@example.com", "cio_id": "d9c106000001"},
            "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
            "campaign_id": 23,
            "action_id": 96,
            "content": '{"topics":{"topic_1":true}}',
        },
    }
    assert mapped(payload) == {
        "type": "track",
        "event": "Email Subscription Preferences Changed",
        "userId": "42",
        "properties": {
            "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
            "object_type": "email",
            "metric": "cio_subscription_preferences_changed",
            "email_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
            "campaign_id": 23,
            "delivery_id": "RPILAgUBcRhIBqSfeiIwdIYJKxTY",
            "action_id": 96,
            "content": '{"topics":{"topic_1":true}}',
            "subscription_preferences": {"topics": {"topic_1": True}},
        },
        "timestamp": "2021-02-11T17:04:49.000Z",
        "messageId": "cio-01E4C4CT6YDC7Y5M7FE1GWWPQJ",
        "context": {
            "library": LIBRARY,
            "integration": {"name": "Customer.io"},
            "traits": {"email": "test@example.com", "cio_id": "d9c106000001"},
        },
        "integrations": {"Customer.io": False},
    }
