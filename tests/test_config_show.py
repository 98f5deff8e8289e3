"""`relay config show`: the resolved config, every default filled in, no secret shown.

The exact output of a small config in both formats; that every setting of every section's
schema is shown; and a property: for configs that use every secret field (found in the
schemas, so a new one is covered as soon as it is marked), no secret, no base64 of one and
no 6 characters of one in a row appear in what `config show`, `check` or `check --no-env`
print.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields

from relay.cli import main
from relay.config.positions import Path as ConfigPath
from relay.config.schemas import ConfigSchema
from relay.settings import KeyList
from tests.helpers import run_relay

SMALL = """\
x-limits: &limits {rate_limit: 20, timeout: 5s}
server: {port: 9000, shutdown_timeout: 30s}
storage:
  sqlite: {path: "${SHOW_DATA:-var}/relay.db"}
sources:
  segment:
    write_keys:
      web: "${SHOW_WEB_KEY}"
      backend: literal-backend-key
      dev: "${SHOW_DEV_KEY:-dev-key}"
  customerio:
    signing_keys: {marketing: ["${SHOW_OLD_KEY}", "${SHOW_NEW_KEY}"]}
    timestamp_tolerance: 10m
destinations:
  customerio:
    main: {<<: *limits, site_id: "${SHOW_SITE_ID}", api_key: "${SHOW_API_KEY}", region: eu}
routes:
  - name: orders
    from: segment
    match: {event: "Order *", properties.total: {gte: 100}}
    set_properties: {env: "${SHOW_ENV}"}
    to: [customerio.main]
"""

SMALL_ENV = {
    "SHOW_WEB_KEY": "wk-0123456789abcdef",
    "SHOW_NEW_KEY": "new-signing-key",
    "SHOW_SITE_ID": "site-42",
    "SHOW_API_KEY": "k" * 20,
    "SHOW_ENV": "production",
}

SMALL_YAML = """\
server:
  host: 127.0.0.1
  port: 9000
  shutdown_timeout: 30
  idle_timeout: 15
  body_timeout: 30
  log_format: auto
storage:
  sqlite:
    path: var/relay.db
    max_pending: 5000000
    max_size_mb: null
    min_free_mb: 100
  redis: null
admin:
  host: 127.0.0.1
  port: 0
  token: null
sources:
  segment:
    write_keys:
      web: <secret from ${SHOW_WEB_KEY}, 19 characters>
      backend: <secret written in the file, 19 characters>
      dev: <secret written in the file as the default of ${SHOW_DEV_KEY}, 7 characters>
    webhook_secret: null
    dedup_window: 86400
    public_url: null
    trust_forwarded_headers: false
  customerio:
    signing_keys:
      marketing:
      - '<unset: ${SHOW_OLD_KEY}>'
      - <secret from ${SHOW_NEW_KEY}, 15 characters>
    timestamp_tolerance: 600
    dedup_window: 604800
    profile: default
destinations:
  customerio:
    main:
      site_id: site-42
      api_key: <secret from ${SHOW_API_KEY}, 20 characters>
      region: eu
      base_url: https://track-eu.customer.io
      rate_limit: 20
      api: v2
      batch_size: 1000
      concurrency: 4
      timeout: 5
      max_age: 86400
      identifiers:
      - id
      - email
      update_only: false
  segment: {}
routes:
- name: orders
  from: segment
  match:
    event: Order *
    properties.total:
      gte: 100
  set_properties:
    env: production
  to:
  - customerio.main
