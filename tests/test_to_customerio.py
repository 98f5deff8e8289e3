"""Segment → Customer.io mapping rules, pinned on exact v2 ops and v1 requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.mapping import Rejection, Skip
from relay.mapping.dates import iso_to_seconds
from relay.mapping.to_customerio import (
    MAX_OPERATION_BYTES,
    Device,
    MappingOptions,
    Operation,
    Relationship,
    check_limits,
    encode_v1,
    encode_v2,
    map_and_check,
    map_and_encode_v2,
    map_message,
)
from relay.mapping.ulid import deterministic_ulid
from relay.outgoing import OutgoingRequest

RECEIVED_AT = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
TIMESTAMP = "2024-01-15T10:30:00.000Z"
TS = 1_705_314_600
# ULIDs worked out independently of relay (time in ms, then SHA-256 of the messageId).
ULID_M1 = "01HM6AQH20MHGV8WPB86MYRFFE"  # messageId "m-1" at TIMESTAMP
ULID_M1_RECEIVED = "01HF7YAT7TMHGV8WPB86MYRFFE"  # messageId "m-1" at RECEIVED_AT


WRONG_TYPE = "type must be one of identify, track, page, screen, group, alias, delete; got "


def ops(message: dict[str, Any]) -> list[Operation]:
    result = map_message(message, received_at=RECEIVED_AT)
    assert not isinstance(result, Rejection), result.reason
    return result


def v2(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [encode_v2(op) for op in ops(message)]


def v1(message: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [(r.method, r.path, r.body) for op in ops(message) for r in encode_v1(op)]


def rejected(message: Any) -> str:
    result = map_message(message, received_at=RECEIVED_AT)
    assert isinstance(result, Rejection), result
    return result.reason


def identify_attributes(traits: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The attributes an identify of user `u1` carries for `traits`."""
    [op] = v2({"type": "identify", "userId": "u1", "traits": traits, **extra})
    attributes: dict[str, Any] = op["attributes"]
    return attributes


# --- person identifier ------------------------------------------------------------------------


def test_user_id_becomes_id_identifier() -> None:
    message = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "identify",
            "attributes": {"plan": "pro"},
        }
    ]
    assert v1(message) == [("PUT", "/api/v1/customers/u1", {"plan": "pro"})]


def test_numeric_user_id_becomes_string_id() -> None:
    message = {"type": "track", "userId": 42, "event": "Signed Up"}
    assert v2(message)[0]["identifiers"] == {"id": "42"}
    assert v1(message)[0][1] == "/api/v1/customers/42/events"


def test_user_id_with_cio_prefix_becomes_cio_id() -> None:
    message = {"type": "identify", "userId": "cio_a1b2", "traits": {"plan": "pro"}}
    assert v2(message)[0]["identifiers"] == {"cio_id": "a1b2"}
    # v1 addresses a cio_id as `cio_<id>` in the path, as Customer.io's libraries pass it.
    assert v1(message) == [("PUT", "/api/v1/customers/cio_a1b2", {"plan": "pro"})]


def test_email_shaped_user_id_becomes_email() -> None:
    message = {"type": "track", "userId": "ann@example.com", "event": "Signed Up"}
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"email": "ann@example.com"},
            "action": "event",
            "name": "Signed Up",
            "attributes": {},
        }
    ]
    assert v1(message) == [
        (
            "POST",
            "/api/v1/customers/ann%40example.com/events",
            {"name": "Signed Up", "type": "event", "data": {}},
        )
    ]


@pytest.mark.parametrize("user_id", ["ann@", "@example.com", "ann at example.com", "ann@localhost"])
def test_user_id_that_is_not_an_email_stays_an_id(user_id: str) -> None:
    assert v2({"type": "identify", "userId": user_id})[0]["identifiers"] == {"id": user_id}


def test_identify_without_user_id_uses_traits_email() -> None:
    message = {"type": "identify", "traits": {"email": "ann@example.com", "plan": "pro"}}
    assert v2(message)[0]["identifiers"] == {"email": "ann@example.com"}
    assert v1(message) == [
        (
            "PUT",
            "/api/v1/customers/ann%40example.com",
            {"email": "ann@example.com", "plan": "pro"},
        )
    ]


def test_traits_email_comes_before_context_traits_email() -> None:
    message = {
        "type": "identify",
        "traits": {"email": "new@example.com"},
        "context": {"traits": {"email": "old@example.com"}},
    }
    assert v2(message)[0]["identifiers"] == {"email": "new@example.com"}


def test_context_traits_email_identifies_a_call_without_user_id() -> None:
    message = {
        "type": "track",
        "userId": "",
        "anonymousId": "anon-1",
        "event": "Clicked",
        "context": {"traits": {"email": "ann@example.com"}},
    }
    assert v2(message)[0]["identifiers"] == {"email": "ann@example.com"}


def test_user_id_comes_before_any_email() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "traits": {"email": "ann@example.com"},
        "context": {"traits": {"email": "old@example.com"}},
    }
    assert v2(message)[0]["identifiers"] == {"id": "u1"}


def test_track_traits_email_does_not_identify() -> None:
    # Only identify carries traits; a track's stray `traits` is not the person.
    message = {
        "type": "track",
        "anonymousId": "anon-1",
        "event": "Clicked",
        "traits": {"email": "ann@example.com"},
    }
    assert v2(message)[0]["identifiers"] == {"anonymous_id": "anon-1"}


def test_anonymous_identify_addresses_the_anonymous_id() -> None:
    message = {"type": "identify", "anonymousId": "anon-1", "traits": {"plan": "pro"}}
    expected = {
        "type": "person",
        "identifiers": {"anonymous_id": "anon-1"},
        "action": "identify",
        "attributes": {"plan": "pro"},
    }
    assert v2(message) == [expected]
    # v1 has no call for an anonymous profile: the v2 op goes through the v2 entity endpoint.
    assert v1(message) == [("POST", "/api/v2/entity", expected)]


def test_identify_without_any_identifier_is_rejected() -> None:
    reason = rejected({"type": "identify", "traits": {"plan": "pro"}})
    assert reason == "identify needs a userId, traits.email, context.traits.email or anonymousId"


def test_empty_or_null_user_id_counts_as_absent() -> None:
    for user_id in ("", None):
        message = {"type": "track", "userId": user_id, "anonymousId": "a", "event": "E"}
        assert v2(message)[0]["identifiers"] == {"anonymous_id": "a"}


# --- dates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2006-01-02T18:04:07Z", 1136225047),
        ("2006-01-02T15:04:05-0800", 1136243045),
        ("2006-01-02T15:04:05-08:00", 1136243045),
        ("2006-01-02T18:04:07+01:00", 1136221447),
        ("2019-02-01", 1548979200),
        ("2007-01-02T18:04:07", 1167761047),
        ("2006-01-02T15:04", 1136214240),
        ("2006-01-02T15:04:05.007", 1136214245),
        ("2006-01-02T15:04:05.999999999Z", 1136214245),
        ("2024-02-29T00:00:00Z", 1709164800),
        ("1969-12-31T23:59:59.500Z", -1),
        ("2000-01-01T00:30:00+01:00", 946683000),
    ],
)
def test_iso_dates_in_traits_become_unix_seconds(text: str, seconds: int) -> None:
    assert identify_attributes({"d": text}) == {"d": seconds}


@pytest.mark.parametrize(
    "text",
    [
        "25 Mar 2015",
        "Mar 25 2015",
        "01/01/2019",
        "1712345678",
        "1712345678.123",
        "2018-03-04T12:08:56 PDT",
        "2018-03-04T12:08:56.235 PDT",
        "15/MAR/18",
        "11-Jan-18",
        "2006-01-02 15:04:05",
        "2006-01-02T15:04:05+08",
        "2006-01-02t15:04:05z",
        "2006-01-02Z",
        "2023-02-30",
        "2023-13-01",
        "2023-01-01T24:00:00Z",
        "2023-01-01T10:60",
        "2023-01-01T10:00:60Z",
        "2023-01-01T10:00:00+24:00",
        "2023-01-01T10:00:00-01:60",
        "2023-02-29T10:00:00Z",
        "2024-02-30T10:00Z",
        "2023-04-31",
        "2023-01-01T10:00:00.Z",
        "2023-01-01T10:00:00Z ",
        "٢٠٢٣-01-01",
        "",
    ],
)
def test_strings_that_are_not_strict_iso_dates_are_left_alone(text: str) -> None:
    assert identify_attributes({"d": text}) == {"d": text}


def test_non_string_values_are_left_alone() -> None:
    traits = {"n": 20240115, "f": 1.5, "b": True, "z": None}
    assert identify_attributes(traits) == traits


def test_dates_convert_inside_nested_objects_and_arrays() -> None:
    traits = {
        "person": {"birthdate": "1990-01-01T00:00:00.000Z", "tags": ["2019-02-01", "x"]},
        "visits": [{"at": "2006-01-02T18:04:07Z"}, ["2019-02-01"]],
    }
    assert identify_attributes(traits) == {
        "person": {"birthdate": 631152000, "tags": [1548979200, "x"]},
        "visits": [{"at": 1136225047}, [1548979200]],
    }


