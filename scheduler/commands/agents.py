"""Commands agents give: register, heartbeat, take assignments, report, append logs,
store checkpoints. Every one is fenced by node and attempt in the state."""

from __future__ import annotations

from collections.abc import AsyncIterator

from common.errors import BerthError, InvalidRequest, NotLeader
from common.models import (
    AssignmentsReply,
    HeartbeatReply,
    HeartbeatRequest,
    Job,
    JobReport,
    RegisterReply,
    RegisterRequest,
    Report,
    ReportBatchReply,
    ReportResult,
)
from scheduler import blobholds
from scheduler.commands.reads import Reads
from scheduler.commands.secrets import open_assignments
from scheduler.tokens import TokenRow

#: the most nodes a cluster may have for a report to place into the room it freed
INLINE_PLACEMENT_NODES = 64


class AgentCommands(Reads):
    async def register(self, req: RegisterRequest, *, replace: bool) -> RegisterReply:
        """``replace``: an admin may take over a registered name without its token."""
        node, token = self.state.register(req, replace=replace)
        await self.commit()
        cfg = self.config
        return RegisterReply(
            node_id=node.id,
            node_token=token,
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            assignment_wait_s=cfg.assignment_wait_s,
        )

    async def heartbeat(self, node_id: str, req: HeartbeatRequest) -> HeartbeatReply:
        # Attempts the state no longer holds in memory: their ends say why to stop.
        await self.fetch_ended([r.job_id for r in req.running if r.job_id not in self.state.jobs])
        commands = self.state.heartbeat(node_id, req)
        await self.commit()
        return HeartbeatReply(
            heartbeat_interval_s=self.config.heartbeat_interval_s, commands=commands
        )

    async def assignments(self, node_id: str, after: int, wait: float) -> AssignmentsReply:
        """What the node was given after ``after``, with the values of the secrets each
        attempt needs; waits up to ``wait`` for some."""
        found, index = self.state.pending_assignments(node_id, after)
        if not found and wait > 0:
            await self.wait_for_node(node_id, wait)
            if not self.leading():
                # It stepped down while the poll waited: what memory holds now may
                # never have been committed. The agent asks the leader instead.
                raise NotLeader(
                    "this scheduler stopped leading while the poll waited; nothing was done",
                    {"leader_url": self.leader_url},
                )
            found, index = self.state.pending_assignments(node_id, after)
        found, failed = open_assignments(self.state, self.secret_box, found)
        if failed:
            # Jobs whose secrets are gone failed instead of starting: durable first.
            await self.commit()
        return AssignmentsReply(assignments=found, index=index)

    def _check_blobs(self, who: TokenRow, rep: Report) -> None:
        """A node names as a job's outputs or checkpoint only a blob it uploaded: naming
        another would hand that blob to the job's owner."""
        if blobholds.sees_every_blob(who):
            return
        for field, digest in (("outputs", rep.outputs), ("checkpoint", rep.checkpoint)):
            if digest is not None and not self.state.blob_holds.holds(digest, who.name):
                raise InvalidRequest(
                    f"no blob {digest!r} that this node uploaded", {"field": f"$.{field}"}
                )

    async def report(self, node_id: str, job_id: str, rep: Report, who: TokenRow) -> Job:
        self._check_blobs(who, rep)
        await self.fetch_ended([job_id])
        job = self.state.report(node_id, job_id, rep)
        self._place_into_freed_room()
        await self.commit()
        return job

    def _place_into_freed_room(self) -> None:
        """An attempt that ended freed room on its node: the pass that fills it runs
        before the report's commit, so that one write holds both the end and the next
        assignment, and the node's long poll is answered once that write is done.

        Only in clusters of up to INLINE_PLACEMENT_NODES nodes: a pass looks at every
        node, and in a larger cluster one pass per report would cost more than the
        write it saves; there the placement loop places what many reports freed."""
        if not self.state.effects.placement_wanted:
            return
        if len(self.state.nodes) > INLINE_PLACEMENT_NODES:
            return
        self.state.effects.placement_wanted = False
        with self.metrics.placement_seconds.time():
            touched = self.state.place()
        self.metrics.placements.inc(len(touched))

    async def report_batch(
        self, node_id: str, reports: list[JobReport], who: TokenRow
    ) -> ReportBatchReply:
        """Many reports in one commit; each is accepted or refused alone."""
        await self.fetch_ended([r.job_id for r in reports])
        results = []
        for item in reports:
            job_id = item.job_id
            try:
                self._check_blobs(who, item)
                job = self.state.report(node_id, job_id, item)
            except BerthError as e:
                results.append(ReportResult(job_id, False, error=e.to_body()["error"]))
            else:
                results.append(ReportResult(job_id, True, state=job.state))
        self._place_into_freed_room()
        await self.commit()
        return ReportBatchReply(results=results)

    async def append_log(
        self, node_id: str, job_id: str, attempt: int, offset: int, data: bytes
    ) -> int:
        """Append an attempt's log bytes at ``offset``; returns the log's end."""
        await self.fetch_ended([job_id])
        key = (job_id, attempt)
        if key not in self.state.log_ends:
            end = await self.log_end(job_id, attempt)
            self.state.log_ends.setdefault(key, end)
        end = self.state.append_log(node_id, job_id, attempt, offset, data)
        await self.commit()
        return end

    async def checkpoint(
        self,
        node_id: str,
        job_id: str,
        attempt: int,
        who: TokenRow,
        body: AsyncIterator[bytes],
        declared: int | None,
    ) -> str:
        """Store the archive of an attempt's /checkpoint and keep it for the job's next
        attempt. Checked before the body is stored (a refused upload leaves no blob
        behind) and again after: the job may have moved on while the body arrived."""
        await self.fetch_ended([job_id])
        self.state.check_checkpoint(node_id, job_id, attempt)
        stored = await self.store_blob(who, body, declared)
        await self.fetch_ended([job_id])
        self.state.record_checkpoint(node_id, job_id, attempt, stored.digest)
        await self.commit()
        return stored.digest
