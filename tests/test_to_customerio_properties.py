"""Properties of the Segment → Customer.io mapping that must hold for any input at all."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.codec import encode
from relay.mapping import Rejection, Skip
from relay.mapping.dates import iso_to_millis, iso_to_seconds
from relay.mapping.to_customerio import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_EVENT_NAME_BYTES,
    MAX_IDENTIFIER_BYTES,
    MAX_OPERATION_BYTES,
    REPORTED_METRICS,
    MappingOptions,
    Operation,
    check_limits,
    encode_v1,
    encode_v2,
    map_and_check,
    map_and_encode_v2,
    map_message,
    metric_request,
    travels_alone,
)
from relay.mapping.ulid import deterministic_ulid
from relay.outgoing import OutgoingRequest

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=8)

iso_dates = st.builds(
    lambda moment, write: write(moment),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.sampled_from(
        [
            lambda moment: moment.date().isoformat(),
            lambda moment: moment.isoformat(timespec="minutes"),
            lambda moment: moment.isoformat(timespec="seconds"),
            lambda moment: moment.isoformat(timespec="milliseconds") + "Z",
            lambda moment: moment.isoformat(timespec="microseconds") + "-08:00",
        ]
    ),
)
# Values a real message carries, plus big ones that reach Customer.io's limits.
plausible = (
    json_values
    | iso_dates
    | st.sampled_from(["cio_abc", "ann@example.com", "", "1705314600", "1705314600000", "ios"])
    | st.text(min_size=90, max_size=1200)
    | st.integers(min_value=0, max_value=2 * 10**12)
)
ids = (
    st.sampled_from(["u1", "cio_abc", "ann@example.com", "anon-1"])
    | st.text(min_size=1, max_size=20)
    | st.integers()
    | st.text(min_size=140, max_size=160)
)
events = st.sampled_from(
    [
        "Order Completed",
        "Application Installed",
        "Application Opened",
        "Device Created or Updated",
        "Application Uninstalled",
        "Device Deleted",
        "User Deleted",
        "User Suppressed",
        "User Unsuppressed",
        "Object Deleted",
        "Relationship Deleted",
        "Report Delivery Event",
        "Report Content Event",
    ]
) | st.text(min_size=1, max_size=120)
keys = st.sampled_from(
    ["email", "created_at", "createdAt", "url", "name", "unsubscribed", "objectTypeId"]
) | st.text(max_size=160)
attribute_maps = st.dictionaries(keys, plausible, max_size=8) | st.dictionaries(
    st.text(max_size=4), st.integers(), min_size=295, max_size=305
)
payloads = (
    st.fixed_dictionaries(
        {},
        optional={
            "objectId": ids,
            "objectTypeId": ids,
            "object_type_id": ids,
            "objectAttributes": attribute_maps,
            "relationshipAttributes": attribute_maps,
            "email": ids,
            "url": plausible,
            "name": plausible,
            "deliveryId": ids,
            "metric": st.sampled_from(REPORTED_METRICS) | plausible,
            "recipient": plausible,
            "href": plausible,
            "actionName": plausible,
            "actionType": st.sampled_from(["viewed_content", "clicked_content"]) | plausible,
        },
    )
    | attribute_maps
)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "device": st.fixed_dictionaries(
            {},
            optional={
                "token": ids,
                "type": st.sampled_from(["ios", "iPadOS", "Android", "web"]) | plausible,
                "model": plausible,
            },
        ),
        "traits": st.fixed_dictionaries({}, optional={"email": ids}),
        "page": st.fixed_dictionaries({}, optional={"url": plausible}),
        "app": st.fixed_dictionaries({}, optional={"version": plausible}),
        "os": st.fixed_dictionaries({}, optional={"name": plausible, "version": plausible}),
    },
)
message_types = st.sampled_from(["identify", "track", "page", "screen", "group", "alias", "delete"])
# Messages shaped like the calls Segment's libraries make, with random values in every field …
well_typed_messages = st.fixed_dictionaries(
    {"type": message_types},
    optional={
        "userId": ids,
        "anonymousId": ids,
        "previousId": ids,
        "groupId": ids,
        "messageId": ids,
        "timestamp": iso_dates,
        "event": events,
        "name": plausible,
        "traits": payloads,
        "properties": payloads,
        "context": contexts,
    },
)
# … and the same fields holding anything JSON can.
wild_messages = st.fixed_dictionaries(
    {"type": message_types},
    optional={
        key: plausible
        for key in (
            "userId",
            "anonymousId",
            "previousId",
            "groupId",
            "messageId",
            "timestamp",
            "event",
            "name",
            "traits",
            "properties",
            "context",
        )
    },
)
# … and identifies right at the 300-attribute limit, where the keys an encoder adds to a body
# (v1's `_timestamp`) and relay adds to the traits (`anonymous_id`) make the difference.
crowded_identifies = st.fixed_dictionaries(
    {
        "type": st.just("identify"),
        "userId": ids,
        "traits": st.integers(297, 301).map(lambda n: {f"t{i}": i for i in range(n)}),
    },
    optional={"anonymousId": ids, "timestamp": iso_dates},
)
segment_messages = well_typed_messages | wild_messages | crowded_identifies
received_times = st.floats(min_value=0, max_value=4e9)


def utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def value_size(value: Any) -> int:
    if isinstance(value, str):
        return utf8(value)
    return len(encode(value))  # as relay writes it


def assert_well_formed(result: Any) -> None:
    assert isinstance(result, list | Rejection | Skip)
    if isinstance(result, Rejection | Skip):
        assert isinstance(result.reason, str) and result.reason
        return
    for op in result:
        assert isinstance(op, Operation)
        if travels_alone(op):
            assert encode_v1(op) == [metric_request(op)]
        else:
            json.dumps(encode_v2(op))
        for request in encode_v1(op):
            assert isinstance(request, OutgoingRequest)
            assert request.method in ("PUT", "POST", "DELETE")
            assert request.path.startswith("/api/")
            json.dumps(request.body)
        problem = check_limits(op)
        assert problem is None or isinstance(problem, str)


def assert_attributes_within_limits(attributes: Mapping[str, Any]) -> None:
    assert len(attributes) <= MAX_ATTRIBUTES
    for name, value in attributes.items():
        assert utf8(name) <= MAX_ATTRIBUTE_NAME_BYTES
        assert value_size(value) <= MAX_ATTRIBUTE_VALUE_BYTES


def assert_v2_body_within_limits(body: dict[str, Any]) -> None:
    """What check_limits(op, "v2") promises, measured again on the encoded v2 op."""
    assert len(encode(body)) <= MAX_OPERATION_BYTES
    identifier_sets = [
        body.get("identifiers", {}),
        body.get("primary", {}),
        body.get("secondary", {}),
    ]
    identifier_sets += [item["identifiers"] for item in body.get("cio_relationships", [])]
    for identifiers in identifier_sets:
        assert all(utf8(value) <= MAX_IDENTIFIER_BYTES for value in identifiers.values())
    if "name" in body and body.get("action") != "page":  # a page is named by its URL
        assert utf8(body["name"]) <= MAX_EVENT_NAME_BYTES
    attribute_sets = [body.get("device", {}).get("attributes", {})]
    attribute_sets += [
        item.get("relationship_attributes", {}) for item in body.get("cio_relationships", [])
    ]
    if body.get("action") not in ("event", "page", "screen"):  # event data: op size only
        attribute_sets.append(body.get("attributes", {}))
    for attributes in attribute_sets:
        assert_attributes_within_limits(attributes)


def assert_within_limits(op: Operation) -> None:
    if not travels_alone(op):  # a metric has no documented limits, only its JSON
        assert_v2_body_within_limits(encode_v2(op))


def assert_v1_within_limits(op: Operation) -> None:
    """What check_limits(op, "v1") promises, measured again on the v1 requests: bodies, and
    the person's identifier where v1 puts it, in the path."""
    for request in encode_v1(op):
        body = request.body
        assert isinstance(body, dict)
        if request.path == "/api/v1/metrics":
            encode(body)
            continue
        assert len(encode(body)) <= MAX_OPERATION_BYTES
        if request.path == "/api/v2/entity":
            assert_v2_body_within_limits(body)
            continue
        match = re.fullmatch(r"/api/v1/customers/([^/]+)(/.*)?", request.path)
        if match:
            identifier = unquote(match.group(1))
            if "cio_id" in op.identifiers:  # v1 writes a cio_id as `cio_<id>`
                identifier = identifier.removeprefix("cio_")
            assert utf8(identifier) <= MAX_IDENTIFIER_BYTES
        for key in ("primary", "secondary"):
            assert all(utf8(v) <= MAX_IDENTIFIER_BYTES for v in body.get(key, {}).values())
        if request.method == "PUT" and match and match.group(2) is None:
            # identify: the attributes flat in the body, with whatever keys v1 adds there.
            assert_attributes_within_limits(body)
        elif "device" in body:
            assert_attributes_within_limits(body["device"].get("attributes", {}))
        elif "type" in body and "name" in body:  # an event, page or screen
            if body["type"] != "page":  # a page is named by its URL
                assert utf8(body["name"]) <= MAX_EVENT_NAME_BYTES
            assert utf8(body.get("anonymous_id", "")) <= MAX_IDENTIFIER_BYTES