def test_dates_convert_in_event_properties() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"shipped": "2019-02-01", "items": [{"due": "2019-02-01T00:00:00Z"}]},
    }
    expected_data = {"shipped": 1548979200, "items": [{"due": 1548979200}]}
    assert v2(message)[0]["attributes"] == expected_data
    assert v1(message)[0][2]["data"] == expected_data


def test_mapping_does_not_change_the_message() -> None:
    message = {"type": "identify", "userId": "u1", "traits": {"d": ["2019-02-01"]}}
    ops(message)
    assert message == {"type": "identify", "userId": "u1", "traits": {"d": ["2019-02-01"]}}


def test_message_timestamp_becomes_op_timestamp() -> None:
    message = {"type": "identify", "userId": "u1", "timestamp": "2024-01-15T11:30:00.999+01:00"}
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "identify",
            "timestamp": TS,
            "attributes": {},
        }
    ]
    # v1 carries an identify's time as the reserved `_timestamp` attribute.
    assert v1(message) == [("PUT", "/api/v1/customers/u1", {"_timestamp": TS})]


@pytest.mark.parametrize("timestamp", [None, "", "2014", "2018-03-04T12:08:56 PDT", 1705314600, {}])
def test_missing_or_unparseable_timestamp_is_omitted(timestamp: Any) -> None:
    message = {"type": "track", "userId": "u1", "event": "E", "timestamp": timestamp}
    assert "timestamp" not in v2(message)[0]
    assert "timestamp" not in v1(message)[0][2]


# --- created_at -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2024-01-15T10:30:00.000Z", TS),
        ("2024-01-15T11:30:00+01:00", TS),
    ],
)
def test_created_at_iso_becomes_seconds(value: str, seconds: int) -> None:
    assert identify_attributes({"created_at": value}) == {"created_at": seconds}


def test_created_at_in_seconds_stays_seconds() -> None:
    assert identify_attributes({"created_at": TS}) == {"created_at": TS}


def test_created_at_in_milliseconds_becomes_seconds() -> None:
    assert identify_attributes({"created_at": 1_705_314_600_123}) == {"created_at": TS}


def test_created_at_digit_string_becomes_seconds() -> None:
    assert identify_attributes({"created_at": "1705314600"}) == {"created_at": TS}
    assert identify_attributes({"created_at": "1705314600123"}) == {"created_at": TS}


def test_created_at_number_with_fraction_is_floored() -> None:
    assert identify_attributes({"created_at": 1705314600.9}) == {"created_at": TS}
    assert identify_attributes({"created_at": 1705314600999.5}) == {"created_at": TS}


def test_created_at_at_exactly_ten_to_the_twelve_is_seconds() -> None:
    assert identify_attributes({"created_at": 10**12}) == {"created_at": 10**12}
    assert identify_attributes({"created_at": 10**12 + 1}) == {"created_at": 10**9}


def test_camel_case_created_at_becomes_created_at() -> None:
    assert identify_attributes({"createdAt": "2024-01-15T10:30:00Z"}) == {"created_at": TS}


def test_both_created_at_keys_become_one_created_at() -> None:
    traits = {"created_at": TS, "createdAt": "1999-01-01", "plan": "pro"}
    assert identify_attributes(traits) == {"created_at": TS, "plan": "pro"}


def test_empty_created_at_gives_way_to_created_at_in_camel_case() -> None:
    traits = {"created_at": "", "createdAt": 1_705_314_600_000}
    assert identify_attributes(traits) == {"created_at": TS}


@pytest.mark.parametrize(
    ("traits", "created_at"),
    [
        ({"created_at": "junk", "createdAt": "2024-01-15T10:30:00Z"}, TS),
        ({"created_at": "2024-01-15T10:30:00Z", "createdAt": "junk"}, TS),
        ({"created_at": True, "createdAt": 1_705_314_600_000}, TS),
        ({"created_at": {"at": 1}, "createdAt": "1705314600"}, TS),
        # Both read as times: created_at comes first.
        ({"created_at": TS, "createdAt": "1999-01-01"}, TS),
        # Neither does: created_at goes as given.
        ({"created_at": "junk", "createdAt": "also junk"}, "junk"),
        ({"created_at": "", "createdAt": "junk"}, "junk"),
    ],
)
def test_created_at_is_whichever_key_reads_as_a_time(
    traits: dict[str, Any], created_at: Any
) -> None:
    message = {"type": "identify", "userId": "u1", "traits": traits}
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "identify",
            "attributes": {"created_at": created_at},
        }
    ]
    assert v1(message) == [("PUT", "/api/v1/customers/u1", {"created_at": created_at})]


@pytest.mark.parametrize("value", ["", None])
def test_empty_created_at_is_dropped(value: Any) -> None:
    assert identify_attributes({"created_at": value, "createdAt": value}) == {}


@pytest.mark.parametrize("value", ["25 Mar 2015", True, {"at": 1}, "1705314600.5"])
def test_created_at_that_is_no_time_passes_through(value: Any) -> None:
    assert identify_attributes({"createdAt": value}) == {"created_at": value}


def test_created_at_rule_applies_to_top_level_traits_only() -> None:
    traits = {"company": {"createdAt": "1705314600"}}
    assert identify_attributes(traits) == traits


@pytest.mark.parametrize("value", [True, False, "true", None, 0])
def test_unsubscribed_is_passed_as_given(value: Any) -> None:
    assert identify_attributes({"unsubscribed": value}) == {"unsubscribed": value}


# --- identify ---------------------------------------------------------------------------------


def test_identify_with_user_id_and_anonymous_id_adds_anonymous_id() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "anon-1",
        "timestamp": TIMESTAMP,
        "traits": {"email": "ann@example.com", "createdAt": "2024-01-15T10:30:00Z"},
    }
    attributes = {"email": "ann@example.com", "created_at": TS, "anonymous_id": "anon-1"}
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "identify",
            "timestamp": TS,
            "attributes": attributes,
        }
    ]
    assert v1(message) == [
        ("PUT", "/api/v1/customers/u1", {**attributes, "_timestamp": TS}),
    ]


def test_identify_by_email_with_anonymous_id_adds_anonymous_id() -> None:
    message = {"type": "identify", "anonymousId": "anon-1", "traits": {"email": "a@b.co"}}
    assert v2(message)[0]["attributes"] == {"email": "a@b.co", "anonymous_id": "anon-1"}


def test_message_anonymous_id_overrides_a_trait_of_that_name() -> None:
    traits = {"anonymous_id": "stale"}
    assert identify_attributes(traits, anonymousId="anon-1") == {"anonymous_id": "anon-1"}


# --- track ------------------------------------------------------------------------------------


def test_track_becomes_event() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": {"total": 30.5, "currency": "EUR"},
    }
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "event",
            "name": "Order Completed",
            "id": ULID_M1,
            "timestamp": TS,
            "attributes": {"total": 30.5, "currency": "EUR"},
        }
    ]
    assert v1(message) == [
        (
            "POST",
            "/api/v1/customers/u1/events",
            {
                "name": "Order Completed",
                "type": "event",
                "id": ULID_M1,
                "timestamp": TS,
                "data": {"total": 30.5, "currency": "EUR"},
            },
        )
    ]


def test_anonymous_track_becomes_anonymous_event() -> None:
    message = {
        "type": "track",
        "anonymousId": "anon-1",
        "event": "Viewed Pricing",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": {"plan": "pro"},
    }
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"anonymous_id": "anon-1"},
            "action": "event",
            "name": "Viewed Pricing",
            "id": ULID_M1,
            "timestamp": TS,
            "attributes": {"plan": "pro"},
        }
    ]
    assert v1(message) == [
        (
            "POST",
            "/api/v1/events",
            {
                "name": "Viewed Pricing",
                "type": "event",
                "id": ULID_M1,
                "timestamp": TS,
                "data": {"plan": "pro"},
                "anonymous_id": "anon-1",
            },
        )
    ]


@pytest.mark.parametrize("event", [None, "", "   ", 42, ["E"]])
def test_track_without_an_event_name_is_rejected(event: Any) -> None:
    assert rejected({"type": "track", "userId": "u1", "event": event}).startswith(
        "track needs a non-empty string event"
    )


def test_track_without_a_person_is_rejected() -> None:
    assert rejected({"type": "track", "event": "E"}) == (
        "track 'E' needs a userId, context.traits.email or anonymousId"
    )


# --- devices ----------------------------------------------------------------------------------


def device_message(event: str, **context: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "u1",
        "event": event,
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": {"campaign": "spring", "build": 812, "beta": True},
        "context": {
            "device": {"token": "tok-1", "type": "ios", "model": "iPhone15,2"},
            "app": {"version": "4.2.0"},
            "os": {"name": "iOS", "version": "17.1"},
            **context,
        },
    }


