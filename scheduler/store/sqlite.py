"""SQLite store: WAL, synchronous=FULL, one writer thread, group commit.

An acknowledged write must survive power loss, so every commit is fsynced; grouping
all changes staged while the previous transaction was being written into the next
one makes that cost per batch, not per change.

A batch that cannot be written (the disk is full, the file is gone) fails its waiters
with Unavailable, but its changes stay staged: the scheduler's memory already holds
them, so they are written, ahead of anything newer, by the next batch that succeeds.
While writes fail the store says why in ``failure`` and tries again every
``RETRY_S`` seconds on its own, so that memory and disk converge once space returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from common.errors import Unavailable
from common.models import Job, Node
from common.states import TERMINAL, JobState
from scheduler.archive import CODES
from scheduler.events import Event
from scheduler.store.base import (
    AuditRecord,
    BlobHold,
    Changes,
    Loaded,
    RawEvent,
    Store,
    TokenRow,
)

log = logging.getLogger("berth.store")

#: while writes fail, how often what is staged is tried again
RETRY_S = 1.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, name TEXT NOT NULL, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    idx INTEGER PRIMARY KEY, type TEXT NOT NULL, job_id TEXT, node_id TEXT, doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id) WHERE job_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, job_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, node_id TEXT,
    all_jobs INTEGER NOT NULL DEFAULT 0, created_at TEXT, created_by TEXT, revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT, details BLOB
);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target) WHERE target IS NOT NULL;
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, max_concurrent INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, offset INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (job_id, attempt, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_holds (
    digest TEXT NOT NULL, name TEXT NOT NULL, charged INTEGER NOT NULL,
    PRIMARY KEY (digest, name)
) WITHOUT ROWID;
"""

_Row = tuple[Any, ...]
#: columns added to the tokens table after its first release, with their definitions
_TOKEN_COLUMNS = {
    "all_jobs": "INTEGER NOT NULL DEFAULT 0",
    "created_at": "TEXT",
    "created_by": "TEXT",
    "revoked_at": "TEXT",
}
_TOKEN_SELECT = (
    "SELECT digest, role, name, node_id, all_jobs, created_at, created_by, revoked_at FROM tokens"
)
#: how an ended job whose webhook is still owed looks in its encoded document
_WEBHOOK_PENDING = b'"webhook_pending":true'

_PREFIX = " ".join(f"WHEN '{st.value}' THEN '{code.decode()}'" for st, code in CODES.items())
_LOAD_JOBS = f"SELECT id, state, CAST((CASE state {_PREFIX} ELSE '' END) || doc AS BLOB) FROM jobs"