@SETTINGS
@given(message=json_objects | json_values, received_at=received_times)
def test_any_json_never_raises(message: Any, received_at: float) -> None:
    assert_well_formed(map_message(message, received_at=received_at))


@SETTINGS
@given(message=segment_messages, received_at=received_times)
def test_segment_shaped_messages_never_raise(message: dict[str, Any], received_at: float) -> None:
    assert_well_formed(map_message(message, received_at=received_at))


@SETTINGS
@given(message=segment_messages, received_at=received_times)
def test_every_op_that_passes_check_limits_is_within_limits(
    message: dict[str, Any], received_at: float
) -> None:
    result = map_message(message, received_at=received_at)
    if isinstance(result, Rejection | Skip):
        return
    for op in result:
        if check_limits(op, "v2") is None:
            assert_within_limits(op)
        if check_limits(op, "v1") is None:
            assert_v1_within_limits(op)


@SETTINGS
@given(message=segment_messages, received_at=received_times)
def test_map_and_check_passes_only_ops_within_limits(
    message: dict[str, Any], received_at: float
) -> None:
    for api in ("v2", "v1"):
        result = map_and_check(message, received_at=received_at, api=api)
        if isinstance(result, list):
            assert result == map_message(message, received_at=received_at)
            for op in result:
                assert check_limits(op, api) is None