"""

SMALL_JSON = """\
{
  "server": {
    "host": "127.0.0.1",
    "port": 9000,
    "shutdown_timeout": 30,
    "idle_timeout": 15,
    "body_timeout": 30,
    "log_format": "auto"
  },
  "storage": {
    "sqlite": {
      "path": "var/relay.db",
      "max_pending": 5000000,
      "max_size_mb": null,
      "min_free_mb": 100
    },
    "redis": null
  },
  "admin": {
    "host": "127.0.0.1",
    "port": 0,
    "token": null
  },
  "sources": {
    "segment": {
      "write_keys": {
        "web": "<secret from ${SHOW_WEB_KEY}, 19 characters>",
        "backend": "<secret written in the file, 19 characters>",
        "dev": "<secret written in the file as the default of ${SHOW_DEV_KEY}, 7 characters>"
      },
      "webhook_secret": null,
      "dedup_window": 86400,
      "public_url": null,
      "trust_forwarded_headers": false
    },
    "customerio": {
      "signing_keys": {
        "marketing": [
          "<unset: ${SHOW_OLD_KEY}>",
          "<secret from ${SHOW_NEW_KEY}, 15 characters>"
        ]
      },
      "timestamp_tolerance": 600,
      "dedup_window": 604800,
      "profile": "default"
    }
  },
  "destinations": {
    "customerio": {
      "main": {
        "site_id": "site-42",
        "api_key": "<secret from ${SHOW_API_KEY}, 20 characters>",
        "region": "eu",
        "base_url": "https://track-eu.customer.io",
        "rate_limit": 20,
        "api": "v2",
        "batch_size": 1000,
        "concurrency": 4,
        "timeout": 5,
        "max_age": 86400,
        "identifiers": [
          "id",
          "email"
        ],
        "update_only": false
      }
    },
    "segment": {}
  },
  "routes": [
    {
      "name": "orders",
      "from": "segment",
      "match": {
        "event": "Order *",
        "properties.total": {
          "gte": 100
        }
      },
      "set_properties": {
        "env": "production"
      },
      "to": [
        "customerio.main"
      ]
    }
  ]
}
"""


def small(tmp_path: Path) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(SMALL)
    return path


def test_the_small_config_as_yaml(tmp_path: Path) -> None:
    result = run_relay(["config", "show", "--config", str(small(tmp_path))], tmp_path, SMALL_ENV)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == SMALL_YAML


def test_the_small_config_as_json(tmp_path: Path) -> None:
    args = ["config", "show", "--config", str(small(tmp_path)), "--format", "json"]
    result = run_relay(args, tmp_path, SMALL_ENV)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == SMALL_JSON
    # The same values as the YAML.
    assert json.loads(result.stdout) == yaml.safe_load(SMALL_YAML)


def test_without_the_environment_every_variable_is_unset(tmp_path: Path) -> None:
    args = ["config", "show", "--config", str(small(tmp_path)), "--no-env", "--format", "json"]
    result = run_relay(args, tmp_path, SMALL_ENV)
    assert (result.returncode, result.stderr) == (0, "")
    shown = json.loads(result.stdout)
    assert shown["sources"]["segment"]["write_keys"] == {
        "web": "<unset: ${SHOW_WEB_KEY}>",
        "backend": "<secret written in the file, 19 characters>",
        "dev": "<secret written in the file as the default of ${SHOW_DEV_KEY}, 7 characters>",
    }
    assert shown["sources"]["customerio"]["signing_keys"] == {
        "marketing": ["<unset: ${SHOW_OLD_KEY}>", "<unset: ${SHOW_NEW_KEY}>"]
    }
    main_dest = shown["destinations"]["customerio"]["main"]
    assert (main_dest["site_id"], main_dest["api_key"]) == (
        "<unset: ${SHOW_SITE_ID}>",
        "<unset: ${SHOW_API_KEY}>",
    )
    assert shown["routes"][0]["set_properties"] == {"env": "<unset: ${SHOW_ENV}>"}
    # Everything else is as with the environment.
    with_env = yaml.safe_load(SMALL_YAML)
    assert shown["server"] == with_env["server"]
    assert shown["storage"] == with_env["storage"]


def test_a_config_with_problems_prints_them_as_check_does(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text("server: {prot: 1}\nroutes: [{from: segment, to: [customerio.main]}]\n")
    shown = run_relay(["config", "show", "--config", str(path)], tmp_path, {})
    checked = run_relay(["check", "--config", str(path)], tmp_path, {})
    assert (shown.returncode, shown.stdout) == (1, "")
    assert shown.stderr == checked.stderr
    assert shown.stderr.splitlines()[-1] == f"{path}: 2 problems; the config is not valid"


def test_an_unset_variable_a_setting_cannot_do_without_is_a_problem(tmp_path: Path) -> None:
    # As for relay serve, which would not start; with --no-env it is shown as unset.
    path = tmp_path / "relay.yaml"
    path.write_text("server: {port: '${SHOW_PORT}'}\n")
    result = run_relay(["config", "show", "--config", str(path)], tmp_path, {})
    assert result.returncode == 1
    assert "server.port: environment variable SHOW_PORT is not set" in result.stderr
    result = run_relay(["config", "show", "--config", str(path), "--no-env"], tmp_path, {})
    assert result.returncode == 0
    assert "  port: '<unset: ${SHOW_PORT}>'\n" in result.stdout


def keys_of(schema: Schema) -> dict[str, Any]:
    """Every key of the schema's sections, nested as the file nests them."""
    out: dict[str, Any] = {}
    for key, field in schema.fields.items():
        if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
            out[key] = keys_of(field.schema)
        elif isinstance(field, fields.Dict) and "each" in field.metadata:
            out[key] = {"main": keys_of(field.metadata["each"]())}
        else:
            out[key] = None
    return out


