"""The token book and the rules of who sees which jobs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.errors import Conflict, Forbidden, InvalidRequest, NotFound
from common.models import Job, JobSpec
from common.states import JobState
from scheduler import access
from scheduler.tokens import TokenBook, TokenRow, new_secret, token_digest


def _row(secret: str, role: str, name: str, **kw: object) -> TokenRow:
    return TokenRow(token_digest(secret), role, name, **kw)  # type: ignore[arg-type]


def _job(owner: str) -> Job:
    return Job(
        id="0001",
        name="j",
        state=JobState.QUEUED,
        spec=JobSpec(image="busybox"),
        created_at=datetime.now(UTC),
        submitted_by=owner,
    )


def test_only_the_hash_is_kept_and_it_authenticates() -> None:
    secret = new_secret()
    book = TokenBook([_row(secret, "submit", "alice")])
    row = book.authenticate(secret)
    assert row is not None and row.name == "alice"
    assert secret not in repr(row)
    assert book.authenticate(secret + "x") is None
    assert book.authenticate("") is None
    assert len(row.id) == 12 and row.digest.startswith(row.id)


def test_a_revoked_token_stops_but_stays_known() -> None:
    secret = new_secret()
    book = TokenBook([_row(secret, "read", "viewer")])
    row = book.find("viewer")
    book.revoke(row, "2026-11-23T00:00:00.000000Z")
    assert book.authenticate(secret) is None
    assert book.live(row.digest) is None
    assert book.known(secret)
    with pytest.raises(Conflict):
        book.revoke(book.find(row.id), "2026-11-23T00:00:01.000000Z")
    assert [r.name for r in book.listing()] == []
    assert [r.name for r in book.listing(revoked=True)] == ["viewer"]


def test_new_tokens_need_a_person_role_and_a_free_plain_name() -> None:
    book = TokenBook([_row(new_secret(), "submit", "alice")])
    with pytest.raises(Conflict):
        book.check_new("read", "alice")
    for bad_name in ("", "node:evil", "a b", "x" * 65, "../x"):
        with pytest.raises(InvalidRequest) as e:
            book.check_new("read", bad_name)
        assert e.value.details["field"] == "$.name"
    for bad_role in ("node", "join", "root"):
        with pytest.raises(InvalidRequest) as e:
            book.check_new(bad_role, "bob")
        assert e.value.details["field"] == "$.role"
    book.check_new("read", "bob")


def test_node_tokens_are_not_found_or_listed_as_peoples() -> None:
    book = TokenBook([_row(new_secret(), "node", "node:a", node_id="n1")])
    with pytest.raises(NotFound):
        book.find("node:a")
    assert book.listing() == []
    assert [r.name for r in book.of_node("n1")] == ["node:a"]


def test_who_sees_which_jobs() -> None:
    alice = _row("a", "submit", "alice")
    ops = _row("o", "submit", "ops", all_jobs=True)
    reader = _row("r", "read", "viewer")
    admin = _row("x", "admin", "admin")
    job = _job("alice")
    assert access.may_see(alice, job)
    assert not access.may_see(_row("b", "submit", "bob"), job)
    assert all(access.may_see(who, job) for who in (ops, reader, admin))
    assert access.owner_filter(alice) == "alice"
    assert access.owner_filter(ops) is None
    with pytest.raises(Forbidden):
        access.check_job(_row("b", "submit", "bob"), job)
    # A missing job is refused exactly like another's.
    with pytest.raises(Forbidden) as e:
        access.check_job(alice, None)
    assert e.value.message == access.NOT_YOURS


def test_an_event_filter_remembers_what_it_looked_up() -> None:
    lookups: list[str] = []

    def owner_of(job_id: str) -> str | None:
        lookups.append(job_id)
        return "alice" if job_id == "mine" else None

    visible = access.job_visibility(_row("a", "submit", "alice"), owner_of)
    assert visible is not None
    assert visible("mine") and visible("mine")
    assert not visible("other")
    assert lookups == ["mine", "other"]
    assert access.job_visibility(_row("r", "read", "viewer"), owner_of) is None
