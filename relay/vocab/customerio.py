"""What a Customer.io reporting webhook is: its fields, channels and metrics, which kind of
activity it reports (the legacy `event_type` included), its event id and its person.

Sources, routing, mapping and the CLI read webhooks through these, so that a route matches
a webhook exactly as the mapping names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

# object_type → the words Segment events start with. Also every value object_type takes.
CHANNEL_NAMES: Final[Mapping[str, str]] = {
    "customer": "Customer",
    "email": "Email",
    "push": "Push",
    "sms": "SMS",
    "in_app": "In-App Message",
    "slack": "Slack Message",
    "webhook": "Webhook Message",
    "whatsapp": "WhatsApp Message",
}
CHANNELS: Final = tuple(CHANNEL_NAMES)

# The metrics Customer.io documents → the words Segment events end with. The set is open:
# new metrics appear, and are named from their own words.
METRIC_NAMES: Final[Mapping[str, str]] = {
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
METRICS: Final = tuple(METRIC_NAMES)

# What Customer.io's reporting webhooks reference documents for each channel (object_type).
# A subscription change is reported with the channel that triggered it (`customer` when no
# message did), so any channel may also carry SUBSCRIPTION_METRICS. `deferred` is in none:
# it is a metric of the Track API's delivery reports, named all the same when it comes.
# fmt: off
CHANNEL_METRICS: Final[Mapping[str, tuple[str, ...]]] = {
    "customer": (),
    "email": (
        "drafted", "attempted", "sent", "delivered", "opened", "clicked", "converted",
        "unsubscribed", "bounced", "dropped", "spammed", "failed", "undeliverable",
    ),
    "push": (
        "drafted", "attempted", "sent", "delivered", "opened", "clicked", "converted",
        "bounced", "dropped", "failed", "undeliverable",
    ),
    "sms": (
        "drafted", "attempted", "sent", "delivered", "clicked", "converted", "bounced",
        "failed", "undeliverable", "replied",
    ),
    "in_app": (
        "drafted", "attempted", "sent", "opened", "clicked", "converted", "failed",
        "undeliverable",
    ),
    "slack": ("drafted", "attempted", "sent", "clicked", "failed", "undeliverable"),
    "webhook": ("drafted", "attempted", "sent", "clicked", "failed", "undeliverable"),
    "whatsapp": (
        "drafted", "attempted", "sent", "delivered", "opened", "clicked", "converted",
        "bounced", "dropped", "failed", "undeliverable", "replied",
    ),
}
# fmt: on
SUBSCRIPTION_METRICS: Final = ("subscribed", "unsubscribed", "cio_subscription_preferences_changed")
PREFERENCES_CHANGED: Final = "cio_subscription_preferences_changed"

# Channels whose `recipient` is the person's phone number (E.164).
PHONE_CHANNELS: Final = frozenset({"sms", "whatsapp"})


def documented(object_type: str) -> tuple[str, ...]:
    """Every metric Customer.io documents for a channel, in the reference's order, the
    subscription metrics last; () for a channel it does not document."""
    if object_type not in CHANNEL_METRICS:
        return ()
    own = CHANNEL_METRICS[object_type]
    return (*own, *(m for m in SUBSCRIPTION_METRICS if m not in own))


# fmt: off
FIELDS: Final = frozenset({
    "event_id", "object_type", "metric", "event_type", "timestamp", "data",
})
DATA_FIELDS: Final = frozenset({
    "customer_id", "identifiers", "email_address", "recipient", "recipients", "delivery_id",
    "campaign_id", "action_id", "broadcast_id", "newsletter_id", "transactional_message_id",
    "journey_id", "parent_action_id", "trigger_id", "trigger_event_id", "content_id",
    "subject", "content", "headers", "href", "link_id", "failure_message", "email_id",
    "campaign_name", "template_id",
    # email opened / clicked: how the open or click came about
    "prefetched", "proxied", "synthetic", "machine",
    # in-app clicked: the action name of what was tapped
    "tracked_response",
    # SMS / WhatsApp replied: the inbound message, and the number it was sent to
    "inbound_event_id", "to",
    # subscription preferences changed: the preferences as an object, where a payload has it
    "subscription_preferences",
})
# fmt: on

# Legacy `event_type` values are "<channel>_<metric>"; the longest channel wins so that a
# multi-word channel such as `in_app` is never split at its own underscore.
_LEGACY_PREFIXES = sorted(CHANNEL_NAMES, key=len, reverse=True)
_WORD_BREAKS = re.compile(r"[\s_]+")


def kind(payload: Mapping[str, Any]) -> tuple[str, str] | str:
    """(object_type, metric) of a webhook, or why it has none.

    From `object_type` and `metric`, or else from a legacy `event_type` ("email_opened",
    "In_App_Clicked"). A channel or metric that is known, in any letter case, is given in
    its own (lower-case) spelling; others as sent.
    """
    object_type = payload.get("object_type")
    metric = payload.get("metric")
    if object_type is None and isinstance(metric, str):
        object_type = _preferences_channel(payload, metric)
    if isinstance(object_type, str) and isinstance(metric, str):
        return _known(object_type, CHANNEL_NAMES), _known(metric, METRIC_NAMES)
    event_type = payload.get("event_type")
    if isinstance(event_type, str):
        return _split_legacy(event_type)
    if object_type is None and metric is None:
        return "webhook has neither object_type/metric nor a legacy event_type"
    return f"webhook object_type {object_type!r} and metric {metric!r} must both be strings"


def _preferences_channel(payload: Mapping[str, Any], metric: str) -> str | None:
    """The channel of a subscription preferences change that has no `object_type`.

    Customer.io's reference names that event's channel `object_type_type`, and says the
    channel is `customer` when no message triggered the change; a payload without either
    key is taken to be that.
    """
    if metric.lower() != PREFERENCES_CHANGED:
        return None
    spelled = payload.get("object_type_type")
    if spelled is None:
        return "customer"
    return spelled if isinstance(spelled, str) else None


def _known(word: str, names: Mapping[str, str]) -> str:
    if word in names:
        return word
    lowered = word.lower()
    return lowered if lowered in names else word


def _split_legacy(event_type: str) -> tuple[str, str] | str:
    lowered = event_type.lower()
    for channel in _LEGACY_PREFIXES:
        if lowered.startswith(channel + "_") and len(lowered) > len(channel) + 1:
            return channel, _known(event_type[len(channel) + 1 :], METRIC_NAMES)
    # An unknown channel: its first word is the channel, the rest the metric, both kept open.
    head, sep, tail = event_type.partition("_")
    if sep and head and tail:
        return head, _known(tail, METRIC_NAMES)
    return f"legacy event_type {event_type!r} is not <channel>_<metric>"


def title_words(text: str) -> str:
    """`foo_bar baz` → `Foo Bar Baz`; only first letters are raised, so that acronyms and
    camelCase inside a word survive. Empty when `text` has no words."""
    return " ".join(word[:1].upper() + word[1:] for word in _WORD_BREAKS.split(text) if word)


def event_name(object_type: str, metric: str) -> str:
    """Segment event name for a channel and metric: `Email Link Clicked`, `Customer Subscribed`.

    Unknown channels and metrics are written as their words in Title Case (`foo_bar` →
    `Foo Bar`); an empty result means the input had no words.
    """
    channel = CHANNEL_NAMES.get(object_type.lower()) or title_words(object_type)
    action = METRIC_NAMES.get(metric.lower()) or title_words(metric)
    return f"{channel} {action}".strip()


def id_string(value: Any) -> str | None:
    """An identifier as text: a non-blank string as given, an integer in decimal."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        # An integer too long for str() (over 4300 digits) is no identifier anyway.
        return str(value) if abs(value) < 10**100 else None
    return text(value)


