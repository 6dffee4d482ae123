"""The user's and operator's side of the scheduler API, as the CLI calls it: jobs, nodes,
blobs, tokens, the audit log, events and logs.

Streams (events, a log follow) reconnect on their own: before a stream ever connected
it gets the client's usual retries; once it has, it keeps trying for ``reconnect_for``
seconds from the moment it went down, resuming where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from common import codec
from common.arrays import ArrayRetry, ArraySummary
from common.client.backoff import Backoff
from common.client.errors import SchedulerUnreachable, SchedulerUntrusted, describe
from common.client.sse import sse_frames
from common.client.transport import Transport
from common.errors import BerthError, Unavailable
from common.history_models import History, JobUsage
from common.models import (
    ActionResults,
    AuditPage,
    DrainRequest,
    Job,
    JobBatch,
    JobList,
    JobSelection,
    JobSpec,
    JoinToken,
    Node,
    NodeList,
    OwnerList,
    OwnerStatus,
    Quota,
    Stats,
    TokenCreated,
    TokenInfo,
    TokenList,
)
from common.schedule_models import Schedule, ScheduleFired, ScheduleList, ScheduleSpec
from common.secret_models import SecretDeleted, SecretInfo, SecretList, SecretSet
from common.states import TERMINAL

log = logging.getLogger(__name__)

#: how long a stream that was connected keeps trying to reconnect before giving up
STREAM_RECONNECT_S = 60.0

Params = dict[str, str | int | float]


class UserAPI(Transport):
    """The routes a user or an operator calls, over the transport's send loop."""

    # --- jobs and nodes --------------------------------------------------------------

    async def submit_job(self, spec: JobSpec, idempotency_key: str | None = None) -> Job:
        """Submit a job under an Idempotency-Key: ``idempotency_key``, else a new one.

        The key is made once here, so every resend of this submit carries it: one whose
        reply was lost (a dropped connection, a leader that failed over) is sent again
        and the scheduler answers with the job the first one created, not a second job.
        """
        key = idempotency_key or uuid.uuid4().hex
        return await self._typed(
            Job,
            "POST",
            "/api/v1/jobs",
            body=codec.encode(spec),
            headers={"Idempotency-Key": key},
            idempotent=True,
        )

    async def get_job(
        self, job_id: str, index: int | None = None, wait: float | None = None
    ) -> Job:
        """One job; with ``index`` and ``wait``, block until its index passes ``index``."""
        params = _given(index=index, wait=wait)
        timeout = self.timeout + (wait or 0)
        return await self._typed(
            Job, "GET", f"/api/v1/jobs/{job_id}", params=params, timeout=timeout
        )

    async def list_jobs(
        self,
        state: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        array: str | None = None,
    ) -> JobList:
        """A page of jobs, newest first; with ``array``, only that array's tasks."""
        params = _given(state=state, limit=limit, cursor=cursor, array=array)
        return await self._typed(JobList, "GET", "/api/v1/jobs", params=params)

    async def submit_batch(self, specs: list[JobSpec]) -> list[Job]:
        """Submit up to 1,000 specs at once: all are queued or none.

        The batch route takes no Idempotency-Key, so a batch is not resent once it may
        have reached a leader (a standby's not_leader is still followed).
        """
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

    async def get_array(self, array_id: str) -> ArraySummary:
        """A job array: its tasks counted by state, its spec, owner and creation time.
        An array is submitted with submit_job (a spec with ``array``): the job it
        returns is the first task, whose id is the array's."""
        return await self._typed(ArraySummary, "GET", f"/api/v1/arrays/{array_id}")

    async def act_array(
        self, action: str, array_id: str, *, failed_only: bool = True
    ) -> ActionResults:
        """cancel, retry, pause or resume an array's tasks (retry: the failed, timed out
        and cancelled ones; every ended one without ``failed_only``)."""
        body = codec.encode(ArrayRetry(failed_only=failed_only))
        path = f"/api/v1/arrays/{array_id}/{action}"
        return await self._typed(ActionResults, "POST", path, body=body)

    async def cancel_job(self, job_id: str) -> Job:
        return await self._typed(Job, "POST", f"/api/v1/jobs/{job_id}/cancel", body=b"{}")

    async def list_nodes(self) -> NodeList:
        return await self._typed(NodeList, "GET", "/api/v1/nodes")

    async def get_node(self, node_id: str) -> Node:
        return await self._typed(Node, "GET", f"/api/v1/nodes/{node_id}")

    async def drain_node(
        self, node_id: str, drain: bool = True, reason: str = "", *, requeue: bool = False
    ) -> Node:
        return await self._typed(
            Node,
            "POST",
            f"/api/v1/nodes/{node_id}/drain",
            body=codec.encode(DrainRequest(drain=drain, reason=reason, requeue=requeue)),
            idempotent=True,
        )

    async def forget_node(self, node_id: str, *, force: bool = False) -> dict[str, Any]:
        """Forget a node (admin): ``{"id", "name", "lost_jobs"}``."""
        params = {"force": "1"} if force else None
        reply: dict[str, Any] = codec.loads(
            await self.request("DELETE", f"/api/v1/nodes/{node_id}", params=params)
        )
        return reply

    async def schedulers(self) -> list[dict[str, Any]]:
        """The scheduler processes sharing the store, each ``{"id", "url", "role"
        ("leader" or "standby"), "epoch", "applied_index", "seen" (RFC 3339)}``."""
        reply = await self.request("GET", "/api/v1/schedulers")
        return codec.decode(reply, _SchedulerList).schedulers

    async def stats(self) -> Stats:
        return await self._typed(Stats, "GET", "/api/v1/stats")

    async def stats_history(self, since: str = "1h", step: int | None = None) -> History:
        """The cluster's history (``since``: a duration such as ``1h`` or a Unix time;
        ``step``: seconds per point, default the server's choice)."""
        params: Params = {"since": since}
        if step is not None:
            params["step"] = step
        return await self._typed(History, "GET", "/api/v1/stats/history", params=params)

    async def job_usage(self, job_id: str, attempt: int | None = None) -> JobUsage:
        """An attempt's usage samples, by default of the latest attempt."""
        params: Params = {} if attempt is None else {"attempt": attempt}
        return await self._typed(JobUsage, "GET", f"/api/v1/jobs/{job_id}/usage", params=params)

    async def healthz(self) -> Any:
        return codec.loads(await self.request("GET", "/healthz"))

    async def readyz(self) -> Any:
        return codec.loads(await self.request("GET", "/readyz"))

    # --- blobs: archives of inputs, outputs and checkpoints ----------------------------

    async def upload_blob(self, source: Path) -> str:
        """Store a file as a blob and return its sha256 digest.

        Blobs are named by their content, so a retried upload is harmless.
        """
        return str(codec.loads(await self.upload("/api/v1/blobs", source))["digest"])

    async def download_blob(self, digest: str, dest: Path) -> None:
        """Fetch a blob into the file ``dest``; raise InvalidRequest if its sha256 differs."""
        await self.download(f"/api/v1/blobs/{digest}", dest, digest)

    async def download_outputs(self, job_id: str, dest: Path) -> str:
        """Fetch the archive (tar.gz) of a job's outputs into ``dest``; return its digest.

        NotFound when the job has no outputs (yet).
        """
        return await self.download(f"/api/v1/jobs/{job_id}/outputs", dest)

    # --- schedules (periodic jobs) ------------------------------------------------------

    async def create_schedule(self, spec: ScheduleSpec) -> Schedule:
        body = codec.encode(spec)
        return await self._typed(Schedule, "POST", "/api/v1/schedules", body=body)

    async def list_schedules(self) -> ScheduleList:
        return await self._typed(ScheduleList, "GET", "/api/v1/schedules")

    async def get_schedule(self, name: str) -> Schedule:
        return await self._typed(Schedule, "GET", f"/api/v1/schedules/{name}")

    async def replace_schedule(self, spec: ScheduleSpec) -> Schedule:
        """PUT a schedule whole (its owner and history stay); sending it again is
        harmless."""
        path = f"/api/v1/schedules/{spec.name}"
        return await self._typed(Schedule, "PUT", path, body=codec.encode(spec), idempotent=True)

    async def delete_schedule(self, name: str) -> Schedule:
        return await self._typed(Schedule, "DELETE", f"/api/v1/schedules/{name}")

    async def run_schedule(self, name: str) -> ScheduleFired:
        """Start a schedule's run now; Conflict while overlap forbids one."""
        path = f"/api/v1/schedules/{name}/run"
        return await self._typed(ScheduleFired, "POST", path, body=b"{}")

    # --- secrets ------------------------------------------------------------------------

    async def set_secret(self, name: str, value: str, *, shared: bool | None = None) -> SecretInfo:
        """Create a secret or give one's own a new value (``shared`` None: a new one is
        not shared, an existing one stays as it is); sending it again is harmless. The
        reply never holds the value."""
        body = codec.encode(SecretSet(name=name, value=value, shared=shared))
        return await self._typed(SecretInfo, "POST", "/api/v1/secrets", body=body, idempotent=True)

    async def list_secrets(self) -> SecretList:
        return await self._typed(SecretList, "GET", "/api/v1/secrets")

    async def delete_secret(self, name: str) -> SecretDeleted:
        return await self._typed(SecretDeleted, "DELETE", f"/api/v1/secrets/{name}")

    # --- tokens and the audit log (admin) ---------------------------------------------

    async def create_token(
        self, role: str, name: str, *, all_jobs: bool = False, quota: Quota | None = None
    ) -> TokenCreated:
        body: dict[str, Any] = {"role": role, "name": name, "all_jobs": all_jobs}
        if quota:
            body.update({k: v for k, v in msgspec.structs.asdict(quota).items() if v is not None})
        return await self._typed(TokenCreated, "POST", "/api/v1/tokens", body=codec.dumps(body))

    async def list_owners(self) -> OwnerList:
        return await self._typed(OwnerList, "GET", "/api/v1/owners")

    async def set_quota(self, name: str, quota: Quota) -> OwnerStatus:
        return await self._typed(
            OwnerStatus, "PUT", f"/api/v1/owners/{name}/quota", body=codec.encode(quota)
        )

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
        params = _given(after=after, limit=limit, actor=actor, action=action, target=target)
        return await self._typed(AuditPage, "GET", "/api/v1/audit", params=params)

    # --- events and logs -------------------------------------------------------------

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
        params = _given(topics=",".join(topics) if topics else None, job=job_id)
        while True:
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
                async for frame_id, kind, data in sse_frames(resp):
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
            params = _given(follow=1, offset=offset, attempt=attempt)
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
        resp = await self.open_stream(
            f"/api/v1/jobs/{job_id}/logs",
            params=_given(offset=offset, attempt=attempt),
            headers={"Accept": "text/plain"},
            read_timeout=self.timeout,
            retries=self.retries,
        )
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SchedulerUnreachable(f"reading the log failed: {describe(e)}") from e
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
        params = _given(since=since, topics=",".join(topics) if topics else None, job=job_id)
        page: dict[str, Any] = codec.loads(
            await self.request("GET", "/api/v1/events", params=params)
        )
        return page

    async def _before_reconnect(
        self,
        error: BaseException,
        backoff: Backoff,
        connected: bool,
        down_since: float,
        reconnect_for: float,
    ) -> None:
        """Wait before a stream reconnects, or raise when it is time to give up."""
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
                f"stream lost: no scheduler answered ({describe(error)})", {"urls": self.urls}
            ) from error
        log.debug("stream dropped (%s); reconnecting", describe(error))
        await asyncio.sleep(backoff.next())


class _SchedulerList(msgspec.Struct):
    """The reply of GET /api/v1/schedulers, its entries kept as they come."""

    schedulers: list[dict[str, Any]]


def _given(**values: str | int | float | None) -> Params:
    """The query parameters that were given (not None), in the order named."""
    return {name: value for name, value in values.items() if value is not None}
