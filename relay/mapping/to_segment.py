"""Customer.io reporting webhook → Segment `track` message, as pure code."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from relay import __version__
from relay.codec import NOT_UNICODE, decode, holds_lone_surrogate
from relay.mapping import Rejection, json_type
from relay.vocab import customerio as cio
from relay.vocab import segment as seg

__all__ = ["PROFILES", "map_webhook"]

PROFILES: tuple[str, ...] = ("default", "raw")

# Segment caps messageId below 100 characters; longer would be dropped or truncated there.
_MAX_MESSAGE_ID = 99
_MESSAGE_ID_PREFIX = "cio-"

# Unix seconds, optionally with a fraction; larger than 12 digits is past year 9999 anyway.
_NUMERIC_TIMESTAMP = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z, the last instant ISO-8601 years can write

# Default profile: Segment Email spec names first, then the other `data` fields kept under
# their own names. `email_id`, `link_id`, `reason` and `recipient` are handled separately.
_RENAMED = (
    ("email_subject", "subject"),
    ("campaign_id", "campaign_id"),
    ("campaign_name", "campaign_name"),
    ("link_url", "href"),
)
_PASSED_THROUGH = (
    "delivery_id",
    "action_id",
    "broadcast_id",
    "newsletter_id",
    "transactional_message_id",
    "journey_id",
    "parent_action_id",
    "trigger_id",
    "trigger_event_id",
    "content_id",
    "template_id",
    "recipients",
    "content",
    # email opened / clicked: whether a machine, a proxy or an inferred open made it
    "prefetched",
    "proxied",
    "synthetic",
    "machine",
    # in-app clicked: the action name of what was tapped
    "tracked_response",
    # SMS / WhatsApp replied: the inbound message and the number it was sent to
    "inbound_event_id",
    "to",
)


def map_webhook(
    payload: Mapping[str, Any], *, received_at: float, profile: str = "default"
) -> dict[str, Any] | Rejection:
    """Map one Customer.io reporting webhook to a Segment `track` message.

    `received_at` (unix seconds) stands in for a missing or invalid event time. `profile` is
    `"default"` (Segment Email spec property names, absent fields left out) or `"raw"`
    (properties are `data` as sent — a shallow copy, nulls included — with `event_id`,
    `object_type` and `metric` set on top, overriding same-named `data` keys). Any payload
    that cannot be mapped, and an unknown profile, give a Rejection: this never raises for
    JSON-shaped input. Nested values in the result may be shared with `payload`.
    """
    received = _iso_timestamp(received_at)
    if received is None:
        raise ValueError(f"received_at is not a usable unix time: {received_at!r}")
    if profile not in PROFILES:
        return Rejection(f"unknown property profile {profile!r} (expected one of {PROFILES})")
    if not isinstance(payload, Mapping):
        return Rejection(f"webhook body is a JSON {json_type(payload)}, not an object")

    event_id = cio.event_id(payload)
    if event_id is None:
        return Rejection("webhook has no event_id (a non-empty string)")
    message_id = _MESSAGE_ID_PREFIX + event_id
    if len(message_id) > _MAX_MESSAGE_ID:
        return Rejection(
            f"event_id is {len(event_id)} characters, too long for a Segment messageId"
        )

    data = payload.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return Rejection(f"webhook `data` is a JSON {json_type(data)}, not an object")

    kind = cio.kind(payload)
    if isinstance(kind, str):
        return Rejection(kind)
    object_type, metric = kind
    if not cio.title_words(object_type) or not cio.title_words(metric):
        return Rejection(
            f"cannot name an event from object_type {object_type!r}, metric {metric!r}"
        )
    name = cio.event_name(object_type, metric)

    identity = cio.person(data, object_type)
    user_id, email = identity
    if user_id is None and email is None:
        return Rejection(
            "webhook names no person: no data.identifiers.id, data.customer_id, "
            "data.identifiers.email, data.email_address or email recipient"
        )
    for value in identity:
        if value is not None and holds_lone_surrogate(value):
            return Rejection(f"the webhook's {_person_field(data, value)} {NOT_UNICODE}")

    if profile == "raw":
        properties: dict[str, Any] = dict(data)
        properties.update(event_id=event_id, object_type=object_type, metric=metric)
    else:
        properties = _default_properties(data, event_id, object_type, metric)

    message: dict[str, Any] = {"type": "track", "event": name}
    if user_id is not None:
        message["userId"] = user_id
    else:
        message["anonymousId"] = email
    message["properties"] = properties
    message["timestamp"] = _iso_timestamp(payload.get("timestamp")) or received
    message["messageId"] = message_id
    context: dict[str, Any] = {
        "library": {"name": "relay", "version": __version__},
        "integration": {"name": seg.CUSTOMERIO_INTEGRATION},
    }
    traits = _traits(data, object_type, email)
    if traits:
        context["traits"] = traits
    device = _device(data, object_type)
    if device:
        context["device"] = device
    message["context"] = context
    # Keeps Segment from sending the event straight back to Customer.io.
    message["integrations"] = {seg.CUSTOMERIO_INTEGRATION: False}
    return message


def _person_field(data: Mapping[str, Any], value: str) -> str:
    """The field of `data` that `cio.person` took `value` from."""
    identifiers = data.get("identifiers")
    if isinstance(identifiers, Mapping):
        for name in ("id", "email"):
            if identifiers.get(name) is value:
                return f"data.identifiers.{name}"
    for name in ("customer_id", "email_address", "recipient"):
        if data.get(name) is value:
            return f"data.{name}"
    return "person"


def _traits(data: Mapping[str, Any], object_type: str, email: str | None) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    if email is not None:
        traits["email"] = email
    if object_type.lower() in cio.PHONE_CHANNELS:
        phone = cio.text(data.get("recipient"))
        if phone is not None:
            traits["phone"] = phone
    identifiers = data.get("identifiers")
    if isinstance(identifiers, Mapping):
        cio_id = cio.id_string(identifiers.get("cio_id"))
        if cio_id is not None:
            traits["cio_id"] = cio_id
    return traits


def _device(data: Mapping[str, Any], object_type: str) -> dict[str, Any]:
    """A push sent to one device: that device, as Segment's context.device (its push token
    and platform). Several devices are left to `properties.recipients`: no one of them is
    the event's device."""
    recipients = data.get("recipients")
    if object_type.lower() != "push" or not isinstance(recipients, list) or len(recipients) != 1:
        return {}
    [recipient] = recipients
    if not isinstance(recipient, Mapping):
        return {}
    token = cio.text(recipient.get("device_id"))
    if token is None:
        return {}
    device: dict[str, Any] = {"token": token}
    platform = cio.text(recipient.get("device_platform"))
    if platform is not None:
        device["type"] = platform
    return device


