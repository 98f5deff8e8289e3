"""`relay check`: every problem at once, located and explained; golden outputs in tests/golden.

Each tests/golden/check/NAME.yaml is checked by running `python -m relay check` in that
directory; its output must equal NAME.stderr (exit 1) or NAME.stdout (exit 0) exactly, line
and column numbers included. After an intended change of wording, rewrite the expected files
with `RELAY_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_check.py` and review the diff.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.config import (
    check_config,
    check_text,
    compile_config_routes,
    load_config,
    parse_config,
)
from relay.errors import ConfigError
from tests.helpers import ROOT, UPDATE, run_relay

GOLDEN = Path(__file__).resolve().parent / "golden" / "check"

# Values no output may ever contain.
SECRET = "secret-value-of-odd-length"
GOLDEN_ENV = {
    "GOLDEN_CIO_API_KEY": SECRET,
    "GOLDEN_GOOD_API_KEY": "g" * 20,
    "GOLDEN_SIGNING_KEY_OLD": SECRET,
    "GOLDEN_EMPTY": "",
}


def golden_cases() -> list[str]:
    return sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def test_there_are_golden_cases() -> None:
    assert golden_cases() == [
        "alias_loop",
        "anchors",
        "control_character",
        "duplicates",
        "empty_file",
        "empty_variables",
        "hints",
        "match",
        "mixed",
        "not_a_mapping",
        "routes",
        "settings",
        "tabs",
        "valid",
        "yaml_error",
    ]


@pytest.mark.parametrize("name", golden_cases())
def test_check_output_is_exactly_the_golden_one(name: str) -> None:
    result = run_relay(["check", "--config", f"{name}.yaml"], GOLDEN, GOLDEN_ENV)
    stdout_file, stderr_file = GOLDEN / f"{name}.stdout", GOLDEN / f"{name}.stderr"
    if UPDATE:
        for path, text in ((stdout_file, result.stdout), (stderr_file, result.stderr)):
            if text:
                path.write_text(text)
            elif path.exists():
                path.unlink()
    expected_stdout = stdout_file.read_text() if stdout_file.exists() else ""
    expected_stderr = stderr_file.read_text() if stderr_file.exists() else ""
    assert result.stderr == expected_stderr
    assert result.stdout == expected_stdout
    assert result.returncode == (1 if expected_stderr else 0)
    assert SECRET not in result.stdout + result.stderr


def test_every_golden_problem_has_a_hint() -> None:
    for path in sorted(GOLDEN.glob("*.yaml")):
        result = check_config(str(path), GOLDEN_ENV)
        for problem in result.problems:
            assert problem.hint, problem


def test_golden_expectations_are_literal() -> None:
    # The golden files pin the exact places; a few of them spelled out here as well.
    settings = (GOLDEN / "settings.stderr").read_text().splitlines()
    assert settings[0] == (
        'settings.yaml:4:3: server.prot: unknown key "prot" (did you mean "port"?)'
    )
    assert settings[-1] == "settings.yaml: 10 problems; the config is not valid"
    routes = (GOLDEN / "routes.stderr").read_text()
    assert (
        'routes.yaml:20:9: routes.0.to.1: unknown destination "customerio.mian"'
        ' (did you mean "customerio.main"?)\n'
    ) in routes
    assert 'routes.yaml:16:5: routes.0.filter: unknown key "filter" in a route' in routes
    assert (GOLDEN / "valid.stdout").read_text() == "valid.yaml: valid (1 destination, 1 route)\n"


def test_settings_routes_and_variables_are_reported_together(tmp_path: Path) -> None:
    text = (
        "destinations:\n"
        "  customerio:\n"
        "    main: {site_id: s, api_key: '${NOT_SET_KEY}', rate_limit: fast}\n"
        "routes:\n"
        "  - {from: segment, to: [customerio.other]}\n"
    )
    result = check_text(text, "relay.yaml", {})
    assert [str(p) for p in result.problems] == [
        "relay.yaml:3:33: destinations.customerio.main.api_key: environment variable"
        " NOT_SET_KEY is not set (export it before running relay; secrets belong in the"
        " environment)",
        "relay.yaml:3:63: destinations.customerio.main.rate_limit: not a valid number"
        " (write a number above 0, such as 100)",
        'relay.yaml:5:26: routes.0.to.0: unknown destination "customerio.other"'
        ' (did you mean "customerio.main"?)',
    ]
    assert result.config is None and result.routes is None


def test_unset_variables_are_tolerated_when_not_required() -> None:
    text = (
        "sources:\n  segment:\n    write_keys: {web: '${NOT_SET_WEB_KEY}'}\n"
        "routes:\n  - {from: segment, sources: web, to: []}\n"
    )
    strict = check_text(text, "relay.yaml", {})
    assert [p.message for p in strict.problems] == [
        "environment variable NOT_SET_WEB_KEY is not set",
        "to is empty, so this route sends nowhere",
    ]
    # A route may name a source whose key is unset: relay starts, and the source simply
    # cannot authenticate until its key is set.
    lenient = check_text(text.replace("to: []", "to: web"), "relay.yaml", {}, require_env=False)
    assert [p.message for p in lenient.problems] == [
        '"web" is not a destination name: destinations are named customerio.<name> or'
        " segment.<name>"
    ]
    ok = check_text(
        text.replace("to: []", "to: [customerio.main]")
        + "destinations:\n  customerio:\n    main: {site_id: s, api_key: '"
        + "k" * 64
        + "'}\n",
        "relay.yaml",
        {},
        require_env=False,
    )
    assert ok.problems == []
    assert ok.config is not None and ok.routes is not None
    assert ok.config.sources.segment.write_keys == {}
    assert ok.config.sources.segment.names == ("web",)
    assert [r.name for r in compile_config_routes(ok.config)] == ["route-0"]


def test_an_unset_variable_that_breaks_a_setting_is_reported_once_by_name() -> None:
    text = "server: {port: '${NOT_SET_PORT}'}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "relay.yaml", {})
    assert [str(p) for p in caught.value.problems] == [
        "relay.yaml:1:16: server.port: environment variable NOT_SET_PORT is not set"
        " (export it, or write ${NOT_SET_PORT:-default} to give a default)"
    ]
    assert [str(p) for p in check_text(text, "relay.yaml", {}).problems] == [
        str(caught.value.problems[0])
    ]


def test_an_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    result = check_config(str(tmp_path / "nope.yaml"))
    assert [str(p) for p in result.problems] == [
        f"{tmp_path / 'nope.yaml'}: cannot read the file: No such file or directory"
        " (check the path given to --config)"
    ]


# --------------------------------------------------------------------------- shipped configs

CONFIG_DIR = ROOT / "config"
SHIPPED = sorted(
    [
        *CONFIG_DIR.glob("*.yaml"),
        *CONFIG_DIR.glob("*.yml"),
        *(CONFIG_DIR / "examples").glob("*.yaml"),
        *(CONFIG_DIR / "examples").glob("*.yml"),
    ],
    key=lambda p: str(p),
)
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def fake_value(name: str) -> str:
    """A plausible value for a variable; Customer.io API keys are 20 or 64 characters."""
    if name.endswith("REGION"):
        return "eu"
    if name.endswith("PORT"):
        return "8080"
    if name.endswith("URL"):
        return "http://127.0.0.1:9"
    return ("fake-" + name.lower().replace("_", "-") + "-" * 20)[:20]


def required_variables(path: Path) -> set[str]:
    return required_variables_in(path.read_text())


def test_the_shipped_configs_are_all_there() -> None:
    assert [p.relative_to(CONFIG_DIR).as_posix() for p in SHIPPED] == [
        "examples/docker.yaml",
        "examples/edits.yaml",
        "examples/engagement-only.yaml",
        "examples/eu-region.yaml",
        "examples/filter-test-traffic.yaml",
        "examples/two-workspaces.yaml",
        "relay.yaml",
    ]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_passes_check(path: Path) -> None:
    env = {name: fake_value(name) for name in required_variables(path)}
    assert env, "every shipped config takes its secrets from the environment"
    result = run_relay(["check", "--config", str(path)], ROOT, env)
    assert result.stderr == ""
    assert result.returncode == 0
    assert re.fullmatch(
        rf"{re.escape(str(path))}: valid \(\d+ destinations?, \d+ routes?\)\n", result.stdout
    )


def test_relay_yaml_without_its_variables_names_each_one(tmp_path: Path) -> None:
    result = run_relay(["check", "--config", "config/relay.yaml"], ROOT, {})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "config/relay.yaml:45:18: sources.customerio.signing_keys.marketing: environment"
        " variable CIO_WEBHOOK_SIGNING_KEY is not set (export it before running relay;"
        " secrets belong in the environment)",
        "config/relay.yaml:51:16: destinations.customerio.main.site_id: environment variable"
        " CIO_SITE_ID is not set (export it, or write ${CIO_SITE_ID:-default} to give a"
        " default)",
        "config/relay.yaml:52:16: destinations.customerio.main.api_key: environment variable"
        " CIO_API_KEY is not set (export it before running relay; secrets belong in the"
        " environment)",
        "config/relay.yaml:60:18: destinations.segment.main.write_key: environment variable"
        " SEGMENT_OUT_WRITE_KEY is not set (export it before running relay; secrets belong in"
        " the environment)",
        "config/relay.yaml: 4 problems; the config is not valid",
    ]


# --------------------------------------------------------------------------- README examples

README_CONFIG = """
sources:
  segment: {write_keys: {web: wk-web, backend: wk-backend}}
  customerio: {signing_keys: {marketing: signing-key}}
