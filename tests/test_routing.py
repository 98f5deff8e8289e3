"""Routing: the route language, fan-out, integrations, edits and every config problem."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.routing import Problem, Routes, compile_routes

DESTINATIONS = ["customerio.main", "customerio.marketing", "segment.analytics", "segment.warehouse"]
SEGMENT_SOURCES = ["web", "backend", "webhook"]
CUSTOMERIO_SOURCES = ["marketing", "transactional"]


def compile_(routes: Any) -> tuple[Routes, list[Problem]]:
    return compile_routes(
        routes,
        destinations=DESTINATIONS,
        segment_sources=SEGMENT_SOURCES,
        customerio_sources=CUSTOMERIO_SOURCES,
    )


def compile_ok(routes: Any) -> Routes:
    compiled, problems = compile_(routes)
    assert problems == []
    return compiled


def problems_of(routes: Any) -> list[Problem]:
    return compile_(routes)[1]


def segment_route(match: Any = None, **more: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"from": "segment", "to": ["customerio.main"], **more}
    if match is not None:
        route["match"] = match
    return route


def customerio_route(match: Any = None, **more: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"from": "customerio", "to": ["segment.analytics"], **more}
    if match is not None:
        route["match"] = match
    return route


TRACK: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u1",
    "properties": {"plan": "pro", "amount": 120, "ratio": 0.5, "vip": True, "coupon": None},
    "context": {"device": {"type": "ios"}},
}
WEBHOOK: dict[str, Any] = {
    "event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ",
    "object_type": "email",
    "metric": "clicked",
    "timestamp": 1585250199,
    "data": {"customer_id": "42", "campaign_id": 23, "href": "https://x.co/p"},
}


# --------------------------------------------------------------------------- minimal form


def test_minimal_route_delivers_everything_and_gets_a_default_name() -> None:
    routes = compile_ok([{"from": "segment", "to": ["customerio.main"]}])
    result = routes.route("segment", "web", TRACK)
    assert [r.name for r in result.matched] == ["route-0"]
    assert result.destinations == ["customerio.main"]
    assert result.deliveries[0][1] is routes[0]
    assert result.suppressed == []


def test_to_may_be_a_single_string() -> None:
    routes = compile_ok([{"name": "all", "from": "segment", "to": "segment.warehouse"}])
    assert routes.route("segment", "web", TRACK).destinations == ["segment.warehouse"]


def test_minimal_customerio_route_delivers_webhooks() -> None:
    routes = compile_ok([{"from": "customerio", "to": ["segment.analytics"]}])
    assert routes.route("customerio", "marketing", WEBHOOK).destinations == ["segment.analytics"]
    assert routes.route("segment", "web", TRACK).destinations == []


def test_no_routes_means_no_deliveries() -> None:
    routes, problems = compile_(None)
    assert problems == []
    result = routes.route("segment", "web", TRACK)
    assert result.matched == [] and result.deliveries == []


def test_unknown_kind_is_a_programming_error() -> None:
    routes = compile_ok([segment_route()])
    with pytest.raises(ValueError, match="unknown message kind"):
        routes.route("rudderstack", "web", TRACK)


# --------------------------------------------------------------------------- matching

MATCH_CASES = [
    # (rule, match, message, expected)
    ("plain_text_equals", {"event": "Order Completed"}, TRACK, True),
    ("plain_text_is_case_sensitive", {"event": "order completed"}, TRACK, False),
    ("glob_matches_event_prefix", {"event": "Order *"}, TRACK, True),
    ("glob_is_case_sensitive", {"event": "order *"}, TRACK, False),
    ("glob_must_match_whole_text", {"event": "Order"}, TRACK, False),
    ("glob_question_mark_is_one_character", {"event": "Order Complete?"}, TRACK, True),
    ("glob_character_class", {"event": "[MO]rder *"}, TRACK, True),
    ("glob_negated_class", {"event": "[!O]rder *"}, TRACK, False),
    ("glob_bracket_escapes_star", {"event": "Sale [*]"}, {"event": "Sale *"}, True),
    ("glob_bracket_escape_is_literal", {"event": "Sale [*]"}, {"event": "Sale x"}, False),
    ("glob_leading_star_matches_suffix", {"event": "*Completed"}, TRACK, True),
    ("glob_leading_star_is_anchored_at_end", {"event": "*Complete"}, TRACK, False),
    ("glob_stars_around_match_contains", {"event": "*der Comp*"}, TRACK, True),
    ("glob_star_in_middle", {"event": "Order*Completed"}, TRACK, True),
    ("glob_star_in_middle_needs_both_ends", {"event": "Order*Started"}, TRACK, False),
    ("glob_lone_star_matches_any_text", {"event": "*"}, {"event": ""}, True),
    ("glob_lone_star_needs_text", {"event": "**"}, {"event": 1}, False),
    ("glob_never_matches_numbers", {"properties.amount": "1*"}, TRACK, False),
    ("list_means_any_of", {"type": ["identify", "track"]}, TRACK, True),
    ("list_none_of_them", {"type": ["identify", "page"]}, TRACK, False),
    ("list_mixes_globs_and_values", {"event": ["Signed Up", "Order *"]}, TRACK, True),
    ("dotted_path_equals", {"properties.plan": "pro"}, TRACK, True),
    ("dotted_path_deep", {"context.device.type": "ios"}, TRACK, True),
    ("dotted_path_not_equal", {"properties.plan": "free"}, TRACK, False),
    ("missing_path_never_matches_value", {"properties.nope": "pro"}, TRACK, False),
    ("missing_path_never_matches_null", {"properties.nope": None}, TRACK, False),
    ("path_through_text_never_matches", {"event.length": 15}, TRACK, False),
    (
        "path_through_list_never_matches",
        {"properties.items.0": 1},
        {"properties": {"items": [1]}},
        False,
    ),
    ("null_matches_explicit_null", {"properties.coupon": None}, TRACK, True),
    ("null_does_not_match_value", {"properties.plan": None}, TRACK, False),
    ("true_matches_true", {"properties.vip": True}, TRACK, True),
    ("true_does_not_match_one", {"properties.x": True}, {"properties": {"x": 1}}, False),
    ("one_does_not_match_true", {"properties.x": 1}, {"properties": {"x": True}}, False),
    ("false_does_not_match_zero", {"properties.x": False}, {"properties": {"x": 0}}, False),
    ("zero_does_not_match_false", {"properties.x": 0}, {"properties": {"x": False}}, False),
    (
        "list_of_true_does_not_match_one",
        {"properties.x": [True, "a"]},
        {"properties": {"x": 1}},
        False,
    ),
    (
        "list_of_one_does_not_match_true",
        {"properties.x": [1, 2]},
        {"properties": {"x": True}},
        False,
    ),
    ("integer_matches_equal_float", {"properties.amount": 120.0}, TRACK, True),
    ("number_does_not_match_text", {"properties.x": 5}, {"properties": {"x": "5"}}, False),
    ("text_does_not_match_number", {"properties.x": "5"}, {"properties": {"x": 5}}, False),
    ("gt_holds_above", {"properties.amount": {"gt": 100}}, TRACK, True),
    ("gt_excludes_equal", {"properties.amount": {"gt": 120}}, TRACK, False),
    ("gte_includes_equal", {"properties.amount": {"gte": 120}}, TRACK, True),
    ("lt_holds_below", {"properties.ratio": {"lt": 1}}, TRACK, True),
    ("lte_includes_equal", {"properties.ratio": {"lte": 0.5}}, TRACK, True),
    ("range_inside", {"properties.amount": {"gte": 100, "lt": 200}}, TRACK, True),
    ("range_outside", {"properties.amount": {"gte": 0, "lt": 100}}, TRACK, False),
    (
        "comparison_never_matches_text",
        {"properties.x": {"gt": 1}},
        {"properties": {"x": "5"}},
        False,
    ),
    (
        "comparison_never_matches_true",
        {"properties.x": {"gt": 0}},
        {"properties": {"x": True}},
        False,
    ),
    ("comparison_never_matches_missing", {"properties.nope": {"gt": 0}}, TRACK, False),
    ("list_with_comparison", {"properties.amount": [0, {"gt": 100}]}, TRACK, True),
    ("exists_present_value", {"exists": ["userId", "properties.plan"]}, TRACK, True),
    ("exists_single_path", {"exists": "userId"}, TRACK, True),
    ("exists_rejects_null", {"exists": ["properties.coupon"]}, TRACK, False),
    ("exists_rejects_absent", {"exists": ["anonymousId"]}, TRACK, False),
    ("exists_accepts_objects", {"exists": ["context.device"]}, TRACK, True),
    ("missing_accepts_absent", {"missing": ["anonymousId"]}, TRACK, True),
    ("missing_accepts_null", {"missing": ["properties.coupon"]}, TRACK, True),
    ("missing_rejects_value", {"missing": "userId"}, TRACK, False),
    ("not_negates", {"not": {"event": "Order Test*"}}, TRACK, True),
    ("not_excludes", {"not": {"event": "Order *"}}, TRACK, False),
    ("not_negates_the_conjunction", {"not": {"event": "Order *", "userId": "u2"}}, TRACK, True),
    ("any_one_holds", {"any": [{"event": "Signed Up"}, {"properties.plan": "pro"}]}, TRACK, True),
    (
        "any_none_holds",
        {"any": [{"event": "Signed Up"}, {"properties.plan": "free"}]},
        TRACK,
        False,
    ),
    ("all_every_one_holds", {"all": [{"event": "Order *"}, {"event": "* Completed"}]}, TRACK, True),
    ("all_one_fails", {"all": [{"event": "Order *"}, {"event": "* Started"}]}, TRACK, False),
    (
        "combinators_nest",
        {
            "type": "track",
            "any": [{"not": {"properties.plan": "pro"}}, {"all": [{"userId": "u1"}]}],
        },
        TRACK,
        True,
    ),
    ("all_entries_must_hold", {"type": "track", "event": "Signed Up"}, TRACK, False),
    ("empty_match_holds", {}, TRACK, True),
    ("integrations_are_matchable", {"integrations.Customer.io": False}, TRACK, False),
]


@pytest.mark.parametrize(
    ("match", "message", "expected"),
    [pytest.param(m, msg, exp, id=rule) for rule, m, msg, exp in MATCH_CASES],
)
def test_match(match: Any, message: dict[str, Any], expected: bool) -> None:
    routes = compile_ok([segment_route(match)])
    assert routes[0].matches(message) is expected
    assert bool(routes.route("segment", "web", message).deliveries) is expected


def test_dotted_key_in_match_walks_objects_not_keys_with_dots() -> None:
    routes = compile_ok([segment_route({"properties.a.b": 1})])
    assert routes[0].matches({"properties": {"a": {"b": 1}}})
    assert not routes[0].matches({"properties": {"a.b": 1}})


CUSTOMERIO_MATCH_CASES = [
    (
        "object_type_and_metric",
        {"object_type": "email", "metric": ["opened", "clicked"]},
        WEBHOOK,
        True,
    ),
    ("metric_other", {"metric": "opened"}, WEBHOOK, False),
    ("data_path", {"data.campaign_id": 23}, WEBHOOK, True),
    ("data_glob", {"data.href": "https://x.co/*"}, WEBHOOK, True),
    (
        "legacy_event_type_gives_object_type_and_metric",
        {"object_type": "email", "metric": "delivered"},
        {"event_id": "e1", "event_type": "email_delivered", "data": {}},
        True,
    ),
    (
        "legacy_channel_prefix_with_underscore",
        {"object_type": "in_app", "metric": "opened"},
        {"event_id": "e1", "event_type": "in_app_opened"},
        True,
    ),
    (
        "legacy_event_type_still_matchable",
        {"event_type": "email_*"},
        {"event_type": "email_sent"},
        True,
    ),
    # As the mapping reads it ("Fax X"): the first word is the channel.
    ("legacy_unknown_channel_as_mapped", {"metric": "x"}, {"event_type": "fax_x"}, True),
    (
        "legacy_in_another_letter_case",
        {"object_type": "email", "metric": "opened"},
        {"event_id": "e1", "event_type": "Email_Opened"},
        True,
    ),
    (
        "known_names_in_another_letter_case",
        {"object_type": "in_app", "metric": "clicked"},
        {"event_id": "e1", "object_type": "IN_APP", "metric": "Clicked"},
        True,
    ),
]


@pytest.mark.parametrize(
    ("match", "message", "expected"),
    [pytest.param(m, msg, exp, id=rule) for rule, m, msg, exp in CUSTOMERIO_MATCH_CASES],
)
def test_customerio_match(match: Any, message: dict[str, Any], expected: bool) -> None:
    routes = compile_ok([customerio_route(match)])
    assert routes[0].matches(message) is expected
    assert bool(routes.route("customerio", "marketing", message).deliveries) is expected


def test_legacy_view_does_not_change_the_message() -> None:
    message = {"event_id": "e1", "event_type": "email_delivered"}
    before = copy.deepcopy(message)
    compile_ok([customerio_route({"metric": "delivered"})]).route("customerio", "m", message)
    assert message == before


# --------------------------------------------------------------------------- sources


def test_sources_limit_a_route_to_those_sources() -> None:
    routes = compile_ok([segment_route(sources=["web", "webhook"])])
    assert routes.route("segment", "web", TRACK).destinations == ["customerio.main"]
    assert routes.route("segment", "webhook", TRACK).destinations == ["customerio.main"]
    assert routes.route("segment", "backend", TRACK).destinations == []


def test_sources_may_be_a_single_string() -> None:
    routes = compile_ok([customerio_route(sources="transactional")])
    assert routes.route("customerio", "transactional", WEBHOOK).destinations == [
        "segment.analytics"
    ]
    assert routes.route("customerio", "marketing", WEBHOOK).destinations == []


# --------------------------------------------------------------------------- fan-out


def test_fan_out_lists_matching_routes_in_order() -> None:
    routes = compile_ok(
        [
            segment_route({"event": "Order *"}, name="orders", to=["customerio.marketing"]),
            segment_route({"event": "Signed Up"}, name="signups", to=["segment.warehouse"]),
            segment_route(name="everything", to=["customerio.main", "segment.warehouse"]),
        ]
    )
    result = routes.route("segment", "web", TRACK)
    assert [r.name for r in result.matched] == ["orders", "everything"]
    assert [(d, r.name) for d, r in result.deliveries] == [
        ("customerio.marketing", "orders"),
        ("customerio.main", "everything"),
        ("segment.warehouse", "everything"),
    ]


def test_destination_receives_at_most_once_and_first_route_wins() -> None:
    routes = compile_ok(
        [
            segment_route(
                {"event": "Order *"}, name="orders", rename_events={"Order Completed": "Purchase"}
            ),
            segment_route(
                {"type": "track"}, name="tracks", to=["customerio.main", "segment.analytics"]
            ),
        ]
    )
    result = routes.route("segment", "web", TRACK)
    assert [r.name for r in result.matched] == ["orders", "tracks"]
    assert [(d, r.name) for d, r in result.deliveries] == [
        ("customerio.main", "orders"),
        ("segment.analytics", "tracks"),
    ]
    assert result.deliveries[0][1].edit(dict(TRACK))["event"] == "Purchase"


def test_later_routes_match_the_message_as_received_not_as_edited() -> None:
    routes = compile_ok(
        [
            segment_route(name="rename", rename_events={"Order Completed": "Purchase"}),
            segment_route({"event": "Order Completed"}, name="orders", to=["segment.warehouse"]),
        ]
    )
    assert routes.route("segment", "web", TRACK).destinations == [
        "customerio.main",
        "segment.warehouse",
    ]


def test_unmatched_message_gives_an_empty_result() -> None:
    routes = compile_ok([segment_route({"event": "Signed Up"})])
    result = routes.route("segment", "web", TRACK)
    assert (result.matched, result.deliveries, result.suppressed) == ([], [], [])


def test_routing_does_not_mutate_the_message() -> None:
    routes = compile_ok([segment_route({"properties.amount": {"gt": 1}}, drop_properties=["*"])])
    message = copy.deepcopy(TRACK)
    routes.route("segment", "web", message)
    assert message == TRACK


# --------------------------------------------------------------------------- integrations

INTEGRATIONS_CASES = [
    # (rule, integrations, delivered to customerio.main)
    ("absent_delivers", None, True),
    ("customerio_false_suppresses", {"Customer.io": False}, False),
    ("all_false_suppresses", {"All": False}, False),
    ("all_false_with_customerio_true_delivers", {"All": False, "Customer.io": True}, True),
    ("all_false_with_customerio_options_delivers", {"All": False, "Customer.io": {"x": 1}}, True),
    ("all_true_with_customerio_false_suppresses", {"All": True, "Customer.io": False}, False),
    ("names_are_case_sensitive", {"customer.io": False}, True),
    ("other_destination_off_delivers", {"Mixpanel": False}, True),
    ("falsy_non_boolean_is_not_false", {"Customer.io": 0, "All": None}, True),
    ("non_object_integrations_is_ignored", ["Customer.io"], True),
]


@pytest.mark.parametrize(
    ("integrations", "delivered"),
    [pytest.param(i, d, id=rule) for rule, i, d in INTEGRATIONS_CASES],
)
def test_integrations(integrations: Any, delivered: bool) -> None:
    routes = compile_ok([segment_route(to=["customerio.main", "segment.warehouse"])])
    message = dict(TRACK)
    if integrations is not None:
        message["integrations"] = integrations
    result = routes.route("segment", "web", message)
    expected = ["customerio.main", "segment.warehouse"] if delivered else ["segment.warehouse"]
    assert result.destinations == expected
    assert [d for d, _ in result.suppressed] == ([] if delivered else ["customerio.main"])


def test_integrations_off_suppresses_every_customerio_destination_once() -> None:
    routes = compile_ok(
        [
            segment_route({"event": "Order *"}, name="a", to=["customerio.main"]),
            segment_route(name="b", to=["customerio.main", "customerio.marketing"]),
        ]
    )
    result = routes.route("segment", "web", {**TRACK, "integrations": {"Customer.io": False}})
    assert result.deliveries == []
    assert [(d, r.name) for d, r in result.suppressed] == [
        ("customerio.main", "a"),
        ("customerio.marketing", "b"),
    ]


# --------------------------------------------------------------------------- edits


def edited(route: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    return compile_ok([route])[0].edit(message)


EDIT_CASES = [
    # (rule, edits, message, expected)
    (
        "rename_events_renames_exact_name",
        {"rename_events": {"Order Completed": "Purchase"}},
        {"type": "track", "event": "Order Completed"},
        {"type": "track", "event": "Purchase"},
    ),
    (
        "drop_properties_by_name_and_glob",
        {"drop_properties": ["password", "internal_*"]},
        {"type": "track", "properties": {"password": "x", "internal_id": 1, "internal": 2, "a": 3}},
        {"type": "track", "properties": {"internal": 2, "a": 3}},
    ),
    (
        "drop_properties_single_glob",
        {"drop_properties": "secret_?"},
        {"type": "track", "properties": {"secret_a": 1, "secret_ab": 2}},
        {"type": "track", "properties": {"secret_ab": 2}},
    ),
    (
        "rename_properties_moves_value",
        {"rename_properties": {"amount": "total"}},
        {"type": "track", "properties": {"amount": 5, "currency": "EUR"}},
        {"type": "track", "properties": {"currency": "EUR", "total": 5}},
    ),
    (
        "rename_properties_happen_at_once",
        {"rename_properties": {"a": "b", "b": "a"}},
        {"type": "track", "properties": {"a": 1, "b": 2}},
        {"type": "track", "properties": {"b": 1, "a": 2}},
    ),
    (
        "rename_replaces_existing_target",
        {"rename_properties": {"a": "b"}},
        {"type": "track", "properties": {"a": 1, "b": 2}},
        {"type": "track", "properties": {"b": 1}},
    ),
    (
        "set_properties_adds_and_overwrites",
        {"set_properties": {"source_app": "web", "plan": {"tier": 2}}},
        {"type": "track", "properties": {"plan": "pro"}},
        {"type": "track", "properties": {"plan": {"tier": 2}, "source_app": "web"}},
    ),
    (
        "set_properties_creates_missing_properties",
        {"set_properties": {"a": 1}},
        {"type": "track", "event": "E"},
        {"type": "track", "event": "E", "properties": {"a": 1}},
    ),
    (
        "set_properties_replaces_null_properties",
        {"set_properties": {"a": 1}},
        {"type": "track", "properties": None},
        {"type": "track", "properties": {"a": 1}},
    ),
    (
        "set_properties_runs_after_drop",
        {"drop_properties": ["*"], "set_properties": {"x": 1}},
        {"type": "track", "properties": {"x": 0, "z": 2}},
        {"type": "track", "properties": {"x": 1}},
    ),
    (
        "set_properties_runs_after_rename",
        {"drop_properties": ["z*"], "rename_properties": {"x": "y"}, "set_properties": {"x": 1}},
        {"type": "track", "properties": {"x": 0, "z": 2}},
        {"type": "track", "properties": {"y": 0, "x": 1}},
    ),
    (
        "identify_edits_traits",
        {"drop_properties": ["password"], "set_properties": {"source_app": "web"}},
        {
            "type": "identify",
            "traits": {"password": "x", "email": "a@b.co"},
            "properties": {"p": 1},
        },
        {
            "type": "identify",
            "traits": {"email": "a@b.co", "source_app": "web"},
            "properties": {"p": 1},
        },
    ),
    (
        "group_edits_traits",
        {"rename_properties": {"n": "name"}},
        {"type": "group", "groupId": "g", "traits": {"n": "Acme"}},
        {"type": "group", "groupId": "g", "traits": {"name": "Acme"}},
    ),
    (
        "non_object_properties_are_left_alone",
        {"set_properties": {"a": 1}},
        {"type": "track", "properties": "oops"},
        {"type": "track", "properties": "oops"},
    ),
]


@pytest.mark.parametrize(
    ("edits", "message", "expected"),
    [pytest.param(e, m, x, id=rule) for rule, e, m, x in EDIT_CASES],
)
def test_edit(edits: dict[str, Any], message: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(message)
    assert edited(segment_route(**edits), message) == expected
    assert message == before


def test_rename_properties_on_customerio_route_edits_the_segment_track() -> None:
    route = compile_ok(
        [customerio_route({"metric": "clicked"}, rename_events={"Email Link Clicked": "Clicked"})]
    )[0]
    track = {"type": "track", "event": "Email Link Clicked", "properties": {"metric": "clicked"}}
    assert route.edit(track)["event"] == "Clicked"


def test_route_without_edits_returns_the_same_object() -> None:
    route = compile_ok([segment_route()])[0]
    message = dict(TRACK)
    assert route.edit(message) is message
    assert not route.has_edits


@pytest.mark.parametrize(
    "edits",
    [
        pytest.param({"rename_events": {"Signed Up": "Registered"}}, id="rename_other_event"),
        pytest.param({"drop_properties": ["password"]}, id="drop_absent_property"),
        pytest.param({"rename_properties": {"nope": "x"}}, id="rename_absent_property"),
    ],
)
def test_edits_that_change_nothing_return_the_same_object(edits: dict[str, Any]) -> None:
    message = copy.deepcopy(TRACK)
    assert edited(segment_route(**edits), message) is message


def test_edited_properties_share_nothing_with_input_or_route() -> None:
    route = compile_ok([segment_route(set_properties={"tags": ["a"]}, drop_properties=["coupon"])])[
        0
    ]
    message = copy.deepcopy(TRACK)
    message["properties"]["nested"] = {"k": [1]}
    out = route.edit(message)
    out["properties"]["nested"]["k"].append(2)
    out["properties"]["tags"].append("b")
    assert message["properties"]["nested"] == {"k": [1]}
    assert route.edit(copy.deepcopy(TRACK))["properties"]["tags"] == ["a"]
    assert out["context"] is message["context"]  # untouched parts are shared, not copied


# --------------------------------------------------------------------------- problems


def one_problem(routes: Any) -> Problem:
    problems = problems_of(routes)
    assert len(problems) == 1, problems
    return problems[0]


PROBLEM_CASES: list[tuple[str, Any, tuple[str | int, ...], str, str | None]] = [
    # (rule, routes, path, words in the message, words in the hint or None for no hint)
    ("routes_must_be_a_list", {"from": "segment"}, ("routes",), "must be a list", "- "),
    ("route_must_be_a_mapping", ["segment"], ("routes", 0), "must be a mapping", "from: segment"),
    (
        "unknown_key_suggests_closest",
        [segment_route(rename_event={"a": "b"})],
        ("routes", 0, "rename_event"),
        'unknown key "rename_event"',
        'did you mean "rename_events"?',
    ),
    (
        "unknown_key_knows_other_tools_words",
        [segment_route(filter={"event": "x"})],
        ("routes", 0, "filter"),
        'unknown key "filter"',
        'did you mean "match"?',
    ),
    (
        "unknown_key_without_close_match_lists_keys",
        [segment_route(zzz=1)],
        ("routes", 0, "zzz"),
        'unknown key "zzz"',
        "route keys are: name, from",
    ),
    (
        "from_is_required",
        [{"to": ["customerio.main"]}],
        ("routes", 0),
        'no "from"',
        "from: segment",
    ),
    (
        "unknown_from_suggests_closest",
        [{"from": "Customer.io", "to": ["segment.analytics"]}],
        ("routes", 0, "from"),
        'not "Customer.io"',
        'did you mean "customerio"?',
    ),
    (
        "from_must_be_text",
        [{"from": ["segment"], "to": ["customerio.main"]}],
        ("routes", 0, "from"),
        "got a list",
        "from: segment",
    ),
    ("to_is_required", [{"from": "customerio"}], ("routes", 0), 'no "to"', "segment.analytics"),
    (
        "to_must_not_be_empty",
        [segment_route(to=[])],
        ("routes", 0, "to"),
        "sends nowhere",
        "customerio.main",
    ),
    (
        "to_must_be_names",
        [segment_route(to={"customerio": "main"})],
        ("routes", 0, "to"),
        "got a mapping",
        None,
    ),
    (
        "to_entries_must_be_text",
        [segment_route(to=["customerio.main", 3])],
        ("routes", 0, "to", 1),
        "got the number 3",
        None,
    ),
    (
        "unknown_destination_suggests_closest",
        [segment_route(to=["customerio.mian"])],
        ("routes", 0, "to", 0),
        'unknown destination "customerio.mian"',
        'did you mean "customerio.main"?',
    ),
    (
        "unknown_destination_in_single_string",
        [segment_route(to="segment.zzz")],
        ("routes", 0, "to"),
        'unknown destination "segment.zzz"',
        "configure it under destinations.segment.zzz (known: customerio.main,",
    ),
    (
        "unqualified_destination_suggests_qualified_name",
        [segment_route(to=["marketing"])],
        ("routes", 0, "to", 0),
        "not a destination name",
        'did you mean "customerio.marketing"?',
    ),
    (
        "destination_listed_twice",
        [segment_route(to=["customerio.main", "customerio.main"])],
        ("routes", 0, "to", 1),
        "listed twice",
        "remove the repeat",
    ),
    (
        "customerio_route_cannot_send_to_customerio",
        [customerio_route(to=["segment.analytics", "customerio.main"])],
        ("routes", 0, "to", 1),
        "would loop",
        'such as "segment.analytics"',
    ),
    (
        "unknown_source_suggests_closest",
        [segment_route(sources=["web", "bakend"])],
        ("routes", 0, "sources", 1),
        'unknown source "bakend"',
        'did you mean "backend"?',
    ),
    (
        "unknown_source_lists_known_ones",
        [customerio_route(sources="zzz")],
        ("routes", 0, "sources"),
        'unknown source "zzz"',
        "known: marketing, transactional",
    ),
    (
        "sources_only_of_the_other_direction_can_never_match",
        [segment_route(sources=["marketing"])],
        ("routes", 0, "sources", 0),
        '"marketing" is a Customer.io source',
        "did you mean from: customerio?",
    ),
    (
        "sources_must_not_be_empty",
        [segment_route(sources=[])],
        ("routes", 0, "sources"),
        "never sees a message",
        "remove sources",
    ),
    (
        "sources_must_be_names",
        [segment_route(sources={"web": True})],
        ("routes", 0, "sources"),
        "got a mapping",
        None,
    ),
    (
        "duplicate_route_names",
        [
            segment_route(name="a"),
            segment_route({"type": "page"}, name="a", to=["segment.warehouse"]),
        ],
        ("routes", 1, "name"),
        'the route name "a" is already used by routes[0]',
        "its own name",
    ),
    (
        "name_clashing_with_a_default_name",
        [segment_route({"type": "page"}, name="route-1"), segment_route(to=["segment.warehouse"])],
        ("routes", 1),
        '"route-1" is already used by routes[0]',
        "its own name",
    ),
    ("name_must_be_text", [segment_route(name=5)], ("routes", 0, "name"), "non-empty text", None),
    (
        "match_must_be_a_mapping",
        [segment_route(["event"])],
        ("routes", 0, "match"),
        "must be a mapping",
        "e.g. match:",
    ),
    (
        "glob_with_unclosed_bracket",
        [segment_route({"event": "Order [A"})],
        ("routes", 0, "match", "event"),
        'bad glob "Order [A": the "[" at position 7 is never closed',
        '"[[]"',
    ),
    (
        "glob_with_empty_range",
        [segment_route({"event": ["x", "[z-a]*"]})],
        ("routes", 0, "match", "event", 1),
        'the range "z-a" is empty',
        "low to high",
    ),
    (
        "bad_glob_in_drop_properties",
        [segment_route(drop_properties=["ok_*", "bad["])],
        ("routes", 0, "drop_properties", 1),
        'bad glob "bad["',
        None,
    ),
    (
        "contradictory_equality_on_the_same_path",
        [segment_route({"type": "track", "all": [{"type": "identify"}]})],
        ("routes", 0, "match", "all", 0, "type"),
        '"type" cannot meet both this condition and the one at match.type, '
        "so this route can never match",
        'type: ["track", "identify"]',
    ),
    (
        "contradictory_value_and_glob",
        [segment_route({"event": "Signed Up", "all": [{"event": "Order *"}]})],
        ("routes", 0, "match", "all", 0, "event"),
        "can never match",
        "remove one",
    ),
    (
        "contradictory_value_and_comparison",
        [segment_route({"properties.amount": 5, "all": [{"properties.amount": {"gt": 10}}]})],
        ("routes", 0, "match", "all", 0, "properties.amount"),
        '"properties.amount" cannot meet both',
        None,
    ),
    (
        "empty_numeric_range",
        [segment_route({"properties.amount": {"gt": 10, "lt": 5}})],
        ("routes", 0, "match", "properties.amount"),
        "no number is > 10 and < 5, so this route can never match",
        "lower one is above",
    ),
    (
        "ranges_that_do_not_overlap",
        [segment_route({"all": [{"properties.x": {"gte": 10}}, {"properties.x": {"lt": 10}}]})],
        ("routes", 0, "match", "all", 1, "properties.x"),
        "match.all.0.properties.x",
        None,
    ),
    (
        "missing_and_exists_contradict",
        [segment_route({"exists": ["userId"], "missing": ["userId"]})],
        ("routes", 0, "match", "missing", 0),
        '"userId" cannot meet both',
        None,
    ),
    (
        "missing_and_a_value_contradict",
        [segment_route({"missing": "userId", "userId": "u1"})],
        ("routes", 0, "match", "userId"),
        "can never match",
        None,
    ),
    (
        "any_alternative_contradicting_its_surroundings",
        [segment_route({"type": "track", "any": [{"type": "page"}, {"event": "x"}]})],
        ("routes", 0, "match", "any", 0, "type"),
        "so this alternative of any can never hold",
        None,
    ),
    (
        "contradiction_inside_not",
        [segment_route({"not": {"all": [{"type": "page"}, {"type": "track"}]}})],
        ("routes", 0, "match", "not", "all", 1, "type"),
        "so the not around it excludes nothing",
        None,
    ),
    (
        "empty_any_never_holds",
        [segment_route({"any": []})],
        ("routes", 0, "match", "any"),
        "never holds",
        None,
    ),
    (
        "empty_not_never_holds",
        [segment_route({"not": {}})],
        ("routes", 0, "match", "not"),
        "never holds",
        None,
    ),
    (
        "not_around_conditions_that_always_hold",
        [segment_route({"not": {"any": [{}, {"event": "a"}]}})],
        ("routes", 0, "match", "not"),
        "this not never holds",
        None,
    ),
    (
        "not_takes_a_mapping",
        [segment_route({"not": [{"event": "a"}, {"event": "b"}]})],
        ("routes", 0, "match", "not"),
        "got a list",
        "not: {any:",
    ),
    (
        "any_takes_a_list",
        [segment_route({"any": {"event": "a"}})],
        ("routes", 0, "match", "any"),
        "got a mapping",
        "any: [",
    ),
    (
        "any_entries_are_mappings",
        [segment_route({"any": [{"event": "a"}, "b"]})],
        ("routes", 0, "match", "any", 1),
        "got the text",
        None,
    ),
    (
        "exists_takes_paths",
        [segment_route({"exists": {"userId": True}})],
        ("routes", 0, "match", "exists"),
        "must list field paths",
        "exists: [",
    ),
    (
        "empty_list_of_values_matches_nothing",
        [segment_route({"event": []})],
        ("routes", 0, "match", "event"),
        "matches nothing",
        None,
    ),
    (
        "list_inside_list",
        [segment_route({"event": ["a", ["b"]]})],
        ("routes", 0, "match", "event", 1),
        "a list inside a list",
        "flatten",
    ),
    (
        "unknown_comparison_suggests_closest",
        [segment_route({"properties.amount": {"gtt": 3}})],
        ("routes", 0, "match", "properties.amount", "gtt"),
        'unknown comparison "gtt"',
        'did you mean "gt"?',
    ),
    (
        "comparison_symbol_suggests_word",
        [segment_route({"properties.amount": {">=": 3}})],
        ("routes", 0, "match", "properties.amount", ">="),
        'unknown comparison ">="',
        'did you mean "gte"?',
    ),
    (
        "nested_mapping_suggests_dotted_path",
        [segment_route({"properties": {"plan": "pro"}})],
        ("routes", 0, "match", "properties", "plan"),
        'unknown comparison "plan"',
        "properties.plan: …",
    ),
    (
        "comparison_needs_a_number",
        [segment_route({"properties.amount": {"gt": "1e3"}})],
        ("routes", 0, "match", "properties.amount", "gt"),
        'compares numbers, got the text "1e3"',
        "YAML read",
    ),
    (
        "comparison_rejects_true",
        [segment_route({"properties.amount": {"lt": True}})],
        ("routes", 0, "match", "properties.amount", "lt"),
        "got true",
        None,
    ),
    (
        "empty_comparison",
        [segment_route({"properties.amount": {}})],
        ("routes", 0, "match", "properties.amount"),
        "not a condition",
        None,
    ),
    (
        "yaml_date_must_be_quoted",
        [segment_route({"properties.day": datetime.date(2024, 1, 2)})],
        ("routes", 0, "match", "properties.day"),
        "YAML read 2024-01-02 as a date",
        '"2024-01-02"',
    ),
    (
        "yaml_date_in_set_properties",
        [segment_route(set_properties={"since": [datetime.date(2024, 1, 2)]})],
        ("routes", 0, "set_properties", "since", 0),
        "as a date",
        "quote it",
    ),
    (
        "field_path_with_empty_part",
        [segment_route({"properties..plan": "pro"})],
        ("routes", 0, "match", "properties..plan"),
        "empty part",
        None,
    ),
    (
        "field_name_typo_suggests_closest",
        [segment_route({"evnet": "Order *"})],
        ("routes", 0, "match", "evnet"),
        'Segment messages have no "evnet" field',
        'did you mean "event"?',
    ),
    (
        "nested_field_name_typo_keeps_the_rest_of_the_path",
        [segment_route({"propertes.plan": "pro"})],
        ("routes", 0, "match", "propertes.plan"),
        'no "propertes" field',
        'did you mean "properties.plan"?',
    ),
    (
        "combinator_typo_suggests_closest",
        [segment_route({"exist": ["userId"]})],
        ("routes", 0, "match", "exist"),
        'unknown condition "exist"',
        'did you mean "exists"?',
    ),
    (
        "customerio_field_in_segment_route",
        [segment_route({"metric": "opened"})],
        ("routes", 0, "match", "metric"),
        "belongs to Customer.io webhooks",
        "did you mean from: customerio?",
    ),
    (
        "segment_field_in_customerio_route",
        [customerio_route({"event": "Email Opened"})],
        ("routes", 0, "match", "event"),
        'which has no "event"',
        "{object_type: email, metric: opened}",
    ),
    (
        "customerio_data_field_typo",
        [customerio_route({"data.campain_id": 3})],
        ("routes", 0, "match", "data.campain_id"),
        'no "data.campain_id" field',
        'did you mean "data.campaign_id"?',
    ),
    (
        "exists_path_checked_like_a_field",
        [customerio_route({"exists": ["userId"]})],
        ("routes", 0, "match", "exists", 0),
        'which has no "userId"',
        None,
    ),
    (
        "unknown_segment_type",
        [segment_route({"type": ["track", "indentify"]})],
        ("routes", 0, "match", "type", 1),
        'no type "indentify"',
        'did you mean "identify"?',
    ),
    (
        "top_level_segment_fields_are_a_closed_set",
        [segment_route({"custom_field": 1})],
        ("routes", 0, "match", "custom_field"),
        'Segment messages have no "custom_field" field',
        'did you mean "properties.custom_field"? On identify and group calls it is'
        ' "traits.custom_field"',
    ),
    (
        "field_in_other_case_suggests_the_field",
        [segment_route({"Type": "track"})],
        ("routes", 0, "match", "Type"),
        'Segment messages have no "Type" field',
        'did you mean "type"?',
    ),
    (
        "snake_case_field_suggests_camel_case",
        [segment_route({"user_id": "u1"})],
        ("routes", 0, "match", "user_id"),
        'no "user_id" field',
        'did you mean "userId"?',
    ),
    (
        "snake_case_field_keeps_the_rest_of_the_path",
        [segment_route({"anonymous_id.x": "a"})],
        ("routes", 0, "match", "anonymous_id.x"),
        'no "anonymous_id" field',
        'did you mean "anonymousId.x"?',
    ),
    (
        "run_together_field_suggests_the_field",
        [segment_route({"eventname": "Order *"})],
        ("routes", 0, "match", "eventname"),
        'no "eventname" field',
        'did you mean "event"?',
    ),
    (
        "custom_field_suggests_properties",
        [segment_route({"plan": "pro"})],
        ("routes", 0, "match", "plan"),
        'no "plan" field',
        'did you mean "properties.plan"?',
    ),
    (
        "unknown_field_in_exists_is_checked_too",
        [segment_route({"exists": ["userId", "plan"]})],
        ("routes", 0, "match", "exists", 1),
        'no "plan" field',
        'did you mean "properties.plan"?',
    ),
    (
        "top_level_customerio_fields_are_a_closed_set",
        [customerio_route({"foo": 1})],
        ("routes", 0, "match", "foo"),
        'Customer.io webhooks have no "foo" field',
        'did you mean "data.foo"?',
    ),
    (
        "customerio_data_field_at_the_top_suggests_data",
        [customerio_route({"campaign_id": 23})],
        ("routes", 0, "match", "campaign_id"),
        'Customer.io webhooks have no "campaign_id" field',
        'did you mean "data.campaign_id"?',
    ),
    (
        "customerio_field_in_other_case",
        [customerio_route({"Metric": "opened"})],
        ("routes", 0, "match", "Metric"),
        'no "Metric" field',
        'did you mean "metric"?',
    ),
    (
        "combinator_in_other_case",
        [segment_route({"Not": {"event": "x"}})],
        ("routes", 0, "match", "Not"),
        'unknown condition "Not"',
        'did you mean "not"?',
    ),
    (
        "unknown_object_type",
        [customerio_route({"object_type": "emial"})],
        ("routes", 0, "match", "object_type"),
        'Customer.io webhooks have no object_type "emial"',
        'did you mean "email"?',
    ),
    (
        "unknown_object_type_lists_the_known_ones",
        [customerio_route({"object_type": ["email", "fax"]})],
        ("routes", 0, "match", "object_type", 1),
        'no object_type "fax"',
        "object types are: customer, email, push, sms, in_app, slack, webhook, whatsapp",
    ),
    (
        "metric_near_miss",
        [customerio_route({"metric": ["clicked", "opend"]})],
        ("routes", 0, "match", "metric", 1),
        'Customer.io sends no metric "opend"',
        'did you mean "opened"?',
    ),
    (
        "comparison_written_as_text",
        [segment_route({"properties.total": ">= 100"})],
        ("routes", 0, "match", "properties.total"),
        '">= 100" is text, so it matches only that exact text, never a number',
        "write {gte: 100}",
    ),
    (
        "comparison_written_as_text_without_spaces",
        [segment_route({"properties.total": "<2.5"})],
        ("routes", 0, "match", "properties.total"),
        "never a number",
        "write {lt: 2.5}",
    ),
    (
        "equality_written_as_text",
        [segment_route({"properties.count": "== 3"})],
        ("routes", 0, "match", "properties.count"),
        "never a number",
        "write it without quotes: 3",
    ),
    (
        "inequality_written_as_text",
        [segment_route({"properties.count": ["!= 3"]})],
        ("routes", 0, "match", "properties.count", 0),
        "never a number",
        "write not: {properties.count: 3}",
    ),
    (
        "field_on_the_route_belongs_under_match",
        [segment_route(event="Signed Up")],
        ("routes", 0, "event"),
        'unknown key "event" in a route',
        "put it under match:, e.g. match: {event: …}",
    ),
    (
        "dotted_field_on_the_route_belongs_under_match",
        [segment_route(**{"properties.plan": "pro"})],
        ("routes", 0, "properties.plan"),
        'unknown key "properties.plan"',
        "put it under match:",
    ),
    (
        "combinator_on_the_route_belongs_under_match",
        [customerio_route(**{"not": {"metric": "sent"}})],
        ("routes", 0, "not"),
        'unknown key "not"',
        "put it under match:",
    ),
    (
        "rename_events_must_map_names",
        [segment_route(rename_events=["Order Completed"])],
        ("routes", 0, "rename_events"),
        "must map old event names to new ones",
        None,
    ),
    (
        "rename_target_must_be_text",
        [segment_route(rename_events={"Order Completed": None})],
        ("routes", 0, "rename_events", "Order Completed"),
        "must be renamed to non-empty text",
        None,
    ),
    (
        "set_properties_must_be_a_mapping",
        [segment_route(set_properties=["a"])],
        ("routes", 0, "set_properties"),
        "must map property names to values",
        None,
    ),
    (
        "drop_properties_entries_must_be_text",
        [segment_route(drop_properties=["a", 1])],
        ("routes", 0, "drop_properties", 1),
        "non-empty text",
        None,
    ),
    (
        "renamed_property_already_dropped",
        [segment_route(drop_properties=["internal_*"], rename_properties={"internal_id": "id"})],
        ("routes", 0, "rename_properties", "internal_id"),
        'removed by drop_properties "internal_*"',
        None,
    ),
    (
        "two_properties_renamed_to_one_name",
        [segment_route(rename_properties={"a": "x", "b": "x"})],
        ("routes", 0, "rename_properties", "b"),
        '"b" and "a" are both renamed to "x"',
        None,
    ),
    (
        "route_fully_shadowed_by_a_broader_earlier_route",
        [
            segment_route({"type": "track"}, name="tracks"),
            segment_route({"type": "track", "event": "Order *"}, name="orders"),
        ],
        ("routes", 1),
        'route "orders" never delivers anything: every message it matches also matches '
        'route "tracks" (routes[0])',
        'move it before route "tracks"',
    ),
    (
        "destination_shadowed_by_an_earlier_route",
        [
            segment_route(name="all", sources=["web", "backend"]),
            segment_route(
                {"event": "x"}, name="x", sources="web", to=["segment.warehouse", "customerio.main"]
            ),
        ],
        ("routes", 1, "to", 1),
        'customerio.main never receives anything from route "x"',
        None,
    ),
]


@pytest.mark.parametrize(
    ("routes", "path", "message", "hint"),
    [pytest.param(r, p, m, h, id=rule) for rule, r, p, m, h in PROBLEM_CASES],
)
def test_problem(routes: Any, path: tuple[str | int, ...], message: str, hint: str | None) -> None:
    problem = one_problem(routes)
    assert problem.path == path
    assert message in problem.message
    if hint is None:
        return
    assert problem.hint is not None and hint in problem.hint


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        [
            {
                "name": "broken",
                "from": "segment",
                "sources": ["web", "nope"],
                "match": {"evnet": "x", "event": "Order [", "properties.a": {"gtt": 1}},
                "to": ["customerio.mian", "customerio.main"],
                "rename_event": {},
            },
            {"from": "sgment", "to": []},
            "not a route",
        ]
    )
    assert [p.path for p in problems] == [
        ("routes", 0, "rename_event"),
        ("routes", 0, "sources", 1),
        ("routes", 0, "match", "evnet"),
        ("routes", 0, "match", "event"),
        ("routes", 0, "match", "properties.a", "gtt"),
        ("routes", 0, "to", 0),
        ("routes", 1, "from"),
        ("routes", 1, "to"),
        ("routes", 2),
    ]


def test_routes_with_problems_are_left_out() -> None:
    routes, problems = compile_(
        [segment_route(name="good"), segment_route(name="bad", to=["customerio.nope"])]
    )
    assert len(problems) == 1
    assert [r.name for r in routes] == ["good"]


def test_routes_are_not_shadowed_by_narrower_or_other_routes() -> None:
    compile_ok(
        [
            segment_route({"type": "track", "event": "Order *"}, name="orders"),
            segment_route({"type": "track"}, name="tracks"),
            segment_route(
                {"type": "track"}, name="web-tracks", sources="web", to="segment.warehouse"
            ),
            segment_route(name="backend", sources="backend", to="segment.warehouse"),
            segment_route({"properties.x": 1}, name="one", to="segment.analytics"),
            segment_route({"properties.x": True}, name="true", to="segment.analytics"),
            customerio_route(name="cio"),
        ]
    )


def test_compatible_conditions_are_not_contradictions() -> None:
    compile_ok(
        [
            segment_route(
                {
                    "type": ["track", "page"],
                    "event": "Order *",
                    "missing": ["anonymousId"],
                    "all": [
                        {"type": "track"},
                        {"event": "* Completed"},
                        {"properties.amount": {"gte": 10}},
                        {"properties.amount": {"lte": 10}},
                        {"anonymousId": None},
                    ],
                    "any": [{"properties.amount": 10}, {"properties.amount": [9, 10.0]}],
                    "not": {"properties.amount": {"gt": 10, "lt": 11}},
                }
            ),
        ]
    )


def test_custom_fields_below_the_top_level_are_allowed() -> None:
    compile_ok(
        [
            segment_route({"properties.custom_field": 1, "traits.x": 2, "context.y.z": 3}),
            segment_route({"exists": ["integrations.Mixpanel"]}, to=["segment.warehouse"]),
            customerio_route({"data.new_field": 1}),
        ]
    )


@pytest.mark.parametrize(
    "metric",
    ["custom_metric", "human_reviewed", "opened", "cio_subscription_preferences_changed", "o*"],
)
def test_metrics_are_an_open_set_except_for_near_misses(metric: str) -> None:
    compile_ok([customerio_route({"metric": metric})])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Order >= 100", "Order >= 100"),
        (">= 100 units", ">= 100 units"),
        (">=", ">="),
        ("== x", "== x"),
        # A glob is the way to match text that looks like a comparison.
        ("[<]3", "<3"),
        ("[>]= 100", ">= 100"),
    ],
)
def test_text_that_is_not_just_a_comparison_is_matched_as_text(text: str, message: str) -> None:
    routes = compile_ok([segment_route({"properties.note": text})])
    assert routes[0].matches({"properties": {"note": message}})


def test_every_problem_has_a_hint() -> None:
    for rule, routes, *_ in PROBLEM_CASES:
        for problem in problems_of(routes):
            assert problem.hint, (rule, problem)


def test_glob_type_values_are_not_checked_against_known_types() -> None:
    compile_ok([segment_route({"type": "[ti]*"})])


def test_default_names_do_not_clash_with_each_other() -> None:
    routes = compile_ok([segment_route({"type": "page"}), segment_route(to="segment.warehouse")])
    assert [r.name for r in routes] == ["route-0", "route-1"]


# --------------------------------------------------------------------------- robustness

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["track", "identify", "Order Completed", "Customer.io", "All", "email"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "event",
                    "properties",
                    "traits",
                    "integrations",
                    "Customer.io",
                    "All",
                    "plan",
                ]
                + ["amount", "userId", "object_type", "metric", "event_type", "data", "x"]
            )
            | st.text(max_size=6),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)

RICH_ROUTES = [
    segment_route(
        {
            "type": ["track", "identify", 1, True, None],
            "event": ["Order *", "[!x]?"],
            "properties.amount": [{"gt": 1, "lte": 1e9}, 0.5],
            "not": {"any": [{"properties.plan": "free"}, {"missing": "userId"}]},
        },
        name="rich",
        drop_properties=["x*"],
        rename_properties={"plan": "tier"},
        set_properties={"a": {"b": [1]}},
        rename_events={"Order Completed": "Purchase"},
    ),
    segment_route({"exists": ["integrations.All"]}, name="exists", to=["customerio.marketing"]),
    segment_route(name="all", to=["customerio.main", "segment.warehouse"]),
    customerio_route({"object_type": "email", "metric": ["opened", "clicked"]}, name="cio"),
    customerio_route({"data.x": {"lt": 0}}, name="cio-data", to="segment.warehouse"),
]


@settings(max_examples=400, deadline=None)
@given(message=JSON, kind=st.sampled_from(["segment", "customerio"]), source=st.text(max_size=8))
def test_route_never_raises_for_any_json_message(message: Any, kind: str, source: str) -> None:
    routes = compile_ok(RICH_ROUTES)
    before = json.dumps(message, sort_keys=True)
    result = routes.route(kind, source, message)
    for _, route in result.deliveries:
        if isinstance(message, dict):
            route.edit(message)
    assert json.dumps(message, sort_keys=True) == before


@settings(max_examples=200, deadline=None)
@given(
    properties=st.dictionaries(st.text(max_size=6), JSON, max_size=6),
    kind=st.sampled_from(["track", "identify"]),
)
def test_edit_never_mutates_its_input(properties: dict[str, Any], kind: str) -> None:
    route = compile_ok(RICH_ROUTES)[0]
    field = "traits" if kind == "identify" else "properties"
    message = {"type": kind, "event": "Order Completed", field: properties}
    before = json.dumps(message, sort_keys=True)
    out = route.edit(message)
    assert json.dumps(message, sort_keys=True) == before
    assert out[field]["a"] == {"b": [1]}
    assert not any(k.startswith("x") for k in out[field])


def test_edits_kept_as_json_edit_alike() -> None:
    # A webhook's delivery keeps its route's edits as JSON, applied at delivery.
    from relay.routing.edits import Edits

    route = compile_ok(
        [
            segment_route(
                rename_events={"Order Completed": "purchase"},
                drop_properties=["co*", "ratio"],
                rename_properties={"plan": "tier"},
                set_properties={"via": "relay", "nested": {"a": [1, 2]}},
            )
        ]
    )[0]
    spec = route.edits_spec
    assert spec is not None and json.loads(json.dumps(spec)) == spec
    rebuilt = Edits.from_spec(spec)
    for message in (TRACK, {"type": "identify", "userId": "u1", "traits": {"plan": "x"}}):
        assert rebuilt.apply(message) == route.edit(message)
    assert route.edit(TRACK)["properties"] == {
        "tier": "pro",
        "amount": 120,
        "vip": True,
        "via": "relay",
        "nested": {"a": [1, 2]},
    }
    assert compile_ok([segment_route()])[0].edits_spec is None
