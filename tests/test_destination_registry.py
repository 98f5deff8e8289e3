"""Every destination type the config can hold is registered once, with all it needs."""

from __future__ import annotations

import typing

from relay.config import check_text
from relay.destinations.registry import TYPES, Destination, type_of

CONFIG = """
sources:
  segment: {write_keys: {web: "wk-web-0123456789"}}
destinations:
  customerio:
    main: {site_id: site-secret, api_key: api-key-secret-xxxxx}
    classic: {site_id: site-secret, api_key: api-key-secret-xxxxx, api: v1}
  segment:
    main: {write_key: wk-secret-value}
routes:
  - {name: all, from: segment, to: [customerio.main, customerio.classic, segment.main]}
"""


def test_every_destination_type_is_registered() -> None:
    assert {cls.kind for cls in typing.get_args(Destination)} == set(TYPES)


def test_the_config_holds_each_type_under_its_kind_with_its_own_settings() -> None:
    result = check_text(CONFIG, "relay.yaml", {})
    assert result.config is not None
    for key, dest in result.config.destinations.items():
        assert key == f"{dest.kind}.{dest.name}"
        assert set(TYPES[dest.kind].schema().fields) <= {f for f in vars(dest)}


def test_each_type_describes_its_credentials_and_can_drop_them() -> None:
    result = check_text(CONFIG, "relay.yaml", {})
    assert result.problems == [] and result.config is not None
    dests = result.config.destinations
    lease = {key: type_of(dest).lease_size(dest) for key, dest in dests.items()}
    assert lease == {"customerio.main": 1000, "customerio.classic": 10, "segment.main": 500}
    for key, dest in dests.items():
        kind = type_of(dest)
        shown = kind.credentials_shown(dest)
        assert shown.startswith("Basic <") and key in shown and "secret" not in shown
        blank = kind.without_credentials(dest)
        assert "secret" not in repr(blank) and blank.key == key