@SETTINGS
@given(message=segment_messages | json_objects, received_at=received_times)
def test_a_v2_batch_sends_what_map_and_check_passes_written_once(
    message: dict[str, Any], received_at: float
) -> None:
    checked = map_and_check(message, received_at=received_at)
    encoded = map_and_encode_v2(message, received_at=received_at)
    if isinstance(checked, list):
        assert encoded == [
            OutgoingRequest("POST", "/api/v1/metrics", encode(metric_request(op).body))
            if travels_alone(op)
            else encode(encode_v2(op))
            for op in checked
        ]
    else:
        assert encoded == checked


@SETTINGS
@given(message=segment_messages, received_at=received_times)
def test_mapping_is_deterministic_and_leaves_the_message_alone(
    message: dict[str, Any], received_at: float
) -> None:
    before = json.dumps(message, sort_keys=True, default=repr)
    first = map_message(message, received_at=received_at)
    assert json.dumps(message, sort_keys=True, default=repr) == before
    assert map_message(message, received_at=received_at) == first


@SETTINGS
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offset_minutes=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
    colon=st.booleans(),
)
def test_iso_dates_agree_with_the_standard_library(
    moment: datetime, offset_minutes: int, colon: bool
) -> None:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    offset = f"{sign}{hours:02d}{':' if colon else ''}{minutes:02d}"
    text = moment.isoformat(timespec="microseconds") + offset
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    expected_millis = delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    assert iso_to_millis(text) == expected_millis
    assert iso_to_seconds(text) == expected_millis // 1000


@SETTINGS
@given(
    day=st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)),
    hour=st.integers(0, 99),
    minute=st.integers(0, 99),
    second=st.integers(0, 99),
)
def test_a_day_or_time_that_does_not_exist_is_not_a_date(
    day: date, hour: int, minute: int, second: int
) -> None:
    # Any hour, minute and second of two digits: a date exactly when each is in range, read
    # twice (the second time from what was kept the first).
    text = f"{day.isoformat()}T{hour:02d}:{minute:02d}:{second:02d}Z"
    exists = hour <= 23 and minute <= 59 and second <= 59
    for _ in range(2):
        assert (iso_to_millis(text) is not None) == exists