def text(value: Any) -> str | None:
    """A non-blank string as given, else None."""
    if isinstance(value, str) and value.strip():
        return value
    return None


def event_id(payload: object) -> str | None:
    """The webhook's `event_id` (its de-duplication key), or None when there is none usable.

    A JSON integer is accepted and written in decimal; anything else must be a non-empty string.
    """
    if not isinstance(payload, Mapping):
        return None
    return id_string(payload.get("event_id"))


def person(data: Mapping[str, Any], object_type: str) -> tuple[str | None, str | None]:
    """(userId, email) of the person a webhook's `data` is about; the email is given even
    with a userId. An email's recipient is its address."""
    identifiers = data.get("identifiers")
    if not isinstance(identifiers, Mapping):
        identifiers = {}
    user_id = id_string(identifiers.get("id")) or id_string(data.get("customer_id"))
    email = text(identifiers.get("email")) or text(data.get("email_address"))
    if email is None and object_type.lower() == "email":
        email = text(data.get("recipient"))
    return user_id, email


def person_key(payload: object) -> str:
    """A stable key naming the webhook's person, for keeping one person's events in order.

    `user:<id>` or `email:<address>` as `person` finds them, else `cio:<cio_id>`, else
    `event:<event_id>` (nothing to order against), else `unidentified`.
    """
    if not isinstance(payload, Mapping):
        return "unidentified"
    data = payload.get("data")
    if isinstance(data, Mapping):
        found = kind(payload)
        object_type = found[0] if isinstance(found, tuple) else ""
        user_id, email = person(data, object_type)
        if user_id is not None:
            return f"user:{user_id}"
        if email is not None:
            return f"email:{email}"
        identifiers = data.get("identifiers")
        if isinstance(identifiers, Mapping):
            cio_id = id_string(identifiers.get("cio_id"))
            if cio_id is not None:
                return f"cio:{cio_id}"
    found_id = event_id(payload)
    if found_id is not None:
        return f"event:{found_id}"
    return "unidentified"
