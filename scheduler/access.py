"""Who may see and change which jobs: the one place for those rules.

admin   everything, including tokens, drains, groups and the audit log
read    sees every job, node and event; changes nothing
submit  submits jobs, and sees and acts on the jobs it submitted (every job when the
        token was created with ``all_jobs``)
join    registers agents; node tokens act only for their own node (scheduler.http)

A job that is not the caller's is refused with the same 403 whether or not it exists
elsewhere, so a submit token cannot probe other people's jobs.

Secrets: admin and submit tokens set them, each its own (an admin also shared ones,
which every token's jobs may use); admin and read tokens list every secret, a submit
token its own and the shared ones; the owner deletes its own, an admin any. A job may
use its owner's secrets and the shared ones, whoever submitted it. Nobody reads a
value back: it goes only to the node that runs an attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from common.errors import Forbidden
from common.models import Job, JobSpec
from common.secret_models import SecretInfo
from scheduler.tokens import TokenRow

NOT_YOURS = "this token may not use that job"


def sees_all_jobs(who: TokenRow) -> bool:
    return who.role in ("admin", "read") or who.all_jobs


def may_see(who: TokenRow, job: Job) -> bool:
    return sees_all_jobs(who) or job.submitted_by == who.name


def check_job(who: TokenRow, job: Job | None) -> Job:
    """The job, if the caller may see it; 403 otherwise (also when it does not exist
    and the caller could not have seen it anyway)."""
    if job is None or not may_see(who, job):
        raise Forbidden(NOT_YOURS)
    return job


def check_group_limit(who: TokenRow, spec: JobSpec, limits: Mapping[str, int], at: str) -> None:
    """Only an admin sets a concurrency group's limit: a group is a name everyone
    shares, and a limit one submitter set would hold back everyone's jobs in it. A limit
    in a spec takes effect only when its group has none, so only then is it refused."""
    if (
        who.role == "admin"
        or spec.group is None
        or spec.group_max_concurrent is None
        or spec.group in limits
    ):
        return
    raise Forbidden(
        "only an admin sets a concurrency group's limit (PUT /api/v1/groups/NAME); "
        "submit without group_max_concurrent",
        {"field": f"{at}.group_max_concurrent"},
    )


def may_use_secret(owner: str | None, secret: SecretInfo) -> bool:
    """Whether a job of ``owner`` may use the secret."""
    return secret.shared or (owner is not None and secret.owner == owner)


def sees_secret(who: TokenRow, secret: SecretInfo) -> bool:
    """Whether the caller sees the secret listed (its name, owner and times)."""
    return who.role in ("admin", "read") or may_use_secret(who.name, secret)


def may_change_secret(who: TokenRow, secret: SecretInfo) -> bool:
    """Whether the caller may give the secret a new value or delete it."""
    return who.role == "admin" or (secret.owner == who.name and not secret.shared)


def check_secret_sharing(who: TokenRow, shared: bool) -> None:
    """Only an admin makes a secret every token's jobs may use."""
    if shared and who.role != "admin":
        raise Forbidden("only an admin makes a shared secret", {"field": "$.shared"})


def owner_filter(who: TokenRow) -> str | None:
    """The owner whose jobs a listing is limited to, or None for every job."""
    return None if sees_all_jobs(who) else who.name


#: job ids whose visibility one stream remembers before starting over
_REMEMBERED = 100_000


def job_visibility(
    who: TokenRow, owner_of: Callable[[str], str | None]
) -> Callable[[str], bool] | None:
    """For an event stream: which job ids' events the caller may see (None: all)."""
    if sees_all_jobs(who):
        return None
    seen: dict[str, bool] = {}

    def visible(job_id: str) -> bool:
        known = seen.get(job_id)
        if known is None:
            known = owner_of(job_id) == who.name
            if len(seen) >= _REMEMBERED:
                seen.clear()
            seen[job_id] = known
        return known

    return visible
