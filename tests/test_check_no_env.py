"""`relay check --no-env`: a config linted where its secrets are not set (CI).

Unset variables are no problem and what their values would decide is not checked;
everything else is checked as by `relay check`, and the environment is never read.
"""

from __future__ import annotations

from pathlib import Path

from relay.config import check_text
from tests.helpers import ROOT, run_relay

# Every kind of value a variable can hold: secrets, a Site ID, a number, a choice, a URL,
# a part of a longer value, a route's property, and defaults (which are checked).
USES_VARIABLES = """\
server: {host: "${NE_HOST:-0.0.0.0}", port: "${NE_PORT}"}
storage:
  sqlite: {path: "${NE_DATA}/relay.db"}
sources:
  segment: {write_keys: {web: "${NE_WEB_KEY}"}, webhook_secret: "${NE_HOOK_SECRET}"}
  customerio: {signing_keys: {marketing: ["${NE_OLD_KEY}", "${NE_NEW_KEY}"]}}
destinations:
  customerio:
    main:
      site_id: "${NE_SITE_ID}"
      api_key: "${NE_API_KEY}"
      region: "${NE_REGION}"
      base_url: "${NE_CIO_URL}"
      rate_limit: "${NE_RATE:-50}"
  segment:
    main: {write_key: "${NE_OUT_KEY}"}
routes:
  - {name: all, from: segment, sources: web, to: [customerio.main]}
  - {name: back, from: customerio, to: [segment.main], set_properties: {env: "${NE_ENV}"}}
"""

# Values that `relay check` would refuse: --no-env must not even look at them.
BAD_VALUES = {
    "NE_PORT": "not-a-port",
    "NE_REGION": "mars",
    "NE_CIO_URL": "not a url",
    "NE_API_KEY": "short",
    "NE_WEB_KEY": "",
    "NE_RATE": "fast",
}


UNSET = "environment variable {} is not set ({})"
SECRET = "export it before running relay; secrets belong in the environment"
DEFAULT = "export it, or write ${{{}:-default}} to give a default"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return str(path)


def test_unset_variables_are_no_problem_without_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, USES_VARIABLES)
    result = run_relay(["check", "--config", path, "--no-env"], tmp_path, {})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"{path}: valid (2 destinations, 2 routes); environment variables not checked\n"
    )
    # Without --no-env the same file, in the same empty environment, is not valid.
    strict = run_relay(["check", "--config", path], tmp_path, {})
    assert strict.returncode == 1
    assert strict.stderr.splitlines()[-1] == f"{path}: 12 problems; the config is not valid"


def test_the_environment_is_not_read_at_all(tmp_path: Path) -> None:
    path = write(tmp_path, USES_VARIABLES)
    unread = run_relay(["check", "--config", path, "--no-env"], tmp_path, BAD_VALUES)
    clean = run_relay(["check", "--config", path, "--no-env"], tmp_path, {})
    assert (unread.returncode, unread.stdout, unread.stderr) == (
        clean.returncode,
        clean.stdout,
        clean.stderr,
    )
    assert unread.returncode == 0
    # Read, these values are wrong (that they are is what makes the test above mean
    # something).
    read = run_relay(["check", "--config", path], tmp_path, BAD_VALUES)
    assert read.returncode == 1
    assert [line.split(": ", 2)[1:] for line in read.stderr.splitlines()[:-1]] == [
        ["server.port", "not a valid integer (write a whole number from 0 to 65535, such as 8080)"],
        ["storage.sqlite.path", UNSET.format("NE_DATA", DEFAULT.format("NE_DATA"))],
        [
            "sources.segment.write_keys.web",
            "environment variable NE_WEB_KEY is empty (set NE_WEB_KEY to the write key"
            " itself: an empty write key is never valid)",
        ],
        ["sources.segment.webhook_secret", UNSET.format("NE_HOOK_SECRET", SECRET)],
        ["sources.customerio.signing_keys.marketing.0", UNSET.format("NE_OLD_KEY", SECRET)],
        ["sources.customerio.signing_keys.marketing.1", UNSET.format("NE_NEW_KEY", SECRET)],
        [
            "destinations.customerio.main.site_id",
            UNSET.format("NE_SITE_ID", DEFAULT.format("NE_SITE_ID")),
        ],
        [
            "destinations.customerio.main.api_key",
            "must be 20 or 64 characters long, this one has 5 (copy the Track API key from"
            " Customer.io: Settings > API Credentials)",
        ],
        ["destinations.customerio.main.region", "must be one of: us, eu (write us or eu)"],
        [
            "destinations.customerio.main.base_url",
            "not a valid URL (write a full URL such as https://track.customer.io, or remove"
            " base_url to use the region's host)",
        ],
        [
            "destinations.customerio.main.rate_limit",
            "not a valid number (write a number above 0, such as 100)",
        ],
        ["destinations.segment.main.write_key", UNSET.format("NE_OUT_KEY", SECRET)],
        ["routes.1.set_properties.env", UNSET.format("NE_ENV", DEFAULT.format("NE_ENV"))],
    ]