@pytest.mark.parametrize(
    "event", ["Application Installed", "Application Opened", "Device Created or Updated"]
)
def test_device_event_with_token_adds_device_and_tracks_event(event: str) -> None:
    device_attributes = {
        "campaign": "spring",
        "app_version": "4.2.0",
        "device_model": "iPhone15,2",
        "device_os": "17.1",
    }
    event_v2 = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "event",
        "name": event,
        "id": ULID_M1,
        "timestamp": TS,
        "attributes": {"campaign": "spring", "build": 812, "beta": True},
    }
    assert v2(device_message(event)) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "add_device",
            "device": {
                "token": "tok-1",
                "platform": "ios",
                "last_used": TS,
                "attributes": device_attributes,
            },
        },
        event_v2,
    ]
    assert v1(device_message(event)) == [
        (
            "PUT",
            "/api/v1/customers/u1/devices",
            {
                "device": {
                    "id": "tok-1",
                    "platform": "ios",
                    "last_used": TS,
                    "attributes": device_attributes,
                }
            },
        ),
        (
            "POST",
            "/api/v1/customers/u1/events",
            {
                "name": event,
                "type": "event",
                "id": ULID_M1,
                "timestamp": TS,
                "data": {"campaign": "spring", "build": 812, "beta": True},
            },
        ),
    ]


def test_device_copies_only_string_properties_within_attribute_limits() -> None:
    message = device_message("Application Opened")
    message["properties"] = {"ok": "fine", "long": "x" * 1001, "n" * 151: "x", "n": 1}
    [device_op, event_op] = v2(message)
    assert device_op["device"]["attributes"] == {
        "ok": "fine",
        "app_version": "4.2.0",
        "device_model": "iPhone15,2",
        "device_os": "17.1",
    }
    # The event keeps every property, as given.
    assert event_op["attributes"] == message["properties"]
    assert map_and_check(message, received_at=RECEIVED_AT) == map_message(
        message, received_at=RECEIVED_AT
    )


def opened(device: dict[str, Any], os: dict[str, Any] | None = None) -> dict[str, Any]:
    """An "Application Opened" of u1 with this device (and OS) context, and nothing else."""
    context: dict[str, Any] = {"device": device}
    if os is not None:
        context["os"] = os
    return {"type": "track", "userId": "u1", "event": "Application Opened", "context": context}


OPENED_V2 = {
    "type": "person",
    "identifiers": {"id": "u1"},
    "action": "event",
    "name": "Application Opened",
    "attributes": {},
}
OPENED_V1 = (
    "POST",
    "/api/v1/customers/u1/events",
    {"name": "Application Opened", "type": "event", "data": {}},
)


@pytest.mark.parametrize(
    ("device", "os", "platform"),
    [
        ({"type": "ios"}, None, "ios"),
        ({"type": "iOS"}, None, "ios"),
        ({"type": "iPadOS"}, None, "ios"),
        ({"type": "tvOS"}, None, "ios"),
        ({"type": "watchOS"}, None, "ios"),
        ({"type": "iPhone OS"}, None, "ios"),
        ({"type": "iPhone"}, None, "ios"),
        ({"type": "ipad"}, None, "ios"),
        ({"type": " iOS "}, None, "ios"),
        ({"type": "android"}, None, "android"),
        ({"type": "Android"}, None, "android"),
        ({"type": "Android OS"}, None, "android"),
        # Without a device type, or with one that names no platform, the OS name decides.
        ({}, {"name": "iPhone OS"}, "ios"),
        ({}, {"name": "Android"}, "android"),
        ({"type": "mobile"}, {"name": "iOS"}, "ios"),
        ({"type": "ios"}, {"name": "Android"}, "ios"),
    ],
)
def test_device_platform_is_normalised_to_ios_or_android(
    device: dict[str, Any], os: dict[str, Any] | None, platform: str
) -> None:
    message = opened({"token": "t", **device}, os)
    device_v2 = {"token": "t", "platform": platform, "last_used": 1_700_000_000}
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "add_device",
            "device": device_v2,
        },
        OPENED_V2,
    ]
    device_v1 = {"id": "t", "platform": platform, "last_used": 1_700_000_000}
    assert v1(message) == [
        ("PUT", "/api/v1/customers/u1/devices", {"device": device_v1}),
        OPENED_V1,
    ]


@pytest.mark.parametrize(
    ("device", "os"),
    [
        ({"type": "macOS"}, None),
        ({"type": "web"}, None),
        ({"type": "Windows"}, {"name": "Windows"}),
        ({"type": ""}, {"name": "Linux"}),
        ({"type": 7}, None),
        ({}, None),
    ],
)
def test_device_platform_other_than_ios_or_android_sends_the_event_without_the_device(
    device: dict[str, Any], os: dict[str, Any] | None
) -> None:
    # Customer.io refuses such a device, and its refusal would cost the event too (a
    # delivery's ops succeed or fail together): the event goes alone.
    message = opened({"token": "t", **device}, os)
    assert v2(message) == [OPENED_V2]
    assert v1(message) == [OPENED_V1]


def test_device_last_used_falls_back_to_the_time_relay_received_it() -> None:
    message = device_message("Application Installed")
    del message["timestamp"]
    assert v2(message)[0]["device"]["last_used"] == 1_700_000_000


def test_device_event_without_token_is_a_plain_event() -> None:
    message = device_message("Application Installed", device={"type": "ios"})
    assert [op["action"] for op in v2(message)] == ["event"]


def test_anonymous_device_event_is_only_an_event() -> None:
    # Customer.io keeps devices on identified people; the install still counts as an event.
    message = device_message("Application Installed")
    message["userId"] = None
    message["anonymousId"] = "anon-1"
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"anonymous_id": "anon-1"},
            "action": "event",
            "name": "Application Installed",
            "id": ULID_M1,
            "timestamp": TS,
            "attributes": {"campaign": "spring", "build": 812, "beta": True},
        }
    ]


@pytest.mark.parametrize("event", ["Application Uninstalled", "Device Deleted"])
def test_device_delete_event_with_token_deletes_the_device(event: str) -> None:
    message = device_message(event, device={"token": "tok/1 2"})
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "delete_device",
            "device": {"token": "tok/1 2"},
        }
    ]
    assert v1(message) == [("DELETE", "/api/v1/customers/u1/devices/tok%2F1%202", {})]


def test_device_delete_event_without_token_is_a_plain_event() -> None:
    message = device_message("Application Uninstalled", device={})
    assert [op["action"] for op in v2(message)] == ["event"]


def test_anonymous_device_delete_is_rejected() -> None:
    message = device_message("Device Deleted")
    message["userId"] = None
    message["anonymousId"] = "anon-1"
    assert rejected(message) == "track 'Device Deleted' needs a userId or context.traits.email"


# --- person actions ---------------------------------------------------------------------------


def test_user_deleted_deletes_the_person() -> None:
    message = {"type": "track", "userId": "a@b.co", "event": "User Deleted"}
    assert v2(message) == [
        {"type": "person", "identifiers": {"email": "a@b.co"}, "action": "delete"}
    ]
    assert v1(message) == [("DELETE", "/api/v1/customers/a%40b.co", {})]


def test_delete_message_deletes_the_person() -> None:
    message = {"type": "delete", "userId": "u1", "messageId": "m-1"}
    assert v2(message) == [{"type": "person", "identifiers": {"id": "u1"}, "action": "delete"}]
    assert v1(message) == [("DELETE", "/api/v1/customers/u1", {})]


@pytest.mark.parametrize(
    "message",
    [
        {"type": "delete", "anonymousId": "anon-1"},
        {"type": "delete"},
    ],
)
def test_delete_without_a_known_person_is_rejected(message: dict[str, Any]) -> None:
    assert rejected(message) == "delete needs a userId or context.traits.email"


@pytest.mark.parametrize(
    ("event", "action"), [("User Suppressed", "suppress"), ("User Unsuppressed", "unsuppress")]
)
def test_user_suppressed_and_unsuppressed(event: str, action: str) -> None:
    message = {"type": "track", "userId": "cio_x9", "event": event}
    assert v2(message) == [{"type": "person", "identifiers": {"cio_id": "x9"}, "action": action}]
    assert v1(message) == [("POST", f"/api/v1/customers/cio_x9/{action}", {})]


def test_anonymous_suppress_is_rejected() -> None:
    message = {"type": "track", "anonymousId": "a", "event": "User Suppressed"}
    assert rejected(message) == "track 'User Suppressed' needs a userId or context.traits.email"


# --- objects ----------------------------------------------------------------------------------


def test_object_deleted_deletes_the_object() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Object Deleted",
        "properties": {"objectId": "acme", "objectTypeId": 2},
    }
    expected = {
        "type": "object",
        "identifiers": {"object_type_id": "2", "object_id": "acme"},
        "action": "delete",
    }
    assert v2(message) == [expected]
    # Objects have no v1 endpoint: the v2 op goes to the entity endpoint whichever API is chosen.
    assert v1(message) == [("POST", "/api/v2/entity", expected)]


def test_object_deleted_needs_no_person_and_defaults_to_type_one() -> None:
    message = {"type": "track", "event": "Object Deleted", "properties": {"objectId": 7}}
    assert v2(message)[0]["identifiers"] == {"object_type_id": "1", "object_id": "7"}


def test_object_deleted_without_object_id_is_rejected() -> None:
    message = {"type": "track", "userId": "u1", "event": "Object Deleted", "properties": {}}
    assert rejected(message) == "Object Deleted needs properties.objectId"


def test_relationship_deleted_deletes_the_persons_relationship() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Relationship Deleted",
        "properties": {"objectId": "acme", "objectTypeId": "3"},
    }
    expected = {
        "type": "object",
        "identifiers": {"object_type_id": "3", "object_id": "acme"},
        "action": "delete_relationships",
        "cio_relationships": [{"identifiers": {"id": "u1"}}],
    }
    assert v2(message) == [expected]
    assert v1(message) == [("POST", "/api/v2/entity", expected)]


