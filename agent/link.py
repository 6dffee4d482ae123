"""The agent's link to the scheduler: its node identity and calls that retry until done.

Calls of an attempt (reports, log appends) go through :meth:`Link.retrying`: while
the scheduler is unreachable or answers 5xx they are retried with exponential backoff
and jitter; when it no longer knows this node (404 on the node, 401 on the token) the
daemon is asked to register again and the call waits for that. Errors that retrying
cannot fix (a stale attempt, an illegal transition, a bad request) are raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.config import (
    DEFAULT_ASSIGNMENT_WAIT_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    REPORT_TIMEOUT_S,
    RETRY_BASE_S,
    RETRY_MAX_S,
)
from agent.reports import Delivery, ReportSender
from common.client import Backoff, BerthClient
from common.errors import (
    BerthError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from common.models import Command, Report

log = logging.getLogger(__name__)

T = TypeVar("T")


class Link:
    """The client plus the node id and token this agent acts with."""

    def __init__(self, client: BerthClient) -> None:
        self.client = client
        self.node_id = ""
        self.heartbeat_interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
        self.assignment_wait_s = DEFAULT_ASSIGNMENT_WAIT_S
        #: set while the agent holds a valid node token
        self.registered = asyncio.Event()
        #: set when the scheduler stopped knowing this node; the daemon registers again
        self.reregister = asyncio.Event()
        #: the scheduler answered the last call (for logging transitions only)
        self.reachable = True
        #: called with the commands a report reply carries
        self.on_commands: Callable[[list[Command]], None] = lambda _commands: None
        #: the attempts' state reports, sent in batches
        self.reports = ReportSender(self)

    def set_identity(self, node_id: str, token: str) -> None:
        self.node_id = node_id
        self.client.token = token
        self.reregister.clear()
        self.registered.set()

    def lost_registration(self, why: str) -> None:
        if self.registered.is_set():
            log.warning("the scheduler no longer accepts this node (%s); registering again", why)
        self.registered.clear()
        self.reregister.set()

    def note_reachable(self, ok: bool, why: str = "") -> None:
        if ok and not self.reachable:
            log.info("the scheduler is reachable again")
        elif not ok and self.reachable:
            log.warning("the scheduler is unreachable (%s); retrying with backoff", why)
        self.reachable = ok

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` until it succeeds or fails for good (see the module doc)."""
        backoff = Backoff(RETRY_BASE_S, RETRY_MAX_S)
        while True:
            await self.registered.wait()
            try:
                result = await call()
            except (NotFound, Unauthorized) as e:
                self.lost_registration(e.message)
                continue
            except (Conflict, InvalidRequest, Forbidden, PayloadTooLarge):
                raise
            except BerthError as e:
                # Unreachable, 5xx, or a standby scheduler: try again later.
                self.note_reachable(False, e.message)
                await asyncio.sleep(backoff.next())
                continue
            self.note_reachable(True)
            return result

    async def deliver(self, job_id: str, report: Report) -> Delivery:
        """Send a state report until the scheduler takes or refuses it (in a batch with
        the other attempts' reports, see agent.reports)."""
        return await self.reports.deliver(job_id, report)

    async def append_logs(self, job_id: str, attempt: int, offset: int, data: bytes) -> int:
        return await self.client.append_logs(
            self.node_id, job_id, attempt, offset, data, timeout=REPORT_TIMEOUT_S
        )