@SETTINGS
@given(
    day=st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
)
def test_a_kept_day_or_minute_does_not_make_a_time_that_does_not_exist_a_date(
    day: date, hour: int, minute: int
) -> None:
    # Each day and minute is checked once and kept: a time that shares a good one's day or
    # minute must still be checked for what it adds.
    minute_start = f"{day.isoformat()}T{hour:02d}:{minute:02d}"
    assert iso_to_millis(minute_start + ":59Z") is not None
    assert iso_to_millis(minute_start + ":60Z") is None
    assert iso_to_millis(minute_start + ":00+24:00") is None
    assert iso_to_millis(f"{day.isoformat()}T{hour:02d}:60:00Z") is None
    assert iso_to_millis(f"{day.isoformat()}T24:{minute:02d}:00Z") is None
    assert iso_to_millis(day.isoformat()[:8] + "32") is None


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@SETTINGS
@given(seed=st.text(max_size=40), millis=st.integers(min_value=-(2**50), max_value=2**50))
def test_event_ids_are_ulids_of_the_time_and_the_seed_hash(seed: str, millis: int) -> None:
    # The plain reading of the ULID spec: 48 bits of time, then 80 of SHA-256(seed), in
    # Crockford's base 32, one character at a time from the top.
    value = (min(max(millis, 0), 2**48 - 1) << 80) | int.from_bytes(
        hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()[:10], "big"
    )
    expected = "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))
    assert deterministic_ulid(seed, millis) == expected


@SETTINGS
@given(text=st.text(max_size=40))
def test_date_parser_never_raises(text: str) -> None:
    result = iso_to_millis(text)
    assert result is None or isinstance(result, int)


