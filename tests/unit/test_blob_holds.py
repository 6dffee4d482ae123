"""The book of who holds which blob: what each hold charges its name's quota, what a
change records for the store, uploads in flight counted at their declared size, and
the read rule for each kind of token."""

from __future__ import annotations

import pytest

from common.errors import PayloadTooLarge
from common.models import Constraints
from scheduler.blobholds import BlobHolds, may_read
from scheduler.store.base import BlobHold, Changes
from scheduler.tokens import TokenRow
from tests.unit.test_cluster import FakeClock, new_cluster, register, submit

A = "a" * 64
B = "b" * 64
ALICE = TokenRow("d1", "submit", "alice")
BOB = TokenRow("d2", "submit", "bob")


def test_an_upload_is_charged_once_and_a_sweep_gives_its_bytes_back() -> None:
    holds = BlobHolds()
    changes = Changes()
    holds.hold(A, "alice", 100, changes)
    holds.hold(A, "alice", 100, Changes())
    holds.hold(B, "alice", 50, changes)
    # bob owns a job whose outputs A is: he may read it, it costs him nothing
    holds.hold(A, "bob", 0, changes)
    assert holds.stored_bytes("alice") == 150
    assert holds.stored_bytes("bob") == 0
    assert changes.blob_holds[A] == (BlobHold(A, "alice", 100), BlobHold(A, "bob", 0))
    # a job owner who uploads the blob later is charged for it then
    holds.hold(A, "bob", 100, changes)
    assert holds.stored_bytes("bob") == 100
    swept = Changes()
    holds.drop(A, swept)
    assert swept.blob_holds == {A: ()}
    assert not holds.holds(A, "alice") and holds.holds(B, "alice")
    assert holds.stored_bytes("alice") == 50 and holds.stored_bytes("bob") == 0


def test_holds_are_read_back_from_their_rows() -> None:
    holds = BlobHolds([BlobHold(A, "alice", 100), BlobHold(B, "alice", 7), BlobHold(B, "bob")])
    assert holds.stored_bytes("alice") == 107
    assert holds.holds(B, "bob") and not holds.holds(A, "bob")


def test_uploads_in_flight_count_against_the_quota_until_they_end() -> None:
    holds = BlobHolds([BlobHold(A, "alice", 600)])
    with holds.admit_upload(ALICE, 300, quota=1000):
        with pytest.raises(PayloadTooLarge) as refused, holds.admit_upload(ALICE, 200, 1000):
            pass
        assert refused.value.details["pending_bytes"] == 300
        with holds.admit_upload(BOB, 1000, quota=1000):
            pass
    with holds.admit_upload(ALICE, 400, quota=1000):
        pass
    admin = TokenRow("d0", "admin", "root")
    with holds.admit_upload(admin, 10**12, quota=1000):
        pass
    with holds.admit_upload(ALICE, 10**12, quota=0):
        pass


def test_a_node_reads_only_what_an_attempt_on_it_starts_from(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c, "here", labels={"pool": "here"})
    other = register(c, "elsewhere", labels={"pool": "other"})
    job = submit(c, inputs=A, constraints=Constraints(labels={"pool": "here"}))
    c.place()
    assert c.job(job.id).node_id == node.id
    here = TokenRow("dn", "node", "node:here", node.id)
    elsewhere = TokenRow("dm", "node", "node:elsewhere", other.id)
    assert may_read(c, here, A)
    assert not may_read(c, here, B)
    assert not may_read(c, elsewhere, A)
    c.cancel(job.id, by="t")
    assert not may_read(c, here, A)
    # The uploader, the read role and tokens that see every job.
    c.blob_holds.hold(B, "alice", 10, c.changes)
    assert may_read(c, ALICE, B) and not may_read(c, BOB, B)
    assert may_read(c, TokenRow("dr", "read", "auditor"), B)
    assert may_read(c, TokenRow("da", "submit", "ops", all_jobs=True), B)
