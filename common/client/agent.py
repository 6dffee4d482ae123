"""The agent's side of the scheduler API: registration, heartbeats, assignments, reports,
log shipping and checkpoints.

Every call here may be sent twice (a node keeps its id, a report or a log chunk sent
again changes nothing), so each is retried like an idempotent call. The calls of the
agent's loops (heartbeat, long poll, reports, logs) make one pass over the URLs only:
the loop itself tries again on its own schedule. A standby's ``not_leader`` is followed
to the leader it names within that pass, by the transport.
"""

from __future__ import annotations

from pathlib import Path

from common import codec
from common.client.transport import Transport
from common.models import (
    AssignmentsReply,
    HeartbeatReply,
    HeartbeatRequest,
    RegisterReply,
    RegisterRequest,
    Report,
    ReportBatch,
    ReportBatchReply,
    ReportReply,
)

#: margin added to a long poll's wait before the client gives up on the reply
LONG_POLL_MARGIN_S = 15.0


class AgentAPI(Transport):
    """The routes an agent calls, over the transport's send loop."""

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

    async def report_batch(
        self, node_id: str, batch: ReportBatch, *, timeout: float | None = None
    ) -> ReportBatchReply:
        """Many reports in one request and one commit; each is taken or refused alone."""
        return await self._typed(
            ReportBatchReply,
            "POST",
            f"/api/v1/nodes/{node_id}/reports",
            body=codec.encode(batch),
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

    async def upload_checkpoint(self, node_id: str, job_id: str, attempt: int, source: Path) -> str:
        """Store the archive of an attempt's /checkpoint for the job's next attempt."""
        reply = await self.upload(
            f"/api/v1/nodes/{node_id}/jobs/{job_id}/checkpoint",
            source,
            params={"attempt": attempt},
        )
        return str(codec.loads(reply)["digest"])
