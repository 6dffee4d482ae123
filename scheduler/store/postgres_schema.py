"""The PostgreSQL store's schema, created whole and once, whoever opens the database.

The tables are those of the SQLite store (``sqlite_schema``) with the same columns and
the same encoded documents, plus what several schedulers sharing one database need:

- ``leader``: one row, the fencing token (``epoch``), who leads, the last event index
  written, and ``seq``, the number of the last write transaction (every write bumps it);
- a ``seq`` column on the rows a standby follows (jobs, nodes, tokens, groups,
  idempotency, blob holds, events): the write transaction that last wrote the row;
- ``tombstones``: the keys a write transaction deleted, with its ``seq``;
- ``kv``: small values every scheduler shares (the webhook signing key).
"""

from __future__ import annotations

import asyncpg

#: the transaction-scoped advisory lock held while the schema is created: two processes
#: that open a new database at once would otherwise race on the catalogue ("berth" in
#: ASCII, so that it is told apart from other users' keys in pg_locks)
SCHEMA_LOCK = 0x6265727468

# Ids sort as bytes (COLLATE "C"), as in SQLite: ended jobs load in id order whatever
# the database's locale.
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id text COLLATE "C" PRIMARY KEY, state text NOT NULL, ended_at double precision,
    owner text, spec_bytes bigint NOT NULL DEFAULT 0, blobs text,
    webhook_pending boolean NOT NULL DEFAULT false, doc bytea NOT NULL,
    seq bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (ended_at, id);
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs (seq);
CREATE TABLE IF NOT EXISTS nodes (
    id text COLLATE "C" PRIMARY KEY, name text NOT NULL, doc bytea NOT NULL,
    seq bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS nodes_seq ON nodes (seq);
CREATE TABLE IF NOT EXISTS events (
    idx bigint PRIMARY KEY, type text NOT NULL, job_id text, node_id text,
    doc bytea NOT NULL, seq bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_seq ON events (seq);
CREATE TABLE IF NOT EXISTS idempotency (
    key text PRIMARY KEY, job_id text NOT NULL, seq bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idempotency_job ON idempotency (job_id);
CREATE INDEX IF NOT EXISTS idempotency_seq ON idempotency (seq);
CREATE TABLE IF NOT EXISTS tokens (
    digest text PRIMARY KEY, role text NOT NULL, name text NOT NULL, node_id text,
    all_jobs boolean NOT NULL DEFAULT false, created_at text, created_by text,
    revoked_at text, seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at text NOT NULL,
    actor text NOT NULL, role text NOT NULL, action text NOT NULL, target text,
    details bytea
);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target) WHERE target IS NOT NULL;
CREATE TABLE IF NOT EXISTS groups (
    name text PRIMARY KEY, max_concurrent bigint NOT NULL, seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    job_id text NOT NULL, attempt integer NOT NULL, pos bigint NOT NULL,
    data bytea NOT NULL, PRIMARY KEY (job_id, attempt, pos)
);
CREATE TABLE IF NOT EXISTS blob_holds (
    digest text NOT NULL, name text NOT NULL, charged bigint NOT NULL,
    seq bigint NOT NULL DEFAULT 0, PRIMARY KEY (digest, name)
);
CREATE TABLE IF NOT EXISTS leader (
    id integer PRIMARY KEY CHECK (id = 1), epoch bigint NOT NULL, holder text, url text,
    last_index bigint NOT NULL DEFAULT 0, at timestamptz, seq bigint NOT NULL DEFAULT 0
);
INSERT INTO leader (id, epoch) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS tombstones (
    seq bigint NOT NULL, tbl text NOT NULL, key text NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones (seq);
CREATE TABLE IF NOT EXISTS kv (key text PRIMARY KEY, value bytea NOT NULL);
"""


async def prepare(conn: asyncpg.Connection) -> None:
    """Create what is missing, in one transaction, under ``SCHEMA_LOCK``: a second
    process opening the same new database waits, then finds everything there."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute(SCHEMA)
