"""Commands of operators: nodes (drain, forget), tokens, concurrency groups."""

from __future__ import annotations

from typing import Any

from common.models import Node, NodeList, OwnerList, OwnerStatus, Quota
from scheduler import access
from scheduler.service import Service
from scheduler.store.base import AuditRecord
from scheduler.tokens import TokenRow


class AdminCommands(Service):
    # --- nodes -----------------------------------------------------------------------

    def nodes(self) -> NodeList:
        nodes = sorted(self.state.nodes.values(), key=lambda n: n.name)
        return NodeList(nodes=nodes, index=self.state.events.committed_index)

    def node(self, node_id: str) -> Node:
        return self.state.node(node_id)

    async def drain(
        self, node_id: str, drain: bool, reason: str, who: TokenRow, *, requeue: bool = False
    ) -> Node:
        node = self.state.drain(node_id, drain, reason, requeue=requeue)
        action = "node.drain" if drain else "node.undrain"
        details: dict[str, Any] = {"name": node.name, "reason": reason}
        if requeue:
            details["requeue"] = True
        self.state.audit(who, action, node.id, details)
        await self.commit()
        return node

    async def forget_node(self, node_id: str, *, force: bool, who: TokenRow) -> dict[str, Any]:
        """Forget a node: its tokens stop working and its name may be registered again;
        409 while it runs jobs unless ``force``, which loses them."""
        node, lost = self.state.forget_node(node_id, force=force)
        details = {"name": node.name, "force": force, "lost_jobs": lost}
        self.state.audit(who, "node.forget", node.id, details)
        await self.commit()
        return {"id": node.id, "name": node.name, "lost_jobs": lost}

    # --- tokens ----------------------------------------------------------------------

    async def create_token(
        self, role: str, name: str, *, all_jobs: bool, who: TokenRow, quota: Quota | None = None
    ) -> tuple[TokenRow, str]:
        row, secret = self.state.create_token(role, name, all_jobs=all_jobs, by=who, quota=quota)
        await self.commit()
        return row, secret

    # --- owners: quotas and fair share -------------------------------------------------

    def owners(self, who: TokenRow) -> OwnerList:
        """Every owner for an admin or a token that sees every job; one's own otherwise."""
        names = self.state.owner_names()
        if not access.sees_all_jobs(who):
            names = [who.name]
        return OwnerList([self.state.owner_status(n) for n in names])

    async def set_quota(self, name: str, quota: Quota, who: TokenRow) -> OwnerStatus:
        self.state.set_quota(name, quota, by=who)
        await self.commit()
        return self.state.owner_status(name)

    def tokens(self, *, revoked: bool) -> list[TokenRow]:
        return self.state.tokens.listing(revoked=revoked)

    async def revoke_token(self, token_id: str, who: TokenRow) -> TokenRow:
        row = self.state.revoke_token(token_id, by=who)
        await self.commit()
        return row

    async def rotate_join_token(self, who: TokenRow) -> tuple[TokenRow, str]:
        row, secret = self.state.rotate_join_token(by=who)
        await self.commit()
        # Only once the new token is durable: a crash before this leaves the old file,
        # whose token the restarted scheduler refuses, not a file with an unknown token.
        self.write_join_token(secret)
        return row, secret

    async def audit_log(
        self, after: int, limit: int, **filters: str | None
    ) -> list[tuple[int, AuditRecord]]:
        return await self.store.read_audit(after, limit, **filters)

    # --- concurrency groups ----------------------------------------------------------

    def groups(self, who: TokenRow) -> dict[str, dict[str, int | None]]:
        # A submit token sees its own jobs only, in groups as anywhere else.
        return self.state.groups(access.owner_filter(who))

    async def set_group_limit(
        self, name: str, max_concurrent: int, who: TokenRow
    ) -> dict[str, Any]:
        self.state.set_group_limit(name, max_concurrent)
        self.state.audit(who, "group.limit", name, {"max_concurrent": max_concurrent})
        body = {"name": name, **self.state.groups()[name]}
        await self.commit()
        return body
