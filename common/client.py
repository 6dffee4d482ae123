"""The HTTP client library of Berth, used by the agent and the CLI.

``BerthClient`` talks to one or several scheduler URLs with a Bearer token. Error
bodies ``{"error": {"code", "message", "details"}}`` come back as the matching class
of :mod:`common.errors`. Idempotent calls (every GET, and the POSTs a helper marks
idempotent) are retried with exponential backoff and jitter on connection errors and
on 502/503/504, failing over to the next URL; a call that is not idempotent is retried
only when the connection could not be made at all (nothing was sent).

Parameters of :class:`BerthClient` and their defaults:

- ``timeout``: seconds for one request (``DEFAULT_TIMEOUT_S``); long polls add their wait.
- ``retries``: extra passes over the URLs for an idempotent call (``DEFAULT_RETRIES``).
- ``ca_file``: a CA bundle for https URLs signed by a private CA (default: the system's
  trust store). The context is built by :func:`common.tls.client_context`; a scheduler
  whose certificate fails verification raises :class:`SchedulerUntrusted` at once, as a
  setting to fix rather than an outage to wait out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NoReturn, TypeVar

import aiohttp

from common import codec
from common.errors import (
    ERRORS_BY_CODE,
    BerthError,
    InvalidRequest,
    TooManyRequests,
    Unavailable,
)
from common.models import (
    ActionResults,
    AssignmentsReply,
    AuditPage,
    DrainRequest,
    HeartbeatReply,
    HeartbeatRequest,
    Job,
    JobBatch,
    JobList,
    JobSelection,
    JobSpec,
    JoinToken,
    Node,
    NodeList,
    RegisterReply,
    RegisterRequest,
    Report,
    ReportReply,
    Stats,
    TokenCreated,
    TokenInfo,
    TokenList,
)
from common.states import TERMINAL
from common.tls import client_context

log = logging.getLogger("berth.client")

T = TypeVar("T")

#: seconds for one request, connection included
DEFAULT_TIMEOUT_S = 30.0
#: extra passes over the scheduler URLs for an idempotent call
DEFAULT_RETRIES = 3
#: first backoff delay, doubled on every retry
BACKOFF_BASE_S = 0.2
#: the longest backoff delay
BACKOFF_MAX_S = 10.0
#: margin added to a long poll's wait before the client gives up on the reply
LONG_POLL_MARGIN_S = 15.0
#: a stream (events, a log follow) that stays silent this long is taken as dropped; the
#: scheduler sends a keep-alive every 15 s
STREAM_READ_TIMEOUT_S = 45.0
#: how long a stream that was connected keeps trying to reconnect before giving up
STREAM_RECONNECT_S = 60.0
#: a file transfer (blob up- or download) that stays silent this long is dropped
TRANSFER_IDLE_TIMEOUT_S = 60.0
#: bytes of a download handled at a time
TRANSFER_CHUNK = 1024 * 1024
#: statuses worth retrying (a proxy or a standby scheduler in the way)
RETRY_STATUSES = frozenset({502, 503, 504})
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


class SchedulerUnreachable(Unavailable):
    """No scheduler URL answered (connection refused, reset or timed out)."""


class SchedulerUntrusted(SchedulerUnreachable):
    """A scheduler's TLS certificate failed verification (an unknown CA, another host)."""