def test_group_identifies_an_object_related_to_the_person() -> None:
    message = {
        "type": "group",
        "userId": "u1",
        "groupId": "acme",
        "traits": {"name": "Acme", "founded": "2001-09-09", "objectTypeId": 4},
    }
    expected = {
        "type": "object",
        "identifiers": {"object_type_id": "4", "object_id": "acme"},
        "action": "identify",
        "attributes": {"name": "Acme", "founded": 999993600},
        "cio_relationships": [{"identifiers": {"id": "u1"}}],
    }
    assert v2(message) == [expected]
    assert v1(message) == [("POST", "/api/v2/entity", expected)]


@pytest.mark.parametrize(
    ("traits", "type_id"),
    [
        ({"object_type_id": "2", "objectTypeId": "3"}, "2"),
        ({"objectTypeId": "3"}, "3"),
        ({"object_type_id": 5}, "5"),
        ({"object_type_id": "", "objectTypeId": None}, "1"),
        ({}, "1"),
    ],
)
def test_group_object_type_id_rules(traits: dict[str, Any], type_id: str) -> None:
    message = {"type": "group", "userId": "u1", "groupId": 9, "traits": traits}
    [op] = v2(message)
    assert op["identifiers"] == {"object_type_id": type_id, "object_id": "9"}
    assert op["attributes"] == {}


def test_group_object_attributes_replace_the_other_traits() -> None:
    message = {
        "type": "group",
        "userId": "u1",
        "groupId": "acme",
        "traits": {
            "object_type_id": "1",
            "objectAttributes": {"name": "Sales", "since": "2024-01-15T10:30:00Z"},
            "relationshipAttributes": {"role": "admin", "joined": "2024-01-15T10:30:00Z"},
            "ignored": "x",
        },
    }
    assert v2(message) == [
        {
            "type": "object",
            "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "action": "identify",
            "attributes": {"name": "Sales", "since": TS},
            "cio_relationships": [
                {
                    "identifiers": {"id": "u1"},
                    "relationship_attributes": {"role": "admin", "joined": TS},
                }
            ],
        }
    ]


def test_group_without_object_attributes_keeps_traits_but_not_its_control_keys() -> None:
    message = {
        "type": "group",
        "userId": "u1",
        "groupId": "acme",
        "traits": {"plan": "team", "relationshipAttributes": {"role": "owner"}},
    }
    [op] = v2(message)
    assert op["attributes"] == {"plan": "team"}
    assert op["cio_relationships"] == [
        {"identifiers": {"id": "u1"}, "relationship_attributes": {"role": "owner"}}
    ]


def test_group_of_an_anonymous_person_is_identify_anonymous() -> None:
    message = {"type": "group", "anonymousId": "anon-1", "groupId": "acme", "traits": {"n": 1}}
    assert v2(message) == [
        {
            "type": "object",
            "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "action": "identify_anonymous",
            "attributes": {"n": 1},
            "cio_relationships": [{"identifiers": {"anonymous_id": "anon-1"}}],
        }
    ]


def test_group_without_group_id_is_rejected() -> None:
    assert rejected({"type": "group", "userId": "u1", "traits": {}}) == "group needs a groupId"


# --- delivery metrics and content events ------------------------------------------------------


def delivery_event(**properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "anonymousId": "device-7",
        "event": "Report Delivery Event",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": properties,
    }


def metric_requests(message: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """What v2 plans for a message whose ops travel alone: each op's own request."""
    encoded = map_and_encode_v2(message, received_at=RECEIVED_AT)
    assert isinstance(encoded, list), encoded
    assert all(isinstance(item, OutgoingRequest) for item in encoded)
    return [(r.method, r.path, json.loads(r.body)) for r in encoded]  # type: ignore[union-attr]


def test_report_delivery_event_becomes_a_metrics_request_in_v1_and_v2() -> None:
    message = delivery_event(deliveryId="RPILAgABcRhIBqSp7kiPekGBIeVh", metric="delivered")
    expected = [
        (
            "POST",
            "/api/v1/metrics",
            {"delivery_id": "RPILAgABcRhIBqSp7kiPekGBIeVh", "metric": "delivered", "timestamp": TS},
        )
    ]
    assert v1(message) == expected
    assert metric_requests(message) == expected


def test_report_delivery_event_carries_recipient_reason_href_and_in_app_action_metadata() -> None:
    message = delivery_event(
        deliveryId="d-1",
        metric="clicked",
        recipient="ann@example.com",
        reason="",  # empty: left out, as absent
        href="https://shop.example/sale",
        actionName="score",
        actionValue=3,  # a number, written as the text Customer.io expects
        other="not a metrics field",
    )
    assert v1(message) == [
        (
            "POST",
            "/api/v1/metrics",
            {
                "delivery_id": "d-1",
                "metric": "clicked",
                "timestamp": TS,
                "recipient": "ann@example.com",
                "href": "https://shop.example/sale",
                "metadata": {"action_name": "score", "action_value": "3"},
            },
        )
    ]


@pytest.mark.parametrize(
    "metric",
    ["delivered", "opened", "clicked", "converted", "bounced", "spammed", "dropped", "deferred"],
)
def test_every_metric_customerio_takes_is_reported(metric: str) -> None:
    [(_, _, body)] = v1(delivery_event(deliveryId="d-1", metric=metric, reason="mailbox full"))
    expected = {"delivery_id": "d-1", "metric": metric, "timestamp": TS, "reason": "mailbox full"}
    assert body == expected


def test_a_push_delivery_id_from_a_mobile_sdk_is_reported_with_its_device_token() -> None:
    # What Customer.io's mobile SDKs send when a push is opened: the delivery id and token.
    message = delivery_event(deliveryId="push-dlv-1", metric="opened", recipient="apns-token-1")
    message["userId"] = "u1"
    assert v1(message)[0][2] == {
        "delivery_id": "push-dlv-1",
        "metric": "opened",
        "timestamp": TS,
        "recipient": "apns-token-1",
    }


def test_a_metric_without_a_message_time_is_dated_when_relay_received_it() -> None:
    message = delivery_event(deliveryId="d-1", metric="opened")
    del message["timestamp"]
    assert v1(message)[0][2]["timestamp"] == int(RECEIVED_AT)


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        (
            {"metric": "opened"},
            "Report Delivery Event needs properties.deliveryId, the CIO-Delivery-ID of the"
            " message the metric is about",
        ),
        (
            {"deliveryId": "", "metric": "opened"},
            "Report Delivery Event needs properties.deliveryId, the CIO-Delivery-ID of the"
            " message the metric is about",
        ),
        (
            {"deliveryId": ["d"], "metric": "opened"},
            "Report Delivery Event: properties.deliveryId must be a string or a number, got array",
        ),
        (
            {"deliveryId": "d-1"},
            "Report Delivery Event: properties.metric must be one of delivered, opened,"
            " clicked, converted, bounced, spammed, dropped, deferred; got null",
        ),
        (
            {"deliveryId": "d-1", "metric": "Opened"},
            "Report Delivery Event: properties.metric must be one of delivered, opened,"
            " clicked, converted, bounced, spammed, dropped, deferred; got 'Opened'",
        ),
        (
            {"deliveryId": "d-1", "metric": "sent"},
            "Report Delivery Event: properties.metric must be one of delivered, opened,"
            " clicked, converted, bounced, spammed, dropped, deferred; got 'sent'",
        ),
        (
            {"deliveryId": "d-1", "metric": "clicked", "href": {"url": "x"}},
            "Report Delivery Event: properties.href must be a string or a number, got object",
        ),
        (
            {"deliveryId": "d-1", "metric": "clicked", "actionValue": True},
            "Report Delivery Event: properties.actionValue must be a string or a number,"
            " got boolean",
        ),
    ],
)
def test_a_delivery_event_without_a_usable_delivery_id_or_metric_is_refused(
    properties: dict[str, Any], reason: str
) -> None:
    assert rejected(delivery_event(**properties)) == reason
    assert map_and_encode_v2(delivery_event(**properties), received_at=RECEIVED_AT) == Rejection(
        reason
    )


def test_report_delivery_event_is_not_also_sent_as_an_event() -> None:
    [op] = ops(delivery_event(deliveryId="d-1", metric="opened"))
    assert (op.kind, op.action) == ("delivery", "metric")
    with pytest.raises(ValueError, match="has no v2 op"):
        encode_v2(op)


def content_event(**properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "u1",
        "event": "Report Content Event",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": properties,
    }


@pytest.mark.parametrize("action", ["viewed_content", "clicked_content"])
def test_report_content_event_becomes_the_person_action_it_names(action: str) -> None:
    message = content_event(
        actionType=action,
        contentId=4,
        templateId=12,
        actionName="buy",
        shownAt="2024-01-15T10:29:00Z",
    )
    op = {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": action,
        "name": action,
        "timestamp": TS,
        "attributes": {"contentId": 4, "templateId": 12, "actionName": "buy", "shownAt": TS - 60},
    }
    assert v2(message) == [op]
    # v1 has no call for it: the v2 op goes to /api/v2/entity.
    assert v1(message) == [("POST", "/api/v2/entity", op)]


