"""The PostgreSQL store's schema, created whole and once, whoever opens the database,
and the statements the store runs on it.

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

from scheduler.archive import CODES

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
CREATE TABLE IF NOT EXISTS schedules (
    name text PRIMARY KEY, doc bytea NOT NULL, seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS owners (
    name text PRIMARY KEY, doc bytea NOT NULL, seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS secrets (
    name text PRIMARY KEY, doc bytea NOT NULL, key_id text NOT NULL, sealed bytea NOT NULL,
    seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS history (
    tier smallint NOT NULL, t double precision NOT NULL, doc bytea NOT NULL,
    PRIMARY KEY (tier, t)
);
CREATE TABLE IF NOT EXISTS usage (
    job_id text NOT NULL, attempt integer NOT NULL, t double precision NOT NULL,
    cpu_percent double precision NOT NULL, memory_mb double precision NOT NULL,
    PRIMARY KEY (job_id, attempt, t)
);
INSERT INTO meta (key, value) VALUES ('schema_version', 5)
    ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, excluded.value);
"""
#: the schema ``SCHEMA`` makes; a release that changes it raises this (2: schedules,
#: 3: owners, 4: secrets, 5: history and usage). A database made at an older version
#: is brought up to it by running ``SCHEMA`` again: each statement makes only what is
#: missing.
SCHEMA_VERSION = 5


# --- the statements the store runs, next to the tables they write ---------------------

# Every write transaction starts here: the leader row's lock serialises writers and
# fences a deposed one. The UPDATE takes the lock SELECT ... FOR UPDATE would (and, in
# READ COMMITTED, sees an epoch bumped while it waited), so the check costs no extra
# round trip; refusing rolls the bump back with everything else.
FENCE = (
    "UPDATE leader SET seq = seq + 1, last_index = GREATEST(last_index, $1::bigint) "
    "WHERE id = 1 RETURNING epoch, seq"
)
TAKE_LEAD = (
    "UPDATE leader SET epoch = epoch + 1, holder = $1, url = $2, at = now() "
    "WHERE id = 1 RETURNING epoch"
)
NOTIFY = "SELECT pg_notify($1, $2)"
BURY = (
    "INSERT INTO tombstones (seq, tbl, key) "
    "SELECT $1, t, k FROM unnest($2::text[], $3::text[]) AS u(t, k)"
)