def test_everything_that_needs_no_variable_is_still_checked() -> None:
    text = (
        "server: {prot: 1, port: '${NE_PORT:-eighty}'}\n"
        "destinations:\n"
        "  customerio:\n"
        "    main: {site_id: '${NE_SITE_ID}', api_key: too-short, api: v3}\n"
        "routes:\n"
        "  - {from: segment, match: {properties.total: {gt: 10, lt: 5}}, to: [customerio.mian]}\n"
    )
    result = check_text(text, "relay.yaml", {"NE_SITE_ID": "s"}, read_env=False)
    assert [str(p) for p in result.problems] == [
        'relay.yaml:1:10: server.prot: unknown key "prot" (did you mean "port"?)',
        "relay.yaml:1:25: server.port: not a valid integer (write a whole number from 0 to"
        " 65535, such as 8080)",
        "relay.yaml:4:47: destinations.customerio.main.api_key: must be 20 or 64 characters"
        " long, this one has 9 (copy the Track API key from Customer.io: Settings > API"
        " Credentials)",
        "relay.yaml:4:63: destinations.customerio.main.api: must be one of: v1, v2 (write v1"
        " or v2)",
        "relay.yaml:6:47: routes.0.match.properties.total: no number is > 10 and < 5, so this"
        " route can never match (check the bounds: the lower one is above the upper one)",
        'relay.yaml:6:70: routes.0.to.0: unknown destination "customerio.mian" (did you'
        ' mean "customerio.main"?)',
    ]
    assert result.config is None


def test_a_setting_that_needs_a_variable_keeps_its_default_in_the_typed_config() -> None:
    text = (
        "server: {port: '${NE_PORT}'}\n"
        "destinations:\n  customerio:\n"
        "    main: {site_id: '${NE_SITE}', api_key: '${NE_KEY}', region: '${NE_REGION}'}\n"
    )
    result = check_text(text, "relay.yaml", {"NE_PORT": "1234"}, read_env=False)
    assert result.problems == []
    assert result.config is not None
    # Unknown without the environment: the defaults stand in, and every variable is listed
    # as unset, so that nothing mistakes this config for one that can run.
    assert result.config.server.port == 8080
    dest = result.config.destinations["customerio.main"]
    assert (dest.region, dest.base_url) == ("us", "https://track.customer.io")
    assert dest.missing == ("NE_KEY", "NE_REGION", "NE_SITE")
    assert [m.name for m in result.config.missing] == ["NE_PORT", "NE_SITE", "NE_KEY", "NE_REGION"]
    # Read, the same file with that port and no other variable is not valid.
    strict = check_text(text, "relay.yaml", {"NE_PORT": "1234"}, require_env=False)
    assert [p.field for p in strict.problems] == ["destinations.customerio.main.region"]


def test_the_shipped_config_passes_without_its_variables() -> None:
    result = run_relay(["check", "--config", "config/relay.yaml", "--no-env"], ROOT, {})
    assert result.stdout == (
        "config/relay.yaml: valid (2 destinations, 2 routes); environment variables not checked\n"
    )
    assert result.returncode == 0