def test_an_anonymous_content_event_is_addressed_by_anonymous_id() -> None:
    message = content_event(actionType="viewed_content")
    del message["userId"]
    message["anonymousId"] = "a-1"
    assert v2(message)[0]["identifiers"] == {"anonymous_id": "a-1"}


@pytest.mark.parametrize(
    ("action_type", "got"),
    [(None, "null"), ("viewed", "'viewed'"), ("Viewed_Content", "'Viewed_Content'"), (1, "number")],
)
def test_a_content_event_with_another_action_type_is_refused(action_type: Any, got: str) -> None:
    assert rejected(content_event(actionType=action_type)) == (
        "Report Content Event: properties.actionType must be one of viewed_content,"
        f" clicked_content; got {got}"
    )


def test_content_event_attributes_are_event_data_not_profile_attributes() -> None:
    # Like an event's properties: bounded by the op size, not the 1000-byte attribute limit.
    message = content_event(actionType="clicked_content", body="x" * 5000)
    assert map_and_check(message, received_at=RECEIVED_AT) == map_message(
        message, received_at=RECEIVED_AT
    )


# --- identifiers a destination enables, subscription preferences, update-only identifies ------

PHONE = MappingOptions(frozenset({"id", "email", "phone"}))
ID_ONLY = MappingOptions(frozenset({"id"}))
UPDATE_ONLY = MappingOptions(update_only=True)


def ops_with(message: dict[str, Any], options: MappingOptions) -> list[Operation]:
    result = map_message(message, received_at=RECEIVED_AT, options=options)
    assert isinstance(result, list), result
    return result


def v2_with(message: dict[str, Any], options: MappingOptions) -> list[dict[str, Any]]:
    return [encode_v2(op) for op in ops_with(message, options)]


def v1_with(message: dict[str, Any], options: MappingOptions) -> list[tuple[str, str, Any]]:
    return [(r.method, r.path, r.body) for op in ops_with(message, options) for r in encode_v1(op)]


def rejected_with(message: dict[str, Any], options: MappingOptions) -> str:
    result = map_message(message, received_at=RECEIVED_AT, options=options)
    assert isinstance(result, Rejection), result
    return result.reason


def test_an_e164_user_id_is_a_phone_identifier_when_the_destination_enables_phone() -> None:
    message = {"type": "identify", "userId": "+14155552671", "traits": {"plan": "pro"}}
    op = {
        "type": "person",
        "identifiers": {"phone": "+14155552671"},
        "action": "identify",
        "attributes": {"plan": "pro"},
    }
    assert v2_with(message, PHONE) == [op]
    # v1 reads a phone number in its path as an id: the v2 op goes to /api/v2/entity.
    assert v1_with(message, PHONE) == [("POST", "/api/v2/entity", op)]
    # Without phone enabled (the default), the same userId stays an id, as before.
    assert v2(message)[0]["identifiers"] == {"id": "+14155552671"}


def test_a_person_known_by_phone_gets_events_through_v2_even_with_api_v1() -> None:
    message = {
        "type": "track",
        "userId": "+447911123456",
        "event": "Order Completed",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
    }
    op = {
        "type": "person",
        "identifiers": {"phone": "+447911123456"},
        "action": "event",
        "name": "Order Completed",
        "id": ULID_M1,
        "timestamp": TS,
        "attributes": {},
    }
    assert v1_with(message, PHONE) == [("POST", "/api/v2/entity", op)]


@pytest.mark.parametrize("user_id", ["+1 415 555 2671", "+0123456", "+1", "+1415555267100000"])
def test_a_user_id_starting_with_plus_must_be_e164_when_phone_is_enabled(user_id: str) -> None:
    message = {"type": "identify", "userId": user_id}
    assert rejected_with(message, PHONE) == (
        f"userId {user_id!r} starts with + but is not a phone number in E.164 form (a + then"
        " 2 to 15 digits, the first not 0, e.g. +14155552671); this destination identifies"
        " people by phone, so write the number that way, or the id without its +"
    )


def test_without_a_user_id_an_email_comes_before_a_phone_number_in_the_traits() -> None:
    both = {
        "type": "identify",
        "anonymousId": "a1",
        "traits": {"email": "a@b.co", "phone": "+15551234567"},
    }
    assert v2_with(both, PHONE)[0]["identifiers"] == {"email": "a@b.co"}
    phone_only = {"type": "identify", "anonymousId": "a1", "traits": {"phone": "+15551234567"}}
    assert v2_with(phone_only, PHONE)[0]["identifiers"] == {"phone": "+15551234567"}
    # By default a phone trait is an attribute only: the person stays anonymous.
    assert v2(phone_only)[0]["identifiers"] == {"anonymous_id": "a1"}


def test_a_track_call_finds_the_phone_number_in_context_traits() -> None:
    message = {
        "type": "track",
        "anonymousId": "a1",
        "event": "Viewed",
        "context": {"traits": {"phone": "+15551234567"}},
    }
    assert v2_with(message, PHONE)[0]["identifiers"] == {"phone": "+15551234567"}


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            "traits.phone '(555) 123-4567'",
            {"type": "identify", "traits": {"phone": "(555) 123-4567"}},
        ),
        (
            "context.traits.phone '5551234567'",
            {"type": "track", "event": "E", "context": {"traits": {"phone": "5551234567"}}},
        ),
        ("traits.phone number", {"type": "identify", "traits": {"phone": 15551234567}}),
    ],
)
def test_a_phone_number_that_would_identify_someone_must_be_e164(
    where: str, message: dict[str, Any]
) -> None:
    message["anonymousId"] = "a1"
    assert rejected_with(message, PHONE) == (
        f"{where} is not a phone number in E.164 form (a + then 2 to 15 digits, the first not"
        " 0, e.g. +14155552671); this destination identifies people by phone, so write it that way,"
        " or send a userId"
    )


def test_without_email_enabled_an_email_user_id_is_an_id_and_traits_email_an_attribute() -> None:
    assert v2_with({"type": "identify", "userId": "ann@example.com"}, ID_ONLY)[0][
        "identifiers"
    ] == {"id": "ann@example.com"}
    message = {"type": "identify", "anonymousId": "a1", "traits": {"email": "ann@example.com"}}
    assert v2_with(message, ID_ONLY) == [
        {
            "type": "person",
            "identifiers": {"anonymous_id": "a1"},
            "action": "identify",
            "attributes": {"email": "ann@example.com"},
        }
    ]


def test_alias_merges_people_known_by_phone_through_v2() -> None:
    message = {"type": "alias", "userId": "+15551234567", "previousId": "anon-1"}
    op = {
        "type": "person",
        "action": "merge",
        "primary": {"phone": "+15551234567"},
        "secondary": {"id": "anon-1"},
    }
    assert v1_with(message, PHONE) == [("POST", "/api/v2/entity", op)]
    assert rejected_with(
        {"type": "alias", "userId": "u1", "previousId": "+1-555"}, PHONE
    ).startswith("previousId '+1-555' starts with + but is not a phone number")


def test_update_only_identifies_carry_update_true_in_v2_and_v1() -> None:
    message = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    assert v2_with(message, UPDATE_ONLY)[0]["attributes"] == {"plan": "pro", "_update": True}
    assert v1_with(message, UPDATE_ONLY) == [
        ("PUT", "/api/v1/customers/u1", {"plan": "pro", "_update": True})
    ]
    # Only identifies: Customer.io's _update is an identify attribute.
    track = {"type": "track", "userId": "u1", "event": "E"}
    assert v2_with(track, UPDATE_ONLY) == v2(track)
    # A sender's own `_update: false` cannot undo the destination's setting.
    own = {"type": "identify", "userId": "u1", "traits": {"_update": False}}
    assert v2_with(own, UPDATE_ONLY)[0]["attributes"] == {"_update": True}


def test_subscription_preferences_pass_as_customerio_reads_them() -> None:
    whole = {"topics": {"topic_1": True, "topic_2": False, "topic_3": None}}
    message = {
        "type": "identify",
        "userId": "u1",
        "traits": {"cio_subscription_preferences": whole},
    }
    assert v2(message)[0]["attributes"] == {"cio_subscription_preferences": whole}
    assert v1(message) == [("PUT", "/api/v1/customers/u1", {"cio_subscription_preferences": whole})]
    dotted = {
        "type": "identify",
        "userId": "u1",
        "traits": {"cio_subscription_preferences.topics.topic_4": True},
    }
    assert v2(dotted)[0]["attributes"] == {"cio_subscription_preferences.topics.topic_4": True}


