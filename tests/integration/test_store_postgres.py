"""The PostgreSQL store on a real server: its schema made once by whoever comes first,
the epoch fence, what standbys follow (seq, tombstones, NOTIFY), a lost writer
connection, and the values every scheduler shares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from common.errors import Unavailable
from common.states import JobState
from scheduler.store.base import AuditRecord, BlobHold, Changes, LogChunk
from scheduler.store.postgres import NOTIFY_CHANNEL, Deposed, PostgresStore
from scheduler.store.postgres_schema import SCHEMA_VERSION
from tests.integration.test_store_contract import (
    DIGEST,
    event,
    make_job,
    make_node,
    token,
)
from tests.pg import PgCluster, pg_cluster, pg_dsn  # noqa: F401
from tests.support import wait_until

# The stores are this module's subject: it is not repeated per store.
pytestmark = pytest.mark.stores("sqlite")


def db_name(dsn: str) -> str:
    return dsn.split("/")[3].split("?")[0]


@pytest.fixture
async def admin(pg_cluster: PgCluster, pg_dsn: str) -> AsyncIterator[Any]:  # noqa: F811
    """A superuser connection to the test's database, beside the stores'."""
    conn = await pg_cluster.connect(db_name(pg_dsn))
    yield conn
    await conn.close()


@pytest.fixture
async def stores(pg_dsn: str) -> AsyncIterator[list[PostgresStore]]:  # noqa: F811
    """Two schedulers' stores on one database, opened at once."""
    pair = [PostgresStore(pg_dsn), PostgresStore(pg_dsn)]
    # Both find a new database and make its schema: the second waits for the first.
    await asyncio.gather(*(s.open() for s in pair))
    for s in pair:
        # Retry fast while failing, so that recovery is seen without long waits.
        s._group.retry_s = 0.05
    yield pair
    for s in pair:
        await s.close()