def _subscription_preferences(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The preferences a subscription preferences change reports: `data.subscription_preferences`
    where a payload has them as an object, else `data.content`, which Customer.io's reference
    gives as the preferences written as JSON text (`{"topics":{"topic_1":true}}`)."""
    given = data.get("subscription_preferences")
    if isinstance(given, Mapping):
        return given
    content = data.get("content")
    if not isinstance(content, str):
        return None
    try:
        parsed = decode(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, Mapping) else None


def _default_properties(
    data: Mapping[str, Any], event_id: str, object_type: str, metric: str
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "event_id": event_id,
        "object_type": object_type,
        "metric": metric,
    }
    # Current payloads name the message by delivery_id; legacy ones by email_id.
    email_id = data.get("delivery_id")
    if email_id is None:
        email_id = data.get("email_id")
    if email_id is not None:
        properties["email_id"] = email_id
    for target, source in _RENAMED:
        value = data.get(source)
        if value is not None:
            properties[target] = value
    link_id = _link_id(data.get("link_id"))
    if link_id is not None:
        # Segment's Email spec types link_id as a string; Customer.io sends a number.
        properties["link_id"] = link_id
    reason = data.get("failure_message")
    if reason is not None:
        properties["reason"] = reason
    for key in _PASSED_THROUGH:
        value = data.get(key)
        if value is not None:
            properties[key] = value
    # For email the recipient is the address, already in context.traits.email.
    recipient = data.get("recipient")
    if recipient is not None and object_type.lower() != "email":
        properties["recipient"] = recipient
    if metric.lower() == cio.PREFERENCES_CHANGED:
        preferences = _subscription_preferences(data)
        if preferences is not None:
            properties["subscription_preferences"] = preferences
    return properties


def _link_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _iso_timestamp(value: Any) -> str | None:
    """Unix seconds (number or numeric string) as ISO-8601 UTC with milliseconds, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        seconds = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        # repr is the shortest decimal that round-trips: 1.1 stays 1.1, not 1.1000000000000000888.
        seconds = Decimal(repr(value))
    elif isinstance(value, str) and _NUMERIC_TIMESTAMP.fullmatch(value):
        seconds = Decimal(value)
    else:
        return None
    if not 0 < seconds <= _MAX_SECONDS:
        return None
    millis = int((seconds * 1000).to_integral_value(rounding=ROUND_FLOOR))
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