_JOB_UPSERT = (
    "INSERT INTO jobs (id, state, ended_at, owner, spec_bytes, blobs, webhook_pending, doc, seq) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO UPDATE SET "
    "state = excluded.state, ended_at = excluded.ended_at, owner = excluded.owner, "
    "spec_bytes = excluded.spec_bytes, blobs = excluded.blobs, "
    "webhook_pending = excluded.webhook_pending, doc = excluded.doc, seq = excluded.seq"
)
#: (field of the batch's rows, statement, whether the transaction's seq is appended to each row),
#: in the order SQLite writes them; each is the write base.py's table names
WRITES: tuple[tuple[str, str, bool], ...] = (
    ("jobs", _JOB_UPSERT, True),
    (
        "nodes",
        "INSERT INTO nodes (id, name, doc, seq) VALUES ($1, $2, $3, $4) ON CONFLICT (id) "
        "DO UPDATE SET name = excluded.name, doc = excluded.doc, seq = excluded.seq",
        True,
    ),
    (
        "events",
        "INSERT INTO events (idx, type, job_id, node_id, doc, seq) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (idx) DO NOTHING",
        True,
    ),
    (
        "idempotency",
        "INSERT INTO idempotency (key, job_id, seq) VALUES ($1, $2, $3) "
        "ON CONFLICT (key) DO NOTHING",
        True,
    ),
    (
        "tokens",
        "INSERT INTO tokens (digest, role, name, node_id, all_jobs, created_at, created_by, "
        "revoked_at, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (digest) "
        "DO UPDATE SET role = excluded.role, name = excluded.name, node_id = excluded.node_id, "
        "all_jobs = excluded.all_jobs, created_at = excluded.created_at, "
        "created_by = excluded.created_by, revoked_at = excluded.revoked_at, seq = excluded.seq",
        True,
    ),
    (
        "audit",
        "INSERT INTO audit (at, actor, role, action, target, details) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        False,
    ),
    ("revoked", "DELETE FROM tokens WHERE digest = $1", False),
    (
        "logs",
        "INSERT INTO logs (job_id, attempt, pos, data) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (job_id, attempt, pos) DO NOTHING",
        False,
    ),
    (
        "groups",
        "INSERT INTO groups (name, max_concurrent, seq) VALUES ($1, $2, $3) ON CONFLICT (name) "
        "DO UPDATE SET max_concurrent = excluded.max_concurrent, seq = excluded.seq",
        True,
    ),
    # A blob's holds are written whole: its old rows go, its current ones come.
    ("blobs", "DELETE FROM blob_holds WHERE digest = $1", False),
    (
        "blob_holds",
        "INSERT INTO blob_holds (digest, name, charged, seq) VALUES ($1, $2, $3, $4)",
        True,
    ),
    ("forgotten_nodes", "DELETE FROM nodes WHERE id = $1", False),
    (
        "schedules",
        "INSERT INTO schedules (name, doc, seq) VALUES ($1, $2, $3) ON CONFLICT (name) "
        "DO UPDATE SET doc = excluded.doc, seq = excluded.seq",
        True,
    ),
    ("deleted_schedules", "DELETE FROM schedules WHERE name = $1", False),
    (
        "owners",
        "INSERT INTO owners (name, doc, seq) VALUES ($1, $2, $3) ON CONFLICT (name) "
        "DO UPDATE SET doc = excluded.doc, seq = excluded.seq",
        True,
    ),
    (
        "secrets",
        "INSERT INTO secrets (name, doc, key_id, sealed, seq) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, key_id = excluded.key_id, "
        "sealed = excluded.sealed, seq = excluded.seq",
        True,
    ),
    ("deleted_secrets", "DELETE FROM secrets WHERE name = $1", False),
    # Not stamped: standbys read these tables when asked, they do not follow them.
    (
        "history",
        "INSERT INTO history (tier, t, doc) VALUES ($1, $2, $3) ON CONFLICT (tier, t) "
        "DO UPDATE SET doc = excluded.doc",
        False,
    ),
    ("history_cut", "DELETE FROM history WHERE tier = $1 AND t < $2", False),
    (
        "usage",
        "INSERT INTO usage (job_id, attempt, t, cpu_percent, memory_mb) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id, attempt, t) DO NOTHING",
        False,
    ),
    # Every other sample of an attempt goes once it has more than it may keep.
    (
        "usage_thin",
        # ARRAY(...) is worked out once; a join on the window's rows was planned as a
        # nested loop (seconds for a few thousand samples).
        "DELETE FROM usage WHERE job_id = $1 AND attempt = $2 AND t = ANY(ARRAY("
        "SELECT t FROM (SELECT t, row_number() OVER (ORDER BY t) AS rn, count(*) OVER () AS n "
        "FROM usage WHERE job_id = $1 AND attempt = $2) x WHERE x.rn % 2 = 0 AND x.n > $3))",
        False,
    ),
)

LOAD_ENDED = (
    "SELECT id, state, owner, spec_bytes, blobs, webhook_pending FROM jobs "
    "WHERE ended_at IS NOT NULL ORDER BY id"
)
LOAD_LIVE = "SELECT doc FROM jobs WHERE ended_at IS NULL"
_PREFIX = " ".join(f"WHEN '{st.value}' THEN '{code.decode()}'" for st, code in CODES.items())
#: as the archive keeps them: the server adds the archive's prefix, so that no copy of
#: each document is made here
LOAD_ARCHIVED = (
    f"SELECT id, state, convert_to(CASE state {_PREFIX} ELSE '' END, 'UTF8') || doc "
    "FROM jobs WHERE ended_at IS NOT NULL"
)
LOG_ENDS = "SELECT job_id, attempt, SUM(length(data)) FROM logs GROUP BY job_id, attempt"
LIVE_LOG_ENDS = (
    "SELECT l.job_id, l.attempt, SUM(length(l.data)) FROM logs l "
    "JOIN jobs j ON j.id = l.job_id AND j.ended_at IS NULL GROUP BY l.job_id, l.attempt"
)
TOKEN_SELECT = (
    "SELECT digest, role, name, node_id, all_jobs, created_at, created_by, revoked_at FROM tokens"
)
PRUNED_BELOW = "SELECT value FROM meta WHERE key = 'events_pruned_below'"


async def prepare(conn: asyncpg.Connection) -> None:
    """Create what is missing, in one transaction, under ``SCHEMA_LOCK``: a second
    process opening the same new database waits, then finds everything there."""
    if await _schema_version(conn) >= SCHEMA_VERSION:
        # Made already: its CREATE INDEX statements would take share locks on the
        # tables the leader writes, and its leader-row insert would wait for the
        # leader's fence; a scheduler starting beside a busy leader deadlocked on that.
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute(SCHEMA)


async def _schema_version(conn: asyncpg.Connection) -> int:
    """The version the database's schema was made at, 0 when it was not (plain reads:
    no lock that a writer holds is waited for)."""
    if await conn.fetchval("SELECT to_regclass('meta')") is None:
        return 0
    version = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
    return int(version or 0)