@pytest.mark.parametrize(
    ("traits", "reason"),
    [
        (
            {"cio_subscription_preferences": "all"},
            "traits.cio_subscription_preferences must be an object such as"
            " {topics: {topic_1: true}}, got string",
        ),
        (
            {"cio_subscription_preferences": {"topics": [1, 2]}},
            "traits.cio_subscription_preferences.topics must be an object such as"
            " {topic_1: true, topic_2: false}, got array",
        ),
        (
            {"cio_subscription_preferences": {"topics": {"newsletter": True}}},
            "traits.cio_subscription_preferences.topics.newsletter: Customer.io names"
            " subscription topics topic_<id> (topic_1, topic_2, …, as its Subscription Center"
            " lists them), not 'newsletter'",
        ),
        (
            {"cio_subscription_preferences": {"topics": {"topic_1": "true"}}},
            "traits.cio_subscription_preferences.topics.topic_1 must be true (subscribed) or"
            " false (unsubscribed), or null for the topic's default; got string",
        ),
        (
            {"cio_subscription_preferences.topics.topic_2": 1},
            "traits.cio_subscription_preferences.topics.topic_2 must be true (subscribed) or"
            " false (unsubscribed), or null for the topic's default; got number",
        ),
        (
            {"cio_subscription_preferences.topics.2": True},
            "traits.cio_subscription_preferences.topics.2: Customer.io names subscription"
            " topics topic_<id> (topic_1, topic_2, …, as its Subscription Center lists them),"
            " not '2'",
        ),
    ],
)
def test_subscription_preferences_customerio_cannot_read_are_refused(
    traits: dict[str, Any], reason: str
) -> None:
    assert rejected({"type": "identify", "userId": "u1", "traits": traits}) == reason


# --- page and screen --------------------------------------------------------------------------


def test_page_name_is_properties_url() -> None:
    message = {
        "type": "page",
        "userId": "u1",
        "name": "Pricing",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": {"url": "https://example.com/pricing", "title": "Pricing"},
        "context": {"page": {"url": "https://example.com/other"}},
    }
    properties = {"url": "https://example.com/pricing", "title": "Pricing"}
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "page",
            "name": "https://example.com/pricing",
            "id": ULID_M1,
            "timestamp": TS,
            "attributes": properties,
        }
    ]
    assert v1(message) == [
        (
            "POST",
            "/api/v1/customers/u1/events",
            {
                "name": "https://example.com/pricing",
                "type": "page",
                "id": ULID_M1,
                "timestamp": TS,
                "data": properties,
            },
        )
    ]


def test_page_name_falls_back_to_context_page_url_then_the_page_name() -> None:
    base = {"type": "page", "userId": "u1", "name": "Pricing"}
    with_context = {**base, "context": {"page": {"url": "https://example.com/p"}}}
    assert v2(with_context)[0]["name"] == "https://example.com/p"
    assert v2(base)[0]["name"] == "Pricing"


def test_page_without_any_name_is_rejected() -> None:
    message = {"type": "page", "userId": "u1", "properties": {"title": "T"}}
    assert rejected(message) == "page needs properties.url, context.page.url or name"


def test_anonymous_page_goes_to_the_anonymous_events_endpoint() -> None:
    message = {"type": "page", "anonymousId": "anon-1", "properties": {"url": "https://e.co/"}}
    assert v1(message) == [
        (
            "POST",
            "/api/v1/events",
            {
                "name": "https://e.co/",
                "type": "page",
                "data": {"url": "https://e.co/"},
                "anonymous_id": "anon-1",
            },
        )
    ]


def test_screen_name_is_the_screen_name() -> None:
    message = {
        "type": "screen",
        "userId": "u1",
        "name": "Checkout",
        "messageId": "m-1",
        "timestamp": TIMESTAMP,
        "properties": {"name": "Other", "step": 2},
    }
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "screen",
            "name": "Checkout",
            "id": ULID_M1,
            "timestamp": TS,
            "attributes": {"name": "Other", "step": 2},
        }
    ]
    assert v1(message) == [
        (
            "POST",
            "/api/v1/customers/u1/events",
            {
                "name": "Checkout",
                "type": "screen",
                "id": ULID_M1,
                "timestamp": TS,
                "data": {"name": "Other", "step": 2},
            },
        )
    ]


def test_screen_name_falls_back_to_properties_name() -> None:
    message = {"type": "screen", "userId": "u1", "properties": {"name": "Home"}}
    assert v2(message)[0]["name"] == "Home"


def test_screen_without_a_name_is_rejected() -> None:
    assert rejected({"type": "screen", "userId": "u1"}) == "screen needs name or properties.name"


# --- the same rules through both encoders -----------------------------------------------------


@pytest.mark.parametrize(
    ("message", "name"),
    [
        (
            {
                "name": "Pricing",
                "properties": {"url": "https://e.co/a"},
                "context": {"page": {"url": "https://e.co/b"}},
            },
            "https://e.co/a",
        ),
        (
            {"name": "Pricing", "properties": {}, "context": {"page": {"url": "https://e.co/b"}}},
            "https://e.co/b",
        ),
        (
            {
                "name": "Pricing",
                "properties": {"url": ""},
                "context": {"page": {"url": "https://e.co/b"}},
            },
            "https://e.co/b",
        ),
        ({"name": "Pricing", "properties": {}, "context": {"page": {}}}, "Pricing"),
        ({"name": "Pricing", "properties": {}}, "Pricing"),
    ],
    ids=["properties-url", "context-page-url", "empty-url", "name-no-url", "name-no-context"],
)
def test_page_name_order_in_both_encoders(message: dict[str, Any], name: str) -> None:
    message = {"type": "page", "userId": "u1", **message}
    properties = message["properties"]
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "page",
            "name": name,
            "attributes": properties,
        }
    ]
    assert v1(message) == [
        ("POST", "/api/v1/customers/u1/events", {"name": name, "type": "page", "data": properties})
    ]


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ({"name": "Checkout", "properties": {"name": "Cart"}}, "Checkout"),
        ({"properties": {"name": "Cart"}}, "Cart"),
        ({"name": "", "properties": {"name": "Cart"}}, "Cart"),
        ({"name": None, "properties": {"name": "Cart"}}, "Cart"),
        ({"name": 42, "properties": {"name": "Cart"}}, "42"),
    ],
    ids=["name", "properties-name", "empty-name", "null-name", "numeric-name"],
)
def test_screen_name_fallback_in_both_encoders(message: dict[str, Any], name: str) -> None:
    message = {"type": "screen", "userId": "u1", **message}
    properties = message["properties"]
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": {"id": "u1"},
            "action": "screen",
            "name": name,
            "attributes": properties,
        }
    ]
    assert v1(message) == [
        (
            "POST",
            "/api/v1/customers/u1/events",
            {"name": name, "type": "screen", "data": properties},
        )
    ]


@pytest.mark.parametrize(
    ("traits", "type_id", "attributes", "relationship"),
    [
        ({"plan": "team"}, "1", {"plan": "team"}, {"identifiers": {"id": "u1"}}),
        ({"object_type_id": "2", "objectTypeId": "3"}, "2", {}, {"identifiers": {"id": "u1"}}),
        ({"objectTypeId": 3, "plan": "team"}, "3", {"plan": "team"}, {"identifiers": {"id": "u1"}}),
        ({"object_type_id": "", "objectTypeId": None}, "1", {}, {"identifiers": {"id": "u1"}}),
        (
            {"objectAttributes": {"name": "Sales"}, "plan": "ignored"},
            "1",
            {"name": "Sales"},
            {"identifiers": {"id": "u1"}},
        ),
        (
            {"relationshipAttributes": {"role": "admin"}, "plan": "team"},
            "1",
            {"plan": "team"},
            {"identifiers": {"id": "u1"}, "relationship_attributes": {"role": "admin"}},
        ),
    ],
    ids=["default", "snake-first", "camel", "empty-defaults", "object-attributes", "rel-attrs"],
)
def test_group_object_rules_in_both_encoders(
    traits: dict[str, Any], type_id: str, attributes: dict[str, Any], relationship: dict[str, Any]
) -> None:
    message = {"type": "group", "userId": "u1", "groupId": "acme", "traits": traits}
    expected = {
        "type": "object",
        "identifiers": {"object_type_id": type_id, "object_id": "acme"},
        "action": "identify",
        "attributes": attributes,
        "cio_relationships": [relationship],
    }
    assert v2(message) == [expected]
    # v1 has no object calls: the v2 op goes to the v2 entity endpoint.
    assert v1(message) == [("POST", "/api/v2/entity", expected)]


@pytest.mark.parametrize(
    ("person_fields", "action", "identifiers"),
    [
        ({"userId": "u1", "anonymousId": "a1"}, "identify", {"id": "u1"}),
        ({"anonymousId": "a1"}, "identify_anonymous", {"anonymous_id": "a1"}),
        (
            {"anonymousId": "a1", "context": {"traits": {"email": "ann@example.com"}}},
            "identify",
            {"email": "ann@example.com"},
        ),
    ],
    ids=["known", "anonymous", "email-beats-anonymous"],
)
def test_group_identify_anonymous_in_both_encoders(
    person_fields: dict[str, Any], action: str, identifiers: dict[str, str]
) -> None:
    message = {"type": "group", "groupId": "acme", "traits": {"n": 1}, **person_fields}
    expected = {
        "type": "object",
        "identifiers": {"object_type_id": "1", "object_id": "acme"},
        "action": action,
        "attributes": {"n": 1},
        "cio_relationships": [{"identifiers": identifiers}],
    }
    assert v2(message) == [expected]
    assert v1(message) == [("POST", "/api/v2/entity", expected)]


ANN = "ann@example.com"
OLD = "old@example.com"


