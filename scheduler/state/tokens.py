"""Tokens: who may call the scheduler, with which role."""

from __future__ import annotations

import msgspec

from common.errors import Conflict, InvalidRequest
from common.models import Owner, Quota
from scheduler.state.records import Records
from scheduler.tokens import JOIN, NAME_PATTERN, TokenBook, TokenRow, new_secret, token_digest


class Tokens(Records):
    def _setup(self) -> None:
        super()._setup()
        self.tokens = TokenBook()
        #: owners (token names) with a quota or fair-share usage on record
        self.owners: dict[str, Owner] = {}

    def add_token(
        self,
        token: str,
        role: str,
        name: str,
        node_id: str | None = None,
        *,
        all_jobs: bool = False,
        by: str | None = None,
    ) -> TokenRow:
        row = TokenRow(token_digest(token), role, name, node_id, all_jobs, self._stamp(), by, None)
        self.tokens.put(row)
        self.changes.tokens.append(row)
        return row

    def authenticate(self, token: str) -> TokenRow | None:
        return self.tokens.authenticate(token)

    def create_token(
        self, role: str, name: str, *, all_jobs: bool, by: TokenRow, quota: Quota | None = None
    ) -> tuple[TokenRow, str]:
        """A new person's token; the secret is returned once and never stored. A quota
        given with it becomes its name's."""
        self.tokens.check_new(role, name)
        if all_jobs and role != "submit":
            raise InvalidRequest("all_jobs applies to submit tokens only", {"field": "$.all_jobs"})
        secret = new_secret()
        row = self.add_token(secret, role, name, all_jobs=all_jobs, by=by.name)
        self.audit(by, "token.create", row.id, {"name": name, "role": role, "all_jobs": all_jobs})
        if quota:
            self.set_quota(name, quota, by=by)
        return row, secret

    def quota_of(self, owner: str) -> Quota | None:
        found = self.owners.get(owner)
        return found.quota if found is not None and found.quota else None

    def set_quota(self, name: str, quota: Quota, *, by: TokenRow) -> Owner:
        """Set (or, with an empty quota, lift) what a token name's jobs may take at once."""
        if not NAME_PATTERN.match(name):
            raise InvalidRequest(f"{name!r} is not a token name", {"field": "name"})
        owner = self.owners.get(name) or Owner(name)
        owner.quota = quota
        self.owners[name] = owner
        self.changes.owners[name] = owner
        self.audit(by, "quota.set", name, msgspec.structs.asdict(quota))
        # Jobs that waited for their quota may fit now (or others must wait).
        self._capacity_changed()
        return owner

    def revoke_token(self, token_id: str, *, by: TokenRow) -> TokenRow:
        row = self.tokens.find(token_id)
        if row.role == "admin" and row.revoked_at is None:
            admins = [r for r in self.tokens if r.role == "admin" and r.revoked_at is None]
            if len(admins) == 1:
                raise Conflict("this is the last admin token; create another one first")
        revoked = self.tokens.revoke(row, self._stamp())
        self.changes.tokens.append(revoked)
        self.audit(by, "token.revoke", row.id, {"name": row.name, "role": row.role})
        return revoked

    def rotate_join_token(self, *, by: TokenRow) -> tuple[TokenRow, str]:
        """A new join token; the old one stops working (registered nodes keep theirs)."""
        now = self._stamp()
        for row in list(self.tokens):
            if row.role == JOIN and row.revoked_at is None:
                self.changes.tokens.append(self.tokens.revoke(row, now))
        secret = new_secret()
        row = self.add_token(secret, JOIN, JOIN, by=by.name)
        self.audit(by, "token.rotate_join", row.id)
        return row, secret
