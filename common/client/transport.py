"""The one send loop under Berth's client: failover across scheduler URLs, TLS, retries.

Every call of the user API, the agent API, blob transfers and streams goes through
:meth:`Transport.send`. Error bodies ``{"error": {"code", "message", "details"}}`` come
back as the matching class of :mod:`common.errors`. An idempotent call (every GET, and
the POSTs a caller marks idempotent) is retried with exponential backoff and jitter on
connection errors and on 502/503/504, failing over to the next URL; a call that is not
idempotent is retried only when the connection could not be made at all (nothing was
sent).

A standby scheduler answers writes and agent calls with 503 ``not_leader`` and, when it
knows one, the leader's URL. Every call, idempotent or not, is then sent again: to that
leader, which becomes the URL tried first from then on (even one not configured), or
else to the next URL. Those hops share the bound of the retries above; once it is spent,
the call raises SchedulerUnreachable from the last refusal.

Parameters of :class:`Transport` and their defaults:

- ``timeout``: seconds for one request (``DEFAULT_TIMEOUT_S``); long polls add their wait.
  Making the connection has its own bound (``CONNECT_TIMEOUT_S``): a scheduler whose host
  vanished (a killed container, a powered-off machine) drops the connection attempt
  without an answer, and without that bound a long poll would wait its whole timeout
  before it tried the next URL.
- ``retries``: extra passes over the URLs for an idempotent call (``DEFAULT_RETRIES``).
- ``ca_file``: a CA bundle for https URLs signed by a private CA (default: the system's
  trust store). The context is built by :func:`common.tls.client_context`; a scheduler
  whose certificate fails verification raises :class:`SchedulerUntrusted` at once, as a
  setting to fix rather than an outage to wait out.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NoReturn, Self, TypeVar

import aiohttp

from common import codec
from common.client.backoff import backoff_delay
from common.client.errors import (
    NOT_LEADER,
    SchedulerUnreachable,
    SchedulerUntrusted,
    describe,
    error_from_body,
)
from common.errors import BerthError, InvalidRequest
from common.tls import client_context

T = TypeVar("T")

#: reads the body of a 2xx reply into what the call returns
Receive = Callable[[aiohttp.ClientResponse], Awaitable[T]]

#: seconds for one request, connection included
DEFAULT_TIMEOUT_S = 30.0
#: seconds to make a connection (TCP and TLS handshakes) before trying the next URL
CONNECT_TIMEOUT_S = 5.0
#: extra passes over the scheduler URLs for an idempotent call
DEFAULT_RETRIES = 3
#: a stream (events, a log follow) that stays silent this long is taken as dropped; the
#: scheduler sends a keep-alive every 15 s
STREAM_READ_TIMEOUT_S = 45.0
#: a file transfer (blob up- or download) that stays silent this long is dropped
TRANSFER_IDLE_TIMEOUT_S = 60.0
#: bytes of a download handled at a time
TRANSFER_CHUNK = 1024 * 1024
#: statuses worth retrying (a proxy or a standby scheduler in the way)
RETRY_STATUSES = frozenset({502, 503, 504})


class Transport:
    """Sends requests to one or several scheduler URLs with a Bearer token.

    Use as ``async with``; the session is opened on first use otherwise.
    """

    def __init__(
        self,
        urls: list[str] | str,
        token: str | None,
        *,
        ca_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u.strip()]
        if not urls:
            raise ValueError("at least one scheduler URL is needed")
        self.urls = [u.strip().rstrip("/") for u in urls]
        self.token = token
        self.timeout = timeout
        self.retries = retries
        # Built here, so a CA file that cannot be used fails before any call (TLSSetupError).
        self._ssl: ssl.SSLContext | bool = True
        if ca_file or any(u.startswith("https:") for u in self.urls):
            self._ssl = client_context(ca_file)
        # A leader URL must not lower the transport's protection: with only https URLs
        # configured, a standby's pointer to an http URL (the token sent in clear) is
        # not followed.
        self._https_only = all(u.startswith("https:") for u in self.urls)
        #: index into urls of the URL tried first
        self._current = 0
        #: the leader's URL when a standby named one that is not in urls; tried first
        self._leader: str | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=64, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def url(self) -> str:
        """The scheduler URL tried first: the one that answered last, or the leader."""
        return self._leader or self.urls[self._current]

    async def send(
        self,
        method: str,
        path: str,
        receive: Receive[T],
        *,
        idempotent: bool,
        timeout: aiohttp.ClientTimeout,
        passes: int,
        params: Mapping[str, str | int | float] | None = None,
        body: bytes | Path | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        keep_open: bool = False,
    ) -> T:
        """Send one request and return what ``receive`` reads from its 2xx reply.

        Every URL is tried in turn from the one that answered last, ``passes`` times
        over with a backoff between passes; a standby's ``not_leader`` moves the call
        to the leader (see _Tries). A ``body`` that is a Path is streamed from
        the file, reopened on every try. ``token`` overrides the transport's token for
        this call. With ``keep_open`` the reply is left open for the caller to close (a
        stream). Raises the BerthError of an error reply, SchedulerUntrusted at once, or
        SchedulerUnreachable when no URL answered.
        """
        await self.open()
        assert self._session is not None
        hdrs = {"Accept": "application/json"}
        if body is not None:
            hdrs["Content-Type"] = content_type
        bearer = token if token is not None else self.token
        if bearer:
            hdrs["Authorization"] = f"Bearer {bearer}"
        hdrs.update(headers or {})
        query = {k: str(v) for k, v in (params or {}).items()}
        last: BaseException | None = None
        tries = _Tries(self, passes)
        async for url in tries.urls(path):
            # A file is reopened on every try, so a retried upload sends it from the start.
            data = await asyncio.to_thread(body.open, "rb") if isinstance(body, Path) else body
            resp: aiohttp.ClientResponse | None = None
            try:
                resp = await self._session.request(
                    method, url, params=query, data=data, headers=hdrs, timeout=timeout
                )
                status = resp.status
                if 200 <= status < 300:
                    result = await receive(resp)
                    if keep_open:
                        resp = None  # a stream: the caller reads on and closes it
                    return result
                error = error_from_body(status, await resp.read())
            except aiohttp.ClientConnectorCertificateError as e:
                raise self._untrusted(e) from e
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
                # Nothing was sent: safe to try elsewhere, idempotent or not.
                last = e
                tries.failed()
                continue
            except (aiohttp.ClientError, TimeoutError) as e:
                if not idempotent:
                    raise SchedulerUnreachable(
                        f"{method} {path}: {describe(e)}", {"url": url}
                    ) from e
                last = e
                tries.failed()
                continue
            finally:
                if resp is not None:
                    resp.release()
                if data is not None and not isinstance(data, bytes):
                    data.close()
            if status == 503 and error.code == NOT_LEADER:
                # A standby refuses before it acts, so the call had no effect there: even
                # one that is not safe to send twice (a submit without a key, a cancel)
                # is sent again, to the leader.
                last = error
                tries.not_leader(error.details.get("leader_url"))
                continue
            if status in RETRY_STATUSES and idempotent:
                last = error
                tries.failed()
                continue
            raise error
        self._unreachable(method, path, last)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        token: str | None = None,
    ) -> bytes:
        """Send one request; return the body of a 2xx reply or raise a BerthError.

        ``idempotent`` defaults to True for GET. ``token`` overrides the client's token
        for this call. Raises SchedulerUnreachable when no URL could be reached.
        """
        return await self.send(
            method,
            path,
            _read,
            idempotent=method.upper() == "GET" if idempotent is None else idempotent,
            timeout=aiohttp.ClientTimeout(
                total=timeout or self.timeout, sock_connect=self._connect_timeout()
            ),
            passes=(self.retries if retries is None else retries) + 1,
            params=params,
            body=body,
            content_type=content_type,
            headers=headers,
            token=token,
        )

    async def _typed(self, type_: type[T], method: str, path: str, **kw: Any) -> T:
        return codec.decode(await self.request(method, path, **kw), type_)

    async def upload(
        self, path: str, source: Path, *, params: Mapping[str, str | int | float] | None = None
    ) -> bytes:
        """POST a file's bytes, retried like an idempotent call; return the reply's body.

        Each wait for bytes is bounded, not the whole transfer.
        """
        return await self.send(
            "POST",
            path,
            _read,
            idempotent=True,
            timeout=self._transfer_timeout(),
            passes=self.retries + 1,
            params=params,
            body=source,
            content_type="application/octet-stream",
        )

    async def download(self, path: str, sink: Path, digest: str | None = None) -> str:
        """GET a reply's body into the file ``sink``, retried; return its sha256.

        The file is written next to ``sink`` and renamed once its sha256 (``digest``,
        else the one the reply names) is checked. Each wait for bytes is bounded.
        """

        async def receive(resp: aiohttp.ClientResponse) -> str:
            return await _receive_file(resp, sink, digest or resp.headers.get("X-Berth-Digest"))

        return await self.send(
            "GET",
            path,
            receive,
            idempotent=True,
            timeout=self._transfer_timeout(),
            passes=self.retries + 1,
        )

    async def open_stream(
        self,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = STREAM_READ_TIMEOUT_S,
        retries: int = 0,
    ) -> aiohttp.ClientResponse:
        """Send a GET whose reply is read as it arrives; the caller closes the reply.

        ``read_timeout`` bounds each wait for more bytes, not the whole reply. Every URL
        is tried once per pass, with ``retries`` extra passes after a backoff.
        """
        return await self.send(
            "GET",
            path,
            _as_is,
            idempotent=True,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.timeout,
                sock_connect=self._connect_timeout(),
                sock_read=read_timeout,
            ),
            passes=retries + 1,
            params=params,
            headers=headers,
            keep_open=True,
        )

    def _connect_timeout(self) -> float:
        return min(self.timeout, CONNECT_TIMEOUT_S)

    def _transfer_timeout(self) -> aiohttp.ClientTimeout:
        # A large file may take long in all; only a silent connection is given up.
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout(), sock_read=TRANSFER_IDLE_TIMEOUT_S
        )

    def _unreachable(self, method: str, path: str, last: BaseException | None) -> NoReturn:
        """Give up: the last error answered, or no scheduler answered (or led) at all."""
        if isinstance(last, BerthError) and last.code == NOT_LEADER:
            raise SchedulerUnreachable(
                f"{method} {path}: no scheduler took the call as the leader ({last.message})",
                {"urls": self.urls, "leader_url": last.details.get("leader_url")},
            ) from last
        if isinstance(last, BerthError):
            raise last
        raise SchedulerUnreachable(
            f"{method} {path}: no scheduler answered ({describe(last)})", {"urls": self.urls}
        ) from last

    def _failover(self) -> None:
        """Move on from the URL tried first; a leader learned from a standby is dropped
        and the configured URLs go on from the one after the last tried."""
        self._leader = None
        self._current = (self._current + 1) % len(self.urls)

    def _follow_leader(self, leader_url: object) -> bool:
        """Make the leader a standby named the URL tried first, or fail over when it named
        none that can be used; True when it moved to a leader."""
        leader = self._usable_leader(leader_url)
        if leader is None:
            self._failover()
            return False
        if leader in self.urls:
            self._current = self.urls.index(leader)
            self._leader = None
        else:
            self._leader = leader
        return True

    def _usable_leader(self, leader_url: object) -> str | None:
        """A standby's ``leader_url`` as a base URL, or None when it names none, names the
        URL that just refused, or would leave https."""
        if not isinstance(leader_url, str):
            return None
        leader = leader_url.strip().rstrip("/")
        allowed = ("https://",) if self._https_only else ("http://", "https://")
        if not leader.startswith(allowed) or leader == self.url:
            return None
        return leader

    def _untrusted(self, e: aiohttp.ClientConnectorCertificateError) -> SchedulerUntrusted:
        """The error for a certificate that failed verification at the current URL.

        Waiting will not make the certificate trusted, so callers raise it at once
        instead of retrying; the next call starts at the next URL.
        """
        url = self.url
        self._failover()
        cert_error = e.certificate_error
        why = getattr(cert_error, "verify_message", "") or str(cert_error)
        return SchedulerUntrusted(f"certificate verify failed for {url}: {why}", {"url": url})


class _Tries:
    """The scheduler URLs one call tries, and when it gives up.

    Every URL in turn from the one tried first, ``passes`` times over with a backoff
    between passes. A standby that names the leader adds one try to the pass, so a
    client given a single URL still reaches a leader it was not given; further hops in
    that pass count as ordinary tries, which bounds a ping-pong between standbys that
    name each other to ``passes`` times (URLs + 2).
    """

    def __init__(self, transport: Transport, passes: int) -> None:
        self._transport = transport
        self._passes = passes
        self._hopped = False

    async def urls(self, path: str) -> AsyncIterator[str]:
        t = self._transport
        for attempt in range(self._passes):
            if attempt:
                await asyncio.sleep(backoff_delay(attempt - 1))
            self._hopped = False
            # A learned leader outside the configured URLs is one more to try.
            count = len(t.urls) + (t.url not in t.urls)
            tried = 0
            while tried < count + self._hopped:
                tried += 1
                yield t.url + path

    def failed(self) -> None:
        """The URL tried did not answer, or answered a retryable error."""
        self._transport._failover()

    def not_leader(self, leader_url: object) -> None:
        """The URL tried is a standby; ``leader_url`` is what it said of the leader."""
        if self._transport._follow_leader(leader_url):
            self._hopped = True


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    return await resp.read()


async def _as_is(resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    return resp


async def _receive_file(resp: aiohttp.ClientResponse, sink: Path, expected: str | None) -> str:
    """Write a reply's body to ``sink`` (via a temporary file); return its sha256."""
    part = sink.with_name(sink.name + ".part")
    f = await asyncio.to_thread(part.open, "wb")
    h = hashlib.sha256()
    try:
        async for chunk in resp.content.iter_chunked(TRANSFER_CHUNK):
            await asyncio.to_thread(_write_hashed, f, h, chunk)
    except BaseException:
        await asyncio.to_thread(f.close)
        await asyncio.to_thread(part.unlink, True)
        raise
    await asyncio.to_thread(f.close)
    got = h.hexdigest()
    if expected is not None and got != expected:
        await asyncio.to_thread(part.unlink, True)
        raise InvalidRequest(
            f"the download of {expected} has sha256 {got}: it was corrupted on the way",
            {"digest": expected},
        )
    await asyncio.to_thread(os.replace, part, sink)
    return got


def _write_hashed(f: BinaryIO, h: Any, data: bytes) -> None:
    h.update(data)
    f.write(data)
