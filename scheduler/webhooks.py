"""Telling a job's webhook that the job ended: an HMAC-signed POST, retried with backoff,
each try recorded on the job.

The body is the job as the API shows it. The signature is
``X-Berth-Signature: sha256=<hex HMAC-SHA256 of the body>`` with the scheduler's
webhook key (``webhook.key`` in its state directory); receivers check it with that key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp

from common import codec
from common.models import Job, WebhookDelivery

log = logging.getLogger("berth.webhooks")

#: tries per job end, the first included
MAX_TRIES = 6
#: wait before the second try; doubles (with jitter) for each later one
FIRST_DELAY_S = 1.0
#: a receiver gets this long to answer one try
TIMEOUT_S = 10.0
SIGNATURE_HEADER = "X-Berth-Signature"


def sign(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class WebhookSender:
    """Delivers job ends in the background; ``record`` notes each try on the job."""

    def __init__(
        self,
        key: bytes,
        record: Callable[[str, WebhookDelivery, bool], None],
        commit: Callable[[], Awaitable[None]],
        *,
        first_delay_s: float = FIRST_DELAY_S,
    ) -> None:
        self.key = key
        self._record = record
        self._commit = commit
        self._first_delay_s = first_delay_s
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def send(self, job: Job) -> None:
        """Start delivering the end of ``job`` (once per job at a time)."""
        if job.spec.webhook is None or job.id in self._tasks or self._session is None:
            return
        body = codec.encode({"event": "job.ended", "job": job})
        url = job.spec.webhook.url
        tries_before = len(job.webhook_deliveries)
        task = asyncio.create_task(self._deliver(job.id, url, body, tries_before))
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    async def _deliver(self, job_id: str, url: str, body: bytes, tries_before: int) -> None:
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.key, body),
            "X-Berth-Event": "job.ended",
        }
        delay = self._first_delay_s
        for n in range(tries_before + 1, MAX_TRIES + 1):
            headers["X-Berth-Delivery"] = f"{job_id}-{n}"
            status: int | None = None
            error: str | None = None
            try:
                async with self._session.post(url, data=body, headers=headers) as r:
                    status = r.status
                    if not 200 <= r.status < 300:
                        error = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            ok = error is None
            done = ok or n == MAX_TRIES
            at = datetime.now(UTC)
            self._record(
                job_id, WebhookDelivery(at=at, attempt=n, status=status, error=error), done
            )
            await self._commit()
            if done:
                if not ok:
                    log.warning("webhook of job %s not delivered after %d tries", job_id, n)
                return
            await asyncio.sleep(delay * (1 + random.random() * 0.5))
            delay *= 2
