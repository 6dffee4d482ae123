"""What the client raises: an error reply as its class of :mod:`common.errors`, the
two errors of a scheduler that could not be reached or trusted, and a standby's refusal."""

from __future__ import annotations

from common import codec
from common.errors import ERRORS_BY_CODE, BerthError, NotLeader, TooManyRequests, Unavailable

_FALLBACK_BY_STATUS = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    429: "too_many_requests",
    503: "unavailable",
}


#: the error code of a standby scheduler's 503: it did nothing, the leader takes the call
NOT_LEADER = NotLeader.code


class SchedulerUnreachable(Unavailable):
    """No scheduler URL answered (connection refused, reset or timed out)."""


class SchedulerUntrusted(SchedulerUnreachable):
    """A scheduler's TLS certificate failed verification (an unknown CA, another host)."""


def error_from_body(status: int, body: bytes) -> BerthError:
    """Turn an error reply into the matching BerthError subclass."""
    code, message, details = None, "", {}
    try:
        doc = codec.loads(body) if body else None
    except BerthError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        code = err.get("code")
        message = str(err.get("message") or "")
        raw_details = err.get("details")
        details = raw_details if isinstance(raw_details, dict) else {}
    else:
        message = body[:200].decode("utf-8", "replace").strip()
    cls = _class_of(code, status)
    # IllegalTransition has its own __init__; build every class the same way.
    error = cls.__new__(cls)
    BerthError.__init__(error, message or f"HTTP {status}", details)
    if isinstance(error, TooManyRequests):
        error.retry_after_s = int(details.get("retry_after_s") or 1)
    return error


def _class_of(code: object, status: int) -> type[BerthError]:
    """The class of an error code; for a code not known here (a newer scheduler's), the
    generic class of the status."""
    if isinstance(code, str):
        cls = ERRORS_BY_CODE.get(code)
        if cls is not None:
            return cls
    return ERRORS_BY_CODE[_FALLBACK_BY_STATUS.get(status, "internal")]


def describe(e: BaseException | None) -> str:
    """A short text for a transport error, for messages and logs."""
    if e is None:
        return "no attempt made"
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