async def waiting_for_locks(admin: Any, n: int) -> list[int] | None:
    """The store connections waiting on a lock, once there are ``n`` of them."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'berth-scheduler' "
        "AND datname = current_database() AND wait_event_type = 'Lock'"
    )
    return [r[0] for r in rows] if len(rows) >= n else None


# --- schema ------------------------------------------------------------------------------


async def test_two_schedulers_opening_a_new_database_share_one_schema(
    stores: list[PostgresStore], admin: Any
) -> None:
    a, b = stores
    job = make_job(1)
    await a.commit(Changes(jobs={job.id: job}))
    assert await b.read_jobs([job.id]) == {job.id: msgspec.json.encode(job)}
    leader = await b.leader_row()
    assert (leader["epoch"], leader["holder"], leader["last_index"]) == (0, None, 0)
    indexes = {r[0] for r in await admin.fetch("SELECT indexname FROM pg_indexes")}
    assert {"events_job", "jobs_ended", "audit_target"} <= indexes


async def test_a_database_of_an_earlier_schema_gains_the_secrets_table(
    pg_dsn: str,  # noqa: F811
    admin: Any,
) -> None:
    first = PostgresStore(pg_dsn)
    await first.open()
    await first.close()
    # As the release before secrets left it: schema version 3, no secrets table.
    await admin.execute(
        "DROP TABLE secrets; UPDATE meta SET value = 3 WHERE key = 'schema_version'"
    )
    again = PostgresStore(pg_dsn)
    try:
        loaded = await again.open()
        assert loaded.secrets == []
        assert await admin.fetchval("SELECT to_regclass('secrets')") is not None
        version = "SELECT value FROM meta WHERE key = 'schema_version'"
        assert await admin.fetchval(version) == SCHEMA_VERSION == 5
    finally:
        await again.close()


# --- the epoch fence ---------------------------------------------------------------------


async def test_a_deposed_leader_writes_nothing_of_its_batch(
    stores: list[PostgresStore], admin: Any
) -> None:
    a, b = stores
    assert await a.take_leadership("a", "http://a:8080") == 1
    first = make_job(1)
    await a.commit(Changes(jobs={first.id: first}, events=[event(1, first.id)]))
    assert await b.take_leadership("b", "http://b:8080") == 2
    leader = await a.leader_row()
    assert (leader["epoch"], leader["holder"], leader["url"]) == (2, "b", "http://b:8080")
    assert leader["at"] is not None

    late = make_job(2)
    batch = Changes(
        jobs={late.id: late, first.id: make_job(1, JobState.RUNNING)},
        events=[event(2, late.id)],
        logs=[LogChunk(late.id, 1, 0, b"x")],
        audit=[AuditRecord("t", "alice", "submit", "job.submit", late.id)],
        tokens=[token(1)],
    )
    with pytest.raises(Unavailable) as raised:
        await a.commit(batch)
    assert a.deposed and not b.deposed
    assert "deposed" in str(raised.value) and "epoch 1" in str(raised.value)
    assert a.failure is not None and "epoch 2" in a.failure
    # Nothing of the batch, and no later try of it, is in the database.
    assert [r[0] for r in await admin.fetch("SELECT idx FROM events")] == [1]
    assert await admin.fetchval("SELECT count(*) FROM logs") == 0
    assert await admin.fetchval("SELECT count(*) FROM audit") == 0
    assert await admin.fetchval("SELECT count(*) FROM tokens") == 0
    assert await b.read_jobs([first.id, late.id]) == {first.id: msgspec.json.encode(first)}
    # Writes outside the group commit are fenced the same way.
    with pytest.raises(Deposed, match=r"epoch 1.*epoch 2"):
        await a.delete_jobs([first.id])
    assert (await admin.fetchval("SELECT last_index FROM leader")) == 1

    # The new leader writes, and continues from the last index written.
    await b.commit(Changes(jobs={late.id: late}, events=[event(2, late.id)]))
    assert (await b.leader_row())["last_index"] == 2


async def test_taking_the_lead_waits_for_a_write_in_flight_and_fences_the_next(
    stores: list[PostgresStore], admin: Any
) -> None:
    a, b = stores
    await a.take_leadership("a", "http://a")
    job = make_job(1)
    # The admin holds the jobs table: a's write takes the leader row, then waits.
    tx = admin.transaction()
    await tx.start()
    await admin.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
    writing = asyncio.create_task(a.commit(Changes(jobs={job.id: job})))
    await wait_until(lambda: waiting_for_locks(admin, 1), timeout=10, interval=0.01)
    taking = asyncio.create_task(b.take_leadership("b", "http://b"))
    await wait_until(lambda: waiting_for_locks(admin, 2), timeout=10, interval=0.01)
    assert not taking.done()
    await tx.rollback()
    # a led when it checked: its write lands, then b's bump goes through.
    await writing
    assert await taking == 2
    assert await b.read_jobs([job.id]) == {job.id: msgspec.json.encode(job)}
    with pytest.raises(Unavailable):
        await a.commit(Changes(jobs={"x": make_job(2)}))


async def test_taking_the_lead_again_lets_a_deposed_store_write(
    stores: list[PostgresStore],
) -> None:
    a, b = stores
    await a.take_leadership("a", "http://a")
    await b.take_leadership("b", "http://b")
    with pytest.raises(Deposed):
        await a.delete_jobs(["x"])
    assert await a.take_leadership("a", "http://a") == 3
    assert not a.deposed
    await a.delete_jobs(["x"])
    with pytest.raises(Deposed, match=r"epoch 2.*epoch 3"):
        await b.delete_jobs(["x"])


# --- following: seq, tombstones, NOTIFY ----------------------------------------------------


async def test_read_since_returns_rows_and_tombstones_written_after_a_seq(
    stores: list[PostgresStore],
) -> None:
    leader, standby = stores
    one, two = make_job(1), make_job(2, JobState.COMPLETED)
    await leader.commit(
        Changes(
            jobs={one.id: one},
            nodes={"node-1": make_node(1), "node-2": make_node(2)},
            tokens=[token(1), token(2)],
            groups={"g": 1},
            idempotency=[("k1", one.id)],
            blob_holds={DIGEST: (BlobHold(DIGEST, "alice", 3),)},
            events=[event(1, one.id)],
        )
    )
    before = (await leader.leader_row())["seq"]
    everything = await standby.read_since(0)
    assert everything.seq == before
    assert [j.id for j in everything.jobs] == [one.id]
    assert len(everything.nodes) == 2 and len(everything.tokens) == 2
    assert everything.groups == {"g": 1} and everything.idempotency == {"k1": one.id}
    assert everything.blob_holds == [BlobHold(DIGEST, "alice", 3)]
    assert everything.events == [event(1, one.id)]
    # A blob's holds are replaced whole, so each write of them buries the old ones.
    assert everything.tombstones == [(before, "blob_holds", DIGEST)]

    running = make_job(1, JobState.RUNNING)
    await leader.commit(
        Changes(
            jobs={one.id: running, two.id: two},
            events=[event(2, one.id), event(3, two.id)],
            revoked_tokens=[token(1).digest],
            tokens=[token(3)],
            forgotten_nodes=["node-2"],
            blob_holds={DIGEST: (BlobHold(DIGEST, "bob"),)},
            idempotency=[("k2", two.id)],
            groups={"g": 5},
        )
    )
    batch = (await leader.leader_row())["seq"]
    await leader.delete_jobs([two.id])
    now = (await leader.leader_row())["seq"]
    assert before < batch < now

    since = await standby.read_since(before)
    assert since.seq == now
    assert since.jobs == [running]
    assert since.nodes == []
    assert since.tokens == [token(3)]
    assert since.groups == {"g": 5}
    # The deleted job's key went with it; the tombstone says so.
    assert since.idempotency == {}
    assert since.blob_holds == [BlobHold(DIGEST, "bob", 0)]
    assert since.events == [event(2, one.id)]
    assert sorted(since.tombstones) == sorted(
        [
            (batch, "tokens", token(1).digest),
            (batch, "blob_holds", DIGEST),
            (batch, "nodes", "node-2"),
            (now, "jobs", two.id),
        ]
    )
    nothing = await standby.read_since(now)
    assert (nothing.seq, nothing.jobs, nothing.tombstones) == (now, [], [])
    # Or start over from the database, as a scheduler taking the lead does (the index
    # of the deleted job's event is not handed out again).
    loaded = await standby.load_state()
    assert (loaded.jobs, standby.loaded_seq, loaded.last_index) == ([running], now, 3)


async def test_every_commit_notifies_its_seq_once_committed(
    stores: list[PostgresStore], admin: Any
) -> None:
    store = stores[0]
    heard: asyncio.Queue[str] = asyncio.Queue()
    await admin.add_listener(NOTIFY_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    await store.commit(Changes(jobs={"a": make_job(1)}))
    async with asyncio.timeout(10):
        payload = await heard.get()
    assert payload == str((await store.leader_row())["seq"])
    await store.delete_jobs(["a"])
    async with asyncio.timeout(10):
        assert int(await heard.get()) == int(payload) + 1


async def test_the_events_last_index_and_seq_survive_a_reopen(
    pg_dsn: str,  # noqa: F811
) -> None:
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.commit(Changes(events=[event(i) for i in range(1, 6)]))
    await store.commit(Changes(groups={"g": 1}))
    row = await store.leader_row()
    assert row["last_index"] == 5
    # Retention drops every event of no job but the newest; the index still continues.
    await store.prune_events(1)
    await store.close()
    again = PostgresStore(pg_dsn)
    loaded = await again.open()
    assert loaded.last_index == 5 and loaded.events_pruned_below == 5
    assert again.loaded_seq == (await again.leader_row())["seq"]
    await again.close()


# --- a lost connection -------------------------------------------------------------------


async def test_a_killed_writer_connection_is_replaced_and_the_batch_lands(
    stores: list[PostgresStore], admin: Any
) -> None:
    store = stores[0]
    await store.commit(Changes(jobs={"a": make_job(1)}))
    tx = admin.transaction()
    await tx.start()
    await admin.execute("SELECT 1 FROM leader FOR UPDATE")
    job = make_job(2)
    changes = Changes(jobs={job.id: job}, logs=[LogChunk(job.id, 1, 0, b"out")])
    writing = asyncio.create_task(store.commit(changes))
    (writer,) = await wait_until(lambda: waiting_for_locks(admin, 1), timeout=10, interval=0.01)
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", writer)
    with pytest.raises(Unavailable):
        await writing
    assert store.failure is not None
    await tx.rollback()
    # Nobody commits: the store retries on a new connection and the batch lands.
    await wait_until(lambda: store.failure is None, timeout=10)
    assert store.take_recovered() == [changes]
    assert await admin.fetchval("SELECT doc FROM jobs WHERE id = $1", job.id) == (
        msgspec.json.encode(job)
    )
    assert await store.read_log(job.id, 1, 0, 10) == b"out"


async def test_killed_idle_connections_are_replaced_on_next_use(
    stores: list[PostgresStore], admin: Any
) -> None:
    store = stores[0]
    await store.commit(Changes(jobs={"a": make_job(1)}))
    await store.read_jobs(["a"])
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'berth-scheduler' AND datname = current_database()"
    )
    assert killed >= 2
    await wait_until(lambda: store._conn is None or store._conn.is_closed(), timeout=10)
    job = make_job(2)
    await store.commit(Changes(jobs={job.id: job}))
    assert await store.read_jobs([job.id]) == {job.id: msgspec.json.encode(job)}


# --- values every scheduler shares -------------------------------------------------------


async def test_a_shared_value_is_stored_once_whoever_asks_first(
    stores: list[PostgresStore],
) -> None:
    a, b = stores
    assert await a.get_kv("webhook-key") is None
    got = await asyncio.gather(
        a.put_kv_once("webhook-key", b"one"), b.put_kv_once("webhook-key", b"two")
    )
    assert got[0] == got[1] and got[0] in (b"one", b"two")
    assert await b.put_kv_once("webhook-key", b"three") == got[0]
    assert await a.get_kv("webhook-key") == got[0]
    secret = await a.shared_secret("sessions", lambda: "made-by-a")
    assert secret == "made-by-a"
    assert await b.shared_secret("sessions", lambda: "made-by-b") == "made-by-a"


def test_dsn_names_a_socket_directory_without_spaces(pg_dsn: str) -> None:  # noqa: F811
    assert " " not in pg_dsn and pg_dsn.startswith("postgresql://postgres@/test_")
