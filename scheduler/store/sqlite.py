"""SQLite store: WAL, synchronous=FULL, one writer thread, one reader thread.

An acknowledged write must survive power loss, so every commit is fsynced; the group
commit (``scheduler.store.commit``) makes that cost per batch, not per change. This
backend turns a batch into rows on the event loop and writes them in one
``BEGIN IMMEDIATE`` transaction on its writer thread; if that raises, nothing of the
batch is written (SQLite rolls it back) and the group commit keeps it staged.

Reads that must not queue behind writes (replays, ``read_jobs``, log ends) run on a
second connection and thread: WAL lets them read while the writer writes, and every
read sees each transaction whole.

The jobs table's columns beside the document (see ``scheduler.store.base``) are added
to a database of an older release at open, and filled from the documents, once.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from common.history_models import StatsSample, UsagePoint
from common.models import Job, Node, Owner
from common.schedule_models import Schedule
from common.secret_models import SecretInfo
from common.states import JobState
from scheduler.archive import CODES
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
from scheduler.store.records import USAGE_KEPT, history_doc
from scheduler.store.sqlite_schema import prepare
from scheduler.tokens import TokenRow

_Row = tuple[Any, ...]
_Rows = dict[str, Sequence[_Row]]
#: columns added to the tokens table after its first release, with their definitions
_TOKEN_SELECT = (
    "SELECT digest, role, name, node_id, all_jobs, created_at, created_by, revoked_at FROM tokens"
)

_JOB_UPSERT = (
    "INSERT INTO jobs (id, state, ended_at, owner, spec_bytes, blobs, webhook_pending, doc) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
    "ended_at = excluded.ended_at, owner = excluded.owner, spec_bytes = excluded.spec_bytes, "
    "blobs = excluded.blobs, webhook_pending = excluded.webhook_pending, doc = excluded.doc"
)
_LOAD_ENDED = (
    "SELECT id, state, owner, spec_bytes, blobs, webhook_pending FROM jobs "
    "INDEXED BY jobs_ended_rows WHERE ended_at IS NOT NULL ORDER BY id"
)
_LOAD_LIVE = "SELECT doc FROM jobs WHERE ended_at IS NULL"
_PREFIX = " ".join(f"WHEN '{st.value}' THEN '{code.decode()}'" for st, code in CODES.items())
_LOAD_ARCHIVED = (
    f"SELECT id, state, CAST((CASE state {_PREFIX} ELSE '' END) || doc AS BLOB) FROM jobs "
    "NOT INDEXED WHERE ended_at IS NOT NULL"
)
_LOG_ENDS = "SELECT job_id, attempt, SUM(LENGTH(data)) FROM logs GROUP BY job_id, attempt"
_LIVE_LOG_ENDS = (
    "SELECT job_id, attempt, SUM(LENGTH(data)) FROM logs "
    "WHERE job_id IN (SELECT id FROM jobs WHERE ended_at IS NULL) GROUP BY job_id, attempt"
)
#: every other sample of an attempt goes once it has more than it may keep
_USAGE_THIN = (
    "DELETE FROM usage WHERE job_id = ?1 AND attempt = ?2 AND t IN (SELECT t FROM "
    "(SELECT t, ROW_NUMBER() OVER (ORDER BY t) AS rn, COUNT(*) OVER () AS n FROM usage "
    "WHERE job_id = ?1 AND attempt = ?2) WHERE rn % 2 = 0 AND n > ?3)"
)
#: ids per statement in a read of many jobs (well under SQLite's limit on parameters)
_IDS_PER_READ = 500
_STATES = {s.value: s for s in JobState}


class SQLiteStore(Store):
    """The default store: one SQLite file in the state directory.

    Parameters:
        path: the database file (created with its directory if missing).
        load_ended_docs: whether ``open`` also reads ended jobs' documents into
            ``Loaded.archived`` (and log ends of ended jobs); ``Loaded.ended`` is filled
            either way, from the columns alone.
    """

    def __init__(self, path: Path, *, load_ended_docs: bool = True) -> None:
        super().__init__()
        self.path = path
        self.load_ended_docs = load_ended_docs
        self._conn: sqlite3.Connection | None = None
        # One thread owns the connection: SQLite calls never run on the event loop.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-sqlite")
        # Reads that must not wait for writes run on a connection and thread of their
        # own (WAL lets them read while the writer writes).
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-sqlite-read")
        self._read_conn: sqlite3.Connection | None = None
        self._job_encoder = msgspec.json.Encoder()

    # --- lifecycle -------------------------------------------------------------------

    async def _open(self) -> Loaded:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._open_sync)

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close_sync)
        self._thread.shutdown(wait=True)
        await loop.run_in_executor(self._reader, self._close_reader_sync)
        self._reader.shutdown(wait=True)

    def _open_sync(self) -> Loaded:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        prepare(conn)
        self._conn = conn
        # Collections during a bulk load only re-scan what was just made: skip them.
        gc.disable()
        try:
            ended = _load_ended(conn)
            job_dec = msgspec.json.Decoder(Job)
            jobs = [job_dec.decode(d) for (d,) in conn.execute(_LOAD_LIVE)]
            archived: list[tuple[str, JobState, bytes]] = []
            if self.load_ended_docs:
                # As the archive keeps them; SQLite adds the archive's prefix so that no
                # copy of each document is made here.
                archived = [(i, _STATES[st], d) for i, st, d in conn.execute(_LOAD_ARCHIVED)]
        finally:
            gc.enable()
        node_dec = msgspec.json.Decoder(Node)
        nodes = [node_dec.decode(d) for (d,) in conn.execute("SELECT doc FROM nodes")]
        idem = dict(conn.execute("SELECT key, job_id FROM idempotency").fetchall())
        tokens = [
            TokenRow(d, role, name, node, bool(every), created, by, revoked)
            for d, role, name, node, every, created, by, revoked in conn.execute(_TOKEN_SELECT)
        ]
        (last,) = conn.execute("SELECT COALESCE(MAX(idx), 0) FROM events").fetchone()
        ends_sql = _LOG_ENDS if self.load_ended_docs else _LIVE_LOG_ENDS
        ends = {(j, a): int(n) for j, a, n in conn.execute(ends_sql)}
        row = conn.execute("SELECT value FROM meta WHERE key = 'events_pruned_below'").fetchone()
        pruned_below = int(row[0]) if row else 0
        groups = dict(conn.execute("SELECT name, max_concurrent FROM groups").fetchall())
        holds = [
            BlobHold(*row) for row in conn.execute("SELECT digest, name, charged FROM blob_holds")
        ]
        schedule_dec = msgspec.json.Decoder(Schedule)
        schedules = [schedule_dec.decode(d) for (d,) in conn.execute("SELECT doc FROM schedules")]
        owner_dec = msgspec.json.Decoder(Owner)
        owners = [owner_dec.decode(d) for (d,) in conn.execute("SELECT doc FROM owners")]
        secret_dec = msgspec.json.Decoder(SecretInfo)
        sealed = [
            SealedSecret(secret_dec.decode(d), key_id, bytes(value))
            for d, key_id, value in conn.execute("SELECT doc, key_id, sealed FROM secrets")
        ]
        return Loaded(
            jobs,
            nodes,
            idem,
            tokens,
            int(last),
            ends,
            archived,
            pruned_below,
            groups,
            [ended.ids[i] for i in sorted(ended.webhooks)],
            holds,
            ended,
            schedules,
            owners,
            sealed,
        )

    def _close_reader_sync(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- writes ----------------------------------------------------------------------

    def _encode_job(self, job: Job) -> bytes:
        return self._job_encoder.encode(job)

    def _encode(self, c: Changes) -> _Rows:
        enc = self._job_encoder.encode
        return {
            "jobs": [(j.id, j.state.value, *job_columns(j), enc(j)) for j in c.jobs.values()],
            "nodes": [(n.id, n.name, enc(n)) for n in c.nodes.values()],
            "events": [(e.index, e.type, e.job_id, e.node_id, enc(e)) for e in c.events],
            "idempotency": c.idempotency,
            "tokens": [
                (
                    t.digest,
                    t.role,
                    t.name,
                    t.node_id,
                    int(t.all_jobs),
                    t.created_at,
                    t.created_by,
                    t.revoked_at,
                )
                for t in c.tokens
            ],
            "audit": [
                (a.at, a.actor, a.role, a.action, a.target, enc(a.details) if a.details else None)
                for a in c.audit
            ],
            "revoked": [(d,) for d in c.revoked_tokens],
            "logs": [(lc.job_id, lc.attempt, lc.offset, lc.data) for lc in c.logs],
            "groups": list(c.groups.items()),
            # A blob's holds are written whole: its old rows go, its current ones come.
            "blobs": [(d,) for d in c.blob_holds],
            "blob_holds": [
                (h.digest, h.name, h.charged) for hs in c.blob_holds.values() for h in hs
            ],
            "forgotten_nodes": [(n,) for n in c.forgotten_nodes],
            "schedules": [(s.name, enc(s)) for s in c.schedules.values()],
            "deleted_schedules": [(n,) for n in c.deleted_schedules],
            "owners": [(o.name, enc(o)) for o in c.owners.values()],
            "secrets": [(x.name, enc(x.info), x.key_id, x.sealed) for x in c.secrets.values()],
            "deleted_secrets": [(n,) for n in c.deleted_secrets],
            "history": [(h.tier, h.sample.t, history_doc(h)) for h in c.history],
            "history_cut": list(c.history_cut.items()),
            "usage": [
                (u.job_id, u.attempt, u.point.t, u.point.cpu_percent, u.point.memory_mb)
                for u in c.usage
            ],
            "usage_thin": [(j, a, USAGE_KEPT) for j, a in dict.fromkeys(c.usage_thin)],
        }

    async def _write(self, rows: _Rows) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write_sync, rows)

    def _write_sync(self, rows: _Rows) -> None:
        # Each statement is the write the table's row in scheduler.store.base names.
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_JOB_UPSERT, rows["jobs"])
            conn.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)", rows["nodes"])
            conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", rows["events"])
            conn.executemany("INSERT OR IGNORE INTO idempotency VALUES (?, ?)", rows["idempotency"])
            conn.executemany(
                "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows["tokens"]
            )
            conn.executemany(
                "INSERT INTO audit (at, actor, role, action, target, details) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows["audit"],
            )
            conn.executemany("DELETE FROM tokens WHERE digest = ?", rows["revoked"])
            conn.executemany("INSERT OR IGNORE INTO logs VALUES (?, ?, ?, ?)", rows["logs"])
            conn.executemany("INSERT OR REPLACE INTO groups VALUES (?, ?)", rows["groups"])
            conn.executemany("DELETE FROM blob_holds WHERE digest = ?", rows["blobs"])
            conn.executemany("INSERT INTO blob_holds VALUES (?, ?, ?)", rows["blob_holds"])
            conn.executemany("DELETE FROM nodes WHERE id = ?", rows["forgotten_nodes"])
            conn.executemany("INSERT OR REPLACE INTO schedules VALUES (?, ?)", rows["schedules"])
            conn.executemany("DELETE FROM schedules WHERE name = ?", rows["deleted_schedules"])
            conn.executemany("INSERT OR REPLACE INTO owners VALUES (?, ?)", rows["owners"])
            conn.executemany("INSERT OR REPLACE INTO secrets VALUES (?, ?, ?, ?)", rows["secrets"])
            conn.executemany("DELETE FROM secrets WHERE name = ?", rows["deleted_secrets"])
            conn.executemany("INSERT OR REPLACE INTO history VALUES (?, ?, ?)", rows["history"])
            conn.executemany("DELETE FROM history WHERE tier = ? AND t < ?", rows["history_cut"])
            conn.executemany("INSERT OR IGNORE INTO usage VALUES (?, ?, ?, ?, ?)", rows["usage"])
            conn.executemany(_USAGE_THIN, rows["usage_thin"])
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk does that): keep the
            # original error, not "no transaction is active".
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # --- reads -----------------------------------------------------------------------

    async def read_log(self, job_id: str, attempt: int, offset: int, limit: int) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, self._read_log_sync, job_id, attempt, offset, limit
        )

    def _read_log_sync(self, job_id: str, attempt: int, offset: int, limit: int) -> bytes:
        conn = self._conn
        assert conn is not None
        out = bytearray()
        rows = conn.execute(
            "SELECT offset, data FROM logs WHERE job_id = ? AND attempt = ? "
            "AND offset + LENGTH(data) > ? ORDER BY offset",
            (job_id, attempt, offset),
        )
        for start, data in rows:
            skip = max(0, offset - start)
            out += data[skip:]
            if len(out) >= limit:
                break
        return bytes(out[:limit])

    async def read_events(self, after: int, limit: int, job_id: str | None = None) -> list[Event]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, self._read_events_sync, after, limit, job_id
        )

    def _read_events_sync(self, after: int, limit: int, job_id: str | None) -> list[Event]:
        conn = self._conn
        assert conn is not None
        dec = msgspec.json.Decoder(Event)
        if job_id is None:
            sql, args = "SELECT doc FROM events WHERE idx > ? ORDER BY idx LIMIT ?", (after, limit)
        else:
            sql = "SELECT doc FROM events WHERE job_id = ? AND idx > ? ORDER BY idx LIMIT ?"
            args = (job_id, after, limit)  # type: ignore[assignment]
        return [dec.decode(d) for (d,) in conn.execute(sql, args)]

    async def read_raw_events(
        self, after: int, limit: int, job_id: str | None = None
    ) -> list[RawEvent]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._reader, self._read_raw_events_sync, after, limit, job_id
        )

    def _read_raw_events_sync(self, after: int, limit: int, job_id: str | None) -> list[RawEvent]:
        cols = "SELECT idx, type, job_id, doc FROM events"
        if job_id is None:
            sql, args = f"{cols} WHERE idx > ? ORDER BY idx LIMIT ?", (after, limit)
        else:
            sql = f"{cols} WHERE job_id = ? AND idx > ? ORDER BY idx LIMIT ?"
            args = (job_id, after, limit)  # type: ignore[assignment]
        return list(self._reading().execute(sql, args))

    def _reading(self) -> sqlite3.Connection:
        """The reader thread's connection (opened on first use)."""
        if self._read_conn is None:
            self._read_conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        return self._read_conn

    async def _read_docs(self, ids: list[str]) -> dict[str, bytes]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_docs_sync, ids)

    def _read_docs_sync(self, ids: list[str]) -> dict[str, bytes]:
        conn = self._reading()
        out: dict[str, bytes] = {}
        for start in range(0, len(ids), _IDS_PER_READ):
            part = ids[start : start + _IDS_PER_READ]
            marks = ", ".join("?" * len(part))
            out.update(conn.execute(f"SELECT id, doc FROM jobs WHERE id IN ({marks})", part))
        return out

    async def _read_log_size(self, job_id: str, attempt: int) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_log_size_sync, job_id, attempt)

    def _read_log_size_sync(self, job_id: str, attempt: int) -> int:
        (n,) = (
            self._reading()
            .execute(
                "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM logs WHERE job_id = ? AND attempt = ?",
                (job_id, attempt),
            )
            .fetchone()
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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, self._read_audit_sync, after, limit, actor, action, target
        )

    def _read_audit_sync(
        self, after: int, limit: int, actor: str | None, action: str | None, target: str | None
    ) -> list[tuple[int, AuditRecord]]:
        conn = self._conn
        assert conn is not None
        where, args = ["id > ?"], [after]
        for column, value in (("actor", actor), ("action", action), ("target", target)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)  # type: ignore[arg-type]
        sql = (
            "SELECT id, at, actor, role, action, target, details FROM audit "
            f"WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        )
        out = []
        for row_id, at, who, role, what, on, details in conn.execute(sql, [*args, limit]):
            doc = msgspec.json.decode(details) if details else None
            out.append((int(row_id), AuditRecord(at, who, role, what, on, doc)))
        return out

    async def read_history(self, tier: int, start: float, end: float) -> list[StatsSample]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_history_sync, tier, start, end)

    def _read_history_sync(self, tier: int, start: float, end: float) -> list[StatsSample]:
        dec = msgspec.json.Decoder(StatsSample)
        rows = self._reading().execute(
            "SELECT doc FROM history WHERE tier = ? AND t >= ? AND t < ? ORDER BY t",
            (tier, start, end),
        )
        return [dec.decode(zlib.decompress(d)) for (d,) in rows]

    async def history_end(self, tier: int) -> float | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._history_end_sync, tier)

    def _history_end_sync(self, tier: int) -> float | None:
        sql = "SELECT MAX(t) FROM history WHERE tier = ?"
        (t,) = self._reading().execute(sql, (tier,)).fetchone()
        return None if t is None else float(t)

    async def read_usage(self, job_id: str, attempt: int) -> list[UsagePoint]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_usage_sync, job_id, attempt)

    def _read_usage_sync(self, job_id: str, attempt: int) -> list[UsagePoint]:
        rows = self._reading().execute(
            "SELECT t, cpu_percent, memory_mb FROM usage WHERE job_id = ? AND attempt = ? "
            "ORDER BY t",
            (job_id, attempt),
        )
        return [UsagePoint(t, cpu, mem) for t, cpu, mem in rows]

    async def ended_before(self, cutoff: float | str, limit: int) -> list[str]:
        loop = asyncio.get_running_loop()
        at = cutoff_seconds(cutoff)
        return await loop.run_in_executor(self._thread, self._ended_before_sync, at, limit)

    def _ended_before_sync(self, cutoff: float, limit: int) -> list[str]:
        conn = self._conn
        assert conn is not None
        rows = conn.execute(
            "SELECT id FROM jobs WHERE ended_at < ? ORDER BY ended_at LIMIT ?", (cutoff, limit)
        )
        return [r[0] for r in rows]

    async def delete_jobs(self, job_ids: list[str]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._delete_jobs_sync, job_ids)

    def _delete_jobs_sync(self, job_ids: list[str]) -> None:
        conn = self._conn
        assert conn is not None
        rows = [(j,) for j in job_ids]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM jobs WHERE id = ?", rows)
            conn.executemany("DELETE FROM events WHERE job_id = ?", rows)
            conn.executemany("DELETE FROM logs WHERE job_id = ?", rows)
            conn.executemany("DELETE FROM usage WHERE job_id = ?", rows)
            conn.executemany("DELETE FROM idempotency WHERE job_id = ?", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def prune_events(self, keep: int) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._prune_events_sync, keep)

    def _prune_events_sync(self, keep: int) -> int:
        conn = self._conn
        assert conn is not None
        (top,) = conn.execute("SELECT COALESCE(MAX(idx), 0) FROM events").fetchone()
        below = int(top) - keep + 1
        row = conn.execute("SELECT value FROM meta WHERE key = 'events_pruned_below'").fetchone()
        before = int(row[0]) if row else 0
        if below <= before:
            return before
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Events of jobs still kept stay, so a job's own history is always whole.
            conn.execute(
                "DELETE FROM events WHERE idx < ? AND (job_id IS NULL OR job_id NOT IN "
                "(SELECT id FROM jobs))",
                (below,),
            )
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('events_pruned_below', ?)", (below,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return below


def _load_ended(conn: sqlite3.Connection) -> EndedRows:
    """Every ended job's row, in id order, from the columns alone."""
    states, intern = _STATES, sys.intern
    ended = EndedRows()
    add = ended.append
    for i, st, owner, n, blobs, hook in conn.execute(_LOAD_ENDED):
        add((i, states[st], intern(owner) if owner else owner, n, blobs, bool(hook)))
    return ended