destinations:
  customerio:
    main: {site_id: s, api_key: kkkkkkkkkkkkkkkkkkkk}
    marketing: {site_id: s, api_key: kkkkkkkkkkkkkkkkkkkk}
  segment:
    main: {write_key: wk-out}
"""


def readme_route_examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Writing routes") : readme.index("## Command line")]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


def as_routes(snippet: str) -> str:
    if snippet.startswith("routes:"):
        return snippet
    if snippet.startswith("  - "):
        return "routes:\n" + snippet
    # A `match:` on its own: a Segment route around it.
    return "routes:\n  - from: segment\n    to: [customerio.main]\n" + snippet


def test_the_route_examples_in_the_readme_are_valid() -> None:
    snippets = readme_route_examples()
    assert len(snippets) == 5
    for snippet in snippets:
        result = check_text(README_CONFIG + as_routes(snippet), "README.md", {})
        assert result.problems == [], snippet


def test_the_readme_edit_example_does_what_it_says() -> None:
    [snippet] = [s for s in readme_route_examples() if "orders-for-campaigns" in s]
    result = check_text(README_CONFIG + as_routes(snippet), "README.md", {})
    assert result.routes is not None
    message = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"total": 12.5, "internal_note": "gift", "card_last4": "4242"},
    }
    [(destination, route)] = result.routes.route("segment", "web", message).deliveries
    assert destination == "customerio.marketing"
    edited = route.edit(message)
    assert (edited["event"], edited["properties"]) == (
        "purchase",
        {"value": 12.5, "source_app": "web"},
    )


def test_a_storage_backend_relay_does_not_have_is_refused_rather_than_ignored() -> None:
    text = 'storage:\n  mongodb: {url: "mongodb://127.0.0.1"}\nroutes: []\n'
    assert [str(p) for p in check_text(text, "relay.yaml", {}).problems] == [
        'relay.yaml:2:3: storage.mongodb: unknown key "mongodb" (known keys: redis, sqlite)'
    ]


def test_storage_redis_is_read_with_its_defaults() -> None:
    text = 'storage:\n  redis: {url: "redis://:pw@10.0.0.5:6380/2", partitions: 8}\nroutes: []\n'
    result = check_text(text, "relay.yaml", {})
    assert result.problems == [] and result.config is not None
    redis = result.config.storage.redis
    assert redis is not None
    assert (redis.url, redis.key_prefix, redis.partitions, redis.reclaim_idle) == (
        "redis://:pw@10.0.0.5:6380/2",
        "relay:",
        8,
        30.0,
    )
    assert result.config.storage.sqlite.path == "var/relay.db"  # local files only


def test_storage_takes_one_backend_and_says_where_the_second_is() -> None:
    text = (
        "storage:\n  sqlite: {path: var/relay.db}\n"
        '  redis: {url: "redis://127.0.0.1:6379/0"}\nroutes: []\n'
    )
    assert [str(p) for p in check_text(text, "relay.yaml", {}).problems] == [
        "relay.yaml:3:10: storage.redis: give storage.sqlite or storage.redis, not both:"
        " the queue is in one of them"
    ]


def test_storage_redis_without_redis_py_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("relay.config.schemas.available", lambda: False)
    text = 'storage:\n  redis: {url: "redis://127.0.0.1:6379/0"}\nroutes: []\n'
    assert [str(p) for p in check_text(text, "relay.yaml", {}).problems] == [
        "relay.yaml:2:10: storage.redis: storage.redis needs the Python package redis:"
        " pip install 'relay[redis]'"
    ]


def test_a_wrong_redis_setting_is_located() -> None:
    text = "storage:\n  redis:\n    partitions: 0\n    colour: red\nroutes: []\n"
    assert [str(p) for p in check_text(text, "relay.yaml", {}).problems] == [
        "relay.yaml:3:17: storage.redis.partitions: must be greater than or equal to 1 and"
        " less than or equal to 1024 (write a whole number from 1 to 1024, such as 16)",
        'relay.yaml:4:5: storage.redis.colour: unknown key "colour" (known keys:'
        " key_prefix, max_pending, ownership_ttl, partitions, reclaim_idle, require_durable,"
        " timeout, url)",
    ]


# --------------------------------------------------------------------------- reading the file

CIO_MAIN = "destinations:\n  customerio:\n    main: {site_id: s, api_key: kkkkkkkkkkkkkkkkkkkk}\n"
TO_MAIN = "  - {from: segment, to: [customerio.main]}\n"

READING_CASES: list[tuple[str, str, dict[str, str], list[str]]] = [
    # (rule, file text, environment, every problem as printed)
    (
        "duplicate_top_level_key_points_at_the_repeat",
        f"routes:\n{TO_MAIN}{CIO_MAIN}routes:\n{TO_MAIN}",
        {},
        [
            'relay.yaml:6:1: routes: the key "routes" is given twice: it is already set at'
            " line 1, column 1 (remove one; YAML keeps only the last)"
        ],
    ),
    (
        "duplicate_key_in_a_flow_mapping",
        "server: {port: 1, port: 2}\n",
        {},
        [
            'relay.yaml:1:19: server.port: the key "port" is given twice: it is already set at'
            " line 1, column 10 (remove one; YAML keeps only the last)"
        ],
    ),
    (
        "duplicate_key_in_match",
        f"{CIO_MAIN}routes:\n  - {{from: segment, match: {{type: page, type: track}},"
        " to: [customerio.main]}\n",
        {},
        [
            'relay.yaml:5:41: routes.0.match.type: the key "type" is given twice: it is already'
            " set at line 5, column 29 (remove one; YAML keeps only the last)"
        ],
    ),
    (
        "every_repeat_is_reported_against_the_first",
        "server:\n  port: 1\n  port: 2\n  port: 3\n",
        {},
        [
            'relay.yaml:3:3: server.port: the key "port" is given twice: it is already set at'
            " line 2, column 3 (remove one; YAML keeps only the last)",
            'relay.yaml:4:3: server.port: the key "port" is given twice: it is already set at'
            " line 2, column 3 (remove one; YAML keeps only the last)",
        ],
    ),
    (
        "a_key_overriding_a_merged_one_is_meant",
        "x-server: &server {host: 0.0.0.0, port: 1}\nserver: {<<: *server, port: 2}\n" + CIO_MAIN,
        {},
        [],
    ),
    (
        "a_repeat_inside_an_aliased_node_is_reported_once",
        "x-dest: &dest {site_id: s, site_id: t, api_key: kkkkkkkkkkkkkkkkkkkk}\n"
        "destinations:\n  customerio: {a: *dest, b: *dest}\n",
        {},
        [
            'relay.yaml:1:28: x-dest.site_id: the key "site_id" is given twice: it is already'
            " set at line 1, column 16 (remove one; YAML keeps only the last)"
        ],
    ),
    (
        "recursive_alias_in_a_list",
        "a: &x [*x]\n",
        {},
        [
            "relay.yaml:1:8: not valid YAML: the alias *x is inside &x, the node it repeats,"
            " which would then contain itself without end (&x starts at line 1, column 4; an"
            " alias may only repeat a node that ends before it)"
        ],
    ),
    (
        "recursive_alias_deeper_down_a_mapping",
        "server: &s\n  host: {inner: [*s]}\n",
        {},
        [
            "relay.yaml:2:18: not valid YAML: the alias *s is inside &s, the node it repeats,"
            " which would then contain itself without end (&s starts at line 1, column 9; an"
            " alias may only repeat a node that ends before it)"
        ],
    ),
    (
        "control_character_is_located_after_windows_line_ends",
        "server:\r\n  host: a\x07b\r\n",
        {},
        [
            "relay.yaml:2:10: not valid YAML: the control character U+0007 is not allowed in a"
            " YAML file (delete it: most editors do not show it; in a double-quoted value,"
            " write it as the escape \\x07)"
        ],
    ),
    (
        "tab_used_for_indentation",
        "server:\n\thost: x\n",
        {},
        [
            "relay.yaml:2:1: not valid YAML: found character '\\t' that cannot start any token"
            " (indent with spaces, not tabs)"
        ],
    ),
    (
        "tab_inside_a_line",
        "server:\n  host:\tx\n  port: 1\n",
        {},
        [
            "relay.yaml:2:8: not valid YAML: found character '\\t' that cannot start any token"
            " (write spaces, not tabs: YAML does not allow a tab here)"
        ],
    ),
    (
        "empty_file",
        "",
        {},
        [
            "relay.yaml: the file holds no settings at all (write the settings into it;"
            " config/relay.yaml is a commented example to start from)"
        ],
    ),
    (
        "x_keys_are_ignored_even_with_unset_variables",
        "x-notes: {owner: '${NOT_SET_OWNER}'}\n" + CIO_MAIN,
        {},
        [],
    ),
    (
        "an_unknown_top_level_key_mentions_x_keys",
        "anchors: {a: 1}\n" + CIO_MAIN,
        {},
        [
            'relay.yaml:1:1: anchors: unknown key "anchors" (known keys: admin, destinations,'
            " routes, server, sources, storage; a top-level key starting with x- is ignored"
            " (to hold YAML anchors))"
        ],
    ),
    (
        "write_key_of_the_wrong_type_has_no_marshmallow_value_suffix",
        "sources:\n  segment: {write_keys: {web: [1]}}\n  customerio: {signing_keys: {m: [1]}}\n",
        {},
        [
            "relay.yaml:2:31: sources.segment.write_keys.web: not a valid string (write the"
            ' write key as text, e.g. "${SEGMENT_WRITE_KEY}")',
            "relay.yaml:3:34: sources.customerio.signing_keys.m: must be a key, or a list of"
            ' keys (write one signing key, or a list of them while rotating keys: ["${OLD_KEY}",'
            ' "${NEW_KEY}"])',
        ],
    ),
    (
        "empty_variable_for_a_write_key",
        "sources:\n  segment: {write_keys: {web: '${EMPTY_KEY}'}}\n",
        {"EMPTY_KEY": ""},
        [
            "relay.yaml:2:31: sources.segment.write_keys.web: environment variable EMPTY_KEY is"
            " empty (set EMPTY_KEY to the write key itself: an empty write key is never valid)"
        ],
    ),
    (
        "empty_variable_with_a_default_takes_the_default",
        "sources:\n  segment: {write_keys: {web: '${EMPTY_KEY:-dev-key}'}}\n" + CIO_MAIN,
        {"EMPTY_KEY": ""},
        [],
    ),
    (
        "empty_variable_inside_a_longer_value_is_not_empty",
        "sources:\n  segment: {write_keys: {web: 'wk-${EMPTY_KEY}'}}\n" + CIO_MAIN,
        {"EMPTY_KEY": ""},
        [],
    ),
    (
        "empty_key_written_in_the_file",
        "destinations:\n  segment: {main: {write_key: ''}}\n",
        {},
        [
            "relay.yaml:2:31: destinations.segment.main.write_key: must not be empty (write the"
            " write key of the Segment source that receives these events, or remove this entry)"
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [pytest.param(t, e, x, id=rule) for rule, t, e, x in READING_CASES],
)
def test_reading(text: str, env: dict[str, str], expected: list[str]) -> None:
    result = check_text(text, "relay.yaml", env)
    assert [str(p) for p in result.problems] == expected
    assert (result.config is None) == bool(expected)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: &x [*x]\n", id="recursive_alias"),
        pytest.param("a: " + "[" * 5000 + "]" * 5000 + "\n", id="nested_too_deeply"),
        pytest.param(
            "".join(
                f"{name}: &{name} [{', '.join([f'*{prev}'] * 10 if prev else ['1'] * 10)}]\n"
                for prev, name in zip(["", *"abcdef"], "abcdefg", strict=True)
            ),
            id="aliases_that_multiply",
        ),
    ],
)
def test_files_that_cannot_be_read_are_problems_for_serve_and_reload_too(
    text: str, tmp_path: Path
) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    # relay serve and reloads read the file with these; neither may crash.
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    [problem] = caught.value.problems
    assert problem.hint
    assert [str(p) for p in check_config(str(path), {}, require_env=False).problems] == [
        str(problem)
    ]


def test_an_empty_variable_is_tolerated_like_an_unset_one_when_not_required() -> None:
    text = (
        "sources:\n  segment: {write_keys: {web: '${EMPTY_KEY}'}}\n"
        "destinations:\n  customerio:\n    main: {site_id: s, api_key: '${EMPTY_KEY}'}\n"
        "routes:\n  - {from: segment, sources: web, to: [customerio.main]}\n"
    )
    result = check_text(text, "relay.yaml", {"EMPTY_KEY": ""}, require_env=False)
    assert result.problems == []
    assert result.config is not None
    assert [(m.name, m.path, m.empty) for m in result.config.missing] == [
        ("EMPTY_KEY", ("sources", "segment", "write_keys", "web"), True),
        ("EMPTY_KEY", ("destinations", "customerio", "main", "api_key"), True),
    ]
    # As with an unset variable: the source never authenticates, the destination waits.
    assert result.config.sources.segment.write_keys == {}
    assert result.config.destinations["customerio.main"].missing == ("EMPTY_KEY",)


def test_an_empty_variable_is_named_but_its_value_never_shown() -> None:
    text = "destinations:\n  customerio:\n    main: {site_id: '${SITE}', api_key: '${KEY}'}\n"
    result = check_text(text, "relay.yaml", {"SITE": "", "KEY": "   "})
    printed = "\n".join(str(p) for p in result.problems)
    assert "environment variable SITE is empty" in printed
    # A key of spaces is not empty: it is reported by its length, never by its value.
    assert "must be 20 or 64 characters long, this one has 3" in printed


def test_check_and_reload_agree_on_a_file_without_settings(tmp_path: Path) -> None:
    for text in ("", "# nothing yet\n", "---\n"):
        path = tmp_path / "relay.yaml"
        path.write_text(text)
        assert check_config(str(path), {}).problems != [], repr(text)
        with pytest.raises(ConfigError):
            load_config(str(path), {})


def test_the_anchor_example_in_the_readme_configuration_is_valid() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") : readme.index("## Writing routes")]
    [snippet] = [s for s in re.findall(r"```yaml\n(.*?)```", section, flags=re.S) if "x-" in s]
    env = {name: "k" * 20 for name in required_variables_in(snippet)}
    result = check_text(snippet, "README.md", env)
    assert result.problems == []
    assert result.config is not None
    rates = {k: d.rate_limit for k, d in result.config.destinations.items()}
    assert rates == {"customerio.main": 100.0, "customerio.marketing": 50.0}


def required_variables_in(text: str) -> set[str]:
    return {m.group(1) for m in _VARIABLE.finditer(text) if m.group(2) is None}


IDENTIFIERS_HINT = (
    "write the identifiers your workspace uses (Customer.io: Workspace Settings), id among"
    " them: [id, email] (the default), [id], [id, phone] or [id, email, phone]"
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "[id, mobile]",
            "'mobile' is not one of the identifiers Customer.io knows people by,"
            " id, email, phone (a cio_… userId is always a cio_id)",
        ),
        (
            "[email, phone]",
            "must hold id: relay sends a userId that is neither an email nor a"
            " phone number as an id",
        ),
        ("[id, phone, phone]", "lists an identifier twice"),
        ("phone", "must be a list of identifiers"),
        ("[]", "must be a list of identifiers"),
    ],
)
def test_customerio_identifiers_that_customerio_would_not_know_are_refused_where_written(
    value: str, message: str
) -> None:
    text = (
        "destinations:\n  customerio:\n    main:\n      site_id: s\n"
        f'      api_key: "{"k" * 20}"\n      identifiers: {value}\n'
    )
    result = check_text(text, "relay.yaml", {})
    assert [str(p) for p in result.problems] == [
        f"relay.yaml:6:20: destinations.customerio.main.identifiers: {message} ({IDENTIFIERS_HINT})"
    ]


def test_customerio_update_only_is_true_or_false() -> None:
    text = (
        "destinations:\n  customerio:\n    main:\n      site_id: s\n"
        f'      api_key: "{"k" * 20}"\n      update_only: "yes"\n'
    )
    result = check_text(text, "relay.yaml", {})
    assert [str(p) for p in result.problems] == [
        "relay.yaml:6:20: destinations.customerio.main.update_only: must be true or false"
        " (write true or false)"
    ]
    valid = text.replace('"yes"', "true") + "      identifiers: [id, email, phone]\n"
    result = check_text(valid, "relay.yaml", {})
    assert result.problems == []
    assert result.config is not None
    dest = result.config.destinations["customerio.main"]
    assert (dest.identifiers, dest.update_only) == (("id", "email", "phone"), True)


def test_the_readme_update_only_example_sends_crm_identifies_to_the_update_only_one() -> None:
    readme = (ROOT / "README.md").read_text()
    [snippet] = [
        s for s in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S) if "existing-only" in s
    ]
    env = {
        "SEGMENT_WEB_WRITE_KEY": "wk-web",
        "SEGMENT_CRM_WRITE_KEY": "wk-crm",
        "CIO_SITE_ID": "s",
        "CIO_API_KEY": "k" * 20,
    }
    result = check_text(snippet, "README.md", env)
    assert result.problems == []
    assert result.config is not None and result.routes is not None
    assert result.config.destinations["customerio.existing-only"].update_only is True
    assert result.config.destinations["customerio.main"].update_only is False
    identify = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    track = {"type": "track", "userId": "u1", "event": "E"}
    routed = {
        (source, message["type"]): [
            d for d, _ in result.routes.route("segment", source, message).deliveries
        ]
        for source in ("web", "crm")
        for message in (identify, track)
    }
    assert routed == {
        ("web", "identify"): ["customerio.main"],
        ("web", "track"): ["customerio.main"],
        ("crm", "identify"): ["customerio.existing-only"],
        ("crm", "track"): [],
    }
