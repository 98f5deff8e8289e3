"""A Customer.io destination's settings (``destinations.customerio.<name>``): their schema,
their typed values, and the check of its credentials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from marshmallow import ValidationError, fields, validate

from relay.mapping.to_customerio import DEFAULTS, IDENTIFIER_KINDS, MappingOptions
from relay.settings import URL, Duration, Strict, StrictBool, StrictStr

if TYPE_CHECKING:
    from relay.config.positions import Path

KIND = "customerio"

HOSTS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}

_WHERE = "Customer.io: Settings > API Credentials"


# The default `identifiers`, in the order IDENTIFIER_KINDS names them.
DEFAULT_IDENTIFIERS = tuple(k for k in IDENTIFIER_KINDS if k in DEFAULTS.identifiers)
_IDENTIFIERS_WRITE = (
    "the identifiers your workspace uses (Customer.io: Workspace Settings), id among them:"
    " [id, email] (the default), [id], [id, phone] or [id, email, phone]"
)


class IdentifierNames(fields.Field[tuple[str, ...]]):
    """The identifiers a workspace knows people by: a list of distinct names from
    IDENTIFIER_KINDS, `id` among them (relay sends every other userId as an id)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise ValidationError("must be a list of identifiers")
        for name in value:
            if not isinstance(name, str) or name not in IDENTIFIER_KINDS:
                raise ValidationError(
                    f"{name!r} is not one of the identifiers Customer.io knows people by,"
                    f" {', '.join(IDENTIFIER_KINDS)} (a cio_… userId is always a cio_id)"
                )
        if len(set(value)) != len(value):
            raise ValidationError("lists an identifier twice")
        if "id" not in value:
            raise ValidationError(
                "must hold id: relay sends a userId that is neither an email nor a phone number"
                " as an id"
            )
        return tuple(value)


class CustomerIODestinationSchema(Strict):
    site_id = StrictStr(
        required=True,
        metadata={
            "never_empty": "Site ID",
            "empty_hint": f"copy the Site ID from {_WHERE}",
            "required_hint": f'add site_id: "${{CIO_SITE_ID}}", the Site ID from {_WHERE}',
            "write": 'it as text, e.g. "${CIO_SITE_ID}"',
        },
    )
    api_key = StrictStr(
        required=True,
        metadata={
            "secret": True,
            "never_empty": "API key",
            "required_hint": f'add api_key: "${{CIO_API_KEY}}", the Track API key from {_WHERE}',
            "write": 'it as text, e.g. "${CIO_API_KEY}"',
        },
    )
    region = fields.String(load_default="us", validate=validate.OneOf(["us", "eu"]))
    base_url = fields.String(
        load_default=None,
        allow_none=True,
        validate=URL,
        metadata={
            "write": f"a full URL such as {HOSTS['us']}, or remove base_url to use the region's"
            " host"
        },
    )
    rate_limit = fields.Float(
        load_default=100.0, validate=validate.Range(min=0, min_inclusive=False)
    )
    api = fields.String(load_default="v2", validate=validate.OneOf(["v1", "v2"]))
    batch_size = fields.Integer(load_default=1000, validate=validate.Range(1, 5000))
    concurrency = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 64))
    timeout = Duration(load_default=10.0)
    max_age = Duration(load_default=86400.0)
    identifiers = IdentifierNames(
        load_default=DEFAULT_IDENTIFIERS,
        metadata={"write": _IDENTIFIERS_WRITE},
    )
    update_only = StrictBool(load_default=False)


# What the settings of one look like, for a hint when they are not a mapping.
EXAMPLE = '{site_id: "${CIO_SITE_ID}", api_key: "${CIO_API_KEY}"}'


@dataclass(frozen=True)
class CustomerIODestination:
    kind: ClassVar[str] = KIND
    name: str
    site_id: str
    api_key: str
    region: str
    base_url: str
    rate_limit: float
    api: str
    batch_size: int
    concurrency: int
    timeout: float
    max_age: float
    identifiers: tuple[str, ...] = DEFAULT_IDENTIFIERS
    update_only: bool = DEFAULTS.update_only
    # Variables its settings need that are unset: it is configured but cannot send.
    missing: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{KIND}.{self.name}"

    @property
    def mapping(self) -> MappingOptions:
        """What its settings change in the mapping of a message."""
        return MappingOptions(frozenset(self.identifiers), self.update_only)


def settings(name: str, v: dict[str, Any], missing: tuple[str, ...]) -> CustomerIODestination:
    """The typed settings from what the schema loaded."""
    return CustomerIODestination(
        name=name,
        site_id=v["site_id"],
        api_key=v["api_key"],
        region=v["region"],
        base_url=(v["base_url"] or HOSTS[v["region"]]).rstrip("/"),
        rate_limit=v["rate_limit"],
        api=v["api"],
        batch_size=v["batch_size"],
        concurrency=v["concurrency"] or (16 if v["api"] == "v1" else 4),
        timeout=v["timeout"],
        max_age=v["max_age"],
        identifiers=v["identifiers"],
        update_only=v["update_only"],
        missing=missing,
    )


def credential_problems(body: dict[str, Any], path: Path) -> list[tuple[Path, str, str]]:
    """Credentials Customer.io would refuse, found even when other settings are wrong."""
    api_key = body.get("api_key")
    if isinstance(api_key, str) and len(api_key) not in (20, 64):
        # Never the key itself: only its length.
        return [
            (
                (*path, "api_key"),
                f"must be 20 or 64 characters long, this one has {len(api_key)}",
                f"copy the Track API key from {_WHERE}",
            )
        ]
    return []
