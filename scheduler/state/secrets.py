"""Stored secrets in the state: their records, with values sealed, and what follows when
one goes.

The state never holds a value in the clear: the commands seal a value before it comes
here and open it only to put it in an assignment (``scheduler.secretbox``). A job
names a secret in its env or as its image_pull_secret; it may name only its owner's
secrets and shared ones, which is checked when the job is submitted and again when an
attempt's assignment is built.
A secret that is deleted fails the queued jobs that still need it (``secret_missing``);
jobs on nodes keep going, as their agents hold the value already.
"""

from __future__ import annotations

import msgspec

from common.errors import Conflict, InvalidRequest, NotFound
from common.models import Job, JobSpec, SecretRef
from common.schedule_models import Schedule
from common.secret_models import SecretInfo
from common.states import JobState
from scheduler import access
from scheduler.state.records import dt
from scheduler.state.schedules import Schedules
from scheduler.store.base import Loaded, SealedSecret

#: the error code of a job that needs a secret it may not have (deleted, or not its own)
SECRET_MISSING = "secret_missing"
#: the error code of a job whose secret does not open under this scheduler's key
SECRET_UNREADABLE = "secret_unreadable"


class Secrets(Schedules):
    def _setup(self) -> None:
        super()._setup()
        #: name -> the stored secret, its value sealed
        self.secrets: dict[str, SealedSecret] = {}

    def load(self, loaded: Loaded) -> None:
        super().load(loaded)
        self.secrets = {s.name: s for s in loaded.secrets}

    # --- reads -----------------------------------------------------------------------

    def usable_secret(self, name: str, owner: str | None) -> SealedSecret | None:
        """The secret a job of ``owner`` gets for ``name``: its owner's or a shared one."""
        found = self.secrets.get(name)
        if found is None or not access.may_use_secret(owner, found.info):
            return None
        return found

    def check_secret_refs(self, spec: JobSpec, owner: str | None, at: str) -> None:
        """Refuse a spec whose env or image_pull_secret names a secret its owner may not
        use; the same answer whether the secret is another owner's or does not exist."""
        for key, value in spec.env.items():
            if isinstance(value, SecretRef) and self.usable_secret(value.secret, owner) is None:
                raise InvalidRequest(
                    f"env {key}: no secret {value.secret!r} that this token may use "
                    "(its own secrets and shared ones)",
                    {"field": f"{at}.env.{key}"},
                )
        pull = spec.image_pull_secret
        if pull is not None and self.usable_secret(pull, owner) is None:
            raise InvalidRequest(
                f"image_pull_secret: no secret {pull!r} that this token may use "
                "(its own secrets and shared ones)",
                {"field": f"{at}.image_pull_secret"},
            )

    # --- changes ---------------------------------------------------------------------

    def _admit_run(self, schedule: Schedule) -> None:
        """A schedule's run that names a secret its owner may no longer use is not
        submitted to fail: the firing is skipped, saying why."""
        super()._admit_run(schedule)
        self.check_secret_refs(schedule.job, schedule.owner, "$.job")

    def put_secret(self, name: str, owner: str, shared: bool, key_id: str, sealed: bytes) -> bool:
        """Store a new secret, or a new value for an existing one (it keeps its owner);
        True when it is new. Whether ``owner`` may change it is the caller's check."""
        now = dt(self.clock())
        old = self.secrets.get(name)
        info = SecretInfo(
            name=name,
            owner=old.info.owner if old is not None else owner,
            shared=shared,
            created_at=old.info.created_at if old is not None else now,
            updated_at=now,
        )
        record = SealedSecret(info, key_id, sealed)
        self.secrets[name] = record
        if name in self.changes.deleted_secrets:
            self.changes.deleted_secrets.remove(name)
        self.changes.secrets[name] = record
        return old is None

    def delete_secret(self, name: str) -> tuple[SecretInfo, list[str]]:
        """Delete a secret and fail the queued jobs that name it; returns the secret as
        it was and the ids of the jobs failed."""
        gone = self.secrets.pop(name, None)
        if gone is None:
            raise NotFound(f"no secret {name!r}", {"field": "name"})
        self.changes.secrets.pop(name, None)
        self.changes.deleted_secrets.append(name)
        failed = []
        why = f"secret {name!r} was deleted"
        for job in [j for j in self.jobs.values() if j.state is JobState.QUEUED]:
            if name in job.spec.secret_names():
                self.fail_for_secret(job, why, SECRET_MISSING)
                failed.append(job.id)
        return msgspec.structs.replace(gone.info), failed

    def fail_for_secret(self, job: Job, why: str, code: str) -> None:
        """End a job that cannot get a secret it needs (queued, or assigned but not yet
        handed to its agent): failed, with ``code``, whatever retries it has left."""
        if job.state not in (JobState.QUEUED, JobState.ASSIGNED):
            raise Conflict(f"job {job.id} is {job.state.value}", {"state": job.state})
        node_id = job.node_id
        job.error = why
        job.error_code = code
        self._set_state(job, JobState.FAILED, reason=why)
        if node_id:
            self._wake_node(node_id)
