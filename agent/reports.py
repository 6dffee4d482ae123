"""An agent's attempt reports, sent together.

Every state report of this node's attempts (running, and the final one) goes through
one sender: whatever waits when a request can leave goes in one batch, one request
and one commit on the scheduler. A final report takes the place of a running report of
the same attempt that has not left yet (the scheduler takes an end straight from
``assigned``). Running reports alone wait up to ``gather_s`` for company, so that a
short attempt's end travels with them; a final report never waits.

A batch is retried as a whole while the scheduler is away (:meth:`Link.retrying`);
each report in it is taken or refused alone (see :class:`agent.link.Delivery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from agent.config import REPORT_TIMEOUT_S
from common.errors import BerthError, IllegalTransition, StaleAttempt
from common.models import JobReport, Report, ReportBatch, ReportBatchReply, ReportResult

if TYPE_CHECKING:
    from agent.link import Link

log = logging.getLogger(__name__)

#: how long running reports wait for others (a short attempt's end) before they leave
RUNNING_GATHER_S = 0.05
#: the most reports in one request (the scheduler's bound)
MAX_BATCH = 1000

Key = tuple[str, int]


class Delivery(StrEnum):
    #: the scheduler took it
    OK = "ok"
    #: the attempt is no longer current: kill it, drop its reports
    STALE = "stale"
    #: refused for good (an illegal transition, a bad request); nothing to retry
    DROPPED = "dropped"


def is_final(report: Report) -> bool:
    return report.state not in (None, "running")


@dataclass
class _Waiting:
    report: JobReport
    waiters: list[asyncio.Future[Delivery]] = field(default_factory=list)


class ReportSender:
    """Sends the attempts' state reports of one node in batches."""

    def __init__(self, link: Link, *, gather_s: float = RUNNING_GATHER_S) -> None:
        self._link = link
        self.gather_s = gather_s
        self._waiting: dict[Key, _Waiting] = {}
        self._final_waiting = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    async def deliver(self, job_id: str, report: Report) -> Delivery:
        """Send a state report until the scheduler takes or refuses it."""
        key = (job_id, report.attempt)
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        item = self._waiting.get(key)
        if item is None:
            item = self._waiting[key] = _Waiting(_job_report(job_id, report))
        elif is_final(report) or not is_final(item.report):
            item.report = _job_report(job_id, report)
        item.waiters.append(future)
        if is_final(report):
            self._final_waiting.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all(), name="reports")
        return await asyncio.shield(future)

    async def _send_all(self) -> None:
        while self._waiting:
            if not self._final_waiting.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.gather_s):
                        await self._final_waiting.wait()
            self._final_waiting.clear()
            keys = list(self._waiting)[:MAX_BATCH]
            items = [self._waiting.pop(k) for k in keys]
            if any(is_final(i.report) for i in self._waiting.values()):
                self._final_waiting.set()
            try:
                reply = await self._send([i.report for i in items])
            except BerthError as e:
                log.error("reports refused as a whole: %s %s", e.code, e.message)
                outcomes = [Delivery.DROPPED for _ in items]
            else:
                results = [*reply.results, *[None] * (len(items) - len(reply.results))]
                outcomes = [_outcome(i.report, r) for i, r in zip(items, results, strict=False)]
            for item, outcome in zip(items, outcomes, strict=True):
                for waiter in item.waiters:
                    if not waiter.done():
                        waiter.set_result(outcome)

    async def _send(self, reports: list[JobReport]) -> ReportBatchReply:
        link = self._link
        batch = ReportBatch(reports=reports)

        async def send() -> ReportBatchReply:
            return await link.client.report_batch(link.node_id, batch, timeout=REPORT_TIMEOUT_S)

        return await link.retrying(send)


def _job_report(job_id: str, report: Report) -> JobReport:
    fields = {name: getattr(report, name) for name in report.__struct_fields__}
    return JobReport(job_id=job_id, **fields)


def _outcome(report: JobReport, result: ReportResult | None) -> Delivery:
    if result is not None and result.ok:
        return Delivery.OK
    error = (result.error if result is not None else None) or {"message": "no answer"}
    code, message = error.get("code", ""), error.get("message", "")
    what = f"{report.state} report for {report.job_id}/{report.attempt}"
    if code == StaleAttempt.code:
        log.info("attempt %d of %s is stale: %s", report.attempt, report.job_id, message)
        return Delivery.STALE
    if code == IllegalTransition.code:
        # Typically a resend of a final report the scheduler already took.
        log.info("%s refused: %s", what, message)
    else:
        log.error("%s refused: %s %s", what, code, message)
    return Delivery.DROPPED