def keys_shown(value: Any, like: Any) -> Any:
    if isinstance(like, dict):
        return {k: keys_shown(value[k], v) for k, v in like.items() if k in value} | {
            k: "not in the schema" for k in value if k not in like
        }
    return None


def test_every_setting_of_every_section_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(
        "storage: {redis: {}}\n"  # off unless written: written, it shows every setting
        "destinations:\n"
        "  customerio: {main: {site_id: s, api_key: kkkkkkkkkkkkkkkkkkkk}}\n"
        "  segment: {main: {write_key: wk}}\n"
    )
    result = run_relay(["config", "show", "--config", str(path), "--format", "json"], tmp_path, {})
    assert result.returncode == 0, result.stderr
    expected = keys_of(ConfigSchema())
    assert keys_shown(json.loads(result.stdout), expected) == expected


# --------------------------------------------------------------------------- no secret shown


def secret_fields(schema: Schema, path: ConfigPath = ()) -> list[tuple[ConfigPath, Any]]:
    """Every field marked secret, with its path (a destination of each type named main)."""
    out: list[tuple[ConfigPath, Any]] = []
    for key, field in schema.fields.items():
        here = (*path, key)
        if field.metadata.get("secret"):
            out.append((here, field))
        elif isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
            out.extend(secret_fields(field.schema, here))
        elif isinstance(field, fields.Dict) and "each" in field.metadata:
            out.extend(secret_fields(field.metadata["each"](), (*here, "main")))
    return out


SECRETS = secret_fields(ConfigSchema())


def test_the_secret_fields_are_found_in_the_schemas() -> None:
    assert {".".join(map(str, p)) for p, _ in SECRETS} >= {
        "sources.segment.write_keys",
        "sources.segment.webhook_secret",
        "sources.customerio.signing_keys",
        "destinations.customerio.main.api_key",
        "destinations.segment.main.write_key",
    }


def set_at(data: dict[str, Any], path: ConfigPath, value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(str(part), {})
    data[str(path[-1])] = value


def config_using_every_secret(take: Any) -> dict[str, Any]:
    """A config with every secret field filled through `take()` (a value per call); the
    other settings a destination requires get plain text."""
    data: dict[str, Any] = {}
    for path, field in SECRETS:
        if isinstance(field, fields.Dict):
            value_field = field.value_field
            each = (lambda: [take(), take()]) if isinstance(value_field, KeyList) else take
            set_at(data, path, {"first": each(), "second": each()})
        else:
            set_at(data, path, take())
    schema_of = ConfigSchema().fields["destinations"].nested().fields  # type: ignore[attr-defined]
    for kind, group in data.get("destinations", {}).items():
        for field_name, field in schema_of[kind].metadata["each"]().fields.items():
            if field.required and field_name not in group["main"]:
                group["main"][field_name] = f"plain-{field_name}"
    keys = [f"{kind}.main" for kind in data.get("destinations", {})]
    data["routes"] = [{"from": "segment", "to": keys}]
    return data


def printed(args: list[str], env: dict[str, str]) -> str:
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        main(args)
    return out.getvalue() + err.getvalue()


# Letters no word relay prints has six of in a row.
RARE = "qxzjkvwQXZJKVW"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    secrets=st.lists(
        st.sampled_from([20, 21, 64]).flatmap(
            lambda n: st.text(alphabet=RARE, min_size=n, max_size=n)
        ),
        min_size=16,
        max_size=16,
    ),
    in_the_file=st.booleans(),
)
def test_no_secret_is_ever_printed(secrets: list[str], in_the_file: bool, tmp_path: Path) -> None:
    env: dict[str, str] = {}
    values = iter(secrets)
    used: list[str] = []

    def take() -> str:
        secret = next(values)
        used.append(secret)
        if in_the_file:
            return secret
        name = f"SHOWN_SECRET_{len(env)}"
        env[name] = secret
        return f"${{{name}}}"

    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(config_using_every_secret(take)))
    output = "".join(
        printed([*args, "--config", str(path)], env)
        for args in (
            ["check"],
            ["check", "--no-env"],
            ["config", "show"],
            ["config", "show", "--format", "json"],
            ["config", "show", "--no-env"],
        )
    )
    assert used
    # Something was described (unless an API key of 21 characters made the config invalid).
    assert "<secret" in output or any(len(s) == 21 for s in used)
    for secret in used:
        forms = {
            base64.b64encode(s.encode()).decode()
            for s in (secret, f"{secret}:", f"plain-site_id:{secret}")
        }
        forms |= {secret[i : i + 6] for i in range(len(secret) - 5)}
        assert not [form for form in forms if form in output], secret