@pytest.mark.parametrize(
    ("message", "identifiers", "v1_path", "attributes"),
    [
        (
            {"userId": "u1", "traits": {"email": ANN}, "context": {"traits": {"email": OLD}}},
            {"id": "u1"},
            "/api/v1/customers/u1",
            {"email": ANN},
        ),
        (
            {"userId": ANN, "traits": {"email": OLD}},
            {"email": ANN},
            "/api/v1/customers/ann%40example.com",
            {"email": OLD},
        ),
        (
            {"traits": {"email": ANN}, "context": {"traits": {"email": OLD}}},
            {"email": ANN},
            "/api/v1/customers/ann%40example.com",
            {"email": ANN},
        ),
        (
            {"traits": {}, "context": {"traits": {"email": OLD}}, "anonymousId": "a1"},
            {"email": OLD},
            "/api/v1/customers/old%40example.com",
            {"anonymous_id": "a1"},
        ),
        (
            {"traits": {"email": ""}, "anonymousId": "a1"},
            {"anonymous_id": "a1"},
            None,
            {"email": ""},
        ),
    ],
    ids=["user-id", "email-user-id", "traits-email", "context-email", "empty-email"],
)
def test_identify_email_precedence_in_both_encoders(
    message: dict[str, Any],
    identifiers: dict[str, str],
    v1_path: str | None,
    attributes: dict[str, Any],
) -> None:
    message = {"type": "identify", **message}
    expected = {
        "type": "person",
        "identifiers": identifiers,
        "action": "identify",
        "attributes": attributes,
    }
    assert v2(message) == [expected]
    # An anonymous profile has no v1 call: it goes to the v2 entity endpoint.
    v1_request = ("PUT", v1_path, attributes) if v1_path else ("POST", "/api/v2/entity", expected)
    assert v1(message) == [v1_request]


@pytest.mark.parametrize(
    ("message", "identifiers", "v1_path"),
    [
        (
            {"userId": "u1", "context": {"traits": {"email": OLD}}},
            {"id": "u1"},
            "/api/v1/customers/u1/events",
        ),
        (
            {"anonymousId": "a1", "context": {"traits": {"email": OLD}}},
            {"email": OLD},
            "/api/v1/customers/old%40example.com/events",
        ),
        # A track has no traits of its own: a stray one does not identify.
        ({"anonymousId": "a1", "traits": {"email": ANN}}, {"anonymous_id": "a1"}, "/api/v1/events"),
    ],
    ids=["user-id", "context-email", "stray-traits"],
)
def test_track_email_precedence_in_both_encoders(
    message: dict[str, Any], identifiers: dict[str, str], v1_path: str
) -> None:
    message = {"type": "track", "event": "Clicked", **message}
    assert v2(message) == [
        {
            "type": "person",
            "identifiers": identifiers,
            "action": "event",
            "name": "Clicked",
            "attributes": {},
        }
    ]
    body: dict[str, Any] = {"name": "Clicked", "type": "event", "data": {}}
    if "anonymous_id" in identifiers:
        body["anonymous_id"] = identifiers["anonymous_id"]
    assert v1(message) == [("POST", v1_path, body)]


# --- alias ------------------------------------------------------------------------------------


def test_alias_merges_previous_id_into_user_id() -> None:
    message = {"type": "alias", "userId": "cio_p1", "previousId": "old@example.com"}
    body = {"primary": {"cio_id": "p1"}, "secondary": {"email": "old@example.com"}}
    assert v2(message) == [{"type": "person", "action": "merge", **body}]
    assert v1(message) == [("POST", "/api/v1/merge_customers", body)]


@pytest.mark.parametrize(
    "message",
    [
        {"type": "alias", "userId": "u1"},
        {"type": "alias", "previousId": "u0"},
        {"type": "alias", "userId": "", "previousId": "u0"},
    ],
)
def test_alias_without_both_ids_is_rejected(message: dict[str, Any]) -> None:
    assert rejected(message) == "alias needs both userId and previousId"


@pytest.mark.parametrize(
    ("user_id", "previous_id"),
    [("u1", "u1"), ("42", 42), ("ann@example.com", "ann@example.com"), ("cio_ab", "cio_ab")],
)
def test_alias_of_a_person_to_itself_needs_nothing_sent(user_id: str, previous_id: Any) -> None:
    # analytics.js sends one after each identify: merging a person into itself is a no-op.
    message = {"type": "alias", "userId": user_id, "previousId": previous_id}
    assert map_message(message, received_at=RECEIVED_AT) == Skip(
        "alias userId and previousId name the same person: nothing to merge"
    )


# --- event id ---------------------------------------------------------------------------------


def test_event_id_worked_example() -> None:
    message = {
        "type": "track",
        "userId": "u1",
        "event": "E",
        "messageId": "h-m8",
        "timestamp": "2023-05-06T07:08:09.123456+02:00",
    }
    assert v2(message)[0]["id"] == "01GZQQBMS3TY1HHFCRJRKEA293"
    assert v1(message)[0][2]["id"] == "01GZQQBMS3TY1HHFCRJRKEA293"


def test_event_id_is_the_same_for_a_resent_message() -> None:
    message = {"type": "track", "userId": "u1", "event": "E", "messageId": "m-1"}
    first = map_message(message, received_at=RECEIVED_AT)
    again = map_message(message, received_at=RECEIVED_AT + 3600)
    assert first != again  # no timestamp: the time relay first received it is part of the id
    with_time = {**message, "timestamp": TIMESTAMP}
    assert map_message(with_time, received_at=1.0) == map_message(with_time, received_at=2.0)


def test_event_id_time_is_the_time_relay_received_a_message_without_timestamp() -> None:
    message = {"type": "track", "userId": "u1", "event": "E", "messageId": "m-1"}
    assert v2(message)[0]["id"] == ULID_M1_RECEIVED


def test_event_id_differs_by_message_id() -> None:
    message = {"type": "track", "userId": "u1", "event": "E", "timestamp": TIMESTAMP}
    assert v2({**message, "messageId": "m-2"})[0]["id"] == "01HM6AQH20HBHA844NJTEE7TZF"


def test_event_without_message_id_has_no_id() -> None:
    message = {"type": "page", "userId": "u1", "name": "Home", "timestamp": TIMESTAMP}
    assert "id" not in v2(message)[0]
    assert "id" not in v1(message)[0][2]


def test_ulid_time_is_clamped_to_what_48_bits_hold() -> None:
    assert deterministic_ulid("m-1", -5) == "0000000000MHGV8WPB86MYRFFE"
    assert deterministic_ulid("m-1", 1 << 60) == "7ZZZZZZZZZMHGV8WPB86MYRFFE"


def test_iso_to_seconds_is_none_for_non_dates() -> None:
    assert iso_to_seconds("2024-01-15") == 1705276800
    assert iso_to_seconds("not a date") is None


# --- malformed messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ([], "a message must be an object, got array"),
        ("identify", "a message must be an object, got string"),
        ({}, WRONG_TYPE + "None"),
        (
            {"type": "Identify"},
            WRONG_TYPE + "'Identify'",
        ),
        (
            {"type": 3},
            WRONG_TYPE + "3",
        ),
        ({"type": "identify", "userId": "u1", "traits": []}, "traits must be an object, got array"),
        (
            {"type": "identify", "userId": {"id": 1}},
            "userId must be a string or a number, got object",
        ),
        ({"type": "identify", "userId": True}, "userId must be a string or a number, got boolean"),
        (
            {"type": "identify", "userId": "u1", "anonymousId": [1]},
            "anonymousId must be a string or a number, got array",
        ),
        (
            {"type": "track", "userId": "u1", "event": "E", "properties": "x"},
            "properties must be an object, got string",
        ),
        (
            {"type": "group", "userId": "u1", "groupId": 1.5e300 * 1e10},
            "groupId must be a string or a number, got number",
        ),
        (
            {"type": "group", "userId": "u1", "groupId": "g", "traits": {"objectAttributes": 1}},
            "traits.objectAttributes must be an object, got number",
        ),
        (
            {"type": "group", "userId": "u1", "groupId": "g", "traits": {"objectTypeId": [1]}},
            "traits.objectTypeId must be a string or a number, got array",
        ),
        (
            {
                "type": "group",
                "userId": "u1",
                "groupId": "g",
                "traits": {"relationshipAttributes": "x"},
            },
            "traits.relationshipAttributes must be an object, got string",
        ),
        (
            {"type": "track", "event": "Object Deleted", "properties": {"objectId": {}}},
            "Object Deleted: properties.objectId must be a string or a number, got object",
        ),
        (
            {"type": "alias", "userId": "u1", "previousId": False},
            "previousId must be a string or a number, got boolean",
        ),
    ],
)
def test_malformed_message_is_rejected_with_its_reason(message: Any, reason: str) -> None:
    assert rejected(message) == reason


def test_malformed_context_is_ignored_rather_than_rejected() -> None:
    message: dict[str, Any] = {
        "type": "track",
        "userId": "u1",
        "event": "Application Opened",
        "context": [1],
    }
    assert [op["action"] for op in v2(message)] == ["event"]
    message["context"] = {"device": "x", "traits": 5, "page": None}
    assert [op["action"] for op in v2(message)] == ["event"]


def test_message_nested_too_deeply_is_rejected() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["x"] = {}
        node = node["x"]
    message = {"type": "identify", "userId": "u1", "traits": deep}
    assert rejected(message) == "message is nested too deeply to map"


