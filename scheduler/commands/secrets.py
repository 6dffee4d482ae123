"""Commands about stored secrets: set, list, show, delete; and the one place a value is
opened, to go into an assignment.

Each command checks, applies, commits and returns: returned means durable, raised means
nothing changed. Who may do what is ``scheduler.access``'s. Changes are the leader's; a
standby answers reads from what the store holds. No reply carries a value.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from common.errors import Conflict, Forbidden, NotFound, Unavailable
from common.models import Assignment
from common.secret_models import SecretDeleted, SecretInfo, SecretList, SecretSet
from scheduler import access
from scheduler.secretbox import SecretBox, SecretUnreadable
from scheduler.service import Service
from scheduler.state import State
from scheduler.state.secrets import SECRET_MISSING, SECRET_UNREADABLE
from scheduler.store.base import SealedSecret
from scheduler.tokens import TokenRow


def open_assignments(
    state: State, box: SecretBox | None, found: list[Assignment]
) -> tuple[list[Assignment], bool]:
    """``found`` with the values of the secrets each needs, opened for its job's owner.
    An attempt whose secret is gone (deleted, or no longer the owner's to use) or does
    not open under this key is not handed out: its job fails with ``secret_missing``
    or ``secret_unreadable``. Returns what may be handed out, and whether a job failed
    (then the state holds changes to commit)."""
    out: list[Assignment] = []
    failed = False
    if not any(a.spec.env or a.spec.image_pull_secret for a in found):
        return found, False  # the common case: nothing to look at
    for assignment in found:
        names = assignment.spec.secret_names()
        job = state.jobs.get(assignment.job_id) if names else None
        if job is None:
            out.append(assignment)
            continue
        values: dict[str, str] = {}
        for name in names:
            record = state.usable_secret(name, job.submitted_by)
            if record is None:
                why = f"secret {name!r} no longer exists for this job's owner"
                state.fail_for_secret(job, why, SECRET_MISSING)
                break
            try:
                if box is None:
                    raise SecretUnreadable("the scheduler has no secrets key yet")
                values[name] = box.open(name, record.sealed, record.key_id).decode()
            except (SecretUnreadable, UnicodeDecodeError) as e:
                state.fail_for_secret(
                    job, f"secret {name!r} cannot be read: {e}", SECRET_UNREADABLE
                )
                break
        if len(values) < len(names):
            failed = True
            continue
        out.append(msgspec.structs.replace(assignment, secrets=values))
    return out, failed


class SecretCommands(Service):
    def _sealing(self) -> SecretBox:
        if self.secret_box is None:
            raise Unavailable("the scheduler is starting; try again")
        return self.secret_box

    async def set_secret(self, req: SecretSet, who: TokenRow) -> tuple[SecretInfo, bool]:
        """Create a secret, or give an existing one of the caller's a new value (an
        admin: any); returns it as shown and whether it is new."""
        access.check_secret_sharing(who, req.shared is True)
        old = self.state.secrets.get(req.name)
        if old is not None and not access.may_change_secret(who, old.info):
            if old.info.shared:
                raise Forbidden("only an admin changes a shared secret", {"field": "$.name"})
            raise Conflict(
                f"a secret named {req.name!r} belongs to another owner; choose another name",
                {"field": "$.name"},
            )
        box = self._sealing()
        sealed = box.seal(req.name, req.value.encode())
        shared = req.shared if req.shared is not None else (old is not None and old.info.shared)
        created = self.state.put_secret(req.name, who.name, shared, box.key_id, sealed)
        action = "secret.create" if created else "secret.update"
        self.state.audit(who, action, req.name, {"shared": shared})
        shown = msgspec.structs.replace(self.state.secrets[req.name].info)
        await self.commit()
        return shown, created

    async def delete_secret(self, name: str, who: TokenRow) -> SecretDeleted:
        """Delete a secret; the queued jobs that need it fail (``secret_missing``)."""
        found = self._visible_secret(who, name, self.state.secrets)
        if not access.may_change_secret(who, found):
            raise Forbidden("only its owner or an admin deletes a secret", {"field": "name"})
        info, failed = self.state.delete_secret(name)
        self.state.audit(who, "secret.delete", name, {"failed_jobs": len(failed)})
        await self.commit()
        return SecretDeleted(secret=info, failed_jobs=failed)

    def _visible_secret(
        self, who: TokenRow, name: str, known: Mapping[str, SealedSecret]
    ) -> SecretInfo:
        """The secret, if the caller may see it; 404 alike when it does not exist and
        when the caller may not see it."""
        found = known.get(name)
        if found is None or not access.sees_secret(who, found.info):
            raise NotFound(f"no secret {name!r}", {"field": "name"})
        return found.info

    async def _readable_secrets(self) -> Mapping[str, SealedSecret]:
        """The secrets reads are answered from: memory on the leader; on a standby,
        which does not follow them, what the store holds committed."""
        if not self.leading():
            stored = await self.store.read_secrets()
            if stored is not None:
                return {s.name: s for s in stored}
        return self.state.secrets

    async def get_secret(self, name: str, who: TokenRow) -> SecretInfo:
        return self._visible_secret(who, name, await self._readable_secrets())

    async def list_secrets(self, who: TokenRow) -> SecretList:
        known = await self._readable_secrets()
        shown = [known[n].info for n in sorted(known) if access.sees_secret(who, known[n].info)]
        return SecretList(secrets=shown)
