"""The HTTP client library of Berth, used by the agent and the CLI.

One send loop (:mod:`.transport`: failover across scheduler URLs, TLS, retries with
backoff) sits under two APIs that only build requests and read replies: the user's and
operator's (:mod:`.user`) and the agent's (:mod:`.agent`). :class:`BerthClient` offers
both, since the agent uploads and downloads blobs too. :mod:`.sse` parses event streams,
:mod:`.backoff` spaces retries out and :mod:`.errors` turns error replies into errors.
A standby scheduler's ``not_leader`` is followed to the leader by the transport.
"""

from __future__ import annotations

from common.client.agent import LONG_POLL_MARGIN_S, AgentAPI
from common.client.backoff import BACKOFF_BASE_S, BACKOFF_MAX_S, Backoff, backoff_delay
from common.client.errors import (
    NOT_LEADER,
    SchedulerUnreachable,
    SchedulerUntrusted,
    error_from_body,
)
from common.client.transport import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    RETRY_STATUSES,
    STREAM_READ_TIMEOUT_S,
    TRANSFER_CHUNK,
    TRANSFER_IDLE_TIMEOUT_S,
    Transport,
)
from common.client.user import STREAM_RECONNECT_S, UserAPI
from common.errors import NotLeader

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "LONG_POLL_MARGIN_S",
    "NOT_LEADER",
    "RETRY_STATUSES",
    "STREAM_READ_TIMEOUT_S",
    "STREAM_RECONNECT_S",
    "TRANSFER_CHUNK",
    "TRANSFER_IDLE_TIMEOUT_S",
    "AgentAPI",
    "Backoff",
    "BerthClient",
    "NotLeader",
    "SchedulerUnreachable",
    "SchedulerUntrusted",
    "Transport",
    "UserAPI",
    "backoff_delay",
    "error_from_body",
]


class BerthClient(UserAPI, AgentAPI):
    """An async client of the scheduler API; use as ``async with BerthClient(...) as c``.

    Its parameters are :class:`Transport`'s: ``urls`` (a list, or one string of
    comma-separated URLs), ``token``, ``ca_file``, ``timeout`` and ``retries``.
    """
