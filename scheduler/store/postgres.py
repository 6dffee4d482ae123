"""PostgreSQL store: one writer connection for the group commit, a small pool for reads.

What it promises, as the SQLite store does: a batch is written in ONE transaction on a
dedicated connection (never one from the pool, so that nothing else queues on it); if
that raises, PostgreSQL rolls the transaction back, nothing of the batch is written and
the group commit keeps it staged and tries again. A connection that was lost, timed
out or cancelled in the middle is thrown away, and the next try opens a new one. When
the connection drops during COMMIT the batch may have landed all the same: the retry
writes it again, which the per-table writes of ``scheduler.store.base`` make harmless
(upserts, insert-once rows), except that its audit rows are appended twice.

Several schedulers may share the database; one leads and writes. Every write
transaction first takes the row lock of the ``leader`` row and bumps its ``seq``:
writes are serialised in commit order, and when ``epoch`` is set (this store leads)
the transaction fails with ``Deposed``, writing nothing, once another scheduler has
taken the lead (``take_leadership`` bumps the epoch under the same lock, so it waits
for a write in flight, or the write after it is refused). A deposed store writes no
more until it takes the lead again.

For hot standbys each write transaction stamps the rows it upserts with its ``seq``,
records what it deleted in ``tombstones`` and notifies ``NOTIFY_CHANNEL`` on commit;
``read_since`` returns what changed after a given ``seq``.

Documents are encoded exactly as the SQLite store encodes them, so both return the
same bytes from ``read_jobs`` and ``read_raw_events``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from common.history_models import StatsSample, UsagePoint
from common.models import Job, Node, Owner
from common.schedule_models import Schedule
from common.secret_models import SecretInfo
from common.states import JobState
from scheduler import pgconnect
from scheduler.events import Event
from scheduler.store.base import (
    AuditRecord,
    BlobHold,
    Changes,
    EndedRows,
    Loaded,
    RawEvent,
    SealedSecret,
    Store,
    cutoff_seconds,
    job_columns,
)
from scheduler.store.postgres_schema import (
    BURY,
    FENCE,
    LIVE_LOG_ENDS,
    LOAD_ARCHIVED,
    LOAD_ENDED,
    LOAD_LIVE,
    LOG_ENDS,
    NOTIFY,
    PRUNED_BELOW,
    TAKE_LEAD,
    TOKEN_SELECT,
    WRITES,
    prepare,
)
from scheduler.store.records import USAGE_KEPT, history_doc
from scheduler.tokens import TokenRow

log = logging.getLogger(__name__)

#: connections of the read pool (the writer has one of its own besides)
POOL_SIZE = 4
#: longest one statement may run before it is abandoned (seconds); a write abandoned so
#: fails and is retried by the group commit on a new connection
COMMAND_TIMEOUT_S = 30.0
#: how the server knows these connections, and how long a transaction left idle may
#: keep its locks (a hung scheduler must not hold the leader row for long)
SERVER_SETTINGS = {
    "application_name": "berth-scheduler",
    "idle_in_transaction_session_timeout": "5000",
}
#: the channel each write transaction notifies on commit; the payload is its seq
NOTIFY_CHANNEL = "berth_commit"
#: rows per round trip when a start streams the jobs table
_FETCH_ROWS = 10_000
_STATES = {s.value: s for s in JobState}

_Row = tuple[Any, ...]


class Deposed(Exception):
    """A write was refused: another scheduler took the lead since this one did."""

    def __init__(self, mine: int, current: int) -> None:
        super().__init__(
            f"deposed: this scheduler leads epoch {mine}, the database is at epoch {current}"
        )
        self.mine = mine
        self.current = current


@dataclass(slots=True)
class ChangesSince:
    """What the write transactions after a given ``seq`` left in the database, read in
    one snapshot. A follower applies ``tombstones`` first, then the rows: a row here is
    its key's current version, and a tombstone whose key has no row here means the key
    is gone (for ``blob_holds``: the digest's holds were replaced by those here, if
    any; for ``jobs``: the job went with its events, logs and idempotency keys)."""

    #: the seq of the newest write transaction this holds
    seq: int
    jobs: list[Job] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    tokens: list[TokenRow] = field(default_factory=list)
    groups: dict[str, int] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    blob_holds: list[BlobHold] = field(default_factory=list)
    #: oldest first
    events: list[Event] = field(default_factory=list)
    #: (seq, table, key), oldest first
    tombstones: list[tuple[int, str, str]] = field(default_factory=list)
    events_pruned_below: int = 0


@dataclass(slots=True)
class _Rows:
    """One batch as rows for ``WRITES`` (each field one statement's rows)."""

    jobs: list[_Row]
    nodes: list[_Row]
    events: list[_Row]
    idempotency: list[_Row]
    tokens: list[_Row]
    audit: list[_Row]
    revoked: list[_Row]
    logs: list[_Row]
    groups: list[_Row]
    blobs: list[_Row]
    blob_holds: list[_Row]
    forgotten_nodes: list[_Row]
    schedules: list[_Row]
    deleted_schedules: list[_Row]
    owners: list[_Row]
    secrets: list[_Row]
    deleted_secrets: list[_Row]
    history: list[_Row]
    history_cut: list[_Row]
    usage: list[_Row]
    usage_thin: list[_Row]
    #: (table, key) of every row the batch deletes
    tombstones: list[tuple[str, str]]
    #: the batch's greatest event index, None when it has no events
    last_index: int | None


class PostgresStore(Store):
    """The store for production and high availability: one PostgreSQL database.

    Parameters:
        dsn: where the database is, e.g. ``postgresql://berth@db/berth`` (a Unix socket
            directory goes in ``?host=``).
        load_ended_docs: whether ``open`` also reads ended jobs' documents into
            ``Loaded.archived`` (and log ends of ended jobs); ``Loaded.ended`` is filled
            either way, from the columns alone.
    """

    def __init__(self, dsn: str, *, load_ended_docs: bool = True) -> None:
        super().__init__()
        self.dsn = dsn
        self.load_ended_docs = load_ended_docs
        #: the epoch this store leads; while set, every write checks it (None: no check)
        self.epoch: int | None = None
        #: the seq of the newest write transaction the state ``open`` read holds
        self.loaded_seq = 0
        #: the epoch that deposed this store, once a write found the lead taken
        self._deposed_by: int | None = None
        self._pool: Any = None
        self._conn: Any = None
        # The writer connection runs one operation at a time: writes, deletions and
        # taking the lead queue here.
        self._lock = asyncio.Lock()
        self._job_encoder = msgspec.json.Encoder()

    @property
    def deposed(self) -> bool:
        """Whether a write found that another scheduler took the lead: this store
        writes no more until ``take_leadership``."""
        return self._deposed_by is not None

    # --- lifecycle -------------------------------------------------------------------

    async def _open(self) -> Loaded:
        self._pool = await asyncpg.create_pool(
            self.dsn,
            connect=pgconnect.connect,
            min_size=1,
            max_size=POOL_SIZE,
            server_settings=dict(SERVER_SETTINGS),
            command_timeout=COMMAND_TIMEOUT_S,
        )
        async with self._pool.acquire() as conn:
            await prepare(conn)
        loaded = await self.load_state()
        self._conn = await self._connect()
        return loaded

    async def load_state(self) -> Loaded:
        """Read the whole state back, as ``open`` does, and set ``loaded_seq``: for a
        scheduler that starts again from the database (taking the lead, stepping
        down)."""
        # One snapshot: the rows, the last index and ``loaded_seq`` agree.
        async with (
            self._reads.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await self._load(conn)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _connect(self) -> Any:
        return await pgconnect.connect(
            self.dsn, server_settings=dict(SERVER_SETTINGS), command_timeout=COMMAND_TIMEOUT_S
        )

    async def _load(self, conn: Any) -> Loaded:
        # Collections during a bulk load only re-scan what was just made: skip them.
        gc.disable()
        try:
            ended = await _load_ended(conn)
            job_dec = msgspec.json.Decoder(Job)
            live = conn.cursor(LOAD_LIVE, prefetch=_FETCH_ROWS)
            jobs = [job_dec.decode(r[0]) async for r in live]
            archived: list[tuple[str, JobState, bytes]] = []
            if self.load_ended_docs:
                archived = [
                    (r[0], _STATES[r[1]], r[2])
                    async for r in conn.cursor(LOAD_ARCHIVED, prefetch=_FETCH_ROWS)
                ]
        finally:
            gc.enable()
        node_dec = msgspec.json.Decoder(Node)
        nodes = [node_dec.decode(r[0]) for r in await conn.fetch("SELECT doc FROM nodes")]
        idem = {r[0]: r[1] for r in await conn.fetch("SELECT key, job_id FROM idempotency")}
        tokens = [TokenRow(*r) for r in await conn.fetch(TOKEN_SELECT)]
        leader = await conn.fetchrow("SELECT last_index, seq FROM leader WHERE id = 1")
        top = await conn.fetchval("SELECT COALESCE(MAX(idx), 0) FROM events")
        ends_sql = LOG_ENDS if self.load_ended_docs else LIVE_LOG_ENDS
        ends = {(r[0], r[1]): int(r[2]) for r in await conn.fetch(ends_sql)}
        pruned_below = await conn.fetchval(PRUNED_BELOW)
        groups = {r[0]: r[1] for r in await conn.fetch("SELECT name, max_concurrent FROM groups")}
        holds = [
            BlobHold(*r) for r in await conn.fetch("SELECT digest, name, charged FROM blob_holds")
        ]
        schedule_dec = msgspec.json.Decoder(Schedule)
        schedules = [
            schedule_dec.decode(r[0]) for r in await conn.fetch("SELECT doc FROM schedules")
        ]
        owner_dec = msgspec.json.Decoder(Owner)
        owners = [owner_dec.decode(r[0]) for r in await conn.fetch("SELECT doc FROM owners")]
        sealed = await _read_secrets(conn)
        self.loaded_seq = int(leader["seq"])
        return Loaded(
            jobs,
            nodes,
            idem,
            tokens,
            # A new leader continues from the index the last one wrote, even where
            # retention has since dropped those events.
            max(int(top), int(leader["last_index"])),
            ends,
            archived,
            int(pruned_below or 0),
            groups,
            [ended.ids[i] for i in sorted(ended.webhooks)],
            holds,
            ended,
            schedules,
            owners,
            sealed,
        )

    # --- writes ----------------------------------------------------------------------

    def _encode_job(self, job: Job) -> bytes:
        return self._job_encoder.encode(job)

    def _encode(self, c: Changes) -> _Rows:
        enc = self._job_encoder.encode
        jobs = []
        for j in c.jobs.values():
            ended_at, owner, size, blobs, hook = job_columns(j)
            jobs.append((j.id, j.state.value, ended_at, owner, size, blobs, bool(hook), enc(j)))
        tokens = [
            (
                t.digest,
                t.role,
                t.name,
                t.node_id,
                t.all_jobs,
                t.created_at,
                t.created_by,
                t.revoked_at,
            )
            for t in c.tokens
        ]
        audit = [
            (a.at, a.actor, a.role, a.action, a.target, enc(a.details) if a.details else None)
            for a in c.audit
        ]
        tombstones = [("tokens", d) for d in c.revoked_tokens]
        tombstones += [("blob_holds", d) for d in c.blob_holds]
        tombstones += [("nodes", n) for n in c.forgotten_nodes]
        tombstones += [("schedules", n) for n in c.deleted_schedules]
        tombstones += [("secrets", n) for n in c.deleted_secrets]
        return _Rows(
            jobs=jobs,
            nodes=[(n.id, n.name, enc(n)) for n in c.nodes.values()],
            events=[(e.index, e.type, e.job_id, e.node_id, enc(e)) for e in c.events],
            idempotency=list(c.idempotency),
            tokens=tokens,
            audit=audit,
            revoked=[(d,) for d in c.revoked_tokens],
            logs=[(lc.job_id, lc.attempt, lc.offset, lc.data) for lc in c.logs],
            groups=list(c.groups.items()),
            blobs=[(d,) for d in c.blob_holds],
            blob_holds=[(h.digest, h.name, h.charged) for hs in c.blob_holds.values() for h in hs],
            forgotten_nodes=[(n,) for n in c.forgotten_nodes],
            schedules=[(s.name, enc(s)) for s in c.schedules.values()],
            deleted_schedules=[(n,) for n in c.deleted_schedules],
            owners=[(o.name, enc(o)) for o in c.owners.values()],
            secrets=[(x.name, enc(x.info), x.key_id, x.sealed) for x in c.secrets.values()],
            deleted_secrets=[(n,) for n in c.deleted_secrets],
            history=[(h.tier, h.sample.t, history_doc(h)) for h in c.history],
            history_cut=list(c.history_cut.items()),
            usage=[
                (u.job_id, u.attempt, u.point.t, u.point.cpu_percent, u.point.memory_mb)
                for u in c.usage
            ],
            usage_thin=[(j, a, USAGE_KEPT) for j, a in dict.fromkeys(c.usage_thin)],
            tombstones=tombstones,
            last_index=max((e.index for e in c.events), default=None),
        )

    async def _write(self, rows: _Rows) -> None:
        async with self._transaction(rows.last_index) as (conn, seq):
            for name, sql, stamped in WRITES:
                batch: list[_Row] = getattr(rows, name)
                if batch:
                    await conn.executemany(sql, [(*r, seq) for r in batch] if stamped else batch)
            await _bury(conn, seq, rows.tombstones)

    async def delete_jobs(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        async with self._transaction() as (conn, seq):
            await conn.execute("DELETE FROM jobs WHERE id = ANY($1::text[])", job_ids)
            for table in ("events", "logs", "usage", "idempotency"):
                await conn.execute(f"DELETE FROM {table} WHERE job_id = ANY($1::text[])", job_ids)
            await _bury(conn, seq, [("jobs", j) for j in job_ids])

    async def prune_events(self, keep: int) -> int:
        top = await self._reads.fetchval("SELECT COALESCE(MAX(idx), 0) FROM events")
        below = int(top) - keep + 1
        before = int(await self._reads.fetchval(PRUNED_BELOW) or 0)
        if below <= before:
            return before
        async with self._transaction() as (conn, _):
            # Events of jobs still kept stay, so a job's own history is always whole.
            await conn.execute(
                "DELETE FROM events WHERE idx < $1 AND NOT EXISTS "
                "(SELECT 1 FROM jobs WHERE jobs.id = events.job_id)",
                below,
            )
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('events_pruned_below', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                below,
            )
        return below

    @asynccontextmanager
    async def _transaction(self, last_index: int | None = None) -> AsyncIterator[tuple[Any, int]]:
        """One write transaction on the writer connection, fenced (see the module
        docstring): yields the connection and the transaction's seq, notifies it on the
        way out; raises Deposed, writing nothing, when this store no longer leads."""
        if self.epoch is not None and self._deposed_by is not None:
            raise Deposed(self.epoch, self._deposed_by)
        async with self._writer() as conn, conn.transaction():
            epoch, seq = await conn.fetchrow(FENCE, last_index)
            if self.epoch is not None and epoch != self.epoch:
                self._deposed_by = int(epoch)
                log.error("another scheduler leads (epoch %d, ours %d)", epoch, self.epoch)
                raise Deposed(self.epoch, int(epoch))
            yield conn, int(seq)
            # Delivered on commit only, so a follower never hears of a rolled-back one.
            await conn.execute(NOTIFY, NOTIFY_CHANNEL, str(seq))

    @asynccontextmanager
    async def _writer(self) -> AsyncIterator[Any]:
        """The writer connection, to this caller alone; (re)opened when it is missing
        or was lost, dropped when what ran on it failed in a way that leaves it unfit."""
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                self._conn = await self._connect()
            conn = self._conn
            try:
                yield conn
            except BaseException as e:
                if _unfit(conn, e):
                    # Lost, timed out or cancelled half-way: its state is unknown, so
                    # the next try starts on a new connection.
                    self._conn = None
                    conn.terminate()
                raise

    # --- leadership ------------------------------------------------------------------

    async def take_leadership(self, holder: str, url: str) -> int:
        """Bump the epoch in one transaction, recording who leads and where; from now on
        every write of this store checks it. Returns the new epoch."""
        async with self._writer() as conn:
            epoch = int(await conn.fetchval(TAKE_LEAD, holder, url))
            self.epoch = epoch
            self._deposed_by = None
        return epoch

    async def leader_row(self) -> dict[str, Any]:
        """The leader row: epoch, holder, url, last_index, at, seq."""
        row = await self._reads.fetchrow(
            "SELECT epoch, holder, url, last_index, at, seq FROM leader WHERE id = 1"
        )
        return dict(row)

    # --- following -------------------------------------------------------------------

    async def read_since(self, seq: int) -> ChangesSince:
        """What write transactions after ``seq`` left, read in one snapshot (see
        ChangesSince); follow with the ``seq`` it returns."""
        async with (
            self._reads.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            now = int(await conn.fetchval("SELECT seq FROM leader WHERE id = 1"))
            out = ChangesSince(now)
            if now <= seq:
                return out
            job_dec, node_dec = msgspec.json.Decoder(Job), msgspec.json.Decoder(Node)
            ev_dec = msgspec.json.Decoder(Event)
            out.jobs = [job_dec.decode(r[0]) for r in await _since(conn, "doc", "jobs", seq)]
            out.nodes = [node_dec.decode(r[0]) for r in await _since(conn, "doc", "nodes", seq)]
            out.tokens = [
                TokenRow(*r)
                for r in await _since(
                    conn,
                    "digest, role, name, node_id, all_jobs, created_at, created_by, revoked_at",
                    "tokens",
                    seq,
                )
            ]
            groups = await _since(conn, "name, max_concurrent", "groups", seq)
            out.groups = {r[0]: r[1] for r in groups}
            idem = await _since(conn, "key, job_id", "idempotency", seq)
            out.idempotency = {r[0]: r[1] for r in idem}
            holds = await _since(conn, "digest, name, charged", "blob_holds", seq)
            out.blob_holds = [BlobHold(*r) for r in holds]
            events = await conn.fetch("SELECT doc FROM events WHERE seq > $1 ORDER BY idx", seq)
            out.events = [ev_dec.decode(r[0]) for r in events]
            buried = await conn.fetch(
                "SELECT seq, tbl, key FROM tombstones WHERE seq > $1 ORDER BY seq", seq
            )
            out.tombstones = [(r[0], r[1], r[2]) for r in buried]
            out.events_pruned_below = int(await conn.fetchval(PRUNED_BELOW) or 0)
        return out

    # --- shared values ---------------------------------------------------------------

    async def get_kv(self, key: str) -> bytes | None:
        """The value stored under ``key``, None when there is none."""
        value = await self._reads.fetchval("SELECT value FROM kv WHERE key = $1", key)
        return None if value is None else bytes(value)

    async def put_kv_once(self, key: str, value: bytes) -> bytes:
        """Store ``value`` under ``key`` unless a value is there already; returns what
        is stored, so that every scheduler ends up with the same one."""
        async with self._reads.acquire() as conn:
            await conn.execute(
                "INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                key,
                value,
            )
            # A separate statement: in READ COMMITTED it sees a concurrent insert that
            # won over ours.
            return bytes(await conn.fetchval("SELECT value FROM kv WHERE key = $1", key))

    async def shared_secret(self, name: str, make: Callable[[], str]) -> str | None:
        """Kept in the database: every scheduler on it gets the first one made."""
        stored = await self.get_kv(name)
        if stored is None:
            stored = await self.put_kv_once(name, make().encode())
        return stored.decode()

    # --- reads -----------------------------------------------------------------------

    @property
    def _reads(self) -> Any:
        """The read pool (open once the store is)."""
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    async def read_log(self, job_id: str, attempt: int, offset: int, limit: int) -> bytes:
        out = bytearray()
        async with self._reads.acquire() as conn, conn.transaction(readonly=True):
            rows = conn.cursor(
                "SELECT pos, data FROM logs WHERE job_id = $1 AND attempt = $2 "
                "AND pos + length(data) > $3 ORDER BY pos",
                job_id,
                attempt,
                offset,
                prefetch=16,
            )
            async for start, data in rows:
                skip = max(0, offset - start)
                out += data[skip:]
                if len(out) >= limit:
                    break
        return bytes(out[:limit])

    async def read_events(self, after: int, limit: int, job_id: str | None = None) -> list[Event]:
        dec = msgspec.json.Decoder(Event)
        return [dec.decode(r[3]) for r in await self._fetch_events(after, limit, job_id)]

    async def read_raw_events(
        self, after: int, limit: int, job_id: str | None = None
    ) -> list[RawEvent]:
        return [(r[0], r[1], r[2], r[3]) for r in await self._fetch_events(after, limit, job_id)]

    async def _fetch_events(self, after: int, limit: int, job_id: str | None) -> list[Any]:
        cols = "SELECT idx, type, job_id, doc FROM events"
        if job_id is None:
            sql = f"{cols} WHERE idx > $1 ORDER BY idx LIMIT $2"
            return list(await self._reads.fetch(sql, after, limit))
        sql = f"{cols} WHERE job_id = $3 AND idx > $1 ORDER BY idx LIMIT $2"
        return list(await self._reads.fetch(sql, after, limit, job_id))

    async def _read_docs(self, ids: list[str]) -> dict[str, bytes]:
        rows = await self._reads.fetch("SELECT id, doc FROM jobs WHERE id = ANY($1::text[])", ids)
        return {r[0]: r[1] for r in rows}

    async def _read_log_size(self, job_id: str, attempt: int) -> int:
        n = await self._reads.fetchval(
            "SELECT COALESCE(SUM(length(data)), 0) FROM logs WHERE job_id = $1 AND attempt = $2",
            job_id,
            attempt,
        )
        return int(n)

    async def read_audit(
        self,
        after: int,
        limit: int,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[tuple[int, AuditRecord]]:
        if any(v is not None and "\x00" in v for v in (actor, action, target)):
            # Text holds no NUL here: nothing stored can equal it.
            return []
        where, args = ["id > $1"], [after]
        for column, value in (("actor", actor), ("action", action), ("target", target)):
            if value is not None:
                args.append(value)  # type: ignore[arg-type]
                where.append(f"{column} = ${len(args)}")
        sql = (
            "SELECT id, at, actor, role, action, target, details FROM audit "
            f"WHERE {' AND '.join(where)} ORDER BY id LIMIT ${len(args) + 1}"
        )
        out = []
        for row_id, at, who, role, what, on, details in await self._reads.fetch(sql, *args, limit):
            doc = msgspec.json.decode(details) if details else None
            out.append((int(row_id), AuditRecord(at, who, role, what, on, doc)))
        return out

    async def read_schedules(self) -> list[Schedule]:
        dec = msgspec.json.Decoder(Schedule)
        rows = await self._reads.fetch("SELECT doc FROM schedules ORDER BY name")
        return [dec.decode(r[0]) for r in rows]

    async def read_secrets(self) -> list[SealedSecret]:
        async with self._reads.acquire() as conn:
            return await _read_secrets(conn)

    async def read_history(self, tier: int, start: float, end: float) -> list[StatsSample]:
        dec = msgspec.json.Decoder(StatsSample)
        rows = await self._reads.fetch(
            "SELECT doc FROM history WHERE tier = $1 AND t >= $2 AND t < $3 ORDER BY t",
            tier,
            start,
            end,
        )
        return [dec.decode(zlib.decompress(r[0])) for r in rows]

    async def history_end(self, tier: int) -> float | None:
        t = await self._reads.fetchval("SELECT MAX(t) FROM history WHERE tier = $1", tier)
        return None if t is None else float(t)

    async def read_usage(self, job_id: str, attempt: int) -> list[UsagePoint]:
        rows = await self._reads.fetch(
            "SELECT t, cpu_percent, memory_mb FROM usage WHERE job_id = $1 AND attempt = $2 "
            "ORDER BY t",
            job_id,
            attempt,
        )
        return [UsagePoint(r[0], r[1], r[2]) for r in rows]

    async def ended_before(self, cutoff: float | str, limit: int) -> list[str]:
        rows = await self._reads.fetch(
            "SELECT id FROM jobs WHERE ended_at < $1 ORDER BY ended_at, id LIMIT $2",
            cutoff_seconds(cutoff),
            limit,
        )
        return [r[0] for r in rows]


def _unfit(conn: Any, e: BaseException) -> bool:
    """Whether the writer connection must be replaced after ``e``: a refused write
    (Deposed) or an error the server reported leaves it usable, anything else (a lost
    connection, a timeout, a cancellation half-way) does not."""
    if conn.is_closed():
        return True
    if isinstance(e, Deposed):
        return False
    return not isinstance(e, asyncpg.PostgresError) or isinstance(
        e, asyncpg.PostgresConnectionError
    )


async def _bury(conn: Any, seq: int, tombstones: list[tuple[str, str]]) -> None:
    """Record deleted keys for followers."""
    if tombstones:
        tables, keys = zip(*tombstones, strict=True)
        await conn.execute(BURY, seq, list(tables), list(keys))


async def _since(conn: Any, columns: str, table: str, seq: int) -> list[Any]:
    return list(await conn.fetch(f"SELECT {columns} FROM {table} WHERE seq > $1", seq))


async def _read_secrets(conn: Any) -> list[SealedSecret]:
    dec = msgspec.json.Decoder(SecretInfo)
    rows = await conn.fetch("SELECT doc, key_id, sealed FROM secrets ORDER BY name")
    return [SealedSecret(dec.decode(r[0]), r[1], bytes(r[2])) for r in rows]


async def _load_ended(conn: Any) -> EndedRows:
    """Every ended job's row, in id order, from the columns alone."""
    states, intern = _STATES, sys.intern
    ended = EndedRows()
    add = ended.append
    async for i, st, owner, n, blobs, hook in conn.cursor(LOAD_ENDED, prefetch=_FETCH_ROWS):
        add((i, states[st], intern(owner) if owner else owner, n, blobs, hook))
    return ended
