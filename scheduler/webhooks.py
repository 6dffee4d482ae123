"""Telling a job's webhook that the job ended: an HMAC-signed POST, retried with backoff,
each try recorded on the job.

The body is the job as the API shows it. The signature is
``X-Berth-Signature: sha256=<hex HMAC-SHA256 of the body>`` with the scheduler's
webhook key (``webhook.key`` in its state directory); receivers check it with that key.

Whoever may submit a job names the URL, so the scheduler must not become their way
into its own network: link-local (cloud metadata), multicast and unspecified addresses
are never called, and loopback and private ones only when the scheduler was started
with ``--webhook-allow-private``. The check is made on the addresses a name resolves to
when the connection is made, so a name that changes its answer gains nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from common import codec
from common.models import Job, WebhookDelivery

log = logging.getLogger(__name__)

#: tries per job end, the first included
MAX_TRIES = 6
#: wait before the second try; doubles (with jitter) for each later one
FIRST_DELAY_S = 1.0
#: a receiver gets this long to answer one try
TIMEOUT_S = 10.0
SIGNATURE_HEADER = "X-Berth-Signature"


def sign(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class TargetRefused(OSError):
    """A webhook's host is an address the scheduler will not call."""


def refusal(address: str, *, allow_private: bool) -> str | None:
    """Why the scheduler will not call ``address``, or None if it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return f"{address} is a link-local, multicast or unspecified address"
    if not allow_private and (ip.is_loopback or ip.is_private or ip.is_reserved):
        return (
            f"{address} is a loopback or private address "
            "(start the scheduler with --webhook-allow-private to allow it)"
        )
    return None


class GuardedResolver(AbstractResolver):
    """Resolves webhook hosts and keeps only the addresses that may be called."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if refusal(r["host"], allow_private=self.allow_private) is None]
        if not allowed:
            why = refusal(found[0]["host"], allow_private=self.allow_private) if found else None
            raise TargetRefused(f"refused: {host} resolves to {why or 'nothing'}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def literal_refusal(url: str, *, allow_private: bool) -> str | None:
    """For a URL whose host is an IP address (never resolved): why it is refused."""
    host = URL(url).host or ""
    try:
        return refusal(host.strip("[]"), allow_private=allow_private)
    except ValueError:
        return None  # a name: the resolver checks what it resolves to


class WebhookSender:
    """Delivers job ends in the background; ``record`` notes each try on the job (and
    returns once that is durable)."""

    def __init__(
        self,
        key: bytes,
        record: Callable[[str, WebhookDelivery, bool], Awaitable[None]],
        *,
        first_delay_s: float = FIRST_DELAY_S,
        allow_private: bool = False,
    ) -> None:
        self.key = key
        self.allow_private = allow_private
        self._record = record
        self._first_delay_s = first_delay_s
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        resolver = GuardedResolver(allow_private=self.allow_private)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        )

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
            refused = literal_refusal(url, allow_private=self.allow_private)
            if refused is not None:
                error = f"refused: {refused}"
            else:
                try:
                    async with self._session.post(url, data=body, headers=headers) as r:
                        status = r.status
                        if not 200 <= r.status < 300:
                            error = f"HTTP {r.status}"
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    if _refused(e):
                        refused = error = str(_refused(e))
                    else:
                        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            ok = error is None
            # A refused address stays refused: trying again would not change that.
            done = ok or n == MAX_TRIES or refused is not None
            at = datetime.now(UTC)
            await self._record(
                job_id, WebhookDelivery(at=at, attempt=n, status=status, error=error), done
            )
            if done:
                if not ok:
                    log.warning("webhook of job %s not delivered after %d tries", job_id, n)
                return
            await asyncio.sleep(delay * (1 + random.random() * 0.5))
            delay *= 2


def _refused(e: BaseException) -> TargetRefused | None:
    """The refusal behind a connection error, if that is what it was."""
    seen: Any = e
    while seen is not None:
        if isinstance(seen, TargetRefused):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None