class _Batch:
    __slots__ = ("changes", "waiters")

    def __init__(self) -> None:
        self.changes = Changes()
        self.waiters: list[asyncio.Future[None]] = []


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        # One thread owns the connection: SQLite calls never run on the event loop.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-sqlite")
        # Replays read on a connection and thread of their own (WAL lets them read while
        # the writer writes): however many replay, no commit waits behind their reads.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-sqlite-read")
        self._read_conn: sqlite3.Connection | None = None
        self._staged = _Batch()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.failure: str | None = None
        #: set by close(): ends a wait between two tries of a failing write
        self._closed = asyncio.Event()
        self._job_encoder = msgspec.json.Encoder()

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> Loaded:
        loop = asyncio.get_running_loop()
        loaded = await loop.run_in_executor(self._thread, self._open_sync)
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="berth-store-writer")
        return loaded

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        if self._wake is not None:
            self._wake.set()
        if self._writer is not None:
            await self._writer
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
        conn.executescript(SCHEMA)
        _add_missing_columns(conn, "tokens", _TOKEN_COLUMNS)
        self._conn = conn
        job_dec = msgspec.json.Decoder(Job)
        node_dec = msgspec.json.Decoder(Node)
        # Collections during a bulk load only re-scan what was just made: skip them.
        gc.disable()
        jobs: list[Job] = []
        archived: list[tuple[str, JobState, bytes]] = []
        webhooks: list[str] = []
        try:
            # Ended jobs stay encoded, as the archive keeps them; SQLite adds the
            # archive's prefix so that no copy of each document is made here.
            for job_id, state, doc in conn.execute(_LOAD_JOBS):
                st = JobState(state)
                if st in TERMINAL:
                    archived.append((job_id, st, doc))
                    # A plain search of the encoded document: no JSON parse per job.
                    if _WEBHOOK_PENDING in doc:
                        webhooks.append(job_id)
                else:
                    jobs.append(job_dec.decode(doc))
        finally:
            gc.enable()
        nodes = [node_dec.decode(d) for (d,) in conn.execute("SELECT doc FROM nodes")]
        idem = dict(conn.execute("SELECT key, job_id FROM idempotency").fetchall())
        tokens = [
            TokenRow(d, role, name, node, bool(every), created, by, revoked)
            for d, role, name, node, every, created, by, revoked in conn.execute(_TOKEN_SELECT)
        ]
        (last,) = conn.execute("SELECT COALESCE(MAX(idx), 0) FROM events").fetchone()
        ends = {
            (j, a): int(n)
            for j, a, n in conn.execute(
                "SELECT job_id, attempt, SUM(LENGTH(data)) FROM logs GROUP BY job_id, attempt"
            )
        }
        row = conn.execute("SELECT value FROM meta WHERE key = 'events_pruned_below'").fetchone()
        pruned_below = int(row[0]) if row else 0
        groups = dict(conn.execute("SELECT name, max_concurrent FROM groups").fetchall())
        holds = [
            BlobHold(*row) for row in conn.execute("SELECT digest, name, charged FROM blob_holds")
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
            webhooks,
            holds,
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

    async def commit(self, changes: Changes) -> None:
        if not changes:
            return
        if self._closing or self._wake is None:
            raise Unavailable("the store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._staged.changes.merge(changes)
        self._staged.waiters.append(fut)
        self._wake.set()
        await fut

    async def _write_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if self.failure is not None and not self._closing:
                # Failing: try again at a steady pace, whether or not anyone waits,
                # instead of at every commit.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_S):
                        await self._closed.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            batch, self._staged = self._staged, _Batch()
            if batch.changes or batch.waiters:
                # Encode on the loop: between two awaits no record is half-changed.
                rows = self._encode(batch.changes)
                try:
                    await loop.run_in_executor(self._thread, self._write_sync, rows)
                except Exception as e:  # the disk is full, the file is gone, ...
                    self._failed(batch, e)
                else:
                    if self.failure is not None:
                        log.warning("the state is written again (it failed: %s)", self.failure)
                        self.failure = None
                        if self.on_recovered is not None:
                            try:
                                self.on_recovered()
                            except Exception:  # the writer must outlive a broken hook
                                log.exception("announcing the recovered changes failed")
                    for w in batch.waiters:
                        if not w.done():
                            w.set_result(None)
            if self._closing and not self._staged.waiters:
                if self._staged.changes:
                    log.error("stopping with changes that could not be written: %s", self.failure)
                return

    def _failed(self, batch: _Batch, e: Exception) -> None:
        if self.failure is None:
            log.error("commit failed, retrying every %gs: %s", RETRY_S, e)
        self.failure = str(e) or type(e).__name__
        # Memory holds these changes already: keep them, ahead of what was staged
        # since (newer versions of the same records win), for the next batch.
        batch.changes.merge(self._staged.changes)
        self._staged.changes = batch.changes
        err = Unavailable(
            f"the state could not be written: {self.failure}", {"cause": self.failure}
        )
        for w in batch.waiters:
            if not w.done():
                w.set_exception(err)

    def _encode(self, c: Changes) -> dict[str, Sequence[_Row]]:
        enc = self._job_encoder.encode
        return {
            "jobs": [(j.id, j.state.value, enc(j)) for j in c.jobs.values()],
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
        }

    def _write_sync(self, rows: dict[str, Sequence[_Row]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", rows["jobs"])
            conn.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)", rows["nodes"])
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows["events"])
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
        if self._read_conn is None:
            self._read_conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        cols = "SELECT idx, type, job_id, doc FROM events"
        if job_id is None:
            sql, args = f"{cols} WHERE idx > ? ORDER BY idx LIMIT ?", (after, limit)
        else:
            sql = f"{cols} WHERE job_id = ? AND idx > ? ORDER BY idx LIMIT ?"
            args = (job_id, after, limit)  # type: ignore[assignment]
        return list(self._read_conn.execute(sql, args))

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

    async def ended_before(self, cutoff: str, limit: int) -> list[str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._ended_before_sync, cutoff, limit)

    def _ended_before_sync(self, cutoff: str, limit: int) -> list[str]:
        conn = self._conn
        assert conn is not None
        ended = ",".join(f"'{s.value}'" for s in TERMINAL)
        rows = conn.execute(
            f"SELECT id FROM jobs WHERE state IN ({ended}) "
            "AND json_extract(doc, '$.finished_at') < ? "
            "ORDER BY json_extract(doc, '$.finished_at') LIMIT ?",
            (cutoff, limit),
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


def _add_missing_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Bring a table written by an older release up to date (new columns only)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, definition in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