def _as_text(value: Any) -> str | None:
    """A delivery event property as the metrics request carries it; None when it is not
    text or a number (booleans are neither)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


metric_fields = st.fixed_dictionaries(
    {},
    optional={
        name: st.none() | st.just("") | st.text(max_size=12) | st.integers() | json_values
        for name in ("deliveryId", "recipient", "reason", "href", "actionName", "actionValue")
    }
    | {"metric": st.sampled_from(REPORTED_METRICS) | st.text(max_size=10) | json_values},
)


@SETTINGS
@given(properties=metric_fields, received_at=received_times, timed=st.booleans())
def test_a_delivery_event_is_exactly_one_metrics_request_or_a_refusal_naming_its_field(
    properties: dict[str, Any], received_at: float, timed: bool
) -> None:
    message: dict[str, Any] = {
        "type": "track",
        "userId": "u1",
        "event": "Report Delivery Event",
        "properties": properties,
    }
    if timed:
        message["timestamp"] = "2024-01-15T10:30:00Z"
    result = map_message(message, received_at=received_at)
    given_fields = {k: v for k, v in properties.items() if v is not None and v != ""}
    bad = [
        key for key, value in given_fields.items() if key != "metric" and _as_text(value) is None
    ]
    if "metric" not in given_fields or given_fields["metric"] not in REPORTED_METRICS:
        bad.append("metric")
    if "deliveryId" not in given_fields:
        bad.append("deliveryId")
    if bad:
        assert isinstance(result, Rejection)
        assert any(f"properties.{key}" in result.reason for key in bad), result.reason
        return
    assert isinstance(result, list)
    [op] = result
    expected: dict[str, Any] = {
        "delivery_id": _as_text(given_fields["deliveryId"]),
        "metric": given_fields["metric"],
        "timestamp": 1705314600 if timed else int(received_at),
    }
    for field, key in (("recipient", "recipient"), ("reason", "reason"), ("href", "href")):
        if key in given_fields:
            expected[field] = _as_text(given_fields[key])
    metadata = {
        field: _as_text(given_fields[key])
        for field, key in (("action_name", "actionName"), ("action_value", "actionValue"))
        if key in given_fields
    }
    if metadata:
        expected["metadata"] = metadata
    assert encode_v1(op) == [OutgoingRequest("POST", "/api/v1/metrics", expected)]


# --- destination options -------------------------------------------------------------------

mapping_options = st.builds(
    lambda extra, update_only: MappingOptions(frozenset({"id", *extra}), update_only),
    st.sets(st.sampled_from(["email", "phone"])),
    st.booleans(),
)


@SETTINGS
@given(message=segment_messages, received_at=received_times, options=mapping_options)
def test_any_destination_options_map_any_message_without_raising(
    message: dict[str, Any], received_at: float, options: MappingOptions
) -> None:
    result = map_message(message, received_at=received_at, options=options)
    assert_well_formed(result)
    if isinstance(result, list):
        for op in result:
            if check_limits(op, "v1") is None:
                assert_v1_within_limits(op)
            for request in encode_v1(op):
                # v1 cannot address a person by phone: all of that goes through v2.
                if request.path.startswith("/api/v1/"):
                    assert "phone" not in json.dumps(request.body.get("primary", {}))
                    assert "phone" not in op.identifiers


def is_e164(text: str) -> bool:
    digits = text[1:]
    return (
        text.startswith("+")
        and 2 <= len(digits) <= 15
        and all(c in "0123456789" for c in digits)
        and digits[0] != "0"
    )


phone_like = st.builds(
    lambda body: "+" + body,
    st.text(alphabet="0123456789 -()٣", max_size=17),
) | st.text(max_size=17)


@SETTINGS
@given(user_id=phone_like)
def test_with_phone_enabled_a_user_id_is_a_phone_exactly_when_it_is_e164(user_id: str) -> None:
    message = {"type": "identify", "userId": user_id, "anonymousId": "a1"}
    phone = MappingOptions(frozenset({"id", "email", "phone"}))
    result = map_message(message, received_at=0.0, options=phone)
    default = map_message(message, received_at=0.0)
    if not user_id:
        assert result == default  # no userId at all: the anonymousId
    elif is_e164(user_id):
        assert isinstance(result, list)
        assert result[0].identifiers == {"phone": user_id}
    elif user_id.startswith("+"):
        assert isinstance(result, Rejection)
        assert result.reason.startswith("userId ")
        assert "starts with + but is not a phone number in E.164 form" in result.reason
    else:
        assert result == default  # the rule for ids, emails and cio_ids is unchanged


topic_names = st.sampled_from(["topic_1", "topic_22", "newsletter", "topic_", "topic_x", "1"])
topic_choices = st.none() | st.booleans() | st.sampled_from(["true", 1, 0, {}])
preference_traits = st.dictionaries(
    st.sampled_from(
        [
            "cio_subscription_preferences",
            "cio_subscription_preferences.topics",
            "cio_subscription_preferences.topics.topic_3",
            "cio_subscription_preferences.topics.weekly",
            "plan",
        ]
    ),
    st.dictionaries(
        st.sampled_from(["topics", "other"]), st.dictionaries(topic_names, topic_choices)
    )
    | st.dictionaries(topic_names, topic_choices)
    | topic_choices,
)


def readable_topics(topics: Any) -> bool:
    return isinstance(topics, dict) and all(
        re.fullmatch(r"topic_[0-9]+", name) and (choice is None or isinstance(choice, bool))
        for name, choice in topics.items()
    )


def customerio_reads(traits: dict[str, Any]) -> bool:
    """Subscription preferences as Customer.io's Track API reference describes them."""
    for key, value in traits.items():
        if key == "cio_subscription_preferences":
            if not isinstance(value, dict):
                return False
            if "topics" in value and not readable_topics(value["topics"]):
                return False
        elif key == "cio_subscription_preferences.topics":
            if not readable_topics(value):
                return False
        elif key.startswith("cio_subscription_preferences.topics.") and not readable_topics(
            {key.rsplit(".", 1)[1]: value}
        ):
            return False
    return True


@SETTINGS
@given(traits=preference_traits)
def test_subscription_preferences_are_sent_as_given_exactly_when_customerio_reads_them(
    traits: dict[str, Any],
) -> None:
    result = map_message({"type": "identify", "userId": "u1", "traits": traits}, received_at=0.0)
    if customerio_reads(traits):
        assert isinstance(result, list)
        assert result[0].attributes == traits
    else:
        assert isinstance(result, Rejection)
        assert result.reason.startswith("traits.cio_subscription_preferences")
