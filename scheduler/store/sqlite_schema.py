"""The SQLite store's schema, and how a database of an older release is brought up to
date: tables it lacks are made (every statement of ``SCHEMA`` creates only what is
missing; the history and usage tables came so), and new columns are added, filled
once."""

from __future__ import annotations

import sqlite3

from common.states import TERMINAL

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, ended_at REAL, owner TEXT,
    spec_bytes INTEGER NOT NULL DEFAULT 0, blobs TEXT,
    webhook_pending INTEGER NOT NULL DEFAULT 0, doc BLOB NOT NULL
);
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
CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS owners (name TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY, doc BLOB NOT NULL, key_id TEXT NOT NULL, sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    tier INTEGER NOT NULL, t REAL NOT NULL, doc BLOB NOT NULL, PRIMARY KEY (tier, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, t REAL NOT NULL,
    cpu_percent REAL NOT NULL, memory_mb REAL NOT NULL, PRIMARY KEY (job_id, attempt, t)
) WITHOUT ROWID;
"""

#: made once the jobs table has its columns. jobs_ended: retention's order, and the jobs
#: that have not ended (NULL first) without a scan of every row. jobs_ended_rows: every
#: ended job's columns in id order, so that a start reads them without going through
#: the documents (most of the table's bytes).
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (ended_at, id);
CREATE INDEX IF NOT EXISTS jobs_ended_rows
    ON jobs (id, state, owner, spec_bytes, blobs, webhook_pending, ended_at)
    WHERE ended_at IS NOT NULL;
"""

_TOKEN_COLUMNS = {
    "all_jobs": "INTEGER NOT NULL DEFAULT 0",
    "created_at": "TEXT",
    "created_by": "TEXT",
    "revoked_at": "TEXT",
}
_ENDED = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))
#: columns added to the jobs table in step 8, filled from the document once (below)
_JOB_COLUMNS = {
    "ended_at": "REAL",
    "owner": "TEXT",
    "spec_bytes": "INTEGER NOT NULL DEFAULT 0",
    "blobs": "TEXT",
    "webhook_pending": "INTEGER NOT NULL DEFAULT 0",
}


def _doc(path: str) -> str:
    return f"json_extract(CAST(doc AS TEXT), '$.{path}')"


def _tagged(tag: str, path: str) -> str:
    return f"COALESCE(' {tag}:' || {_doc(path)}, '')"


#: the jobs columns from the documents, as ``job_columns`` fills them (spec_bytes counts
#: the characters of the spec as SQLite re-encodes it: close to, not always, its bytes)
_BACKFILL = f"""
UPDATE jobs SET
    ended_at = CASE WHEN state IN ({_ENDED}) THEN
        (julianday(COALESCE({_doc("finished_at")}, {_doc("cancelled_at")}, {_doc("created_at")}))
         - 2440587.5) * 86400.0 END,
    owner = {_doc("submitted_by")},
    spec_bytes = COALESCE(LENGTH({_doc("spec")}), 0),
    blobs = NULLIF(LTRIM({_tagged("i", "spec.inputs")} || {_tagged("o", "outputs")}
        || {_tagged("c", "checkpoint")}), ''),
    webhook_pending = COALESCE({_doc("webhook_pending")}, 0)
"""


def prepare(conn: sqlite3.Connection) -> None:
    """Create what is missing, add the columns of later releases, then the indexes."""
    conn.executescript(SCHEMA)
    _add_missing_columns(conn, "tokens", _TOKEN_COLUMNS)
    _migrate_jobs(conn)
    conn.executescript(_INDEXES)


def _add_missing_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Bring a table written by an older release up to date (new columns only)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, definition in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


def _migrate_jobs(conn: sqlite3.Connection) -> None:
    """Give a jobs table of an older release its columns, filled from the documents:
    in one transaction, so it happens whole and once."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    missing = {k: v for k, v in _JOB_COLUMNS.items() if k not in have}
    if not missing:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, definition in missing.items():
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
        conn.execute(_BACKFILL)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