# --- encoders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "path"),
    [
        ("a/b?c#d", "/api/v1/customers/a%2Fb%3Fc%23d"),
        ("ünï cödé", "/api/v1/customers/%C3%BCn%C3%AF%20c%C3%B6d%C3%A9"),
        ("a+b@example.com", "/api/v1/customers/a%2Bb%40example.com"),
        ("cio_x/y", "/api/v1/customers/cio_x%2Fy"),
    ],
)
def test_v1_path_ids_are_url_encoded(user_id: str, path: str) -> None:
    assert v1({"type": "identify", "userId": user_id})[0][1] == path


def test_v1_request_is_an_outgoing_request() -> None:
    [op] = ops({"type": "identify", "userId": "u1", "traits": {"a": 1}})
    [request] = encode_v1(op)
    assert request == OutgoingRequest("PUT", "/api/v1/customers/u1", {"a": 1})


def test_operation_is_a_plain_value() -> None:
    op = Operation("person", "add_device", {"id": "u1"}, device=Device("t", "ios", 1))
    assert op == Operation("person", "add_device", {"id": "u1"}, device=Device("t", "ios", 1))
    with pytest.raises(AttributeError):
        op.action = "delete"  # type: ignore[misc]


# --- limits -----------------------------------------------------------------------------------


def person(action: Any = "identify", **fields: Any) -> Operation:
    identifiers = fields.pop("identifiers", {"id": "u1"})
    return Operation("person", action, identifiers, **fields)


def test_op_within_every_limit_passes() -> None:
    op = person(attributes={"a" * 150: "v" * 1000, **{f"k{i}": i for i in range(299)}})
    assert check_limits(op) is None


def test_identifier_over_150_bytes_is_refused() -> None:
    assert check_limits(person(identifiers={"id": "x" * 150})) is None
    # 76 two-byte characters: 152 bytes though only 76 characters.
    assert check_limits(person(identifiers={"email": "é" * 76})) == (
        "identifiers.email is 152 bytes; Customer.io accepts identifiers of at most 150 bytes"
    )


def test_merge_and_relationship_identifiers_are_checked() -> None:
    long = "x" * 151
    merge = Operation("person", "merge", {}, primary={"id": "a"}, secondary={"id": long})
    assert check_limits(merge) == (
        "secondary.id is 151 bytes; Customer.io accepts identifiers of at most 150 bytes"
    )
    relationship = Relationship({"id": long})
    op = Operation(
        "object",
        "identify",
        {"object_type_id": "1", "object_id": "o"},
        relationships=(relationship,),
    )
    assert check_limits(op) == (
        "cio_relationships.identifiers.id is 151 bytes; Customer.io accepts identifiers of at "
        "most 150 bytes"
    )


@pytest.mark.parametrize("action", ["event", "screen"])
def test_event_name_over_100_bytes_is_refused(action: str) -> None:
    assert check_limits(person(action, name="n" * 100, attributes={})) is None
    assert check_limits(person(action, name="n" * 101, attributes={})) == (
        f"{action} name is 101 bytes; Customer.io accepts event names of at most 100 bytes"
    )


def test_a_page_named_by_a_long_url_is_sent() -> None:
    # Customer.io's own web snippet names every page view by its full URL.
    url = "https://shop.example/products/a-long-name?utm_source=newsletter&utm_medium=email" * 3
    assert check_limits(person("page", name=url, attributes={})) is None


def test_attribute_name_over_150_bytes_is_refused() -> None:
    name = "a" * 151
    assert check_limits(person(attributes={name: 1})) == (
        f"attributes name {'a' * 40!r}… is 151 bytes; Customer.io accepts attribute names of "
        "at most 150 bytes"
    )


def test_attribute_value_over_1000_bytes_is_refused() -> None:
    assert check_limits(person(attributes={"bio": "é" * 500})) is None
    assert check_limits(person(attributes={"bio": "é" * 501})) == (
        "attributes.bio is 1002 bytes; Customer.io accepts attribute values of at most 1000 bytes"
    )


def test_attribute_value_that_is_not_a_string_is_measured_as_compact_json() -> None:
    # ["aaa…"] with 996 a's is 1000 bytes of JSON: the quotes and brackets count.
    assert check_limits(person(attributes={"list": ["a" * 996]})) is None
    assert check_limits(person(attributes={"list": ["a" * 997]})) == (
        "attributes.list is 1001 bytes; Customer.io accepts attribute values of at most 1000 bytes"
    )


def test_more_than_300_attributes_is_refused() -> None:
    attributes = {f"k{i}": i for i in range(301)}
    assert check_limits(person(attributes=attributes)) == (
        "attributes has 301 attributes; Customer.io accepts at most 300 per call"
    )


def test_v1_identify_counts_the_timestamp_it_adds_among_the_attributes() -> None:
    # 299 traits and anonymous_id are 300 attributes, as v2 sends them; v1 writes them flat
    # next to `_timestamp`, a 301-key body.
    traits = {f"k{i}": i for i in range(299)}
    message = {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "a1",
        "timestamp": TIMESTAMP,
        "traits": traits,
    }
    [op] = ops(message)
    assert check_limits(op, "v2") is None
    assert check_limits(op, "v1") == (
        "attributes has 301 attributes, counting the _timestamp that v1 sends among them; "
        "Customer.io accepts at most 300 per call"
    )
    assert map_and_check(message, received_at=RECEIVED_AT, api="v1") == Rejection(
        "person identify: attributes has 301 attributes, counting the _timestamp that v1 sends "
        "among them; Customer.io accepts at most 300 per call"
    )
    [(_, _, body)] = v1({**message, "traits": {f"k{i}": i for i in range(298)}})
    assert len(body) == 300  # one trait fewer fits, and v1 then sends exactly 300 keys
    assert map_and_check({**message, "traits": traits}, received_at=RECEIVED_AT) == [op]


def test_v1_identify_without_timestamp_adds_no_key() -> None:
    op = person(attributes={f"k{i}": i for i in range(300)})
    assert check_limits(op, "v1") is None


def test_v1_sends_anonymous_and_object_ops_as_v2_so_counts_them_as_v2() -> None:
    attributes = {f"k{i}": i for i in range(300)}
    anonymous = person(identifiers={"anonymous_id": "a1"}, attributes=attributes, timestamp=TS)
    assert check_limits(anonymous, "v1") is None
    assert encode_v1(anonymous)[0].path == "/api/v2/entity"


def test_device_and_relationship_attributes_are_held_to_the_attribute_limits() -> None:
    device = Device("t", "ios", 1, {"note": "x" * 1001})
    assert check_limits(person("add_device", device=device)) == (
        "device.attributes.note is 1001 bytes; Customer.io accepts attribute values of at most "
        "1000 bytes"
    )
    relationship = Relationship({"id": "u1"}, {"role": "x" * 1001})
    op = Operation(
        "object",
        "identify",
        {"object_type_id": "1", "object_id": "o"},
        relationships=(relationship,),
    )
    assert check_limits(op) == (
        "relationship_attributes.role is 1001 bytes; Customer.io accepts attribute values of at "
        "most 1000 bytes"
    )


def test_event_data_is_bounded_by_op_size_not_attribute_limits() -> None:
    op = person("event", name="E", attributes={"items": ["x" * 2000]})
    assert check_limits(op) is None


def test_op_over_32_kb_is_refused() -> None:
    op = person("event", name="E", attributes={"items": ["x" * 40_000]})
    assert check_limits(op) == (
        "operation is 40099 bytes as JSON; Customer.io accepts at most 32768 bytes per operation"
    )


def test_op_of_exactly_32_kb_passes() -> None:
    overhead = len(
        '{"type":"person","identifiers":{"id":"u1"},"action":"event","name":"E","attributes":{"d":""}}'
    )
    op = person("event", name="E", attributes={"d": "x" * (MAX_OPERATION_BYTES - overhead)})
    assert check_limits(op) is None
    op = person("event", name="E", attributes={"d": "x" * (MAX_OPERATION_BYTES - overhead + 1)})
    assert check_limits(op) == (
        "operation is 32769 bytes as JSON; Customer.io accepts at most 32768 bytes per operation"
    )


def test_map_and_check_rejects_a_message_whose_op_breaks_a_limit() -> None:
    message = {"type": "track", "userId": "u1", "event": "E" * 101}
    result = map_and_check(message, received_at=RECEIVED_AT)
    assert result == Rejection(
        "person event: event name is 101 bytes; Customer.io accepts event names of at most "
        "100 bytes"
    )


def test_map_and_check_names_the_op_of_several() -> None:
    message = device_message("Application Installed")
    message["properties"] = {"items": ["x" * 40_000]}
    result = map_and_check(message, received_at=RECEIVED_AT)
    assert result == Rejection(
        "op 1 (person event): operation is 40176 bytes as JSON; Customer.io accepts at most "
        "32768 bytes per operation"
    )


def test_map_and_check_passes_ops_within_limits_and_rejections_through() -> None:
    message = {"type": "track", "userId": "u1", "event": "E"}
    assert map_and_check(message, received_at=RECEIVED_AT) == map_message(
        message, received_at=RECEIVED_AT
    )
    assert map_and_check({"type": "x"}, received_at=RECEIVED_AT) == map_message(
        {"type": "x"}, received_at=RECEIVED_AT
    )
