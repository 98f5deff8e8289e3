"""Segment message → neutral Customer.io operations, written as v2 batch ops or classic v1
requests, with Customer.io's limits checked before sending."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

from relay.codec import encode
from relay.mapping import Rejection, Skip, json_type
from relay.mapping.dates import convert_dates, iso_to_millis, iso_to_seconds
from relay.mapping.ulid import deterministic_ulid
from relay.outgoing import OutgoingRequest

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_NAME_BYTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_EVENT_NAME_BYTES",
    "MAX_IDENTIFIER_BYTES",
    "MAX_OPERATION_BYTES",
    "DEFAULTS",
    "IDENTIFIER_KINDS",
    "REPORTED_METRICS",
    "Action",
    "Device",
    "MappingOptions",
    "Operation",
    "Relationship",
    "check_limits",
    "encode_v1",
    "encode_v2",
    "metric_request",
    "travels_alone",
    "map_alias",
    "map_and_check",
    "map_and_encode_v2",
    "map_delete",
    "map_group",
    "map_identify",
    "map_message",
    "map_page",
    "map_screen",
    "map_track",
    "person_identifiers",
]

# Customer.io's limits, as its Track API documents them. "32 KB" is read as 32 × 1024 bytes,
# as Segment's own libraries read their identical per-message limit.
MAX_OPERATION_BYTES = 32 * 1024
MAX_IDENTIFIER_BYTES = 150
MAX_EVENT_NAME_BYTES = 100
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300

Action = Literal[
    "identify",
    "identify_anonymous",
    "event",
    "page",
    "screen",
    "delete",
    "suppress",
    "unsuppress",
    "add_device",
    "delete_device",
    "merge",
    "delete_relationships",
    "viewed_content",
    "clicked_content",
    "metric",
]

# What `POST /api/v1/metrics` accepts as `metric` (Customer.io's Track API reference; the
# same choices as Segment's Customer.io destination offers for Report Delivery Event).
REPORTED_METRICS = (
    "delivered",
    "opened",
    "clicked",
    "converted",
    "bounced",
    "spammed",
    "dropped",
    "deferred",
)


@dataclass(frozen=True)
class Device:
    """A push device: `platform` is `ios` or `android` on a device being added (None on one
    being deleted, which needs only its token); `last_used` is unix seconds."""

    token: str
    platform: str | None = None
    last_used: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Relationship:
    """A link between a person and an object, seen from whichever side the op addresses."""

    identifiers: dict[str, str]
    attributes: dict[str, Any] | None = None


# A named tuple rather than a frozen dataclass, which sets each field through
# object.__setattr__: building an op costs 0.5 µs instead of 1.4, out of some 11 µs for
# mapping a message and writing its ops, which delivery does for every message it sends.
class Operation(NamedTuple):
    """One thing to do in Customer.io, independent of the API version that will carry it.

    `identifiers` holds one of `id`, `email`, `cio_id`, `anonymous_id` for a person, or
    `object_type_id` and `object_id` for an object; a merge has `primary` and `secondary`
    instead. `id` is the event's de-duplication ULID; `timestamp` is unix seconds.

    A delivery metric (kind `delivery`, action `metric`) is about a message Customer.io sent:
    `identifiers` is `{"id": delivery_id}` (as in Customer.io's own `delivery` entity),
    `name` the metric, and `attributes` the optional `recipient`, `reason`, `href` and
    `metadata` of `POST /api/v1/metrics`, the one request that carries it.
    """

    kind: Literal["person", "object", "delivery"]
    action: Action
    identifiers: dict[str, str]  # empty for a merge
    name: str | None = None
    id: str | None = None
    timestamp: int | None = None
    attributes: dict[str, Any] | None = None
    device: Device | None = None
    primary: dict[str, str] | None = None
    secondary: dict[str, str] | None = None
    relationships: tuple[Relationship, ...] = ()

    @property
    def anonymous(self) -> bool:
        return "anonymous_id" in self.identifiers


Mapped = list[Operation] | Rejection | Skip

# The identifiers a Customer.io workspace may know people by, besides `cio_id`; which it
# uses is a setting of the workspace (Customer.io's Track API reference).
IDENTIFIER_KINDS = ("id", "email", "phone")


@dataclass(frozen=True)
class MappingOptions:
    """What a destination's settings change in the mapping: the identifiers its workspace
    knows people by (`id` always; `email` and `phone` when enabled there), and whether an
    identify may only update a person who exists (`_update: true`, never creating one)."""

    identifiers: frozenset[str] = frozenset({"id", "email"})
    update_only: bool = False


DEFAULTS = MappingOptions()

# Loose on purpose: one `@`, something either side, a dot in the domain, no spaces. Stricter
# checks reject real addresses; this only decides whether a userId *is* an address.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# E.164, as Customer.io takes a phone identifier: a + and up to 15 digits, the first not 0.
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_E164_WORDS = "E.164 form (a + then 2 to 15 digits, the first not 0, e.g. +14155552671)"
_PREFERENCES = "cio_subscription_preferences"
_TOPIC = re.compile(r"topic_[0-9]+")
_MILLISECONDS_ABOVE = 10**12
# Customer.io keeps push devices for `ios` and `android` only. Keys are the names Segment's
# libraries and mobile SDKs put in `context.device.type` or `context.os.name`, lowercased.
_PLATFORMS: Mapping[str, str] = {
    "ios": "ios",
    "ipados": "ios",
    "tvos": "ios",
    "watchos": "ios",
    "iphone os": "ios",
    "iphone": "ios",
    "ipad": "ios",
    "android": "android",
    "android os": "android",
}
_DEVICE_ADD_EVENTS = frozenset(
    {"Application Installed", "Application Opened", "Device Created or Updated"}
)
_DEVICE_DELETE_EVENTS = frozenset({"Application Uninstalled", "Device Deleted"})
# device attribute ← where in `context` it comes from; `device_os` is the OS version, as
# Customer.io's own mobile SDKs report it.
_DEVICE_CONTEXT_ATTRIBUTES = (
    ("app_version", ("app", "version")),
    ("device_model", ("device", "model")),
    ("device_os", ("os", "version")),
)
_PERSON_ACTION_EVENTS: Mapping[str, Action] = {
    "User Deleted": "delete",
    "User Suppressed": "suppress",
    "User Unsuppressed": "unsuppress",
}
_EVENT_ACTIONS = frozenset({"event", "page", "screen"})
_DELIVERY_EVENT = "Report Delivery Event"
_CONTENT_EVENT = "Report Content Event"
_CONTENT_ACTIONS: Mapping[str, Action] = {
    "viewed_content": "viewed_content",
    "clicked_content": "clicked_content",
}
# Actions whose attributes are event data (held to the op size, not the attribute limits).
_EVENT_DATA_ACTIONS = _EVENT_ACTIONS | frozenset(_CONTENT_ACTIONS)
# `POST /api/v1/metrics` field ← Report Delivery Event property; metadata for in-app clicks.
_METRIC_FIELDS = (("recipient", "recipient"), ("reason", "reason"), ("href", "href"))
_METRIC_METADATA = (("action_name", "actionName"), ("action_value", "actionValue"))
_DEFAULT_OBJECT_TYPE_ID = "1"
_GROUP_CONTROL_TRAITS = (
    "object_type_id",
    "objectTypeId",
    "objectAttributes",
    "relationshipAttributes",
)


# --- reading a message -----------------------------------------------------------------------


def _shown(text: str) -> str:
    """`text` quoted for a rejection reason, cut short so that a huge value cannot flood it."""
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "…"


def _text(value: Any) -> str | None:
    """A non-empty string, or a number written as Segment's JavaScript libraries would write it."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _id_field(message: Mapping[str, Any], key: str) -> str | None | Rejection:
    """An identity field (`userId`, `groupId`, …): absent, empty and null all mean not given."""
    value = message.get(key)
    if value is None or value == "":
        return None
    text = _text(value)
    if text is None:
        return Rejection(f"{key} must be a string or a number, got {json_type(value)}")
    return text


def _object_field(message: Mapping[str, Any], key: str) -> Mapping[str, Any] | Rejection:
    """A payload object (`traits`, `properties`), to be read, not changed: null or absent is
    empty; other types are wrong."""
    value = message.get(key)
    if value is None:
        return {}
    if isinstance(value, (dict, Mapping)):
        return value
    return Rejection(f"{key} must be an object, got {json_type(value)}")


def _hint(mapping: Mapping[str, Any] | None, *path: str) -> Any:
    """A nested optional value such as `context.device.token`; a wrong shape on the way is absent.

    Context is filled in by client libraries and is only ever a hint here, so a malformed one
    must not cost the message itself.
    """
    value: Any = mapping
    for key in path:
        # `dict` first: isinstance stops at it, far cheaper than the Mapping ABC's own check.
        if not isinstance(value, (dict, Mapping)):
            return None
        value = value.get(key)
    return value


def person_identifiers(
    user_id: str, options: MappingOptions = DEFAULTS, field: str = "userId"
) -> dict[str, str] | Rejection:
    """How Customer.io should address a person known by `user_id`.

    With phone identifiers, a userId starting with `+` is a phone number and must be one in
    E.164 form: an id never starts that way, so anything else is a mistyped number.
    """
    if user_id.startswith("cio_") and len(user_id) > 4:
        return {"cio_id": user_id[4:]}
    if "email" in options.identifiers and _EMAIL.fullmatch(user_id):
        return {"email": user_id}
    if "phone" in options.identifiers and user_id.startswith("+"):
        if _E164.fullmatch(user_id):
            return {"phone": user_id}
        return Rejection(
            f"{field} {_shown(user_id)} starts with + but is not a phone number in {_E164_WORDS};"
            " this destination identifies people by phone, so write the number that way, or"
            " the id without its +"
        )
    return {"id": user_id}


def _person(
    message: Mapping[str, Any], options: MappingOptions, traits: Mapping[str, Any] | None = None
) -> dict[str, str] | None | Rejection:
    """The person a call is about: userId, else an email from the identify's traits or the
    context's, else (with phone identifiers) a phone number from them, else the anonymousId."""
    user_id = _id_field(message, "userId")
    if user_id is not None:
        if isinstance(user_id, Rejection):
            return user_id
        return person_identifiers(user_id, options)
    context_traits = _hint(message, "context", "traits")
    places = [("context.traits", context_traits)]
    if traits is not None:
        places.insert(0, ("traits", traits))
    if "email" in options.identifiers:
        for _, where in places:
            email = _hint(where, "email")
            if isinstance(email, str) and email:
                return {"email": email}
    if "phone" in options.identifiers:
        for name, where in places:
            phone = _hint(where, "phone")
            if phone is None or phone == "":
                continue
            if isinstance(phone, str) and _E164.fullmatch(phone):
                return {"phone": phone}
            shown = _shown(phone) if isinstance(phone, str) else json_type(phone)
            return Rejection(
                f"{name}.phone {shown} is not a phone number in {_E164_WORDS}; this destination"
                " identifies people by phone, so write it that way, or send a userId"
            )
    anonymous_id = _id_field(message, "anonymousId")
    if anonymous_id is None or isinstance(anonymous_id, Rejection):
        return anonymous_id
    return {"anonymous_id": anonymous_id}


def _is_anonymous(person: Mapping[str, str]) -> bool:
    return "anonymous_id" in person


def _seconds_from_number(number: int | float) -> int:
    if number > _MILLISECONDS_ABOVE:
        return number // 1000 if isinstance(number, int) else math.floor(number / 1000)
    return math.floor(number)


def _created_at_seconds(value: Any) -> int | None:
    """`created_at` as integer unix seconds, or None when it does not read as a time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _seconds_from_number(value)
    if isinstance(value, float):
        return _seconds_from_number(value) if math.isfinite(value) else None
    if isinstance(value, str):
        if value.isascii() and value.isdigit():  # [0-9]+, without the pattern's cost
            try:
                return _seconds_from_number(int(value))
            except ValueError:  # longer than Python will read as an int: not a time anyway
                return None
        return iso_to_seconds(value)
    return None


def _person_attributes(traits: Mapping[str, Any]) -> dict[str, Any]:
    """Traits as person attributes: dates converted, `created_at`/`createdAt` made one key."""
    if "created_at" not in traits and "createdAt" not in traits:
        converted: dict[str, Any] = convert_dates(traits)
        return converted
    rest = {k: v for k, v in traits.items() if k not in ("created_at", "createdAt")}
    attributes: dict[str, Any] = convert_dates(rest)
    # An empty value says nothing; sending it would blank the profile's real signup date.
    given = [
        value
        for value in (traits.get("created_at"), traits.get("createdAt"))
        if value is not None and value != ""
    ]
    if given:
        # Whichever key reads as a time wins (created_at when both do): "junk" in one key must
        # not hide a good date in the other. When neither reads, created_at goes as given.
        attributes["created_at"] = given[0]
        for value in given:
            seconds = _created_at_seconds(value)
            if seconds is not None:
                attributes["created_at"] = seconds
                break
    return attributes


class _Times:
    """The message's time, read once: op `timestamp` and the event-id clock."""

    def __init__(self, message: Mapping[str, Any], received_at: float) -> None:
        raw = message.get("timestamp")
        self.millis = iso_to_millis(raw) if isinstance(raw, str) else None
        self.seconds = None if self.millis is None else self.millis // 1000
        if self.millis is None:
            self.clock_millis = math.floor(received_at * 1000) if math.isfinite(received_at) else 0
        else:
            self.clock_millis = self.millis
        self._message_id = _text(message.get("messageId"))

    @property
    def event_id(self) -> str | None:
        if self._message_id is None:
            return None
        return deterministic_ulid(self._message_id, self.clock_millis)

    @property
    def seconds_or_received(self) -> int:
        # Without a message time, when relay heard of it is the best guess at when it happened
        # (a device last used, a message opened).
        return self.seconds if self.seconds is not None else self.clock_millis // 1000


# --- one mapper per Segment call -------------------------------------------------------------


def _topic_problem(field: str, topic: str, choice: Any) -> Rejection | None:
    if not _TOPIC.fullmatch(topic):
        return Rejection(
            f"{field}: Customer.io names subscription topics topic_<id> (topic_1, topic_2, …,"
            f" as its Subscription Center lists them), not {_shown(topic)}"
        )
    if choice is not None and not isinstance(choice, bool):
        return Rejection(
            f"{field} must be true (subscribed) or false (unsubscribed), or null for the"
            f" topic's default; got {json_type(choice)}"
        )
    return None


def _topics_problem(field: str, topics: Any) -> Rejection | None:
    if not isinstance(topics, Mapping):
        return Rejection(
            f"{field} must be an object such as {{topic_1: true, topic_2: false}}, got"
            f" {json_type(topics)}"
        )
    for topic, choice in topics.items():
        problem = _topic_problem(f"{field}.{topic}", str(topic), choice)
        if problem is not None:
            return problem
    return None


def _preferences_problem(traits: Mapping[str, Any]) -> Rejection | None:
    """Why subscription preferences in `traits` are not as Customer.io reads them, or None.

    Customer.io takes `cio_subscription_preferences: {topics: {topic_<id>: true|false}}`
    (the whole set: topics left out go back to their default) or one topic per dotted key,
    `"cio_subscription_preferences.topics.topic_<id>": true`. Anything else would be stored
    as a plain attribute, or refused, and change no one's subscriptions.
    """
    for key, value in traits.items():
        key = str(key)
        if not key.startswith(_PREFERENCES):  # most traits: nothing to check
            continue
        field = f"traits.{key}"
        if key == _PREFERENCES:
            if not isinstance(value, Mapping):
                return Rejection(
                    f"{field} must be an object such as {{topics: {{topic_1: true}}}}, got"
                    f" {json_type(value)}"
                )
            if "topics" in value:
                problem = _topics_problem(f"{field}.topics", value["topics"])
                if problem is not None:
                    return problem
        elif key == f"{_PREFERENCES}.topics":
            problem = _topics_problem(field, value)
            if problem is not None:
                return problem
        elif key.startswith(f"{_PREFERENCES}.topics."):
            problem = _topic_problem(field, key.removeprefix(f"{_PREFERENCES}.topics."), value)
            if problem is not None:
                return problem
    return None


def map_identify(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> Mapped:
    """identify → person `identify` with the traits as attributes."""
    traits = _object_field(message, "traits")
    if isinstance(traits, Rejection):
        return traits
    person = _person(message, options, traits)
    if isinstance(person, Rejection):
        return person
    if person is None:
        return Rejection(
            "identify needs a userId, traits.email, context.traits.email or anonymousId"
        )
    problem = _preferences_problem(traits)
    if problem is not None:
        return problem
    attributes = _person_attributes(traits)
    if not _is_anonymous(person):
        anonymous_id = _id_field(message, "anonymousId")
        if isinstance(anonymous_id, Rejection):
            return anonymous_id
        # Customer.io merges the anonymous activity into the person when it sees this.
        if anonymous_id is not None:
            attributes["anonymous_id"] = anonymous_id
    if options.update_only:
        # Customer.io then updates the person if they exist and creates no one.
        attributes["_update"] = True
    times = _Times(message, received_at)
    return [Operation("person", "identify", person, timestamp=times.seconds, attributes=attributes)]


def _named_event(
    action: Action,
    name: str,
    person: dict[str, str],
    properties: Mapping[str, Any],
    times: _Times,
) -> Operation:
    return Operation(
        "person",
        action,
        person,
        name=name,
        id=times.event_id,
        timestamp=times.seconds,
        attributes=convert_dates(properties),
    )


def _object_type_id(source: Mapping[str, Any], *keys: str) -> str | Rejection:
    for key in keys:
        value = source.get(key)
        if value is None or value == "":
            continue
        text = _text(value)
        if text is None:
            return Rejection(f"{key} must be a string or a number, got {json_type(value)}")
        return text
    return _DEFAULT_OBJECT_TYPE_ID


def _object_identifiers(properties: Mapping[str, Any], event: str) -> dict[str, str] | Rejection:
    object_id = _id_field(properties, "objectId")
    if isinstance(object_id, Rejection):
        return Rejection(f"{event}: properties.{object_id.reason}")
    if object_id is None:
        return Rejection(f"{event} needs properties.objectId")
    type_id = _object_type_id(properties, "objectTypeId")
    if isinstance(type_id, Rejection):
        return Rejection(f"{event}: properties.{type_id.reason}")
    return {"object_type_id": type_id, "object_id": object_id}


def _platform(context: Any) -> str | None:
    """`ios` or `android` from the first of `context.device.type`, `context.os.name` that
    names one of them; None when neither does."""
    for path in (("device", "type"), ("os", "name")):
        hint = _text(_hint(context, *path))
        platform = None if hint is None else _PLATFORMS.get(hint.strip().lower())
        if platform is not None:
            return platform
    return None


def _device(
    message: Mapping[str, Any], token: str, properties: Mapping[str, Any], times: _Times
) -> Device | None:
    """The device a device event registers, or None when its platform is not one Customer.io
    keeps devices for (see map_track)."""
    context = message.get("context")
    platform = _platform(context)
    if platform is None:
        return None
    # Device attributes are strings in Customer.io, so only string properties are copied, and
    # only those within its attribute limits: all of them travel with the event anyway, and
    # one long property must not cost a person their push device.
    attributes: dict[str, Any] = {}
    for key, value in properties.items():
        if len(attributes) == MAX_ATTRIBUTES - len(_DEVICE_CONTEXT_ATTRIBUTES):
            break
        if (
            isinstance(value, str)
            and _utf8_size(str(key)) <= MAX_ATTRIBUTE_NAME_BYTES
            and _utf8_size(value) <= MAX_ATTRIBUTE_VALUE_BYTES
        ):
            attributes[key] = value
    for name, path in _DEVICE_CONTEXT_ATTRIBUTES:
        value = _text(_hint(context, *path))
        if value is not None:
            attributes[name] = value
    return Device(token, platform, times.seconds_or_received, attributes)


def map_track(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> Mapped:
    """track → person `event`, or the person, device or object action its event name stands for."""
    event = message.get("event")
    if not isinstance(event, str) or not event.strip():
        return Rejection(f"track needs a non-empty string event, got {json_type(event)}")
    properties = _object_field(message, "properties")
    if isinstance(properties, Rejection):
        return properties
    person = _person(message, options)
    if isinstance(person, Rejection):
        return person

    if event == "Object Deleted":
        identifiers = _object_identifiers(properties, event)
        if isinstance(identifiers, Rejection):
            return identifiers
        return [Operation("object", "delete", identifiers)]

    if event == _DELIVERY_EVENT:
        # About a message Customer.io sent, not about a person: no person is needed.
        return _delivery_metric(message, properties, received_at)

    if person is None:
        return Rejection(
            f"track {_shown(event)} needs a userId, context.traits.email or anonymousId"
        )

    if event == _CONTENT_EVENT:
        return _content_event(message, person, properties, received_at)

    if event == "Relationship Deleted":
        identifiers = _object_identifiers(properties, event)
        if isinstance(identifiers, Rejection):
            return identifiers
        return [
            Operation(
                "object",
                "delete_relationships",
                identifiers,
                relationships=(Relationship(person),),
            )
        ]

    person_action = _PERSON_ACTION_EVENTS.get(event)
    if person_action is not None:
        if _is_anonymous(person):
            return Rejection(f"track {_shown(event)} needs a userId or context.traits.email")
        return [Operation("person", person_action, person)]

    times = _Times(message, received_at)
    token = _text(_hint(message, "context", "device", "token"))
    if token is not None and event in _DEVICE_DELETE_EVENTS:
        if _is_anonymous(person):
            return Rejection(f"track {_shown(event)} needs a userId or context.traits.email")
        return [Operation("person", "delete_device", person, device=Device(token))]

    operations = []
    # Customer.io keeps devices on known people only; an anonymous install is still an event.
    if token is not None and event in _DEVICE_ADD_EVENTS and not _is_anonymous(person):
        # Customer.io refuses a device whose platform is not ios or android (or is missing),
        # and the refusal would take the event down with it, since a delivery's ops succeed or
        # fail together. So such a device is left out and only the event is sent. Mapping has
        # no channel for notes, so the event going alone is the visible trace (and the test
        # pinning it).
        device = _device(message, token, properties, times)
        if device is not None:
            operations.append(Operation("person", "add_device", person, device=device))
    operations.append(_named_event("event", event, person, properties, times))
    return operations


def _optional_text(properties: Mapping[str, Any], key: str, event: str) -> str | None | Rejection:
    value = _id_field(properties, key)
    if isinstance(value, Rejection):
        return Rejection(f"{event}: properties.{value.reason}")
    return value


def _delivery_metric(
    message: Mapping[str, Any], properties: Mapping[str, Any], received_at: float
) -> Mapped:
    """`Report Delivery Event` → a metric for `POST /api/v1/metrics`."""
    delivery_id = _id_field(properties, "deliveryId")
    if isinstance(delivery_id, Rejection):
        return Rejection(f"{_DELIVERY_EVENT}: properties.{delivery_id.reason}")
    if delivery_id is None:
        return Rejection(
            f"{_DELIVERY_EVENT} needs properties.deliveryId, the CIO-Delivery-ID of the message"
            " the metric is about"
        )
    metric = properties.get("metric")
    if not isinstance(metric, str) or metric not in REPORTED_METRICS:
        got = _shown(metric) if isinstance(metric, str) else json_type(metric)
        return Rejection(
            f"{_DELIVERY_EVENT}: properties.metric must be one of {', '.join(REPORTED_METRICS)};"
            f" got {got}"
        )
    fields: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for target, names in ((fields, _METRIC_FIELDS), (metadata, _METRIC_METADATA)):
        for name, key in names:
            value = _optional_text(properties, key, _DELIVERY_EVENT)
            if isinstance(value, Rejection):
                return value
            if value is not None:
                target[name] = value
    if metadata:
        fields["metadata"] = metadata
    times = _Times(message, received_at)
    return [
        Operation(
            "delivery",
            "metric",
            {"id": delivery_id},
            name=metric,
            timestamp=times.seconds_or_received,
            attributes=fields,
        )
    ]


def _content_event(
    message: Mapping[str, Any],
    person: dict[str, str],
    properties: Mapping[str, Any],
    received_at: float,
) -> Mapped:
    """`Report Content Event` → the person action `properties.actionType` names, with the
    other properties as its attributes."""
    action_type = properties.get("actionType")
    action = _CONTENT_ACTIONS.get(action_type) if isinstance(action_type, str) else None
    if action is None:
        got = _shown(action_type) if isinstance(action_type, str) else json_type(action_type)
        return Rejection(
            f"{_CONTENT_EVENT}: properties.actionType must be one of"
            f" {', '.join(_CONTENT_ACTIONS)}; got {got}"
        )
    attributes = {k: v for k, v in properties.items() if k != "actionType"}
    times = _Times(message, received_at)
    # No `id`: Customer.io documents its ULID de-duplication for events only, and Segment's
    # destination sends these actions without one.
    return [
        Operation(
            "person",
            action,
            person,
            name=action,
            timestamp=times.seconds,
            attributes=convert_dates(attributes),
        )
    ]


def map_page(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> Mapped:
    """page → person `page` named after the page's URL (else its name)."""
    properties = _object_field(message, "properties")
    if isinstance(properties, Rejection):
        return properties
    person = _person(message, options)
    if isinstance(person, Rejection):
        return person
    if person is None:
        return Rejection("page needs a userId, context.traits.email or anonymousId")
    name = (
        _text(properties.get("url"))
        or _text(_hint(message, "context", "page", "url"))
        or _text(message.get("name"))
    )
    if name is None:
        return Rejection("page needs properties.url, context.page.url or name")
    times = _Times(message, received_at)
    return [_named_event("page", name, person, properties, times)]


def map_screen(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> Mapped:
    """screen → person `screen` named after the screen."""
    properties = _object_field(message, "properties")
    if isinstance(properties, Rejection):
        return properties
    person = _person(message, options)
    if isinstance(person, Rejection):
        return person
    if person is None:
        return Rejection("screen needs a userId, context.traits.email or anonymousId")
    name = _text(message.get("name")) or _text(properties.get("name"))
    if name is None:
        return Rejection("screen needs name or properties.name")
    times = _Times(message, received_at)
    return [_named_event("screen", name, person, properties, times)]


def map_group(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> Mapped:
    """group → object `identify` (`identify_anonymous` for an anonymous person) related to them."""
    group_id = _id_field(message, "groupId")
    if isinstance(group_id, Rejection):
        return group_id
    if group_id is None:
        return Rejection("group needs a groupId")
    traits = _object_field(message, "traits")
    if isinstance(traits, Rejection):
        return traits
    person = _person(message, options)
    if isinstance(person, Rejection):
        return person
    type_id = _object_type_id(traits, "object_type_id", "objectTypeId")
    if isinstance(type_id, Rejection):
        return Rejection(f"traits.{type_id.reason}")
    object_attributes = traits.get("objectAttributes")
    if object_attributes is None:
        object_attributes = {k: v for k, v in traits.items() if k not in _GROUP_CONTROL_TRAITS}
    elif not isinstance(object_attributes, Mapping):
        return Rejection(
            f"traits.objectAttributes must be an object, got {json_type(object_attributes)}"
        )
    relationship_attributes = traits.get("relationshipAttributes")
    if relationship_attributes is not None and not isinstance(relationship_attributes, Mapping):
        return Rejection(
            "traits.relationshipAttributes must be an object, "
            f"got {json_type(relationship_attributes)}"
        )
    relationships: tuple[Relationship, ...] = ()
    if person is not None:
        relationship = Relationship(
            person,
            None if relationship_attributes is None else convert_dates(relationship_attributes),
        )
        relationships = (relationship,)
    action: Action = "identify_anonymous" if person and _is_anonymous(person) else "identify"
    return [
        Operation(
            "object",
            action,
            {"object_type_id": type_id, "object_id": group_id},
            attributes=convert_dates(object_attributes),
            relationships=relationships,
        )
    ]


def map_alias(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> Mapped:
    """alias → person `merge` of `previousId` (secondary) into `userId` (primary)."""
    user_id = _id_field(message, "userId")
    previous_id = _id_field(message, "previousId")
    for value in (user_id, previous_id):
        if isinstance(value, Rejection):
            return value
    if not isinstance(user_id, str) or not isinstance(previous_id, str):
        return Rejection("alias needs both userId and previousId")
    primary = person_identifiers(user_id, options)
    if isinstance(primary, Rejection):
        return primary
    secondary = person_identifiers(previous_id, options, "previousId")
    if isinstance(secondary, Rejection):
        return secondary
    if primary == secondary:
        # analytics.js sends this after an identify, with userId == previousId: a no-op.
        return Skip("alias userId and previousId name the same person: nothing to merge")
    return [Operation("person", "merge", {}, primary=primary, secondary=secondary)]


def map_delete(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> Mapped:
    """Segment's user deletion (`type: delete`) → person `delete`."""
    person = _person(message, options)
    if isinstance(person, Rejection):
        return person
    if person is None or _is_anonymous(person):
        return Rejection("delete needs a userId or context.traits.email")
    return [Operation("person", "delete", person)]


_MAPPERS: Mapping[str, Callable[..., Mapped]] = {
    "identify": map_identify,
    "track": map_track,
    "page": map_page,
    "screen": map_screen,
    "group": map_group,
    "alias": map_alias,
    "delete": map_delete,
}


def map_message(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> Mapped:
    """The Customer.io operations a Segment message stands for, or why there are none.

    `received_at` (unix seconds) stands in for the message time in event ids when the message
    has no `timestamp`; `options` are the destination's (see MappingOptions). Never raises:
    anything unusable comes back as a Rejection.
    """
    # `dict` first: isinstance stops at it, far cheaper than the Mapping ABC's own check.
    if not isinstance(message, (dict, Mapping)):
        return Rejection(f"a message must be an object, got {json_type(message)}")
    kind = message.get("type")
    mapper = _MAPPERS.get(kind) if isinstance(kind, str) else None
    if mapper is None:
        expected = ", ".join(_MAPPERS)
        return Rejection(f"type must be one of {expected}; got {kind!r:.60}")
    try:
        return mapper(message, received_at=received_at, options=options)
    except RecursionError:
        return Rejection("message is nested too deeply to map")


# --- encoders --------------------------------------------------------------------------------


def _relationships_v2(relationships: tuple[Relationship, ...]) -> list[dict[str, Any]]:
    encoded = []
    for relationship in relationships:
        item: dict[str, Any] = {"identifiers": dict(relationship.identifiers)}
        if relationship.attributes is not None:
            item["relationship_attributes"] = relationship.attributes
        encoded.append(item)
    return encoded


def _device_body(device: Device, token_key: str) -> dict[str, Any]:
    body: dict[str, Any] = {token_key: device.token}
    if device.platform is not None:
        body["platform"] = device.platform
    if device.last_used is not None:
        body["last_used"] = device.last_used
    if device.attributes:
        body["attributes"] = device.attributes
    return body


def travels_alone(op: Operation) -> bool:
    """Whether `op` is a request of its own rather than an op of a v2 batch: a delivery
    metric, which Customer.io takes only at `POST /api/v1/metrics`."""
    return op.kind == "delivery"


def metric_request(op: Operation) -> OutgoingRequest:
    """A delivery metric as Customer.io's `POST /api/v1/metrics` takes it."""
    body: dict[str, Any] = {"delivery_id": op.identifiers["id"], "metric": op.name}
    if op.timestamp is not None:
        body["timestamp"] = op.timestamp
    body.update(op.attributes or {})
    return OutgoingRequest("POST", "/api/v1/metrics", body)


def encode_v2(op: Operation) -> dict[str, Any]:
    """`op` as one Track API v2 operation (an item of `/api/v2/batch`, or `/api/v2/entity`).

    Raises ValueError for an op that travels alone (see `travels_alone`): v2 has no op for it.
    """
    if travels_alone(op):
        raise ValueError(f"a {op.kind} {op.action} has no v2 op; it is sent as its own request")
    body: dict[str, Any] = {"type": op.kind}
    if op.action == "merge":
        body["action"] = "merge"
        body["primary"] = dict(op.primary or {})
        body["secondary"] = dict(op.secondary or {})
        return body
    body["identifiers"] = dict(op.identifiers)
    body["action"] = op.action
    if op.name is not None:
        body["name"] = op.name
    if op.id is not None:
        body["id"] = op.id
    if op.timestamp is not None:
        body["timestamp"] = op.timestamp
    if op.attributes is not None:
        body["attributes"] = op.attributes
    if op.device is not None:
        body["device"] = _device_body(op.device, "token")
    if op.relationships:
        body["cio_relationships"] = _relationships_v2(op.relationships)
    return body


def _v1_customer_path(identifiers: Mapping[str, str]) -> str:
    """`/api/v1/customers/{identifier}`: v1 takes an id, an email, or `cio_` + the cio_id there,
    as Customer.io's official libraries pass it."""
    if "cio_id" in identifiers:
        identifier = "cio_" + identifiers["cio_id"]
    else:
        identifier = identifiers.get("id") or identifiers.get("email") or ""
    return "/api/v1/customers/" + quote(str(identifier), safe="")


def _v1_event(op: Operation) -> OutgoingRequest:
    body: dict[str, Any] = {
        "name": op.name,
        "type": op.action,
        "data": op.attributes if op.attributes is not None else {},
    }
    if op.id is not None:
        body["id"] = op.id
    if op.timestamp is not None:
        body["timestamp"] = op.timestamp
    if op.anonymous:
        body["anonymous_id"] = op.identifiers["anonymous_id"]
        return OutgoingRequest("POST", "/api/v1/events", body)
    return OutgoingRequest("POST", _v1_customer_path(op.identifiers) + "/events", body)


def _known_by_phone(op: Operation) -> bool:
    """Whether `op` addresses a person by phone, which v1 cannot: it reads a phone number in
    its path as an id (Customer.io's Track API reference)."""
    return any("phone" in ids for ids in (op.identifiers, op.primary or {}, op.secondary or {}))


def _v1_sends_flat_attributes(op: Operation) -> bool:
    """Whether encode_v1 writes `op`'s attributes flat into a `PUT /api/v1/customers/{id}`
    body, among the reserved keys it adds there (so the limits must count those too)."""
    return (
        op.kind == "person"
        and op.action == "identify"
        and not op.anonymous
        and not _known_by_phone(op)
    )


def _v1_identify_body(op: Operation) -> dict[str, Any]:
    """The body of v1's `PUT /api/v1/customers/{id}`: the attributes, flat, and `_timestamp`."""
    body = dict(op.attributes or {})
    if op.timestamp is not None:
        body["_timestamp"] = op.timestamp
    return body


def encode_v1(op: Operation) -> list[OutgoingRequest]:
    """`op` as classic Track API v1 requests.

    What v1 cannot say — objects, an anonymous person's profile, anything about a person
    known by phone — goes to `/api/v2/entity` as the v2 op. Bodies of bodiless calls are `{}`,
    as Customer.io's official library sends.
    """
    if travels_alone(op):
        return [metric_request(op)]
    if _known_by_phone(op):
        return [OutgoingRequest("POST", "/api/v2/entity", encode_v2(op))]
    if op.kind == "person" and op.action in _EVENT_ACTIONS:
        return [_v1_event(op)]
    if op.kind == "object" or op.anonymous:
        return [OutgoingRequest("POST", "/api/v2/entity", encode_v2(op))]
    if _v1_sends_flat_attributes(op):
        return [OutgoingRequest("PUT", _v1_customer_path(op.identifiers), _v1_identify_body(op))]
    if op.action == "merge":
        body = {"primary": dict(op.primary or {}), "secondary": dict(op.secondary or {})}
        return [OutgoingRequest("POST", "/api/v1/merge_customers", body)]
    customer = _v1_customer_path(op.identifiers)
    if op.action == "add_device" and op.device is not None:
        device = _device_body(op.device, "id")
        return [OutgoingRequest("PUT", customer + "/devices", {"device": device})]
    if op.action == "delete_device" and op.device is not None:
        token = quote(op.device.token, safe="")
        return [OutgoingRequest("DELETE", f"{customer}/devices/{token}", {})]
    if op.action == "delete":
        return [OutgoingRequest("DELETE", customer, {})]
    if op.action in ("suppress", "unsuppress"):
        return [OutgoingRequest("POST", f"{customer}/{op.action}", {})]
    # An op v1 has no call for (none that map_message makes) still reaches Customer.io intact.
    return [OutgoingRequest("POST", "/api/v2/entity", encode_v2(op))]


# --- limits ----------------------------------------------------------------------------------


def _utf8_size(text: str) -> int:
    # surrogatepass: a lone surrogate from a JSON `\ud800` escape must be measured, not crash.
    return len(text.encode("utf-8", "surrogatepass"))


def _json_size(value: Any) -> int:
    """Bytes of `value` as relay writes it (compact JSON, `relay.codec.encode`); a string
    counts its characters only."""
    if isinstance(value, str):
        return _utf8_size(value)
    return len(encode(value))


# A character is at most 4 bytes of UTF-8: text this short is within a limit unmeasured.
def _short(text: str, limit: int) -> bool:
    return len(text) * 4 <= limit


# Floats, booleans and null as JSON are far shorter than any limit; so are integers of up
# to about 900 digits.
_SMALL_VALUES = frozenset({float, bool, type(None)})
_SMALL_INT_BITS = 3000


def _check_identifiers(label: str, identifiers: Mapping[str, str]) -> str | None:
    for key, value in identifiers.items():
        text = str(value)
        if _short(text, MAX_IDENTIFIER_BYTES):
            continue
        size = _utf8_size(text)
        if size > MAX_IDENTIFIER_BYTES:
            return (
                f"{label}.{key} is {size} bytes; Customer.io accepts identifiers of at most "
                f"{MAX_IDENTIFIER_BYTES} bytes"
            )
    return None


def _check_attributes(
    label: str, attributes: Mapping[str, Any], added: Sequence[str] = ()
) -> str | None:
    """`added`: reserved keys the encoder put among the attributes, named in a count refusal
    because the sender never wrote them."""
    if len(attributes) > MAX_ATTRIBUTES:
        counting = f", counting the {', '.join(added)} that v1 sends among them" if added else ""
        return (
            f"{label} has {len(attributes)} attributes{counting}; Customer.io accepts at most "
            f"{MAX_ATTRIBUTES} per call"
        )
    for name, value in attributes.items():
        name = str(name)
        name_size = 0 if _short(name, MAX_ATTRIBUTE_NAME_BYTES) else _utf8_size(name)
        if name_size > MAX_ATTRIBUTE_NAME_BYTES:
            return (
                f"{label} name {name[:40]!r}… is {name_size} bytes; Customer.io accepts "
                f"attribute names of at most {MAX_ATTRIBUTE_NAME_BYTES} bytes"
            )
        kind = type(value)
        if (
            kind in _SMALL_VALUES
            or (kind is str and _short(value, MAX_ATTRIBUTE_VALUE_BYTES))
            or (kind is int and value.bit_length() < _SMALL_INT_BITS)
        ):
            continue
        value_size = _json_size(value)
        if value_size > MAX_ATTRIBUTE_VALUE_BYTES:
            return (
                f"{label}.{name} is {value_size} bytes; Customer.io accepts attribute values "
                f"of at most {MAX_ATTRIBUTE_VALUE_BYTES} bytes"
            )
    return None


def check_limits(op: Operation, api: str = "v2", encoded: bytes | None = None) -> str | None:
    """Which Customer.io limit `op` breaks as `api` ("v1" or "v2") would send it, with the
    field and the size found, or None. `encoded`: `encode_v2(op)` as written already.

    Sizes are UTF-8 bytes. An attribute value that is a string counts its own bytes (no
    quotes); any other value counts its JSON as relay writes it (compact, non-ASCII
    unescaped; `\\u`-escaped only where it holds a lone surrogate). Attributes are counted
    as the encoder writes them: v1 puts an identify's attributes flat into its body next to
    `_timestamp`, so that key counts towards the 300 there. The whole op is measured as
    `encode_v2(op)` written as relay writes it, for v1 too: every v1 body is smaller than the
    v2 op it comes from (the identifiers move to the path). Profile-style attributes (a
    person's or an object's, a device's, a relationship's) are held to the attribute limits;
    event data is not: Customer.io bounds it by its total size (100 KB), which the op size
    covers. A page's name is its URL and is not held to the event-name limit: Customer.io's
    own web snippet sends the full URL as the name of every page view, and URLs are often
    longer than 100 bytes, so refusing them would drop ordinary page views. A delivery
    metric is only checked to be writable as JSON: Customer.io documents no limits for it.
    """
    if travels_alone(op):
        try:
            encode(metric_request(op).body)
        except (ValueError, RecursionError) as error:
            return f"metric cannot be written as JSON: {error}"
        return None
    identifier_sets = [("identifiers", op.identifiers)]
    if op.primary is not None:
        identifier_sets.append(("primary", op.primary))
    if op.secondary is not None:
        identifier_sets.append(("secondary", op.secondary))
    attribute_sets: list[tuple[str, Mapping[str, Any], Sequence[str]]] = []
    if op.attributes is not None and op.action not in _EVENT_DATA_ACTIONS:
        if api == "v1" and _v1_sends_flat_attributes(op):
            body = _v1_identify_body(op)
            reserved = [key for key in body if key not in op.attributes]
            attribute_sets.append(("attributes", body, reserved))
        else:
            attribute_sets.append(("attributes", op.attributes, ()))
    if op.device is not None:
        attribute_sets.append(("device.attributes", op.device.attributes, ()))
    for relationship in op.relationships:
        identifier_sets.append(("cio_relationships.identifiers", relationship.identifiers))
        if relationship.attributes is not None:
            attribute_sets.append(("relationship_attributes", relationship.attributes, ()))
    try:
        for label, identifiers in identifier_sets:
            problem = _check_identifiers(label, identifiers)
            if problem is not None:
                return problem
        name = op.name
        if name is not None and op.action != "page" and not _short(name, MAX_EVENT_NAME_BYTES):
            size = _utf8_size(name)
            if size > MAX_EVENT_NAME_BYTES:
                return (
                    f"{op.action} name is {size} bytes; Customer.io accepts event names of at "
                    f"most {MAX_EVENT_NAME_BYTES} bytes"
                )
        for label, attributes, added in attribute_sets:
            problem = _check_attributes(label, attributes, added)
            if problem is not None:
                return problem
        size = len(encoded) if encoded is not None else _json_size(encode_v2(op))
    except (TypeError, ValueError, RecursionError) as error:
        return f"operation cannot be written as JSON: {error}"
    if size > MAX_OPERATION_BYTES:
        return (
            f"operation is {size} bytes as JSON; Customer.io accepts at most "
            f"{MAX_OPERATION_BYTES} bytes per operation"
        )
    return None


def map_and_check(
    message: Mapping[str, Any],
    *,
    received_at: float,
    api: str = "v2",
    options: MappingOptions = DEFAULTS,
) -> Mapped:
    """`map_message`, then a Rejection naming the first op that breaks a Customer.io limit
    as `api` ("v1" or "v2") would send it."""
    operations = map_message(message, received_at=received_at, options=options)
    if isinstance(operations, Rejection | Skip):
        return operations
    for index, op in enumerate(operations):
        problem = check_limits(op, api)
        if problem is not None:
            return _refused(operations, index, problem)
    return operations


def map_and_encode_v2(
    message: Mapping[str, Any], *, received_at: float, options: MappingOptions = DEFAULTS
) -> list[bytes | OutgoingRequest] | Rejection | Skip:
    """`map_and_check` for v2: each op of a batch written once, as the JSON that is sent, and
    its size checked on those bytes; an op that travels alone (see `travels_alone`) as its
    own request, with its body written the same way."""
    operations = map_message(message, received_at=received_at, options=options)
    if isinstance(operations, Rejection | Skip):
        return operations
    out: list[bytes | OutgoingRequest] = []
    for index, op in enumerate(operations):
        if travels_alone(op):
            request = metric_request(op)
            try:
                out.append(OutgoingRequest(request.method, request.path, encode(request.body)))
            except ValueError as error:
                return _refused(operations, index, f"metric cannot be written as JSON: {error}")
            continue
        try:
            raw = encode(encode_v2(op))
        except ValueError as error:
            return _refused(operations, index, f"operation cannot be written as JSON: {error}")
        problem = check_limits(op, "v2", raw)
        if problem is not None:
            return _refused(operations, index, problem)
        out.append(raw)
    return out


def _refused(operations: Sequence[Operation], index: int, problem: str) -> Rejection:
    op = operations[index]
    where = (
        f"{op.kind} {op.action}" if len(operations) == 1 else f"op {index} ({op.kind} {op.action})"
    )
    return Rejection(f"{where}: {problem}")
