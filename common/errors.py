"""The error hierarchy shared by every part of Berth.

Each error carries a stable machine-readable ``code`` and the HTTP status it maps to;
the scheduler turns any BerthError into ``{"error": {"code", "message", "details"}}``
in one place, and the client turns such a body back into the same class.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BerthError(Exception):
    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidRequest(BerthError):
    """The request is malformed or fails validation; ``details.field`` names the field."""

    code = "invalid"
    status = 400


class Unauthorized(BerthError):
    code = "unauthorized"
    status = 401


class Forbidden(BerthError):
    code = "forbidden"
    status = 403


class NotFound(BerthError):
    code = "not_found"
    status = 404


class Conflict(BerthError):
    code = "conflict"
    status = 409


class IllegalTransition(Conflict):
    code = "illegal_transition"

    def __init__(self, old: str, new: str) -> None:
        super().__init__(f"cannot go from {old} to {new}", {"from": old, "to": new})


class StaleAttempt(Conflict):
    """A report or heartbeat names an attempt that is no longer current (fencing)."""

    code = "stale_attempt"


class Gone(BerthError):
    """What was asked for is no longer kept (for example events past retention)."""

    code = "gone"
    status = 410


class PayloadTooLarge(BerthError):
    code = "too_large"
    status = 413


class TooManyRequests(BerthError):
    """A limit was reached (a token's submit rate, the queue, open streams); the
    client may try again after ``retry_after_s`` (sent as ``Retry-After``)."""

    code = "too_many_requests"
    status = 429
    retry_after_s = 1

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, *, retry_after_s: int = 1
    ) -> None:
        super().__init__(message, {**(details or {}), "retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class Unavailable(BerthError):
    code = "unavailable"
    status = 503


class NotLeader(Unavailable):
    """A standby scheduler refused a write or an agent call before acting on it.

    ``details["leader_url"]`` names the leader, or is None while no leader is known;
    clients and agents send the same call there.
    """

    code = "not_leader"


class CodecError(InvalidRequest):
    """A payload could not be decoded or did not match its model."""


ERRORS_BY_CODE: dict[str, type[BerthError]] = {
    cls.code: cls
    for cls in (
        BerthError,
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        IllegalTransition,
        StaleAttempt,
        Gone,
        PayloadTooLarge,
        TooManyRequests,
        Unavailable,
        NotLeader,
    )
}
