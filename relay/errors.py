"""One exception hierarchy for relay; HTTP statuses for client-facing errors are chosen here."""

from __future__ import annotations

from dataclasses import dataclass


class RelayError(Exception):
    """Base of every error relay raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file, located as precisely as the file allows."""

    file: str
    line: int | None
    column: int | None
    field: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(RelayError):
    """A config that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ClientError(RelayError):
    """Something a client sent that relay refuses; maps to a 4xx answer."""

    status = 400
    code = "invalid_request"
    # Whether the connection is closed after the answer (it cannot be trusted to carry more).
    close_connection = False

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        self.message = message
        self.retry_after = retry_after
        super().__init__(message)


class BadRequest(ClientError):
    status = 400
    code = "invalid_request"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class RequestTimeout(ClientError):
    """The body did not arrive in time (a client sending it very slowly)."""

    status = 408
    code = "request_timeout"
    close_connection = True


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(ClientError):
    status = 415
    code = "unsupported_encoding"


class StoreUnavailable(RelayError):
    """The durable store cannot take more right now; nothing acknowledged is affected.
    Not the client's doing: the HTTP layer answers it with a 503 and `Retry-After`."""

    status = 503
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        self.message = message
        self.retry_after = retry_after
        super().__init__(message)


class StoreFull(StoreUnavailable):
    """The queue or the disk is full: new events are refused, what is queued is delivered."""


class StoreCannotOpen(StoreUnavailable):
    """The store's files cannot be opened or written; the message says which and why."""


class StoreInUse(StoreCannotOpen):
    """Another relay process holds the store (its lock file)."""