def backoff_delay(
    attempt: int,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_MAX_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential with equal jitter.

    The ceiling doubles with every attempt up to ``cap``; the delay is half the ceiling
    plus a random share of the other half, so retries of many clients spread out
    without ever collapsing to zero.
    """
    ceiling = min(cap, base * float(2 ** min(attempt, 32)))
    return ceiling / 2 + rand() * ceiling / 2


class Backoff:
    """Stateful exponential backoff with jitter: ``next()`` grows, ``reset()`` restarts."""

    def __init__(
        self,
        base: float = BACKOFF_BASE_S,
        cap: float = BACKOFF_MAX_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rand = rand

    def next(self) -> float:
        delay = backoff_delay(self.attempt, base=self.base, cap=self.cap, rand=self._rand)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


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
    if not isinstance(code, str) or code not in ERRORS_BY_CODE:
        code = _FALLBACK_BY_STATUS.get(status, "internal")
    cls = ERRORS_BY_CODE[code]
    # IllegalTransition has its own __init__; build every class the same way.
    error = cls.__new__(cls)
    BerthError.__init__(error, message or f"HTTP {status}", details)
    if isinstance(error, TooManyRequests):
        error.retry_after_s = int(details.get("retry_after_s") or 1)
    return error


class BerthClient:
    """An async client of the scheduler API; use as ``async with BerthClient(...) as c``."""

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
        self._current = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BerthClient:
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
        """The scheduler URL that answered last."""
        return self.urls[self._current]

    # --- the core request ------------------------------------------------------------

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
        if self._session is None:
            await self.open()
        assert self._session is not None
        if idempotent is None:
            idempotent = method.upper() == "GET"
        passes = (self.retries if retries is None else retries) + 1
        hdrs = {"Accept": "application/json"}
        if body is not None:
            hdrs["Content-Type"] = content_type
        bearer = token if token is not None else self.token
        if bearer:
            hdrs["Authorization"] = f"Bearer {bearer}"
        if headers:
            hdrs.update(headers)
        query = {k: str(v) for k, v in (params or {}).items()}
        client_timeout = aiohttp.ClientTimeout(total=timeout or self.timeout)
        last: BaseException | None = None
        async for url in self._urls(passes, path):
            try:
                async with self._session.request(
                    method, url, params=query, data=body, headers=hdrs, timeout=client_timeout
                ) as resp:
                    data = await resp.read()
                    status = resp.status
            except aiohttp.ClientConnectorCertificateError as e:
                raise self._untrusted(e) from e
            except aiohttp.ClientConnectorError as e:
                # Nothing was sent: safe to try elsewhere, idempotent or not.
                last = e
                self._failover()
                continue
            except (aiohttp.ClientError, TimeoutError) as e:
                last = e
                if not idempotent:
                    raise SchedulerUnreachable(
                        f"{method} {path}: {_describe(e)}", {"url": url}
                    ) from e
                self._failover()
                continue
            if 200 <= status < 300:
                return data
            error = error_from_body(status, data)
            if status in RETRY_STATUSES and idempotent:
                last = error
                self._failover()
                continue
            raise error
        self._unreachable(method, path, last)

    async def _urls(self, passes: int, path: str) -> AsyncIterator[str]:
        """Every scheduler URL in turn from the current one, ``passes`` times over, with
        a backoff between passes; the caller calls _failover when one fails."""
        for attempt in range(passes):
            if attempt:
                await asyncio.sleep(backoff_delay(attempt - 1))
            for _ in range(len(self.urls)):
                yield self.urls[self._current] + path

    def _unreachable(self, method: str, path: str, last: BaseException | None) -> NoReturn:
        """Give up: the last error answered, or no scheduler answered at all."""
        if isinstance(last, BerthError):
            raise last
        raise SchedulerUnreachable(
            f"{method} {path}: no scheduler answered ({_describe(last)})", {"urls": self.urls}
        ) from last

    def _failover(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    def _untrusted(self, e: aiohttp.ClientConnectorCertificateError) -> SchedulerUntrusted:
        """The error for a certificate that failed verification at the current URL.

        Waiting will not make the certificate trusted, so callers raise it at once
        instead of retrying; the next call starts at the next URL.
        """
        url = self.urls[self._current]
        self._failover()
        cert_error = e.certificate_error
        why = getattr(cert_error, "verify_message", "") or str(cert_error)
        return SchedulerUntrusted(f"certificate verify failed for {url}: {why}", {"url": url})

    async def _typed(self, type_: type[T], method: str, path: str, **kw: Any) -> T:
        return codec.decode(await self.request(method, path, **kw), type_)

    # --- agent routes ----------------------------------------------------------------

    async def register(
        self, req: RegisterRequest, *, join_token: str | None = None
    ) -> RegisterReply:
        """Register a node (idempotent: the same name keeps its node id)."""
        return await self._typed(
            RegisterReply,
            "POST",
            "/api/v1/nodes/register",
            body=codec.encode(req),
            idempotent=True,
            token=join_token,
        )

    async def heartbeat(
        self, node_id: str, req: HeartbeatRequest, *, timeout: float | None = None
    ) -> HeartbeatReply:
        return await self._typed(
            HeartbeatReply,
            "POST",
            f"/api/v1/nodes/{node_id}/heartbeat",
            body=codec.encode(req),
            idempotent=True,
            timeout=timeout,
            retries=0,
        )

    async def assignments(self, node_id: str, *, after: int, wait: float) -> AssignmentsReply:
        """Long-poll the node's pending assignments newer than index ``after``."""
        return await self._typed(
            AssignmentsReply,
            "GET",
            f"/api/v1/nodes/{node_id}/assignments",
            params={"after": after, "wait": wait},
            timeout=wait + LONG_POLL_MARGIN_S,
            retries=0,
        )

    async def report(
        self, node_id: str, job_id: str, report: Report, *, timeout: float | None = None
    ) -> ReportReply:
        """Report an attempt's state or progress. The same report may be sent twice."""
        return await self._typed(
            ReportReply,
            "POST",
            f"/api/v1/nodes/{node_id}/jobs/{job_id}/report",
            body=codec.encode(report),
            idempotent=True,
            timeout=timeout,
            retries=0,
        )

    async def append_logs(
        self,
        node_id: str,
        job_id: str,
        attempt: int,
        offset: int,
        data: bytes,
        *,
        timeout: float | None = None,
    ) -> int:
        """Append log bytes at ``offset``; return the server's new end offset.

        A Conflict whose ``details["offset"]`` is the server's end means: resend from there.
        """
        reply = await self.request(
            "POST",
            f"/api/v1/nodes/{node_id}/jobs/{job_id}/logs",
            params={"attempt": attempt, "offset": offset},
            body=data,
            content_type="application/octet-stream",
            idempotent=True,
            timeout=timeout,
            retries=0,
        )
        return int(codec.loads(reply)["offset"])

    # --- blobs: archives of inputs, outputs and checkpoints ----------------------------

    async def upload_blob(self, source: Path) -> str:
        """Store a file as a blob and return its sha256 digest.

        Blobs are named by their content, so a retried upload is harmless.
        """
        reply = await self._transfer("POST", "/api/v1/blobs", source=source)
        return str(codec.loads(reply)["digest"])

    async def download_blob(self, digest: str, dest: Path) -> None:
        """Fetch a blob into the file ``dest``; raise InvalidRequest if its sha256 differs."""
        await self._transfer("GET", f"/api/v1/blobs/{digest}", sink=dest, digest=digest)

    async def download_outputs(self, job_id: str, dest: Path) -> str:
        """Fetch the archive (tar.gz) of a job's outputs into ``dest``; return its digest.

        NotFound when the job has no outputs (yet).
        """
        return str(await self._transfer("GET", f"/api/v1/jobs/{job_id}/outputs", sink=dest))

    async def upload_checkpoint(self, node_id: str, job_id: str, attempt: int, source: Path) -> str:
        """Store the archive of an attempt's /checkpoint for the job's next attempt."""
        reply = await self._transfer(
            "POST",
            f"/api/v1/nodes/{node_id}/jobs/{job_id}/checkpoint",
            params={"attempt": attempt},
            source=source,
        )
        return str(codec.loads(reply)["digest"])

    async def _transfer(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        source: Path | None = None,
        sink: Path | None = None,
        digest: str | None = None,
    ) -> Any:
        """Stream a file up (``source``) or down (``sink``), retried like an idempotent
        call. A download is written next to ``sink`` and renamed once its sha256 (the
        ``digest`` given, else the one the reply names) is checked; returns that digest.
        An upload returns the reply's body. Each wait for bytes is bounded, not the
        whole transfer.
        """
        if self._session is None:
            await self.open()
        assert self._session is not None
        hdrs = {"Accept": "application/json"}
        if source is not None:
            hdrs["Content-Type"] = "application/octet-stream"
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        query = {k: str(v) for k, v in (params or {}).items()}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=TRANSFER_IDLE_TIMEOUT_S
        )
        last: BaseException | None = None
        async for url in self._urls(self.retries + 1, path):
            body = await asyncio.to_thread(source.open, "rb") if source is not None else None
            try:
                async with self._session.request(
                    method, url, params=query, data=body, headers=hdrs, timeout=timeout
                ) as resp:
                    if 200 <= resp.status < 300:
                        if sink is None:
                            return await resp.read()
                        expected = digest or resp.headers.get("X-Berth-Digest")
                        return await _receive_file(resp, sink, expected)
                    data = await resp.read()
                    status = resp.status
            except aiohttp.ClientConnectorCertificateError as e:
                raise self._untrusted(e) from e
            except (aiohttp.ClientError, TimeoutError) as e:
                last = e
                self._failover()
                continue
            finally:
                if body is not None:
                    body.close()
            error = error_from_body(status, data)
            if status in RETRY_STATUSES:
                last = error
                self._failover()
                continue
            raise error
        self._unreachable(method, path, last)

    # --- client routes ---------------------------------------------------------------

    async def submit_job(self, spec: JobSpec, idempotency_key: str | None = None) -> Job:
        """Submit a job; with an idempotency key the submit is retried safely."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._typed(
            Job,
            "POST",
            "/api/v1/jobs",
            body=codec.encode(spec),
            headers=headers,
            idempotent=idempotency_key is not None,
        )

    async def get_job(
        self, job_id: str, index: int | None = None, wait: float | None = None
    ) -> Job:
        """One job; with ``index`` and ``wait``, block until its index passes ``index``."""
        params: dict[str, str | int | float] = {}
        if index is not None:
            params["index"] = index
        if wait is not None:
            params["wait"] = wait
        timeout = self.timeout + (wait or 0)
        return await self._typed(
            Job, "GET", f"/api/v1/jobs/{job_id}", params=params, timeout=timeout
        )

    async def list_jobs(
        self, state: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobList:
        params: dict[str, str | int | float] = {}
        if state is not None:
            params["state"] = state
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return await self._typed(JobList, "GET", "/api/v1/jobs", params=params)

    async def submit_batch(self, specs: list[JobSpec]) -> list[Job]:
        """Submit up to 1,000 specs at once: all are queued or none."""
        body = codec.encode(JobBatch(jobs=specs))
        reply = await self._typed(JobList, "POST", "/api/v1/jobs/batch", body=body)
        return reply.jobs

    async def act(self, action: str, job_id: str) -> Job:
        """cancel, retry, pause or resume one job."""
        return await self._typed(Job, "POST", f"/api/v1/jobs/{job_id}/{action}", body=b"{}")

    async def act_many(self, action: str, selection: JobSelection) -> ActionResults:
        """cancel, retry, pause or resume the jobs named by ids or matching a filter."""
        body = codec.encode(selection)
        return await self._typed(ActionResults, "POST", f"/api/v1/jobs/{action}", body=body)

    async def cancel_job(self, job_id: str) -> Job:
        return await self._typed(Job, "POST", f"/api/v1/jobs/{job_id}/cancel", body=b"{}")

    async def list_nodes(self) -> NodeList:
        return await self._typed(NodeList, "GET", "/api/v1/nodes")

    async def get_node(self, node_id: str) -> Node:
        return await self._typed(Node, "GET", f"/api/v1/nodes/{node_id}")

    async def drain_node(self, node_id: str, drain: bool = True, reason: str = "") -> Node:
        return await self._typed(
            Node,
            "POST",
            f"/api/v1/nodes/{node_id}/drain",
            body=codec.encode(DrainRequest(drain=drain, reason=reason)),
            idempotent=True,
        )

    async def forget_node(self, node_id: str, *, force: bool = False) -> dict[str, Any]:
        """Forget a node (admin): ``{"id", "name", "lost_jobs"}``."""
        params = {"force": "1"} if force else None
        reply: dict[str, Any] = codec.loads(
            await self.request("DELETE", f"/api/v1/nodes/{node_id}", params=params)
        )
        return reply

    async def stats(self) -> Stats:
        return await self._typed(Stats, "GET", "/api/v1/stats")

    # --- tokens and the audit log (admin) ---------------------------------------------

    async def create_token(self, role: str, name: str, *, all_jobs: bool = False) -> TokenCreated:
        body = {"role": role, "name": name, "all_jobs": all_jobs}
        return await self._typed(TokenCreated, "POST", "/api/v1/tokens", body=codec.dumps(body))

    async def list_tokens(self, *, revoked: bool = False) -> TokenList:
        params = {"revoked": "1"} if revoked else None
        return await self._typed(TokenList, "GET", "/api/v1/tokens", params=params)

    async def revoke_token(self, token_id: str) -> TokenInfo:
        return await self._typed(TokenInfo, "DELETE", f"/api/v1/tokens/{token_id}")

    async def rotate_join_token(self) -> JoinToken:
        return await self._typed(JoinToken, "POST", "/api/v1/tokens/join/rotate", body=b"{}")

    async def audit(
        self,
        *,
        after: int = 0,
        limit: int = 500,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> AuditPage:
        params: dict[str, str | int] = {"after": after, "limit": limit}
        for name, value in (("actor", actor), ("action", action), ("target", target)):
            if value is not None:
                params[name] = value
        return await self._typed(AuditPage, "GET", "/api/v1/audit", params=params)

    async def healthz(self) -> Any:
        return codec.loads(await self.request("GET", "/healthz"))

    async def readyz(self) -> Any:
        return codec.loads(await self.request("GET", "/readyz"))

    # --- streams: events and logs ----------------------------------------------------

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
        is tried once per pass, with ``retries`` extra passes after a backoff. Raises the
        BerthError of an error reply, or SchedulerUnreachable when no URL answered.
        """
        if self._session is None:
            await self.open()
        assert self._session is not None
        hdrs = {"Accept": "application/json"}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        if headers:
            hdrs.update(headers)
        query = {k: str(v) for k, v in (params or {}).items()}
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=read_timeout)
        last: BaseException | None = None
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(backoff_delay(attempt - 1))
            for _ in range(len(self.urls)):
                url = self.urls[self._current] + path
                try:
                    resp = await self._session.get(url, params=query, headers=hdrs, timeout=timeout)
                except aiohttp.ClientConnectorCertificateError as e:
                    raise self._untrusted(e) from e
                except (aiohttp.ClientError, TimeoutError) as e:
                    last = e
                    self._failover()
                    continue
                if 200 <= resp.status < 300:
                    return resp
                try:
                    body = await resp.read()
                except (aiohttp.ClientError, TimeoutError):
                    body = b""
                finally:
                    resp.release()
                error = error_from_body(resp.status, body)
                if resp.status in RETRY_STATUSES:
                    last = error
                    self._failover()
                    continue
                raise error
        if isinstance(last, BerthError):
            raise last
        raise SchedulerUnreachable(
            f"GET {path}: no scheduler answered ({_describe(last)})", {"urls": self.urls}
        ) from last

    async def _before_reconnect(
        self,
        error: BaseException,
        backoff: Backoff,
        connected: bool,
        down_since: float,
        reconnect_for: float,
    ) -> None:
        """Wait before a stream reconnects, or raise when it is time to give up.

        Before a stream ever connected it gets the client's usual retries; once it has,
        it keeps trying for ``reconnect_for`` seconds from the moment it went down.
        """
        if isinstance(error, SchedulerUntrusted):
            raise error
        if connected:
            give_up = time.monotonic() - down_since > reconnect_for
        else:
            give_up = backoff.attempt >= self.retries
        if give_up:
            if isinstance(error, BerthError):
                raise error
            raise SchedulerUnreachable(
                f"stream lost: no scheduler answered ({_describe(error)})", {"urls": self.urls}
            ) from error
        log.debug("stream dropped (%s); reconnecting", _describe(error))
        await asyncio.sleep(backoff.next())

    @staticmethod
    async def _sse_frames(
        resp: aiohttp.ClientResponse,
    ) -> AsyncIterator[tuple[str | None, str, str]]:
        """Server-sent events of a reply as ``(id, event, data)``, comments skipped.

        Lines may end with CRLF, LF or CR. A frame is yielded only once its closing
        blank line arrived, so one cut short by a dropped connection never is.
        """
        buf = b""
        frame_id: str | None = None
        kind = ""
        data: list[str] = []
        async for chunk in resp.content.iter_any():
            buf += chunk
            held = b""
            if buf.endswith(b"\r"):
                # A CR may be the first half of a CRLF: wait for the next byte.
                buf, held = buf[:-1], b"\r"
            lines = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            buf = lines.pop() + held
            for raw in lines:
                line = raw.decode("utf-8", errors="replace")
                if not line:
                    if data:
                        yield frame_id, kind or "message", "\n".join(data)
                    frame_id, kind, data = None, "", []
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "event":
                    kind = value
                elif name == "id" and "\0" not in value:
                    frame_id = value

    async def stream_events(
        self,
        *,
        topics: Sequence[str] | None = None,
        job_id: str | None = None,
        since: int | None = None,
        reconnect_for: float = STREAM_RECONNECT_S,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Events as the scheduler commits them, each the Event document as a dict.

        ``since``: first replay the events after that index (None: only new ones).
        ``topics`` (``jobs``, ``nodes``) or ``job_id`` narrow the stream. A dropped
        connection is resumed with ``Last-Event-ID``, and so is a ``resync`` (this reader
        fell too far behind), so no event is missed or repeated. When the index asked
        for is older than what the scheduler keeps, ``{"type": "reset", "reason",
        "oldest", "index"}`` is yielded and the stream goes on after ``index``.
        Raises SchedulerUnreachable once no scheduler answered for ``reconnect_for`` s.
        """
        last = since
        backoff = Backoff()
        connected = False
        down_since = time.monotonic()
        while True:
            params: dict[str, str | int | float] = {}
            if topics:
                params["topics"] = ",".join(topics)
            if job_id is not None:
                params["job"] = job_id
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                resp = await self.open_stream("/api/v1/events", params=params, headers=headers)
            except Unavailable as e:
                await self._before_reconnect(e, backoff, connected, down_since, reconnect_for)
                continue
            connected = True
            backoff.reset()
            resync = False
            error: BaseException = SchedulerUnreachable("the scheduler ended the stream")
            try:
                async for frame_id, kind, data in self._sse_frames(resp):
                    if kind == "resync":
                        resync = True
                        break
                    doc = codec.loads(data)
                    if frame_id is not None and frame_id.isdigit():
                        last = int(frame_id)
                    if kind == "reset":
                        yield {"type": "reset", **doc}
                    elif isinstance(doc, dict):
                        yield doc
            except (aiohttp.ClientError, TimeoutError) as e:
                error = e
            finally:
                resp.close()
            if resync:
                continue  # resume at once from the last event received
            down_since = time.monotonic()
            await self._before_reconnect(error, backoff, True, down_since, reconnect_for)

    async def follow_logs(
        self,
        job_id: str,
        *,
        attempt: int | None = None,
        offset: int = 0,
        reconnect_for: float = STREAM_RECONNECT_S,
    ) -> AsyncGenerator[bytes, None]:
        """An attempt's log bytes as they are appended, from ``offset`` until the attempt
        is over (ended, or replaced by a retry).

        ``attempt`` defaults to the job's current attempt when the follow starts. A
        dropped connection is resumed at the byte offset reached, so no byte is missed
        or repeated. Raises SchedulerUnreachable once no scheduler answered for
        ``reconnect_for`` seconds.
        """
        backoff = Backoff()
        connected = False
        down_since = time.monotonic()
        path = f"/api/v1/jobs/{job_id}/logs"
        while True:
            params: dict[str, str | int | float] = {"follow": 1, "offset": offset}
            if attempt is not None:
                params["attempt"] = attempt
            try:
                resp = await self.open_stream(path, params=params, headers={"Accept": "text/plain"})
            except Unavailable as e:
                await self._before_reconnect(e, backoff, connected, down_since, reconnect_for)
                continue
            connected = True
            backoff.reset()
            error: BaseException | None = None
            try:
                if attempt is None:
                    # Pin the attempt, so that a reconnect goes on with the same one.
                    attempt = int(resp.headers.get("X-Berth-Attempt", "0")) or None
                async for chunk in resp.content.iter_any():
                    offset += len(chunk)
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as e:
                error = e
            finally:
                resp.close()
            if error is None:
                job = await self.get_job(job_id)
                if attempt is None or attempt < job.attempt or job.state in TERMINAL:
                    return
                # The scheduler ended the follow (it is stopping) while the attempt goes on.
                error = SchedulerUnreachable("the scheduler ended the log follow")
            down_since = time.monotonic()
            await self._before_reconnect(error, backoff, True, down_since, reconnect_for)

    async def read_logs(
        self, job_id: str, *, attempt: int | None = None, offset: int = 0
    ) -> tuple[bytes, int, int]:
        """An attempt's stored log from ``offset`` (default: the current attempt).

        Returns ``(bytes, end offset, attempt)``; the end is where a later read resumes.
        """
        params: dict[str, str | int | float] = {"offset": offset}
        if attempt is not None:
            params["attempt"] = attempt
        resp = await self.open_stream(
            f"/api/v1/jobs/{job_id}/logs",
            params=params,
            headers={"Accept": "text/plain"},
            read_timeout=self.timeout,
            retries=self.retries,
        )
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SchedulerUnreachable(f"reading the log failed: {_describe(e)}") from e
        finally:
            resp.release()
        end = int(resp.headers.get("X-Berth-Log-Offset", offset + len(data)))
        return data, end, int(resp.headers.get("X-Berth-Attempt", attempt or 0))

    async def events_page(
        self,
        *,
        since: int = 0,
        topics: Sequence[str] | None = None,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """One page of stored events after ``since``: ``{"events", "index", "next"}``.

        ``next`` is where the following page starts; raises Gone when ``since`` is older
        than what the scheduler keeps.
        """
        params: dict[str, str | int | float] = {"since": since}
        if topics:
            params["topics"] = ",".join(topics)
        if job_id is not None:
            params["job"] = job_id
        page: dict[str, Any] = codec.loads(
            await self.request("GET", "/api/v1/events", params=params)
        )
        return page


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


def _describe(e: BaseException | None) -> str:
    if e is None:
        return "no attempt made"
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
